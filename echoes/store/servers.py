"""The Redis servers echoes talks to, and which one serves a key.

One server (a plain Redis, or the master that Sentinel names) serves every key. A Cluster's
primaries each serve their slots: every inbox's keys share one hash tag, so one slot and
one primary (keys.py). Each server has a client for single commands (PING, INFO, CONFIG)
and a pipeline of its own for the scripts and sweeps (pipeline.py).

What may go wrong on the way differs too, and so does what is worth trying again before the
request's deadline (--redis-timeout): a plain Redis that refuses a connection is down, and
its request answers 503 at once; a master that Sentinel is replacing, and a Cluster node
that moved a slot, failed over or is still electing a replica, come back within seconds.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import topology
from ..config import Settings
from .pipeline import Pipeline
from .sentinels import (
    MasterConnection,
    MasterSSLConnection,
    SentinelAuthenticationError,
    VotingSentinel,
)

log = logging.getLogger("echoes.redis")
HEALTH_CHECK_SECONDS = 30
# How long to wait before asking a Cluster or Sentinel again about a failed node or master.
RECOVER_SECONDS = 0.25
# How long a Cluster's slot map may take to read after trouble (a node that does not answer
# is given up on, and asked last the next time).
REFRESH_SECONDS = 1.0
# The share of --redis-timeout the sentinels have to answer where the master is: the rest
# is for connecting to it and for the request's own commands.
SENTINEL_SHARE = 0.5
# Credentials refused: trying again within the request's deadline would not help.
REFUSED = (AuthenticationError, AuthorizationError, SentinelAuthenticationError)


@dataclass
class Server:
    """One Redis server: a client for single commands, a pipeline for batches."""

    name: str
    client: aioredis.Redis
    pipeline: Pipeline
    address: tuple[str, int] | None = None  # a Cluster node's


class Servers:
    """One server serves every key: a plain Redis (and base of the others)."""

    kind = "single"

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        name: str,
        subscriber: aioredis.Redis | None = None,
    ):
        self.settings = settings
        self.one = Server(name, client, self._pipeline(client.connection_pool.make_connection))
        self._subscriber = subscriber  # a client given for subscriptions too (fakeredis)

    def _pipeline(self, make_connection: Any, name: str = "") -> Pipeline:
        s = self.settings
        return Pipeline(
            make_connection,
            s.redis_timeout,
            s.redis_max_connections,
            s.redis_wait_replicas,
            trouble=lambda: self.suspect(name),
        )

    def suspect(self, name: str) -> None:
        """A batch to server ``name`` was slow or failed: where things are may have
        changed (a no-op for one server, and under Sentinel: the pipeline's next connection
        asks the sentinels anyway)."""

    async def ready(self) -> None:
        """Know the servers (a Cluster's slots); a no-op for one server."""

    def for_key(self, key: str) -> Server:
        """The server of ``key``'s slot."""
        return self.one

    def at(self, host: str, port: int) -> Server:
        """The server at an address a Cluster redirected to (ASK)."""
        return self.one

    def all(self) -> list[Server]:
        """Every server that holds data (a Cluster's primaries)."""
        return [self.one]

    def transient(self, error: BaseException) -> bool:
        """Whether ``error`` may pass within the deadline (retry after recover())."""
        return False

    async def recover(self, error: BaseException | None = None) -> None:
        """After a transient ``error`` (or to check: none): wait a little, learn where
        things are now."""
        await asyncio.sleep(RECOVER_SECONDS)

    def subscriber(self, server: Server) -> aioredis.Redis:
        """A client for ``server``'s wake-up subscriptions alone, without silent retries."""
        if self._subscriber is not None:
            return self._subscriber
        return aioredis.Redis.from_url(self.settings.redis_url, **_subscriber_options(self))

    @property
    def db(self) -> int:
        return int(self.one.client.connection_pool.connection_kwargs.get("db", 0) or 0)

    def configure(self, settings: Settings) -> None:
        """Apply a reload's --redis-timeout and --redis-wait-replicas to every pipeline."""
        self.settings = settings
        for server in self.all():
            server.pipeline.timeout = settings.redis_timeout
            server.pipeline.replicas = settings.redis_wait_replicas

    async def close(self) -> None:
        for server in self.all():
            await server.pipeline.close()
            await server.client.aclose()


class SentinelServers(Servers):
    """The master that most sentinels name serves every key; it may change (a failover).

    sentinels.py says what is trusted: no one sentinel's word, and the master's own ROLE.
    """

    kind = "sentinel"

    def __init__(self, settings: Settings, where: topology.Topology):
        self.where = where
        options = _connection_options(settings, where)
        self._master_options: dict[str, Any] = {
            "connection_class": MasterSSLConnection
            if options.pop("ssl", False)
            else MasterConnection
        }
        self.sentinel = VotingSentinel(
            list(where.hosts),
            settings.redis_timeout * SENTINEL_SHARE,
            sentinel_username=where.sentinel_username,
            sentinel_password=where.sentinel_password,
            **options,
        )
        client = self.sentinel.master_for(
            where.master, redis_class=aioredis.Redis, **self._master_options
        )
        super().__init__(client, settings, f"{where.master} (Sentinel)")

    def transient(self, error: BaseException) -> bool:
        # No master known yet (an election), the old one refusing writes, a dropped
        # connection; not credentials refused, by the master or by the sentinels.
        return isinstance(
            error, RedisConnectionError | RedisTimeoutError | ReadOnlyError
        ) and not _refused(error)

    def subscriber(self, server: Server) -> aioredis.Redis:
        return self.sentinel.master_for(
            self.where.master,
            redis_class=aioredis.Redis,
            **self._master_options,
            **_subscriber_options(self),
        )

    @property
    def db(self) -> int:
        return self.where.db

    async def close(self) -> None:
        await super().close()
        for client in self.sentinel.sentinels:
            await client.aclose()


class ClusterServers(Servers):
    """A Cluster's primaries, each serving its slots (redis-py keeps the slot map)."""

    kind = "cluster"

    def __init__(self, settings: Settings, where: topology.Topology):
        self.settings = settings
        self.where = where
        self.cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in where.hosts],
            **_connection_options(settings, where),
            max_connections=settings.redis_max_connections,
        )
        self._servers: dict[str, Server] = {}
        self._ready = False
        self._refreshing: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        if not self._ready:
            await self.cluster.initialize()
            self._ready = True

    def _server(self, node: ClusterNode) -> Server:
        server = self._servers.get(node.name)
        if server is None:
            options = dict(node.connection_kwargs)

            def make_connection() -> Any:
                return node.connection_class(**options)

            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, max_connections=4, **options
            )
            server = self._servers[node.name] = Server(
                node.name,
                aioredis.Redis.from_pool(pool),  # closing the client closes its pool
                self._pipeline(make_connection, node.name),
                (node.host, int(node.port)),
            )
        return server

    def for_key(self, key: str) -> Server:
        slot = key_slot(key.encode())
        if not self.cluster.nodes_manager.slots_cache.get(slot):
            raise ClusterDownError(f"no primary of the Cluster is known to serve slot {slot}")
        return self._server(self.cluster.nodes_manager.get_node_from_slot(slot))

    def at(self, host: str, port: int) -> Server:
        node = self.cluster.get_node(host, port) or ClusterNode(
            host, port, **self.cluster.nodes_manager.connection_kwargs
        )
        return self._server(node)

    def all(self) -> list[Server]:
        return [self._server(node) for node in self.cluster.get_primaries()]

    def transient(self, error: BaseException) -> bool:
        return isinstance(
            error,
            RedisConnectionError
            | RedisTimeoutError
            | AskError
            | TryAgainError
            | ClusterDownError
            | ReadOnlyError
            | RedisClusterException,
        ) and not _refused(error)  # credentials refused: no use trying again

    async def recover(self, error: BaseException | None = None) -> None:
        if isinstance(error, MovedError):
            await self.cluster.nodes_manager.move_slot(error)
            return
        if isinstance(error, AskError):
            return  # a one-off redirection: the caller asks the named node
        await asyncio.sleep(RECOVER_SECONDS)
        try:
            await self.cluster.nodes_manager.initialize()
        except (RedisClusterException, RedisConnectionError, RedisTimeoutError) as e:
            log.debug("cluster topology not refreshed: %s", e)

    def suspect(self, name: str) -> None:
        """Read the slot map again now, in the background (one refresh at a time): a
        request that waits on a primary cut off must not be what delays learning that
        its replica took over."""
        if self._ready and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh(name))

    async def _refresh(self, suspect: str) -> None:
        """Ask the nodes for the slot map (``suspect`` last), within REFRESH_SECONDS:
        redis-py asks one node at a time and would wait on a silent one for ever."""
        try:
            async with asyncio.timeout(min(REFRESH_SECONDS, self.settings.redis_timeout)):
                await self.cluster.nodes_manager.initialize(last_failed_node_name=suspect)
        except (TimeoutError, RedisClusterException, RedisConnectionError, RedisTimeoutError) as e:
            log.debug("cluster topology not refreshed after trouble at %s: %r", suspect, e)
        await asyncio.sleep(RECOVER_SECONDS)  # at most a few refreshes a second

    def subscriber(self, server: Server) -> aioredis.Redis:
        assert server.address is not None
        host, port = server.address
        where = self.where
        return aioredis.Redis(
            host=host,
            port=port,
            username=where.username,
            password=where.password,
            ssl=where.tls,
            **_subscriber_options(self),
        )

    @property
    def db(self) -> int:
        return 0

    async def close(self) -> None:
        if self._refreshing:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        for server in self._servers.values():
            await server.pipeline.close()
            await server.client.aclose()
        await self.cluster.aclose()


