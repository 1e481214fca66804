"""The only code that reads or writes echoes' data in Redis: one call per request.

Each request is one pipelined round trip of Lua scripts (lua/*.lua), one script call per
inbox touched, plus one more pipelined round when a receive queues acks. Every script
touches the keys of one inbox only (see keys.py), and every script is safe to run twice,
because the pipeline reruns a batch whose connection dropped (pipeline.py).
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from . import records, redisconfig, routing
from .config import Settings
from .failures import OutOfMemory, Unavailable, classified, classify
from .keys import PROBE_NAME, Keys
from .scripts import NAMES, Call, Scripts
from .servers import Server, Servers

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

    def __init__(self, servers: Servers, keys: Keys, settings: Settings):
        self.servers = servers
        self.keys = keys
        # With --wake=publish, arrivals are announced on the inbox's channel: on a Cluster a
        # shard channel (SPUBLISH, Redis >= 7), heard only on the inbox's own primary.
        self.publish = settings.wake == "publish"
        self.shard_channels = servers.kind == "cluster"
        self.scripts = Scripts(*NAMES)
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Take the lifetimes and limits the store applies (at start, and on a reload)."""
        self._ttl_ms = settings.message_ttl * 1000
        self._attempt_ms = settings.attempt_ttl * 1000
        self._batch_bytes = settings.max_batch_bytes
        self._inbox_limit = settings.max_inbox_records
        self._request_bytes = settings.max_request_bytes
        self._replicated = settings.redis_wait_replicas > 0
        self.servers.configure(settings)

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
        results = await classified(self.scripts.run(self.servers, calls))
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
        args: tuple[str | int | bytes, ...] = (record_id, record, int(wants_ack), self._ttl_ms)
        if self.publish:
            args += (inbox.channel, limit, "s" if self.shard_channels else "p")
        else:
            args += ("", limit)
        return Call("put", (inbox.queue, inbox.records, inbox.parked), args)

    async def _queue_acks(self, consumer: str, msg_ids: list[bytes]) -> int:
        """Queue an ack for each message; how many were queued.

        Best effort: the messages are already taken (and parked under the attempt token),
        and an ack Redis refuses (out of memory) or cannot take is logged and dropped. But
        with --redis-wait-replicas an ack must be replicated like the rest: when Redis
        cannot take it, or its replicas did not confirm it, the receive answers 503, and its
        retry with the same token queues the acks again.
        """
        now = records.timestamp()
        calls = []
        for msg_id in msg_ids:
            key, origin = records.split_msg_id(msg_id)
            ack = records.ack(key, consumer, now)
            # Acks are not refused by a full inbox: they answer what the sender itself sent.
            calls.append(self._put(origin, records.ack_id(consumer, key), ack, False, 0))
        try:
            results = await classified(self.scripts.run(self.servers, calls))
        except Unavailable as e:
            if self._replicated:
                raise
            results = [e] * len(calls)
        lost = [r for r in results if isinstance(r, Exception)]
        if lost:
            log.warning("%d of %d acks could not be queued: %s", len(lost), len(calls), lost[0])
        return len(calls) - len(lost)

    async def ping(self) -> dict[str, Unavailable]:
        """What is wrong with each server, by name: {} when every one answers PING and has
        echoes' scripts (or lets echoes load them)."""
        try:
            await classified(self.servers.ready())
        except Unavailable as e:
            return {self.servers.kind: e}
        servers = self.servers.all()
        failures = await asyncio.gather(*(self._ping(server) for server in servers))
        return {s.name: failure for s, failure in zip(servers, failures, strict=True) if failure}

    async def _ping(self, server: Server) -> Unavailable | None:
        try:
            await classified(server.client.ping())
            await classified(self.scripts.check(server))
            return None
        except Unavailable as e:
            return e

    async def memory(self) -> list[tuple[str, int, int] | tuple[str, None, None]]:
        """Each server's name, used_memory and maxmemory (0: no limit) in bytes, or Nones
        for a server that did not answer."""
        await classified(self.servers.ready())
        figures: list[tuple[str, int, int] | tuple[str, None, None]] = []
        for server in self.servers.all():
            try:
                info = await classified(server.client.info("memory"))
            except Unavailable:
                figures.append((server.name, None, None))
                continue
            figures.append((server.name, int(info["used_memory"]), int(info.get("maxmemory", 0))))
        return figures

    async def enable_notifications(self, server: Server) -> bool | None:
        """Add the keyspace-event flags echoes needs (redisconfig.enable_notifications)."""
        return await redisconfig.enable_notifications(server.client)

    async def check_settings(self) -> None:
        """Warn, in words, about Redis settings that lose acknowledged records."""
        await classified(self.servers.ready())
        for server in self.servers.all():
            await redisconfig.warn_if_evicting(server.client)
            await redisconfig.warn_if_not_persistent(server.client)

    async def close(self) -> None:
        """Close the connections to Redis, once the batches in flight are answered."""
        await self.servers.close()

    async def touch_probe(self) -> None:
        """Add and remove a member of the probe inbox's queue: two keyspace events, no data."""
        queue = self.keys.inbox(PROBE_NAME).queue
        commands = [(queue, ("ZADD", queue, 0, "probe")), (queue, ("ZREM", queue, "probe"))]
        await routing.run(self.servers, commands)

    async def holding_records(self, names: list[str]) -> list[str]:
        """Those of ``names`` whose inbox holds records (maybe expired).

        One pipelined round trip per SWEEP_CHUNK names (per server of a Cluster): each is a
        few hundred microseconds of work, so wake-ups of other requests are never held up
        behind a long sweep.
        """
        found = []
        for start in range(0, len(names), SWEEP_CHUNK):
            chunk = names[start : start + SWEEP_CHUNK]
            queues = [self.keys.inbox(name).queue for name in chunk]
            replies = await routing.run(self.servers, [(q, ("EXISTS", q)) for q in queues])
            found += [name for name, exists in zip(chunk, replies, strict=True) if exists == 1]
        return found
