"""echoes: a Redis-backed message inbox with an HTTP JSON API.

The map, top to bottom (each subpackage's docstring says what it owns and may import):

- the process: ``__main__`` (the command), ``server`` (one process's parts, start-up,
  reload, shutdown), ``processes`` (--processes workers), ``embedded`` (a private
  redis-server), ``systemd`` (sd_notify);
- ``http``: the endpoints, validation, schemas, OpenAPI, the error shape;
- ``wake``: waiting requests and the listener that wakes them;
- ``store``: the only code that reads or writes echoes' data in Redis, its Lua and topologies;
- ``client``: the Python clients, the command line, the browser module (no server code);
- under all of them: ``config`` and ``options`` (every option, where values come from),
  ``topology`` (what --redis-url names), ``metrics``, ``logs``.
"""

__version__ = "0.1.0"