def _refused(error: BaseException) -> bool:
    """Whether ``error``, or an error that caused it, is a refusal of echoes' credentials
    (redis-py raises a ConnectionError caused by the AuthenticationError)."""
    seen: BaseException | None = error
    for _ in range(5):  # a chain of causes, never a loop
        if seen is None:
            return False
        if isinstance(seen, REFUSED):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connect(settings: Settings) -> Servers:
    """The servers --redis-url names, with their clients and pipelines."""
    where = topology.parse(settings.redis_url)
    if where.kind == "sentinel":
        return SentinelServers(settings, where)
    if where.kind == "cluster":
        return ClusterServers(settings, where)
    client = connect_single(
        settings.redis_url, settings.redis_timeout, settings.redis_max_connections
    )
    return Servers(client, settings, settings.redis_display)


def connect_single(url: str, timeout: float, max_connections: int) -> aioredis.Redis:
    """A client whose requests queue for one of ``max_connections`` connections.

    redis-py's default pool raises "Too many connections" under a burst; the blocking pool
    makes requests wait (up to ``timeout``) instead. Retries cover a dropped connection,
    not an outage. No socket timeout: every caller bounds its whole call with its own
    deadline (asyncio.timeout), and a per-read timeout cost 5% of the CPU per request.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=None,  # redis-py's default is 5 s; our callers' deadlines replace it
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), retries=3),
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


def _connection_options(settings: Settings, where: topology.Topology) -> dict[str, Any]:
    options: dict[str, Any] = {
        "username": where.username,
        "password": where.password,
        "socket_timeout": None,  # as connect_single: the callers' deadlines bound every call
        "socket_connect_timeout": settings.redis_timeout,
    }
    if where.kind == "sentinel":
        options["db"] = where.db
    if where.tls:
        options["ssl"] = True
    return options


def _subscriber_options(servers: Servers) -> dict[str, Any]:
    return {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": servers.settings.redis_timeout,
        "health_check_interval": HEALTH_CHECK_SECONDS,
    }
