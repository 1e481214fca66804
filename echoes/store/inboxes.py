"""The only code that reads or writes echoes' data in Redis: one call per request.

Each request is one pipelined round trip of Lua scripts (lua/*.lua): on one Redis one script
call in all (exchange.lua), on a Cluster one per inbox touched, plus one more pipelined
round when a receive queues acks. Every script touches the keys of one inbox only (see
keys.py; a take also its caller's quota, in the same slot, and on one Redis the inboxes of
the origins whose acks it queues), and every script is safe to run twice, because the
pipeline reruns a batch whose connection dropped (pipeline.py): a put rerun after its copy
was consumed finds the copy's tombstone (the dedup window); a quota counted twice counts
more, never less. Every write carries its request's deadline, past which Redis does nothing
(a late take or put changes nothing a later request relies on).
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from . import checks, records, replies, slots
from .failures import OutOfMemory, Unavailable, classified, classify
from .keys import PROBE_NAME, Inbox, Keys, decode_name
from .pipeline import LARGE_BATCH
from .scripts import NAMES, Call, Scripts
from .senders import Admitted, OverQuota, Senders
from .servers import Server, Servers

log = logging.getLogger("echoes.store")
SWEEP_CHUNK = 200


class TooLarge(Exception):
    """A message whose copies would store more bytes than one request may."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message to store, one copy per destination; its origin is the caller."""

    key: str
    body: Any
    expects_ack: bool
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Take:
    """A consume of the caller's inbox: at most ``limit`` records, parked under ``attempt``.

    ``wait`` is how long the request may wait for a record to arrive (the handler's business).
    """

    limit: int
    attempt: str
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Batch:
    """Records taken from an inbox, already rendered as one JSON array."""

    json: bytes
    count: int
    remaining: int
    acks: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one store call did: copies stored (duplicates included: a copy consumed within
    the dedup window counts as stored and is not delivered again), inboxes found full of
    records or of bytes, whether Redis refused a copy for lack of memory, the batch.

    When a copy was refused the other copies and the take went ahead, so a batch may be here
    too (and is parked under its attempt token).
    """

    sent: int = 0
    duplicates: int = 0
    full: tuple[str, ...] = ()
    full_bytes: tuple[str, ...] = ()
    out_of_memory: bool = False
    batch: Batch | None = None


@dataclass(frozen=True)
class CopyState:
    """What became of one copy of a message: "waiting", "consumed" (at ``consumed_at``, an
    RFC 3339 time, within the dedup window) or "unknown"."""

    destination: str
    state: str
    consumed_at: str | None = None


# put.lua's answers.
STORED, FULL, DUPLICATE, FULL_BYTES, REPLACED = 1, 0, 2, 3, 4


@dataclass(frozen=True)
class Copies:
    """A message as stored: its record, the record's id, when it was sent (epoch seconds);
    for a big record (records.BIG_RECORD), its stub (which names its body key's token)."""

    record_id: str
    record: bytes
    sent_at: int
    destinations: tuple[str, ...]
    stub: bytes | None = None

    @property
    def size(self) -> int:
        """Bytes the copies store, as stored."""
        return len(self.record) * len(self.destinations)


# put.lua's ARGV[4..5] (its channel, and how to announce on it): the one part of a put's
# arguments that differs between the copies of a message (exchange.lua takes the rest once).
CHANNEL = slice(3, 5)


class Store:
    """Inboxes in Redis: send, take (delete-on-consume), acks, and what became of a copy."""

    def __init__(self, servers: Servers, keys: Keys, settings: Settings):
        self.servers = servers
        self.keys = keys
        # With --wake=publish, arrivals are announced on the inbox's channel: on a Cluster a
        # shard channel (SPUBLISH, Redis >= 7), heard only on the inbox's own primary.
        self.publish = settings.wake == "publish"
        self.shard_channels = servers.kind == "cluster"
        self.scripts = Scripts(*NAMES)
        self.senders = Senders(keys, settings, lambda calls: self.scripts.run(servers, calls))
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Take the lifetimes and limits the store applies (at start, and on a reload)."""
        self._ttl_ms = settings.message_ttl * 1000
        self._attempt_ms = settings.attempt_ttl * 1000
        self._dedup_ms = settings.dedup_window * 1000
        self._batch_bytes = settings.max_batch_bytes
        self._inbox_limit = settings.max_inbox_records
        self._inbox_bytes = settings.max_inbox_bytes
        self._request_bytes = settings.max_request_bytes
        self._timeout = settings.redis_timeout
        self._replicated = settings.redis_wait_replicas > 0
        self.senders.configure(settings)
        self.servers.configure(settings)

    def _deadline(self) -> int:
        """When a command sent now is late, in ms since the epoch: Redis then does nothing.

        Redis compares it with its own clock (TIME): echoes' and Redis's clocks must agree
        within --redis-timeout (NTP does far better), else commands are refused as late.
        """
        return int((time.time() + self._timeout) * 1000)

    def refused(self, caller: str) -> OverQuota | None:
        """The quota refusal ``caller`` got and may not retry before, if any: known in
        this process, without asking Redis."""
        return self.senders.refused(caller)

    async def admit(self, caller: str, copies: Copies | None = None) -> Admitted | None:
        """Count a request of ``caller`` (storing ``copies``) against its quotas, before it
        is sent: one round trip to the caller's own slot, or none when neither quota applies.
        Raises OverQuota."""
        call = self._quota_call(caller, copies, forced=False)
        if call is None:
            return None
        try:
            [reply] = await classified(self.scripts.run(self.servers, [call]))
        except BaseException:
            self.senders.unsent(caller, call)
            raise
        if isinstance(reply, Exception):
            reply = classify(reply)
            self.senders.unsent(caller, call)
        return self.senders.answered(caller, reply, forced=False)

    def _quota_call(self, caller: str, copies: Copies | None, forced: bool) -> Call | None:
        senders = self.senders
        charge = copies.size if copies and senders.max_bytes else 0
        if not senders.applies(charge):
            return None
        field = senders.field(copies.sent_at) if copies and charge else "0"
        return senders.call(caller, charge, field, forced)

    async def exchange(
        self,
        caller: str,
        message: Message | None,
        take: Take | None,
        wanted: Callable[[], bool] = lambda: True,
        admit: bool = True,
    ) -> Outcome:
        """Send ``message`` from ``caller`` (if any), then take from caller's inbox (if asked).

        With ``admit``, the request is counted against the caller's quotas (senders.py): in
        the same round trip when the process knows the caller far from them, else first
        (OverQuota if it is past one, and nothing is sent or taken). When ``wanted()`` is
        false once the take is back (the client left meanwhile), its records go back to the
        inbox and the batch is empty: nothing is taken on the behalf of a client that is
        gone. Raises failures.Unavailable or failures.OutOfMemory (the take itself refused).
        """
        copies = self.copies(caller, message) if message else None
        charge = copies.size if copies and self.senders.max_bytes else 0
        counted = admit and self.senders.applies(charge)
        field = self.senders.field(copies.sent_at) if copies and charge else "0"
        quota = None
        if counted and self.senders.admit_here(caller, charge, field):
            pass  # far from its quotas: reported with this sender's next quota call
        elif counted and self.senders.optimistic(caller):
            quota = self._quota_call(caller, copies, forced=True)
        elif counted:
            await self.admit(caller, copies)
        deadline = self._deadline()
        counts = self.senders.max_bytes > 0  # whether puts and takes report to the quota
        calls = self._puts(copies, deadline, counted and counts) if copies else []
        if take:  # the take counts the request too: the caller's quota is in its inbox's slot
            calls.append(self._take(caller, take, deadline, quota))
        elif quota:
            calls.insert(0, quota)
        alone = copies is not None and copies.size > LARGE_BATCH
        try:
            results = await self._run(calls, alone)
            replies.check(calls, results)
            if copies and copies.stub is not None:
                results = _bodies_written(calls, results)
        except BaseException:
            if quota:
                self.senders.unsent(caller, quota)
            raise
        finally:
            if quota:
                self.senders.forget(caller)
        if quota and not take:
            self._counted(caller, results.pop(0), quota)
        taken: Any = results.pop() if take else None
        if copies and counted and counts:  # before a failed take raises: they are not held
            self._not_stored(caller, copies, results)
        batch = None
        if take:
            if quota:  # {take's reply, sender's reply or 0}, or an error reply (not counted)
                taken, answer = (taken, taken) if isinstance(taken, Exception) else taken
                if answer == 0:  # Redis refused the count (out of memory)
                    answer = OutOfMemory("Redis is out of memory: the request was not counted")
                self._counted(caller, answer, quota)
            if isinstance(taken, Exception):
                raise classify(taken) from taken
            batch = await self._taken(caller, take, taken, wanted, counts)
        destinations = message.destinations if message else ()
        refused = [classify(r) for r in results if isinstance(r, Exception)]
        for error in refused:
            if not isinstance(error, OutOfMemory):
                raise error  # a copy failed for another reason (late, a bug): not stored
        answered = dict(zip(destinations, results, strict=True))
        return Outcome(
            sent=results.count(STORED) + results.count(REPLACED) + results.count(DUPLICATE),
            duplicates=results.count(DUPLICATE),
            full=tuple(d for d, r in answered.items() if r == FULL),
            full_bytes=tuple(d for d, r in answered.items() if r == FULL_BYTES),
            out_of_memory=bool(refused),
            batch=batch,
        )

    async def _run(self, calls: list[Call], alone: bool) -> list[Any]:
        """A request's script calls, their replies in order: as one call where one Redis
        holds every inbox (``_together``), else one per inbox. A large request stays one
        call per inbox: Redis serves others between them."""
        together = None if alone else self._together(calls)
        if together is not None:
            [reply] = await classified(self.scripts.run(self.servers, [together], alone=alone))
            replies.check([together], [reply])
            if not isinstance(reply, Exception):
                return list(reply)
            if not isinstance(classify(reply), OutOfMemory):
                return [reply] * len(calls)
            # Out of memory, Redis refused it whole: the take alone may run, the puts not.
        return await classified(self.scripts.run(self.servers, calls, alone=alone))

    def _together(self, calls: list[Call]) -> Call | None:
        """``calls`` (a request's puts, then its take if any) as one exchange.lua call, on a
        Redis that holds every inbox and runs functions; None where they stay apart (a
        Cluster; Redis 6.2, whose scripts are refused out of memory at their first write)."""
        if len(calls) < 2 or self.servers.kind == "cluster" or not self.scripts.functions:
            return None
        take = calls[-1] if calls[-1].script == "take" else None
        puts = calls[:-1] if take else calls
        if not puts or any(c.script != "put" for c in puts):
            return None
        shared = puts[0].args
        # How each put announces its arrival, the same for all: "" (keyspace events), "p", "s".
        announce = shared[CHANNEL.stop - 1]
        args: list[str | int | bytes] = [
            len(puts),
            *shared[: CHANNEL.start],
            *shared[CHANNEL.stop :],
            announce,
        ]
        keys: list[str] = []
        for put in puts:
            if announce:
                args.append(put.args[CHANNEL.start])
            keys += put.keys
        if take:
            keys += take.keys
            args += take.args
        return Call("exchange", tuple(keys), tuple(args))

    def _counted(self, caller: str, reply: Any, call: Call) -> None:
        """Note what the quota ``call`` that went with the request said (it went ahead)."""
        if isinstance(reply, Exception):  # not counted: what it reported goes with the next
            self.senders.unsent(caller, call)
        try:
            self.senders.answered(
                caller, classify(reply) if isinstance(reply, Exception) else reply, forced=True
            )
        except Exception as e:  # the request's own calls say whether it failed
            log.debug("a quota call alongside a request failed: %s", e)

    def _not_stored(self, caller: str, copies: Copies, results: list[Any]) -> None:
        """Give back the quota of copies counted but not stored, or stored in place of a
        waiting copy (counted already)."""
        unstored = sum(1 for r in results[: len(copies.destinations)] if r != STORED)
        if unstored:
            field = self.senders.field(copies.sent_at)
            self.senders.free(caller, field, unstored * len(copies.record))

    def _take(self, caller: str, take: Take, deadline: int, quota: Call | None = None) -> Call:
        """The take of ``caller``'s inbox; with ``quota`` (the caller's quota call), a take
        that counts the request too (take.lua's KEYS[6])."""
        inbox = self.keys.inbox(caller)
        counted = int(self._inbox_limit > 0)
        limits = (take.limit, self._attempt_ms, self._batch_bytes, counted)
        # On one Redis the take queues its acks itself, in the same call; on a Cluster it
        # returns them, and _taken queues them in their origins' slots.
        ttl = 0 if self.shard_channels else self._ttl_ms
        channel = inbox.channel if self.publish and ttl else ""
        acks = (ttl, records.timestamp(), records.name_json(caller), channel)
        args = (*limits, self._dedup_ms, deadline, records.RENDER_OVERHEAD, *acks)
        keys = self._take_keys(inbox, take.attempt)
        if quota:
            return Call("take", (*keys, *quota.keys), (*args, *quota.args))
        return Call("take", keys, args)

    @staticmethod
    def _take_keys(inbox: Inbox, attempt: str) -> tuple[str, ...]:
        return (inbox.records, inbox.index, inbox.attempt(attempt), inbox.parked, inbox.tombstones)

    async def _taken(
        self,
        caller: str,
        take: Take,
        taken: list[Any],
        wanted: Callable[[], bool],
        counts: bool,
    ) -> Batch:
        """The batch a take returned (take.lua's forms), rendered; its acks queued (by the
        take itself on one Redis, else here) and what it consumed taken off its senders'
        quotas, or its records put back (and the acks it queued taken back) if the client
        left."""
        fresh: list[bytes] = []
        queued = lost = 0
        if taken[0] == b"1":  # a batch parked by the first design, replayed
            _, batch_json, count, remaining, *entries = taken
            now = records.timestamp()
            acks = [records.first_design_ack(entry, caller, now) for entry in entries]
        else:  # "2" taken now, "3" replayed (its senders' quotas counted it already)
            kind, count, remaining, queued, lost, *rest = taken
            stored, left = rest[: int(count)], rest[int(count) :]
            acks = [(left[i], left[i + 1], left[i + 2]) for i in range(0, len(left), 3)]
            if int(count) and not wanted():
                await self.untake(caller, take.attempt)
                return Batch(b"[]", 0, int(remaining) + int(count))
            stored = await self._bodies(caller, stored)
            count = len(stored)
            batch_json = records.batch(stored)
            fresh = stored if kind == b"2" and counts else []
        if int(count) and not wanted():
            await self.untake(caller, take.attempt)
            return Batch(b"[]", 0, int(remaining) + int(count))
        self.senders.consumed(fresh)
        if int(lost):
            log.warning(
                "%d of %s acks could not be queued (Redis refused them)", lost, queued + lost
            )
        if acks:
            queued += await self._queue_acks(acks)
        return Batch(batch_json, int(count), int(remaining), acks=int(queued))

    async def _bodies(self, caller: str, stored: list[bytes]) -> list[bytes]:
        """``stored`` with each big record's stub replaced by the record, read from its body
        key (one MGET, in the inbox's slot). A body gone meanwhile (its record expired as it
        was taken, or Redis evicted it) leaves its record out, and is logged."""
        at = [i for i, record in enumerate(stored) if records.is_stub(record)]
        if not at:
            return stored
        inbox = self.keys.inbox(caller)
        call = Call("mget", tuple(inbox.body(records.stub_token(stored[i])) for i in at), ())
        [reply] = await classified(self.scripts.run(self.servers, [call], writes=False))
        replies.check([call], [reply])
        if isinstance(reply, Exception):
            raise classify(reply) from reply
        whole: list[bytes | None] = list(stored)
        for i, body in zip(at, reply, strict=True):
            whole[i] = body
        found = [record for record in whole if record is not None]
        if len(found) < len(stored):
            log.warning(
                "%d of %d records taken from an inbox had lost their bodies (expired as they"
                " were taken, or evicted): left out",
                len(stored) - len(found),
                len(stored),
            )
        return found

    async def untake(self, caller: str, attempt: str) -> int:
        """Put the batch parked under ``attempt`` back into ``caller``'s inbox; how many."""
        inbox = self.keys.inbox(caller)
        counted = int(self._inbox_limit > 0)
        queued_acks = int(not self.shard_channels)  # take.lua queued them itself: take them back
        call = Call("untake", self._take_keys(inbox, attempt), (counted, queued_acks))
        [result] = await classified(self.scripts.run(self.servers, [call]))
        if isinstance(result, Exception):
            raise classify(result) from result
        return int(result)

    def copies(self, origin: str, message: Message) -> Copies:
        """``message`` from ``origin`` as stored; TooLarge past --max-request-bytes."""
        sent_at = int(time.time())
        record = records.msg(
            origin, message.key, message.body, message.expects_ack, records.timestamp(sent_at)
        )
        rendered = len(record) + records.RENDER_OVERHEAD
        stored = rendered * len(message.destinations)
        if stored > self._request_bytes:
            raise TooLarge(
                f"this message would store {stored} bytes ({rendered} bytes for each of"
                f" {len(message.destinations)} destinations), more than {self._request_bytes}:"
                " send it to fewer destinations at a time, or send a smaller body"
            )
        record_id = records.msg_id(origin, message.key)
        if len(record) < records.BIG_RECORD:
            return Copies(record_id, record, sent_at, message.destinations)
        stub = records.stub(record, records.body_token())
        return Copies(record_id, record, sent_at, message.destinations, stub)

    def puts(self, origin: str, message: Message, deadline: int = 0) -> list[Call]:
        """The script calls that store one copy of ``message`` per destination."""
        return self._puts(self.copies(origin, message), deadline)

    def _puts(self, copies: Copies, deadline: int, counted: bool = False) -> list[Call]:
        """A put per destination; for a big record, each after the SET of its body
        (``_with_body``)."""
        limits = (self._inbox_limit, self._inbox_bytes)
        record_id, record = copies.record_id, copies.record
        replaced = int(counted)
        if copies.stub is None:
            return [
                self._put(name, record_id, record, limits, deadline, replaced=replaced)
                for name in copies.destinations
            ]
        calls = []
        for name in copies.destinations:
            put = self._put(name, record_id, copies.stub, limits, deadline, replaced=replaced)
            calls += self._with_body(name, put, record, copies.stub)
        return calls

    def _put(
        self,
        inbox_name: str,
        record_id: str,
        record: bytes,
        limits: tuple[int, int],
        deadline: int,
        ttl_ms: int | None = None,
        replaced: int = 0,
        window: int | None = None,
    ) -> Call:
        inbox = self.keys.inbox(inbox_name)
        channel = (inbox.channel, "s" if self.shard_channels else "p") if self.publish else ("", "")
        ttl = self._ttl_ms if ttl_ms is None else ttl_ms
        window = self._dedup_ms if window is None else window
        args = (record_id, record, ttl, *channel, *limits, window)  # channel: args[CHANNEL]
        keys = (inbox.records, inbox.index, inbox.parked, inbox.tombstones)
        return Call("put", keys, (*args, deadline, replaced))

    def restore(self, inbox_name: str, record: bytes, record_id: str, ttl_ms: int) -> list[Call]:
        """The calls that put back ``record`` as it was, with ``ttl_ms`` left to live
        (migrate.py): no cap, no dedup window refuses it; a big record's body SET first
        (``results_of`` drops its reply)."""
        if len(record) < records.BIG_RECORD:
            return [self._put(inbox_name, record_id, record, (0, 0), 0, ttl_ms, window=0)]
        stub = records.stub(record, records.body_token())
        put = self._put(inbox_name, record_id, stub, (0, 0), 0, ttl_ms, window=0)
        return self._with_body(inbox_name, put, record, stub)

    def _with_body(self, inbox_name: str, put: Call, record: bytes, stub: bytes) -> list[Call]:
        """A big record's ``put`` (of its stub), after the SET of its body where the put looks
        for it (KEYS[5]; put.lua renames it to KEYS[6], or deletes it when it refuses the
        copy); the body lives past any rerun of the put unless the put keeps it."""
        inbox, token = self.keys.inbox(inbox_name), records.stub_token(stub)
        arriving, body = inbox.arriving(token), inbox.body(token)
        unkept = str(int(2000 * self._timeout) + 1000)  # ms
        return [
            Call("set", (arriving,), (record, "PX", unkept)),
            Call("put", (*put.keys, arriving, body), put.args),
        ]

    @staticmethod
    def results_of(calls: list[Call], results: list[Any]) -> list[Any]:
        """The replies of ``calls`` without those of the SETs of big records' bodies."""
        return _bodies_written(calls, results)

    async def _queue_acks(self, acks: list[tuple[bytes, bytes, bytes]]) -> int:
        """Queue each ack, by (its origin's encoded name, its id, the ack as stored: what
        take.lua returns on a Cluster); how many were queued.

        Best effort: the messages are already taken (and parked under the attempt token),
        and an ack Redis refuses (out of memory) or cannot take is logged and dropped. But
        with --redis-wait-replicas an ack must be replicated like the rest: when Redis
        cannot take it, or its replicas did not confirm it, the receive answers 503, and its
        retry with the same token queues the acks again (an ack the sender consumed within
        the dedup window is not queued twice).
        """
        calls = []
        deadline = self._deadline()
        for origin, ack_id, ack in acks:
            # Acks are not refused by a full inbox: they answer what the sender itself sent.
            name = decode_name(origin.decode("ascii"))
            calls.append(self._put(name, ack_id.decode("ascii"), ack, (0, 0), deadline))
        try:
            results = await classified(self.scripts.run(self.servers, calls))
            replies.check(calls, results)
        except Unavailable as e:
            if self._replicated:
                raise
            results = [e] * len(calls)
        lost = [r for r in results if isinstance(r, Exception)]
        if lost:
            log.warning("%d of %d acks could not be queued: %s", len(lost), len(calls), lost[0])
        return len(calls) - len(lost)

    async def status(self, origin: str, key: str, destinations: Sequence[str]) -> list[CopyState]:
        """What became of each copy of the message (origin, key): one script call each."""
        await self.admit(origin)
        record_id = records.msg_id(origin, key)
        calls = []
        for name in destinations:
            inbox = self.keys.inbox(name)
            calls.append(
                Call("status", (inbox.records, inbox.tombstones), (record_id, self._dedup_ms))
            )
        results = await classified(self.scripts.run(self.servers, calls))
        states = []
        for name, result in zip(destinations, results, strict=True):
            if isinstance(result, Exception):
                raise classify(result) from result
            state, *when = result
            consumed = records.timestamp(int(when[0]) / 1000) if when else None
            states.append(
                CopyState(name, state.decode() if isinstance(state, bytes) else state, consumed)
            )
        return states

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
        """Add the keyspace-event flags echoes needs (checks.enable_notifications)."""
        return await checks.enable_notifications(server.client)

    async def check_settings(self) -> None:
        """Warn, in words, about Redis settings that lose acknowledged records."""
        await classified(self.servers.ready())
        for server in self.servers.all():
            await classified(checks.warn_if_evicting(server.client))
            await classified(checks.warn_if_not_persistent(server.client))

    async def close(self) -> None:
        """Send the quota bytes freed meanwhile, then close the connections to Redis, once
        the batches in flight are answered."""
        await self.senders.close()
        await self.servers.close()

    async def touch_probe(self) -> None:
        """Add and remove a field of the probe inbox's records: two keyspace events, no data."""
        key = self.keys.inbox(PROBE_NAME).records
        commands = [(key, ("HSET", key, "probe", "1")), (key, ("HDEL", key, "probe"))]
        await slots.run(self.servers, commands)

    async def holding_records(self, names: list[str]) -> list[str]:
        """Those of ``names`` whose inbox holds records (maybe expired).

        One pipelined round trip per SWEEP_CHUNK names (per server of a Cluster): each is a
        few hundred microseconds of work, so wake-ups of other requests are never held up
        behind a long sweep.
        """
        found = []
        for start in range(0, len(names), SWEEP_CHUNK):
            chunk = names[start : start + SWEEP_CHUNK]
            held = [self.keys.inbox(name).records for name in chunk]
            replies = await slots.run(self.servers, [(k, ("EXISTS", k)) for k in held])
            found += [name for name, exists in zip(chunk, replies, strict=True) if exists == 1]
        return found


def _bodies_written(calls: list[Call], results: list[Any]) -> list[Any]:
    """``results`` without the replies of the SETs of big records' bodies: each is its put's
    reply instead when it failed (out of memory, say), since the put then found no body."""
    kept: list[Any] = []
    failed: Any = None
    for call, result in zip(calls, results, strict=True):
        if call.script == "set":
            failed = result if isinstance(result, Exception) else None
            continue
        kept.append(failed if failed is not None and call.script == "put" else result)
        failed = None
    return kept
