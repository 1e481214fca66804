"""The wake-up task of each process: a subscription per waited-on inbox, and a periodic sweep.

One pub/sub connection per Redis server (one, or each primary of a Cluster, whose keyspace
events and shard channels are its own) subscribes to the channels of the inboxes that have
waiting requests here and live on that server, and to nothing while nothing waits
(subscriptions.py says which; ``Route`` says which server). Notifications are hints and can
be lost: redis-py drops what was published while a pub/sub connection was down,
``notify-keyspace-events`` is server-global, not persisted by CONFIG SET and forbidden on
managed Redis, and a Cluster's slot can move to another primary. So after every reconnect
(once the subscriptions are restored), after a slot changed primary, and every
``recheck_interval`` seconds whatever the notifications say, one pipelined sweep asks which
waited-on inboxes hold records and wakes only those.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from ..config import Settings
from ..metrics import Metrics
from ..store.checks import notifications_missing
from ..store.failures import AUTHENTICATION_FIX, refused_authentication
from ..store.failures import SENTINEL_AUTHENTICATION_FIX as SENTINEL_FIX
from ..store.inboxes import Store
from ..store.keys import ARRIVAL_EVENT, PROBE_NAME, Keys, name_in
from ..store.sentinels import SentinelAuthenticationError
from ..store.servers import Server, Servers
from .state import ListenerState
from .subscriptions import LINGER_SECONDS, Subscriptions, settled
from .waiters import Waiters

log = logging.getLogger("echoes.listener")

MAX_BACKOFF = 5.0
# How often a Cluster's listener checks that each waited-on inbox is subscribed on the
# primary that serves it now (a failover, a slot moved).
TOPOLOGY_SECONDS = 1.0


@dataclass
class Link:
    """The listener's connection to one Redis server, and what it knows of that server."""

    task: asyncio.Task[None] | None = None
    client: aioredis.Redis | None = None
    connected: bool = False
    notifications: bool | None = False  # None: CONFIG refused, a test event decides
    address: tuple[str, int] | None = None  # where the server was last reached
    loss: str | None = None  # why it was last lost, while that lasts (logged in full once)


class Route:
    """The Watch the waiters call: each inbox's subscription on the server that serves it."""

    def __init__(self, servers: Servers, keys: Keys, channel_of: Callable[[str], str]):
        self.servers = servers
        self.keys = keys
        self.channel_of = channel_of
        self.linger = LINGER_SECONDS
        self.by_server: dict[str, Subscriptions] = {}
        self.home: dict[str, str] = {}  # inbox name -> the server it is subscribed on

    def owner(self, name: str) -> Server:
        return self.servers.for_key(self.keys.inbox(name).records)

    def of(self, server_name: str) -> Subscriptions:
        """The subscriptions on ``server_name`` (made on first use)."""
        subscriptions = self.by_server.get(server_name)
        if subscriptions is None:
            subscriptions = Subscriptions(self.channel_of, self.linger)
            self.by_server[server_name] = subscriptions
        return subscriptions

    def want(self, name: str) -> None:
        server = self.home.get(name)
        if server is None:
            try:
                server = self.home[name] = self.owner(name).name
            except RedisError:  # no primary known for its slot (yet): the sweep covers it
                return
        self.of(server).want(name)

    def release(self, name: str) -> None:
        server = self.home.get(name)
        if server is not None:
            self.of(server).release(name, on_leave=lambda: self._left(name, server))

    def _left(self, name: str, server: str) -> None:
        if self.home.get(name) == server:
            del self.home[name]

    def covered(self, name: str, timeout: float) -> "asyncio.Future[bool]":
        server = self.home.get(name)
        return settled(False) if server is None else self.of(server).covered(name, timeout)

    def rehome(self) -> int:
        """Move each wanted inbox to the server that serves it now; how many moved."""
        moved = 0
        for name, server in list(self.home.items()):
            try:
                owner = self.owner(name).name
            except RedisError:  # its slot's primary is unknown now: stay until it is known
                continue
            if owner == server:
                continue
            old = self.of(server)
            waiting = old.drop(name)  # False: only lingering, nobody waits any more
            del self.home[name]
            if waiting:
                self.want(name)
            moved += 1
        return moved

    @property
    def count(self) -> int:
        return sum(len(s.wanted) for s in self.by_server.values())


