"""The one wake-up task per process: a subscription per waited-on inbox, and a periodic sweep.

One pub/sub connection per process subscribes to the channels of the inboxes that have
waiting requests here, and to nothing while nothing waits (subscriptions.py says which).
Notifications are hints and can be lost: redis-py drops what was published while a pub/sub
connection was down, and ``notify-keyspace-events`` is server-global, not persisted by
CONFIG SET and forbidden on managed Redis. So after every reconnect (once the subscriptions
are restored), and every ``recheck_interval`` seconds whatever the notifications say, one
pipelined sweep asks which waited-on inboxes hold records and wakes only those.
"""

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .keys import ARRIVAL_EVENT, PROBE_NAME, Keys, name_in
from .metrics import Metrics
from .redisconfig import notifications_missing
from .store import Store
from .subscriptions import Subscriptions
from .waiters import Waiters

log = logging.getLogger("echoes.listener")

MAX_BACKOFF = 5.0
HEALTH_CHECK_SECONDS = 30


@dataclass
class ListenerState:
    """What /health and /metrics report about wake-ups."""

    mode: str
    connected: bool = False
    notifications: bool = False


class Listener:
    """Routes arrivals in Redis to this process's waiters."""

    def __init__(
        self,
        client: aioredis.Redis,
        store: Store,
        keys: Keys,
        waiters: Waiters,
        wake: str,
        recheck_interval: float,
        metrics: Metrics,
    ):
        self.client = client  # its own connection: a subscribed connection does nothing else
        self.store = store
        self.waiters = waiters
        self.recheck_interval = recheck_interval
        self.metrics = metrics
        db = client.connection_pool.connection_kwargs.get("db", 0)
        self.subscriptions = Subscriptions(lambda name: keys.wake_channel(name, wake, db))
        waiters.watch = self.subscriptions
        self.state = ListenerState(mode=wake)
        self._sweep_now = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._probe_seen = asyncio.Event()
        self._probing: asyncio.Task[None] | None = None
        self._warned = False
        self._restoring = 0

    async def run(self) -> None:
        """Subscribe, dispatch and sweep until cancelled."""
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            await self._listen_forever()
        finally:
            tasks = [sweeper, *([self._probing] if self._probing else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.client.pubsub()
            flushing = None
            try:
                enabled: bool | None = False
                if self.state.mode == "keyspace":
                    async with asyncio.timeout(self.recheck_interval):
                        enabled = await self.store.enable_notifications()
                    self.state.notifications = bool(enabled)
                await pubsub.connect()
                self.subscriptions.lost()  # a new connection: every wanted inbox again
                self._restoring = len(self.subscriptions.wanted)
                self._connected(True)
                if not self._restoring:
                    self._sweep_now.set()
                if enabled is None:
                    self._probing = asyncio.create_task(self._probe())
                backoff = 0.1
                flushing = asyncio.create_task(self._flush_forever(pubsub))
                await self._dispatch(pubsub, flushing)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as e:
                self.metrics.reconnects.inc()
                log.warning("wake-up listener lost Redis (%s); again in %.1fs", e, backoff)
            except Exception:  # a bug must not end wake-ups for good: log it and start over
                self.metrics.reconnects.inc()
                log.exception("wake-up listener failed; again in %.1fs", backoff)
            finally:
                if flushing:
                    flushing.cancel()
                    await asyncio.gather(flushing, return_exceptions=True)
                self._connected(False)
                await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _flush_forever(self, pubsub: aioredis.client.PubSub) -> None:
        """Send the subscribes and unsubscribes wanted, as one command each, as they come."""
        while True:
            await self.subscriptions.changed.wait()
            await asyncio.sleep(0)  # let waiters arriving together join this batch
            subscribe, unsubscribe = self.subscriptions.changes()
            if unsubscribe:  # never with no arguments: that would unsubscribe from all
                await pubsub.unsubscribe(*unsubscribe)
            if subscribe:
                await pubsub.subscribe(*subscribe)
            self.metrics.subscriptions.set(len(self.subscriptions.wanted))

    async def _dispatch(self, pubsub: aioredis.client.PubSub, flushing: asyncio.Task[None]) -> None:
        """Read messages with a timeout, never awaiting a Redis command in between."""
        while True:
            if flushing.done():
                flushing.result()  # a failed subscribe: raise it, and reconnect
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                if self.state.mode == "publish" or message["data"] == ARRIVAL_EVENT:
                    self._wake(message["channel"])
            elif kind == "subscribe":
                self._subscribed(message["channel"])

    def _subscribed(self, channel: bytes) -> None:
        try:
            name = name_in(channel)
        except ValueError:
            return
        self.subscriptions.confirmed(name)
        if self._restoring:
            self._restoring -= 1
            if not self._restoring:  # every subscription restored: catch up on what passed
                self._sweep_now.set()

    def _connected(self, connected: bool) -> None:
        self.state.connected = connected
        self.metrics.listener_connected.set(int(connected))
        if connected:
            self.subscribed.set()
        else:
            self.subscribed.clear()

    def _wake(self, channel: bytes) -> None:
        try:
            name = name_in(channel)
        except ValueError:  # not a channel echoes publishes on (bad base64 or UTF-8)
            log.debug("ignored a notification on %r", channel)
            return
        if name == PROBE_NAME:
            self._probe_seen.set()
            return
        self.metrics.wakeups.inc(self.waiters.wake(name))

    async def _probe(self) -> None:
        """Subscribe to the probe inbox, write to it, and see whether its event arrives."""
        self._probe_seen.clear()
        self.subscriptions.want(PROBE_NAME)
        try:
            async with asyncio.timeout(self.recheck_interval):
                await self.subscriptions.covered(PROBE_NAME, self.recheck_interval)
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
            self.subscriptions.release(PROBE_NAME)
        if not self.state.notifications:
            log.info("keyspace notifications arrive (checked with a test event)")
        self.state.notifications = True

    async def _sweep_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.recheck_interval):
                    await self._sweep_now.wait()
            except TimeoutError:
                pass
            self._sweep_now.clear()
            try:
                await self.sweep()
            except (RedisError, OSError, TimeoutError) as e:
                log.debug("sweep failed: %s", e)

    async def sweep(self) -> None:
        """Wake the waiters of every waited-on inbox that holds records."""
        names = self.waiters.names()
        if not names:
            return
        async with asyncio.timeout(self.recheck_interval):
            for name in await self.store.holding_records(names):
                self.metrics.wakeups.inc(self.waiters.wake(name))


def connect(url: str, timeout: float) -> aioredis.Redis:
    """A client for the subscription alone, without silent retries: the listener reconnects."""
    return aioredis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=timeout,
        health_check_interval=HEALTH_CHECK_SECONDS,
    )
