"""The only code that reads or writes echoes' data in Redis: one call per request.

Each request is one pipelined round trip of Lua scripts (lua/*.lua), one script call per
inbox touched, plus one more pipelined round when a receive queues acks. Every script
touches the keys of one inbox only (see keys.py), and every script is safe to run twice,
because the pipeline reruns a batch whose connection dropped (pipeline.py).
"""

import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from . import records, redisconfig
from .config import Settings
from .failures import OutOfMemory, Unavailable, classified, classify
from .keys import PROBE_NAME, Keys
from .pipeline import Pipeline
from .scripts import NAMES, Call, Scripts

log = logging.getLogger("echoes.store")
SWEEP_CHUNK = 200


class TooLarge(Exception):
    """A message whose copies would store more bytes than one request may."""


@dataclass(frozen=True)
class Message:
    """A message to store, one copy per destination; its origin is the caller."""

    key: str
    body: Any
    expects_ack: bool
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class Take:
    """A consume of the caller's inbox: at most ``limit`` records, parked under ``attempt``.

    ``wait`` is how long the request may wait for a record to arrive (the handler's business).
    """

    limit: int
    attempt: str
    wait: float = 0.0


@dataclass(frozen=True)
class Batch:
    """Records taken from an inbox, already rendered as one JSON array."""

    json: bytes
    count: int
    remaining: int
    acks: int = 0


@dataclass(frozen=True)
class Outcome:
    """What one store call did: copies stored, inboxes found full, whether Redis refused a
    copy for lack of memory, the batch.

    When a copy was refused the other copies and the take went ahead, so a batch may be here
    too (and is parked under its attempt token).
    """

    sent: int = 0
    full: tuple[str, ...] = ()
    out_of_memory: bool = False
    batch: Batch | None = None