class Listener:
    """Routes arrivals in Redis to this process's waiters."""

    def __init__(
        self,
        servers: Servers,
        store: Store,
        keys: Keys,
        waiters: Waiters,
        wake: str,
        recheck_interval: float,
        metrics: Metrics,
    ):
        self.servers = servers
        self.store = store
        self.waiters = waiters
        self.recheck_interval = recheck_interval
        self.metrics = metrics
        self.shard = wake == "publish" and servers.kind == "cluster"
        self.route = Route(servers, keys, lambda name: keys.wake_channel(name, wake, servers.db))
        waiters.watch = self.route
        self.state = ListenerState(mode=wake)
        self.subscribed = asyncio.Event()
        self._sweep_now = asyncio.Event()
        self._probe_seen = asyncio.Event()
        self._probing: asyncio.Task[None] | None = None
        self._warned = False
        self._links: dict[str, Link] = {}  # by server name
        self._suspect = asyncio.Event()  # the topology may have changed: ask the Cluster
        self._primaries: set[str] = set()

    def configure(self, settings: Settings) -> None:
        """Use ``settings``' recheck interval from the next sweep on."""
        self.recheck_interval = settings.recheck_interval

    async def run(self) -> None:
        """Subscribe on every server, dispatch and sweep until cancelled."""
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            await self._follow_servers()
        finally:
            running = [sweeper, self._probing, *(link.task for link in self._links.values())]
            tasks = [task for task in running if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for link in self._links.values():
                await _close(link)

    async def _follow_servers(self) -> None:
        """Keep one listening task per server; after a topology change, rehome and sweep."""
        while True:
            try:
                await self.servers.ready()
                servers = self.servers.all()
            except (RedisError, RedisClusterException, OSError) as e:
                log.warning("cannot reach Redis to learn its servers (%s)", e)
                await asyncio.sleep(MAX_BACKOFF)
                continue
            names = {server.name for server in servers}
            if self._primaries and names != self._primaries:  # a replica took over
                self.metrics.failovers.inc(len(names - self._primaries))
            self._primaries = names
            for server in servers:
                if server.name not in self._links:
                    link = self._links[server.name] = Link()
                    link.task = asyncio.create_task(self._listen_forever(server, link))
            for gone in set(self._links) - names:
                link = self._links.pop(gone)
                if link.task:
                    link.task.cancel()
                await _close(link)
            self.state.servers = len(servers)
            if self.route.rehome():
                self._sweep_now.set()
            self._update_connected()
            if self.servers.kind != "cluster":
                await asyncio.Event().wait()  # one server, for good: nothing to follow
            await self._until_suspect()

    async def _until_suspect(self) -> None:
        """Return once a Cluster's topology should be asked for again: a primary is out of
        reach, Redis moved a shard channel, or a while (a slot move is otherwise silent);
        at once when the requests' own trouble taught the slot map a new primary."""
        waited = 0.0
        while waited < self.recheck_interval:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TOPOLOGY_SECONDS):
                    await self._suspect.wait()
            waited += TOPOLOGY_SECONDS
            if self._primaries_changed():
                self._suspect.clear()
                return  # already known: follow it now
            if self._suspect.is_set() or not all(link.connected for link in self._links.values()):
                break
        self._suspect.clear()
        # Bounded: redis-py asks one node at a time, and a node cut off never answers.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(TOPOLOGY_SECONDS, self.recheck_interval)):
                await self.servers.recover()

    def _primaries_changed(self) -> bool:
        """Whether the slot map (read again after a request's trouble) names other primaries."""
        try:
            return {server.name for server in self.servers.all()} != self._primaries
        except (RedisError, RedisClusterException):
            return False

    async def _listen_forever(self, server: Server, link: Link) -> None:
        backoff = 0.1
        subscriptions = self.route.of(server.name)
        while True:
            if link.client is None:
                link.client = self.servers.subscriber(server)
            pubsub = link.client.pubsub()
            flushing = None
            try:
                if self.state.mode == "keyspace":
                    async with asyncio.timeout(self.recheck_interval):
                        enabled = await self.store.enable_notifications(server)
                    self._notified(link, enabled)
                await pubsub.connect()
                self._reached(server.name, link, pubsub)
                link.loss = None
                subscriptions.lost()  # a new connection: every wanted inbox again
                restoring = len(subscriptions.wanted)
                self._set_connected(link, True)
                if not restoring:
                    self._sweep_now.set()
                backoff = 0.1
                flushing = asyncio.create_task(self._flush_forever(pubsub, subscriptions))
                await self._dispatch(pubsub, flushing, subscriptions, restoring)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as e:
                self.metrics.reconnects.inc()
                self._lost(server.name, link, e, backoff)
            except Exception:  # a bug must not end wake-ups for good: log it and start over
                self.metrics.reconnects.inc()
                log.exception("wake-up listener failed; again in %.1fs", backoff)
            finally:
                if flushing:
                    flushing.cancel()
                    await asyncio.gather(flushing, return_exceptions=True)
                self._set_connected(link, False)
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _flush_forever(
        self, pubsub: aioredis.client.PubSub, subscriptions: Subscriptions
    ) -> None:
        """Send the subscribes and unsubscribes wanted, as one command each, as they come."""
        subscribe: Callable[..., Awaitable[Any]] = pubsub.subscribe
        unsubscribe: Callable[..., Awaitable[Any]] = pubsub.unsubscribe
        if self.shard:  # a Cluster's shard channels
            subscribe, unsubscribe = pubsub.ssubscribe, pubsub.sunsubscribe
        while True:
            await subscriptions.changed.wait()
            await asyncio.sleep(0)  # let waiters arriving together join this batch
            coming, going = subscriptions.changes()
            if going:  # never with no arguments: that would unsubscribe from all
                await unsubscribe(*going)
            if coming:
                await subscribe(*coming)
            self.metrics.subscriptions.set(self.route.count)

    async def _dispatch(
        self,
        pubsub: aioredis.client.PubSub,
        flushing: asyncio.Task[None],
        subscriptions: Subscriptions,
        restoring: int,
    ) -> None:
        """Read messages with a timeout, never awaiting a Redis command in between."""
        while True:
            if flushing.done():
                flushing.result()  # a failed subscribe: raise it, and reconnect
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            if kind in ("message", "smessage"):
                if self.state.mode == "publish" or message["data"] == ARRIVAL_EVENT:
                    self._wake(message["channel"])
            elif kind in ("subscribe", "ssubscribe") and self._confirmed(
                subscriptions, message["channel"]
            ):
                restoring -= 1
                if restoring == 0:  # every subscription restored: catch up on what passed
                    self._sweep_now.set()
            elif kind == "sunsubscribe" and self._moved_away(subscriptions, message["channel"]):
                self._sweep_now.set()

    def _lost(self, server: str, link: Link, error: BaseException, backoff: float) -> None:
        """Log why ``server`` was lost: in full once, then at debug while it fails the same way."""
        if isinstance(error, SentinelAuthenticationError):
            what = (
                f"the sentinels of {server} refused echoes' credentials ({error}): {SENTINEL_FIX}"
            )
        elif refused_authentication(error):
            what = f"Redis at {server} refused echoes' credentials ({error}): {AUTHENTICATION_FIX}"
        else:
            what = f"wake-up listener lost Redis at {server} ({error})"
        again = link.loss == what
        link.loss = what
        log.log(logging.DEBUG if again else logging.WARNING, "%s; again in %.1fs", what, backoff)

    def _reached(self, server: str, link: Link, pubsub: aioredis.client.PubSub) -> None:
        """Count a failover when a server (Sentinel's master) is now at another address."""
        conn = pubsub.connection
        address = (str(getattr(conn, "host", "")), int(getattr(conn, "port", 0) or 0))
        previous = link.address
        if previous is not None and previous != address:
            self.metrics.failovers.inc()
            log.info("Redis %s is now at %s:%d (it was at %s:%d)", server, *address, *previous)
        link.address = address

    def _confirmed(self, subscriptions: Subscriptions, channel: bytes) -> bool:
        name = _inbox_of(channel)
        if name is None:
            return False
        subscriptions.confirmed(name)
        return True

    def _moved_away(self, subscriptions: Subscriptions, channel: bytes) -> bool:
        """Redis unsubscribed a shard channel itself: its slot moved to another primary."""
        name = _inbox_of(channel)
        if name is None:
            return False
        if name not in subscriptions.wanted:
            return False  # an unsubscribe echoes asked for
        subscriptions.lost_one(name)
        self._suspect.set()  # learn the new primary, then rehome (_follow_servers)
        return True

    def _set_connected(self, link: Link, connected: bool) -> None:
        link.connected = connected
        self._update_connected()

    def _update_connected(self) -> None:
        links = self._links.values()
        connected = bool(links) and all(link.connected for link in links)
        self.state.connected = connected
        self.metrics.listener_connected.set(int(connected))
        if connected:
            self.subscribed.set()
        else:
            self.subscribed.clear()

    def _notified(self, link: Link, enabled: bool | None) -> None:
        link.notifications = enabled
        if enabled is None:
            if self._probing is None or self._probing.done():
                self._probing = asyncio.create_task(self._probe())
            return
        self.state.notifications = all(link.notifications for link in self._links.values())

    def _wake(self, channel: bytes) -> None:
        name = _inbox_of(channel)
        if name is None:
            return
        if name == PROBE_NAME:
            self._probe_seen.set()
            return
        self.metrics.wakeups.inc(self.waiters.wake(name))

    async def _probe(self) -> None:
        """Subscribe to the probe inbox, write to it, and see whether its event arrives."""
        self._probe_seen.clear()
        self.route.want(PROBE_NAME)
        try:
            async with asyncio.timeout(self.recheck_interval):
                await self.route.covered(PROBE_NAME, self.recheck_interval)
                await self.store.touch_probe()
                await self._probe_seen.wait()
        except (RedisError, OSError, TimeoutError) as e:
            self.state.notifications = False
            if not self._warned:
                self._warned = True
                log.debug("no test event arrived: %r", e)
                notifications_missing()
            return
        finally:
            self.route.release(PROBE_NAME)
        if not self.state.notifications:
            log.info("keyspace notifications arrive (checked with a test event)")
        self.state.notifications = True

    async def _sweep_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.recheck_interval):
                    await self._sweep_now.wait()
            self._sweep_now.clear()
            try:
                await self.sweep()
            except (RedisError, RedisClusterException, OSError, TimeoutError) as e:
                log.debug("sweep failed: %s", e)

    async def sweep(self) -> None:
        """Wake the waiters of every waited-on inbox that holds records."""
        names = self.waiters.names()
        if not names:
            return
        async with asyncio.timeout(self.recheck_interval):
            for name in await self.store.holding_records(names):
                self.metrics.wakeups.inc(self.waiters.wake(name))


def _inbox_of(channel: bytes) -> str | None:
    """The inbox a channel is about; None for one echoes does not use (bad base64 or UTF-8)."""
    try:
        return name_in(channel)
    except ValueError:
        log.debug("ignored a message on %r", channel)
        return None


async def _close(link: Link) -> None:
    """Close a server's pub/sub client, whatever state its connection is in."""
    if link.client is not None:
        with contextlib.suppress(RedisError, OSError):
            await link.client.aclose()
