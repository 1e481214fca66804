"""The clients of echoes: Python (``Client``, ``AsyncClient``), the command line, the browser.

Owns the follow protocol (``protocol``: requests, answers, retries; no I/O), the
follower's state file (``state``), the bounded HTTP exchange of the synchronous client
(``transport``), the two Python clients that move its bytes (``clients``), the ``echoes
send|receive|exchange|status|follow`` commands (``cli``) and the browser module
(``web/echoes.js``).

May import: nothing of the server: a client is what runs on a user's machine.

    from echoes.client import Client
"""

from .clients import AsyncClient, Client
from .protocol import BadAnswer, EchoesError, Unavailable
from .state import StateInUse

__all__ = ["AsyncClient", "BadAnswer", "Client", "EchoesError", "StateInUse", "Unavailable"]
