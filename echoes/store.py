"""The only code that reads or writes echoes' data in Redis: one call per request.

Each request is one pipelined round trip of Lua scripts (lua/*.lua), one script call per
inbox touched, plus one more pipelined round when a receive queues acks. Every script
touches the keys of one inbox only (see keys.py), and every script is safe to run twice,
because ``pipeline()`` reruns a pipeline whose connection dropped.
"""

import hashlib
import importlib.resources
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import records
from .keys import Keys

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
    """What one store call did: copies stored, inboxes found full, a send error, the batch.

    ``error`` is Redis's refusal of a copy (out of memory): the other copies and the take
    went ahead, so a batch may be here too (and is parked under its attempt token).
    """

    sent: int = 0
    full: tuple[str, ...] = ()
    error: Exception | None = None
    batch: Batch | None = None


@dataclass(frozen=True)
class Call:
    """One script call in a pipeline."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str | int | bytes, ...]


class Scripts:
    """The Lua scripts in lua/, run by EVALSHA inside pipelines, loaded again on NOSCRIPT.

    redis-py's own Script objects send SCRIPT EXISTS before every pipeline that holds one,
    an extra round trip per request; here scripts are loaded only when Redis lacks them
    (first use, or after a restart or SCRIPT FLUSH).
    """

    def __init__(self, *names: str):
        lua = importlib.resources.files(__package__).joinpath("lua")
        self.source = {n: lua.joinpath(f"{n}.lua").read_text("utf-8") for n in names}
        self.sha = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in self.source.items()}

    async def run(self, client: aioredis.Redis, calls: list[Call]) -> list[Any]:
        """Run ``calls`` in one pipeline; their results, an error reply as an exception."""
        results = await self._pipeline(client, calls)
        if any(isinstance(r, NoScriptError) for r in results):
            await self.load(client)
            results = await self._pipeline(client, calls)  # every script is safe to rerun
        return results

    async def load(self, client: aioredis.Redis) -> None:
        """Load every script into Redis's script cache."""
        replies = await pipeline(client, [("SCRIPT", "LOAD", s) for s in self.source.values()])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    async def _pipeline(self, client: aioredis.Redis, calls: list[Call]) -> list[Any]:
        commands = [("EVALSHA", self.sha[c.script], len(c.keys), *c.keys, *c.args) for c in calls]
        return await pipeline(client, commands)


async def pipeline(client: aioredis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Write every command at once on one pooled connection, then read every reply.

    What redis-py's Pipeline does, without its per-command bookkeeping, which cost about a
    third of echoes' CPU per request (BENCHMARKS.md). Error replies are returned, not
    raised. A dropped connection is retried once on a fresh one: every command echoes
    pipelines is safe to run twice.
    """
    pool = client.connection_pool
    for attempt in (1, 2):
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            return [await _reply(conn) for _ in commands]
        except (RedisConnectionError, RedisTimeoutError):
            await conn.disconnect()
            if attempt == 2:
                raise
        except BaseException:  # cancelled mid-exchange: the connection's state is unknown
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


async def _reply(conn: AbstractConnection) -> Any:
    """One reply; an error reply is returned, not raised, so the others are still read."""
    try:
        return await conn.read_response()
    except ResponseError as e:
        return e


class Store:
    """Inboxes in Redis: send, take (delete-on-consume) and acks."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        message_ttl: float,
        attempt_ttl: float,
        max_batch_bytes: int,
        publish: bool = False,
        max_inbox_records: int = 0,
        max_request_bytes: int = 1 << 62,
    ):
        self.client = client
        self.publish = publish
        self.keys = keys
        self.scripts = Scripts("put", "take")
        self._ttl_ms = int(message_ttl * 1000)
        self._attempt_ms = int(attempt_ttl * 1000)
        self._batch_bytes = max_batch_bytes
        self._inbox_limit = max_inbox_records
        self._request_bytes = max_request_bytes

    async def exchange(self, caller: str, message: Message | None, take: Take | None) -> Outcome:
        """Send ``message`` from ``caller`` (if any), then take from caller's inbox (if asked)."""
        calls = self.puts(caller, message) if message else []
        if take:
            inbox = self.keys.inbox(caller)
            keys = (inbox.queue, inbox.records, inbox.attempt(take.attempt), inbox.parked)
            args = (take.limit, self._attempt_ms, self._batch_bytes, take.attempt)
            calls.append(Call("take", keys, args))
        results = await self.scripts.run(self.client, calls)
        batch = None
        if take:
            taken = results.pop()
            if isinstance(taken, Exception):
                raise taken
            batch_json, count, remaining, *wanting_ack = taken
            acks = await self._queue_acks(caller, wanting_ack) if wanting_ack else 0
            batch = Batch(batch_json, int(count), int(remaining), acks=acks)
        destinations = message.destinations if message else ()
        return Outcome(
            sent=results.count(1),
            full=tuple(d for d, r in zip(destinations, results, strict=True) if r == 0),
            error=next((r for r in results if isinstance(r, Exception)), None),
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
            results = await self.scripts.run(self.client, calls)
        except (RedisConnectionError, RedisTimeoutError) as e:
            results = [e] * len(calls)
        lost = [r for r in results if isinstance(r, Exception)]
        if lost:
            log.warning("%d of %d acks could not be queued: %s", len(lost), len(calls), lost[0])
        return len(calls) - len(lost)

    async def holding_records(self, names: list[str]) -> list[str]:
        """Those of ``names`` whose inbox holds records (maybe expired).

        One pipelined round trip per SWEEP_CHUNK names: each is a few hundred microseconds
        of work, so wake-ups of other requests are never held up behind a long sweep.
        """
        found = []
        for start in range(0, len(names), SWEEP_CHUNK):
            chunk = names[start : start + SWEEP_CHUNK]
            commands = [("EXISTS", self.keys.inbox(name).queue) for name in chunk]
            replies = await pipeline(self.client, commands)
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
