"""Accepting connections without spinning when the process has no file descriptor left.

Tornado's accept handler raises on EMFILE and stays registered: the listening socket is still
readable, so the event loop calls it again at once, forever, logging a traceback each time
(100% CPU and megabytes of log a second, nothing served). Here accepting pauses for
PAUSE_SECONDS instead, as nginx does, with one log line per LOG_SECONDS; the connections
already open keep being served, and the waiting ones are accepted once descriptors free up.
"""

import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

log = logging.getLogger("echoes")

PAUSE_SECONDS = 0.5
LOG_SECONDS = 10.0
# Accept at most this many connections per readiness event, as Tornado does (its backlog).
BATCH = 128
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def add_accept_handler(
    sock: socket.socket,
    callback: Callable[[socket.socket, Any], None],
    on_pause: Callable[[], None] = lambda: None,
) -> Callable[[], None]:
    """tornado.netutil.add_accept_handler, pausing instead of spinning when out of descriptors."""
    loop = IOLoop.current()
    state: dict[str, Any] = {"removed": False, "timer": None, "logged": 0.0}

    def ready(fd: Any, events: int) -> None:
        for _ in range(BATCH):
            if state["removed"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                pause(e)
                return
            callback(connection, address)

    def pause(error: OSError) -> None:
        on_pause()
        now = time.monotonic()
        if now - state["logged"] >= LOG_SECONDS:
            state["logged"] = now
            log.error(
                "cannot accept connections: %s; pausing accepts for %.1f s at a time"
                " (raise LimitNOFILE, or lower --max-waiters)",
                error.strerror,
                PAUSE_SECONDS,
            )
        loop.remove_handler(sock)
        state["timer"] = loop.call_later(PAUSE_SECONDS, resume)

    def resume() -> None:
        state["timer"] = None
        if not state["removed"]:
            loop.add_handler(sock, ready, IOLoop.READ)

    def remove() -> None:
        if state["timer"] is not None:
            loop.remove_timeout(state["timer"])
        else:
            loop.remove_handler(sock)
        state["removed"] = True

    loop.add_handler(sock, ready, IOLoop.READ)
    return remove
