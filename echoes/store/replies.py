"""The shapes of the scripts' replies (the ``-- returns`` of each lua/*.lua), checked before
the store believes them.

A server that is not the Redis echoes expects (a proxy, a fake Cluster node, another
program's function of the same name) may answer anything: a put answered ``OK`` was counted
as a copy not stored and the send answered ``200 {"sent": 0}``; a take answered ``7`` was a
TypeError and a 500. Each reply is checked here against its script's shape; one that fits
none is Unavailable("BadReply"), a 503 with Retry-After, and an error line in the log. An
error reply (OOM, say) passes: the store classifies it.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .failures import Unavailable
from .scripts import Call

log = logging.getLogger("echoes.store")


def _put(reply: Any) -> bool:
    """put.lua: 1 stored, 0 the inbox is full."""
    return type(reply) is int and reply in (0, 1)


def _take(reply: Any) -> bool:
    """take.lua: {batch as a JSON array, records in it, records left, message ids...}."""
    if not isinstance(reply, list) or len(reply) < 3:
        return False
    batch, count, left, *ids = reply
    return (
        isinstance(batch, bytes)
        and batch[:1] == b"["
        and batch[-1:] == b"]"
        and type(count) is int
        and type(left) is int
        and count >= 0
        and left >= 0
        and len(ids) <= count
        and all(isinstance(i, bytes) and i.startswith(b"m:") for i in ids)
    )


SHAPES: dict[str, Callable[[Any], bool]] = {"put": _put, "take": _take}


def check(calls: Sequence[Call], results: Sequence[Any]) -> None:
    """Unavailable("BadReply") at the first of ``results`` its call's script cannot give."""
    for call, result in zip(calls, results, strict=True):
        if isinstance(result, Exception) or SHAPES[call.script](result):
            continue
        shown = repr(result)
        shown = shown if len(shown) <= 80 else shown[:80] + "..."
        log.error(
            "Redis answered a %s with %s, which echoes' %s.lua never returns: answered 503"
            " (is --redis-url a Redis running echoes' own scripts?)",
            call.script,
            shown,
            call.script,
        )
        raise Unavailable("BadReply", f"Redis answered a {call.script} with {shown}")
