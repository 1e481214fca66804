"""Checks of the Redis server's settings that echoes relies on (see conf/redis.conf)."""

import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .keys import NOTIFY_FLAGS

log = logging.getLogger("echoes.redis")


async def enable_notifications(client: aioredis.Redis) -> bool:
    """Add the keyspace-event flags echoes needs to Redis's (never remove any); True if on."""
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
        log.error(
            "cannot check or enable keyspace notifications (%s): make sure Redis's"
            " notify-keyspace-events includes %r, or run echoes with --wake=publish; without"
            " them waiting requests see new records only every --recheck-interval",
            e,
            NOTIFY_FLAGS,
        )
        return False
    log.info("notify-keyspace-events was %r; set it to %r", current, wanted)
    return True


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
