"""The Redis trouble the store reports, in the two kinds the HTTP layer answers differently.

The store turns redis-py's exceptions into these, so neither the HTTP layer nor the process
imports a Redis exception or matches an error string. The one other code that sees them is
the wake-up listener (echoes.wake.listener), which holds pub/sub connections of its own and
reconnects on any of them.
"""

from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import (
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .pipeline import NotReplicated
from .scripts import NotLoaded

# Redis is there but cannot serve now: down, slow, a replica, a Cluster without a primary for
# the slot (an election), a slot migrating, replicas that did not confirm the writes.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
    NotReplicated,
)

T = TypeVar("T")
# Error replies: Redis's own while a script runs past busy-reply-threshold, and the scripts'.
BUSY, LATE = "BUSY", "LATE"


class Unavailable(Exception):
    """Redis cannot serve now: unreachable, timed out, read-only, or lacking echoes'
    function library. ``kind`` names the cause (for metrics and the 503's details)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(detail or kind)
        self.kind = kind


class OutOfMemory(Exception):
    """Redis refused to store: maxmemory reached with noeviction."""


def out_of_memory(error: Exception) -> bool:
    """Whether Redis refused a write for lack of memory."""
    # Redis 7 answers -OOM (OutOfMemoryError); 6.2 may wrap it in a script error.
    return isinstance(error, OutOfMemoryError) or "OOM command not allowed" in str(error)


def classify(error: Exception) -> Exception:
    """The failure ``error`` stands for: Unavailable, OutOfMemory, or itself (a bug)."""
    if isinstance(error, NotLoaded):
        return Unavailable("NotLoaded", str(error))
    if isinstance(error, UNAVAILABLE):
        return Unavailable(type(error).__name__, str(error))
    if isinstance(error, ResponseError) and out_of_memory(error):
        return OutOfMemory(str(error))
    if isinstance(error, ResponseError) and str(error).startswith(BUSY):
        # A script (another client's, or a slow one) holds Redis: it answers nothing else.
        return Unavailable("Busy", str(error))
    if isinstance(error, ResponseError) and str(error).startswith(LATE):
        # Redis got the command after its request's deadline (lua/common.lua) and did nothing.
        return Unavailable("Late", str(error))
    return error


async def classified(work: Awaitable[T]) -> T:
    """Await ``work``, raising what it raises as classify() says."""
    try:
        return await work
    except (RedisError, RedisClusterException) as e:
        raise classify(e) from e
