"""The Redis trouble the store reports, in the two kinds the HTTP layer answers differently.

The store turns redis-py's exceptions into these, so neither the HTTP layer nor the process
imports a Redis exception or matches an error string. The one other code that sees them is
the wake-up listener (echoes.wake.listener), which holds pub/sub connections of its own and
reconnects on any of them.
"""

from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import (
    AuthenticationError,
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
from .sentinels import NoMaster, SentinelAuthenticationError

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
BUSY, LATE, NOBODY = "BUSY", "LATE", "NOBODY"

# What Redis answers a client whose credentials it refuses, or one that sent none to a Redis
# whose default user is off (redis-py raises a ConnectionError with this text, caused by an
# AuthenticationError).
REFUSALS = (
    "NOAUTH",
    "WRONGPASS",
    "HELLO must be called with the client already authenticated",
    "invalid username-password pair",
    "Authentication required",
)
AUTHENTICATION = "AuthenticationError"
AUTHENTICATION_FIX = (
    "put a Redis user and its password in the Redis URL"
    " (--redis-url=redis://USER:PASSWORD@HOST:PORT/DB; under systemd, in /etc/echoes/redis_url)"
)
SENTINEL_AUTHENTICATION = SentinelAuthenticationError.__name__
SENTINEL_AUTHENTICATION_FIX = (
    "put the sentinels' password in the Redis URL"
    " (redis+sentinel://...?sentinel_password=PASSWORD, and &sentinel_username=USER for an ACL"
    " user)"
)


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


def refused_authentication(error: BaseException) -> bool:
    """Whether ``error``, or an error that caused it, is Redis refusing echoes' credentials."""
    seen: BaseException | None = error
    for _ in range(5):  # a chain of causes, never a loop
        if seen is None:
            return False
        if isinstance(seen, AuthenticationError) or any(r in str(seen) for r in REFUSALS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def classify(error: Exception) -> Exception:
    """The failure ``error`` stands for: Unavailable, OutOfMemory, or itself (a bug)."""
    if isinstance(error, NotLoaded):
        return Unavailable("NotLoaded", str(error))
    if isinstance(error, NoMaster):  # before the text of what each sentinel said is matched
        return Unavailable(type(error).__name__, str(error))
    if refused_authentication(error):
        return Unavailable(AUTHENTICATION, str(error))
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
    if isinstance(error, ResponseError) and str(error).startswith(NOBODY):
        # A big record's put found no body where its SET wrote it (lua/put.lua): a slot that
        # moved between the two, say. Nothing was stored; a resend stores it.
        return Unavailable("NoBody", str(error))
    return error


def problem(where: str, failure: Unavailable) -> str:
    """What is wrong with the Redis at ``where``, in words, with the fix when there is one."""
    if failure.kind == AUTHENTICATION:
        return (
            f"Redis at {where} refused echoes' credentials (authentication failed: {failure}):"
            f" {AUTHENTICATION_FIX}"
        )
    if failure.kind == SENTINEL_AUTHENTICATION:
        return (
            f"Redis at {where}: the sentinels refused echoes' credentials"
            f" ({SENTINEL_AUTHENTICATION}: {failure}): {SENTINEL_AUTHENTICATION_FIX}"
        )
    if failure.kind == "NotLoaded":
        return f"Redis at {where}: {failure}"
    return f"Redis at {where} is unavailable ({failure.kind})"


async def classified(work: Awaitable[T]) -> T:
    """Await ``work``, raising what it raises as classify() says."""
    try:
        return await work
    except (RedisError, RedisClusterException) as e:
        raise classify(e) from e
