"""Each shard's replication, as its primary reports it, beside --redis-wait-replicas.

A write is answered once ``wait`` replicas have it (WAIT). A shard whose primary has fewer
connected replicas than that answers every write 503 until they are back: a stranded shard
(``short``), as is a Cluster node that says the cluster is down. A primary with more replicas
than the wait can lose acknowledged writes to a partition: cut off with ``wait`` of its
replicas it still confirms writes, while the other side promotes a replica that never had
them (``spare``; README, "Scale out"). /health, /metrics and the start-up log say both.
"""

import asyncio
import logging
from dataclasses import dataclass

from redis.exceptions import RedisClusterException, RedisError

from .failures import classified
from .servers import Server, Servers

log = logging.getLogger("echoes.redis")


@dataclass(frozen=True)
class Shard:
    """One primary: its connected replicas, and whether it says the cluster is up."""

    server: str
    replicas: int
    cluster_ok: bool = True

    def short(self, wait: int) -> str:
        """Why this shard cannot answer writes now ("" when it can)."""
        if not self.cluster_ok:
            return f"Redis at {self.server} says the cluster is down (cluster_state:fail)"
        if self.replicas < wait:
            return (
                f"Redis at {self.server} has {self.replicas} connected replicas, fewer than"
                f" --redis-wait-replicas={wait}: its writes are answered 503"
            )
        return ""

    def spare(self, wait: int) -> str:
        """A warning when the wait is below this primary's replicas ("" otherwise)."""
        if self.replicas <= wait:
            return ""
        return (
            f"--redis-wait-replicas={wait} is below the {self.replicas} replicas of {self.server}:"
            f" a partition that leaves it with {wait} of them can lose acknowledged writes"
            f" (README, Scale out)"
        )


async def replication(servers: Servers) -> list[Shard]:
    """Each primary that answers (one that does not is PING's business, not this);
    Unavailable when the servers cannot be known (a Cluster no node of which answers)."""
    await classified(servers.ready())
    found = await asyncio.gather(*(_shard(servers, s) for s in servers.all()))
    return [shard for shard in found if shard is not None]


async def _shard(servers: Servers, server: Server) -> Shard | None:
    try:
        info = await server.client.info("replication")
        ok = True
        if servers.kind == "cluster":
            state = await server.client.execute_command("CLUSTER", "INFO")
            ok = b"cluster_state:ok" in state if isinstance(state, bytes) else _ok(state)
    except (RedisError, RedisClusterException, OSError) as e:
        log.debug("no replication figures from %s: %s", server.name, e)
        return None
    return Shard(server.name, int(info.get("connected_slaves", 0)), ok)


def _ok(state: object) -> bool:
    """cluster_state from CLUSTER INFO as redis-py parsed it (a dict, or the text)."""
    if isinstance(state, dict):
        return str(state.get("cluster_state")) == "ok"
    return "cluster_state:ok" in str(state)


async def warn_about(servers: Servers, wait: int) -> None:
    """Log a warning for each shard that is stranded or has more replicas than the wait."""
    for shard in await replication(servers):
        for text in (shard.short(wait), shard.spare(wait)):
            if text:
                log.warning("%s", text)
