"""The store: the only code that reads or writes echoes' data in Redis.

Owns the key layout (``keys``), the records' shapes (``records``), the Lua scripts
(``lua/``, loaded by ``scripts``), the Redis servers of each topology (``servers``), sending
each command to the server of its slot (``slots``), the per-loop-turn pipeline
(``pipeline``), the checks of Redis's own settings (``checks``) and of each shard's
replicas against the wait (``shards``), and the two kinds of trouble it reports
(``failures``). ``inboxes.Store`` is the one object the rest calls.

May import: ``echoes.config``, ``echoes.topology`` and redis-py. Never Tornado, the HTTP
layer or the wake-ups.
"""

import warnings

from .failures import OutOfMemory, Unavailable
from .inboxes import Message, Outcome, Store, Take, TooLarge
from .senders import OverQuota
from .shards import Shard, replication

__all__ = [
    "Message",
    "OutOfMemory",
    "Outcome",
    "OverQuota",
    "Shard",
    "Store",
    "Take",
    "TooLarge",
    "Unavailable",
    "replication",
]

# `python -m echoes.store.scripts` (and `.migrate`), the commands the docs give operators,
# run a module this package has imported already; runpy then warns that the module "may"
# behave unpredictably. It does not (each keeps its state in objects), and the warning
# reads like a failure to whoever pastes the command.
for _module in ("scripts", "migrate"):
    warnings.filterwarnings(
        "ignore", f"'echoes.store.{_module}' found in sys.modules", RuntimeWarning
    )
