"""Wake-ups of long polls: waiting requests by inbox, and the task that wakes them.

Owns the registry of this process's waiting requests (``waiters``: no Redis in it), which
channels to subscribe to (``subscriptions``: no Redis either), what /health reports of
wake-ups (``state``), and the listener, the one task per process that holds a pub/sub
connection per Redis server and sweeps (``listener``).

May import: ``echoes.config``, ``echoes.metrics``, and ``echoes.store`` (the store's sweep
and checks, its servers and keys). Never the HTTP layer.
"""