class Store:
    """Inboxes in Redis: send, take (delete-on-consume) and acks."""

    def __init__(self, client: aioredis.Redis, keys: Keys, settings: Settings):
        self.client = client
        self.keys = keys
        self.pipeline = Pipeline(
            client.connection_pool, settings.redis_timeout, settings.redis_max_connections
        )
        self.publish = settings.wake == "publish"
        self.scripts = Scripts(*NAMES)
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Take the lifetimes and limits the store applies (at start, and on a reload)."""
        self._ttl_ms = settings.message_ttl * 1000
        self._attempt_ms = settings.attempt_ttl * 1000
        self._batch_bytes = settings.max_batch_bytes
        self._inbox_limit = settings.max_inbox_records
        self._request_bytes = settings.max_request_bytes
        self.pipeline.timeout = settings.redis_timeout

    async def exchange(self, caller: str, message: Message | None, take: Take | None) -> Outcome:
        """Send ``message`` from ``caller`` (if any), then take from caller's inbox (if asked).

        Raises failures.Unavailable or failures.OutOfMemory (the take itself refused).
        """
        calls = self.puts(caller, message) if message else []
        if take:
            inbox = self.keys.inbox(caller)
            keys = (inbox.queue, inbox.records, inbox.attempt(take.attempt), inbox.parked)
            counted = int(self._inbox_limit > 0)
            args = (take.limit, self._attempt_ms, self._batch_bytes, take.attempt, counted)
            calls.append(Call("take", keys, args))
        results = await classified(self.scripts.run(self.pipeline, calls))
        batch = None
        if take:
            taken = results.pop()
            if isinstance(taken, Exception):
                raise classify(taken) from taken
            batch_json, count, remaining, *wanting_ack = taken
            acks = await self._queue_acks(caller, wanting_ack) if wanting_ack else 0
            batch = Batch(batch_json, int(count), int(remaining), acks=acks)
        destinations = message.destinations if message else ()
        refused = [classify(r) for r in results if isinstance(r, Exception)]
        for error in refused:
            if not isinstance(error, OutOfMemory):
                raise error  # a copy failed for another reason: a bug, answered 500
        return Outcome(
            sent=results.count(1),
            full=tuple(d for d, r in zip(destinations, results, strict=True) if r == 0),
            out_of_memory=bool(refused),
            batch=batch,
        )

    def puts(self, origin: str, message: Message) -> list[Call]:
        """The script calls that store one copy of ``message`` per destination."""
        record = records.msg(
            origin, message.key, message.body, message.expects_ack, records.timestamp()
        )
        record_id = records.msg_id(origin, message.key)
        stored = len(record) * len(message.destinations)
        if stored > self._request_bytes:
            raise TooLarge(
                f"this message would store {stored} bytes ({len(record)} bytes for each of"
                f" {len(message.destinations)} destinations), more than {self._request_bytes}:"
                " send it to fewer destinations at a time, or send a smaller body"
            )
        return [
            self._put(name, record_id, record, message.expects_ack, self._inbox_limit)
            for name in message.destinations
        ]

    def _put(
        self, inbox_name: str, record_id: str, record: bytes, wants_ack: bool, limit: int
    ) -> Call:
        inbox = self.keys.inbox(inbox_name)
        channel = inbox.channel if self.publish else ""
        args = (record_id, record, int(wants_ack), self._ttl_ms, channel, limit)
        return Call("put", (inbox.queue, inbox.records, inbox.parked), args)

    async def _queue_acks(self, consumer: str, msg_ids: list[bytes]) -> int:
        """Queue an ack for each message; how many were queued.

        Best effort: the messages are already taken, and failing the receive would lose
        them too. An ack Redis refuses (out of memory) or cannot take is logged and dropped.
        """
        now = records.timestamp()
        calls = []
        for msg_id in msg_ids:
            key, origin = records.split_msg_id(msg_id)
            ack = records.ack(key, consumer, now)
            # Acks are not refused by a full inbox: they answer what the sender itself sent.
            calls.append(self._put(origin, records.ack_id(consumer, key), ack, False, 0))
        try:
            results = await classified(self.scripts.run(self.pipeline, calls))
        except Unavailable as e:
            results = [e] * len(calls)
        lost = [r for r in results if isinstance(r, Exception)]
        if lost:
            log.warning("%d of %d acks could not be queued: %s", len(lost), len(calls), lost[0])
        return len(calls) - len(lost)

    async def ping(self) -> None:
        """Return once Redis answers (failures.Unavailable if it does not)."""
        await classified(self.client.ping())

    async def memory(self) -> tuple[int, int]:
        """Redis's used_memory and maxmemory (0: no limit), in bytes."""
        info = await classified(self.client.info("memory"))
        return int(info["used_memory"]), int(info.get("maxmemory", 0))

    async def enable_notifications(self) -> bool | None:
        """Add the keyspace-event flags echoes needs (redisconfig.enable_notifications)."""
        return await redisconfig.enable_notifications(self.client)

    async def check_settings(self) -> None:
        """Warn, in words, about Redis settings that lose acknowledged records."""
        await redisconfig.warn_if_evicting(self.client)
        await redisconfig.warn_if_not_persistent(self.client)

    async def close(self) -> None:
        """Close the connections to Redis, once the batches in flight are answered."""
        await self.pipeline.close()
        await self.client.aclose()

    async def touch_probe(self) -> None:
        """Add and remove a member of the probe inbox's queue: two keyspace events, no data."""
        queue = self.keys.inbox(PROBE_NAME).queue
        await self.pipeline.run([("ZADD", queue, 0, "probe"), ("ZREM", queue, "probe")])

    async def holding_records(self, names: list[str]) -> list[str]:
        """Those of ``names`` whose inbox holds records (maybe expired).

        One pipelined round trip per SWEEP_CHUNK names: each is a few hundred microseconds
        of work, so wake-ups of other requests are never held up behind a long sweep.
        """
        found = []
        for start in range(0, len(names), SWEEP_CHUNK):
            chunk = names[start : start + SWEEP_CHUNK]
            commands = [("EXISTS", self.keys.inbox(name).queue) for name in chunk]
            replies = await self.pipeline.run(commands)
            found += [name for name, exists in zip(chunk, replies, strict=True) if exists == 1]
        return found


def connect(url: str, timeout: float, max_connections: int) -> aioredis.Redis:
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
