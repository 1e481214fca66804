"""The HTTP face: endpoints, request validation, the spec's schemas, OpenAPI, error shape.

Owns everything a client's request touches before and after the store: Tornado handlers
(``handlers``), turning a request into the store's inputs (``validation``, ``schemas``), the
one error shape (``errors``), cross-site checks (``origins``), Tornado's own refusals in that
shape (``malformed``) and the accept loop (``accept``).

May import: ``echoes.config``, ``echoes.logs``, ``echoes.metrics``, the store's public
interface (``echoes.store``), and ``echoes.wake``'s waiters and state. Never redis-py: Redis
trouble reaches it as ``echoes.store.Unavailable`` or ``OutOfMemory``.
"""
