"""Checks of the Redis server's settings that echoes relies on (see conf/redis.conf)."""

import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .keys import NOTIFY_FLAGS

log = logging.getLogger("echoes.redis")


async def enable_notifications(client: aioredis.Redis) -> bool | None:
    """Add the keyspace-event flags echoes needs to Redis's (never remove any); True if on.

    None when CONFIG is refused (an ACL, managed Redis): the listener then checks with a
    test event (echoes.wake.listener) instead of reporting notifications off.
    """
    try:
        reply = await client.config_get("notify-keyspace-events")  # keys and values: str
        current = str(reply.get("notify-keyspace-events", ""))
        missing = [
            f for f in NOTIFY_FLAGS if f not in current and not (f == "z" and "A" in current)
        ]
        if not missing:
            return True
        wanted = current + "".join(missing)
        await client.config_set("notify-keyspace-events", wanted)
    except ResponseError as e:
        log.info("cannot read notify-keyspace-events (%s): checking with a test event", e)
        return None
    log.info("notify-keyspace-events was %r; set it to %r", current, wanted)
    return True


def notifications_missing() -> None:
    """Say, once, what to set when keyspace notifications do not arrive."""
    log.warning(
        "keyspace notifications do not arrive: make sure Redis's notify-keyspace-events"
        " includes %r, or run echoes with --wake=publish; meanwhile waiting requests see new"
        " records only every --recheck-interval",
        NOTIFY_FLAGS,
    )


async def warn_if_not_persistent(client: aioredis.Redis) -> None:
    """Log a warning when Redis keeps nothing across a restart: acknowledged records would go."""
    try:
        reply = await client.config_get("appendonly")
        reply |= await client.config_get("save")
    except ResponseError as e:
        log.info("cannot check Redis's persistence (%s); it should have appendonly yes", e)
        return
    if reply.get("appendonly") == "no" and not str(reply.get("save", "")).strip():
        log.warning(
            "Redis persists nothing (appendonly no, no save points): a Redis restart loses"
            " every record echoes acknowledged; set appendonly yes (conf/redis.conf)"
        )


async def warn_if_evicting(client: aioredis.Redis) -> None:
    """Log a warning when Redis may evict keys: that would silently delete messages."""
    try:
        reply = await client.config_get("maxmemory-policy")
    except ResponseError as e:
        log.info("cannot check Redis's maxmemory-policy (%s); it should be noeviction", e)
        return
    policy = str(reply.get("maxmemory-policy", ""))
    if policy != "noeviction":
        log.warning(
            "Redis's maxmemory-policy is %r: when memory runs out Redis will delete messages"
            " silently; set it to noeviction (echoes then answers 507 to sends)",
            policy,
        )
