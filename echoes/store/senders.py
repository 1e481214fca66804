"""Each sender's quotas, kept in Redis in the sender's own slot (keys.py's ``:s``), so that
they hold across processes, machines and Cluster shards: a request rate (--sender-rate with
--sender-burst), and the bytes of live records it holds in every inbox (--max-sender-bytes).

How the bytes are counted (lua/sender.lua): a send is admitted only if the sender's bytes,
with the copies it would store (its record's size as stored, times its destinations), stay
within the cap; they are counted at once, in a field named by the second by which records
sent in this stretch of time have all expired (a stretch is --message-ttl / 64, at most an
hour, at least a second). They are taken off again:

- when they expire: a field is dropped once its second has passed, so a record's bytes are
  freed up to one stretch after it expired (and a record Redis stored up to --redis-timeout
  after it was sent may outlive its count by that much);
- when they are consumed: a take returns each message's origin, sentAt and size, and the
  process takes them off that sender's field (with its next call for that sender, or
  within FLUSH_SECONDS);
- when a copy was not stored after all (a duplicate, a full inbox, out of memory) or replaced
  a copy still waiting (counted already).

The count errs towards more, never fewer, bytes than the sender holds, with two exceptions,
both bounded by --max-inbox-bytes of the sender's own inbox: a batch put back for a client
that left after its take came back (Store.untake) is not counted again, and consumed records
stay parked for --attempt-ttl (retries) uncounted. It counts more when a process exits with
releases not yet sent, a put is rerun after a dropped connection, or --message-ttl changes
(the fields move): for at most --message-ttl, until those fields expire.

A process admits a sender that Redis said (within KNOWN_SECONDS) is far from its quotas by
itself, up to a LOCAL_SHARE-th of its burst and of --max-sender-bytes, and reports those
requests and their bytes with its next call for that sender, or within FLUSH_SECONDS: an
active sender costs Redis a quota call every few seconds, not one per request. A process killed
before it reported them (SIGKILL, a crash) leaves them uncounted: the count errs low by at
most that share, for those records' lifetime. A report that fails is kept for the next (what
it said was freed is dropped: it may have run).
"""

import asyncio
import calendar
import contextlib
import functools
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from . import records
from .keys import Keys
from .scripts import Call

log = logging.getLogger("echoes.store")
STRETCHES, LONGEST_STRETCH = 64, 3600
# Freed bytes are sent with the sender's next request in this process, or after this long.
FLUSH_SECONDS = 5.0
# A refusal is remembered in the process until the sender may try again (a flood is answered
# without Redis), a refusal for bytes at most this long: consumption may free them sooner.
BYTES_REFUSAL_SECONDS = 1.0
REFUSALS_KEPT = 10000
# How long what Redis said of a sender holds: far from its quotas (counted alongside its
# puts) or near them (admitted first).
KNOWN_SECONDS = 5.0
NEAR_SECONDS = 86400.0
# Report calls per pipelined round when flushing.
FLUSH_CHUNK = 200
# A process admits by itself, between two of its calls for a sender far from its quotas, at
# most this share of the sender's burst and of --max-sender-bytes (and never past half of
# what Redis said is left of either).
LOCAL_SHARE = 16
Run = Callable[[list[Call]], Awaitable[list[Any]]]
ADMITTED, TOO_MANY_REQUESTS, TOO_MANY_BYTES = 0, 1, 2


class OverQuota(Exception):
    """A sender past one of its quotas: ``limit`` is "sender_rate" or "sender_bytes",
    ``retry_after`` seconds until it may try again, ``held`` the bytes it holds."""

    def __init__(self, limit: str, retry_after: float, detail: str, held: int = 0):
        super().__init__(detail)
        self.limit, self.retry_after, self.held = limit, retry_after, held
        self.until = time.monotonic() + retry_after


@dataclass(frozen=True)
class Admitted:
    """A request let in: requests left in the sender's burst, bytes it holds."""

    left: int
    held: int


@functools.lru_cache(maxsize=4096)
def epoch(sent_at: str) -> int:
    """Seconds since the epoch of an RFC 3339 time as records hold it (to the second)."""
    return calendar.timegm(time.strptime(sent_at, "%Y-%m-%dT%H:%M:%SZ"))


class Senders:
    """The quota calls of one process, the bytes freed since, and what the process knows of
    each sender: far from both quotas (as Redis said within KNOWN_SECONDS), near them (as
    Redis said last), refused (until it may retry), or unknown.

    A request of a sender far from its quotas is admitted by the process itself while it is
    within the room the last answer left (``admit_here``: LOCAL_SHARE), and reported with the
    sender's next call; past that room it is counted in the same round trip as its puts and
    take (``forced``: counted whatever the verdict, as they run anyway). So is one request at
    a time of an unknown sender (the probe). Any other is admitted first, by a round trip of
    its own, and sent only if let in. So the cap holds to one request per process, unless
    the sender's requests in flight in the processes that saw it far from its quotas, and
    those they admitted by themselves, pass the half of each left when they did (at most
    --max-caller-bytes-in-flight in each, and a LOCAL_SHARE-th of each quota). "Far" is
    within half of each: half the burst left, and half the bytes.
    """

    def __init__(self, keys: Keys, settings: Settings, run: Run):
        self.keys = keys
        self._run = run
        # Not yet reported to Redis, by sender: bytes by field (stored by requests admitted
        # here: more than 0; freed: less), requests admitted here, and bytes they stored.
        self._changes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._admitted: dict[str, int] = {}
        self._charged: dict[str, int] = {}
        self._room: dict[str, tuple[int, int]] = {}  # sender -> (requests, bytes) here
        self._refused: dict[str, OverQuota] = {}
        self._known: dict[str, tuple[bool, float]] = {}  # sender -> (far, until)
        self._probing: set[str] = set()
        self._flushing: asyncio.TimerHandle | None = None
        self._closed = False
        self._flush_task: asyncio.Future[None] | None = None
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Take the quotas (at start, and on a reload)."""
        self.rate, self.burst = settings.sender_rate, settings.sender_burst
        self.max_bytes = settings.max_sender_bytes
        self._interval = 1000 / self.rate if self.rate > 0 else 0
        self._ttl = settings.message_ttl
        self._stretch = max(1, min(LONGEST_STRETCH, self._ttl // STRETCHES))
        self._refused.clear()
        self._known.clear()
        self._room.clear()

    def applies(self, charge: int) -> bool:
        """Whether a request storing ``charge`` bytes needs a quota call."""
        return self.rate > 0 or (self.max_bytes > 0 and charge > 0)

    def field(self, sent_at: int) -> str:
        """The field the bytes of records sent at ``sent_at`` (epoch seconds) count in."""
        return str((sent_at // self._stretch + 1) * self._stretch + self._ttl)

    def refused(self, sender: str) -> OverQuota | None:
        """The refusal ``sender`` got and may not try again before, if any (no Redis)."""
        refusal = self._refused.get(sender)
        if refusal is None:
            return None
        left = refusal.until - time.monotonic()
        if left > 0:
            refusal.retry_after = left
            return refusal
        del self._refused[sender]
        return None

    def optimistic(self, sender: str) -> bool:
        """Whether a request of ``sender`` may be counted alongside its puts (see above)."""
        far, until = self._known.get(sender, (False, 0.0))
        if until > time.monotonic():
            return far
        if sender in self._probing or sender in self._refused:
            return False
        self._probing.add(sender)
        return True

    def admit_here(self, sender: str, charge: int, field: str) -> bool:
        """Admit a request of ``sender`` storing ``charge`` bytes (in ``field``) without
        Redis, if Redis said lately that the sender is far from its quotas and the room that
        left this process holds it; reported with the sender's next call."""
        far, until = self._known.get(sender, (False, 0.0))
        if not far or until <= time.monotonic():
            return False
        requests, room = self._room.get(sender, (0, 0))
        admitted = self._admitted.get(sender, 0) + 1
        charged = self._charged.get(sender, 0) + charge
        if admitted > requests or charged > room:
            return False
        self._admitted[sender], self._charged[sender] = admitted, charged
        if charge:
            self._changes[sender][field] += charge
        self._schedule()
        return True

    def call(self, sender: str, charge: int, field: str, forced: bool) -> Call:
        """The script call that counts a request of ``sender`` storing ``charge`` bytes (in
        ``field``), with what the process has not reported yet."""
        args = [self._rate_arg(), self.burst, charge, field, self.max_bytes, int(forced)]
        return self._reporting(sender, args)

    def report_call(self, sender: str) -> Call:
        """The script call that reports what the process has not reported yet of ``sender``
        (requests it admitted, bytes they stored, bytes freed), counting no request."""
        return self._reporting(sender, [self._rate_arg(), self.burst, 0, "0", self.max_bytes, "-"])

    def _rate_arg(self) -> str | int:
        return f"{self._interval:.3f}" if self._interval else 0

    def _reporting(self, sender: str, args: list[str | int]) -> Call:
        args.append(self._admitted.pop(sender, 0))
        self._charged.pop(sender, None)
        for changed_field, count in self._changes.pop(sender, {}).items():
            if count:
                args += [changed_field, count]
        return Call("sender", (self.keys.sender(sender),), tuple(args))

    def unsent(self, sender: str, call: Call) -> None:
        """Keep what ``call`` (of ``sender``) reported of requests and the bytes they stored
        for the next call: it failed, and may not have run (if it did, they are counted
        twice: more, never less). What it reported freed is dropped: were it taken off
        again, the sender would be counted less than it holds."""
        admitted, pairs = int(call.args[6]), call.args[7:]
        stored = [(str(pairs[i]), int(pairs[i + 1])) for i in range(0, len(pairs), 2)]
        stored = [(field, count) for field, count in stored if count > 0]
        if admitted:
            self._admitted[sender] = self._admitted.get(sender, 0) + admitted
        for field, count in stored:
            self._changes[sender][field] += count
            self._charged[sender] = self._charged.get(sender, 0) + count
        if admitted or stored:
            self._schedule()

    def answered(self, sender: str, reply: Any, forced: bool) -> Admitted:
        """What the sender script answered: Admitted, or OverQuota raised (and remembered
        in this process; with ``forced`` only remembered: the request went ahead)."""
        self._probing.discard(sender)
        if isinstance(reply, Exception):
            self._known.pop(sender, None)
            raise reply
        verdict, left, held, oldest, wait = (int(x) for x in reply)
        far = (not self.rate or left * 2 >= self.burst) and (
            not self.max_bytes or held * 2 <= self.max_bytes
        )
        now = time.monotonic()
        if len(self._known) >= REFUSALS_KEPT:
            self._known = {s: k for s, k in self._known.items() if k[1] > now}
            if len(self._known) >= REFUSALS_KEPT:  # each is probed once more
                self._known = {}
            self._room = {s: r for s, r in self._room.items() if s in self._known}
        # Far holds KNOWN_SECONDS; near holds until a careful call says otherwise: a sender at
        # its cap is never probed alongside its puts again.
        far = verdict == ADMITTED and far
        self._known[sender] = (far, now + (KNOWN_SECONDS if far else NEAR_SECONDS))
        if far:  # the room this process may admit by itself until it reports again
            requests = (
                min(left - (self.burst + 1) // 2, self.burst // LOCAL_SHARE)
                if self.rate
                else sys.maxsize
            )
            room = (
                min(self.max_bytes // 2 - held, self.max_bytes // LOCAL_SHARE)
                if self.max_bytes
                else sys.maxsize
            )
            self._room[sender] = (requests, room)
        else:
            self._room.pop(sender, None)
        if verdict == ADMITTED:
            return Admitted(left, held)
        refusal = self._refusal(verdict, held, oldest, wait)
        self._remember(sender, refusal)
        if forced:
            return Admitted(left, held)
        raise refusal

    def _refusal(self, verdict: int, held: int, oldest: int, wait: int) -> OverQuota:
        if verdict == TOO_MANY_REQUESTS:
            return OverQuota(
                "sender_rate",
                wait / 1000,
                f"too many requests from this sender: at most {self.rate:g} a second, in"
                f" bursts of {self.burst} (--sender-rate, --sender-burst); the next is let in"
                f" after {wait / 1000:.3f} s",
            )
        frees = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest)) if oldest else "now"
        return OverQuota(
            "sender_bytes",
            BYTES_REFUSAL_SECONDS,
            f"this sender holds {held} bytes of records not yet consumed, and this send would"
            f" take it past {self.max_bytes} (--max-sender-bytes): they are freed as their"
            f" destinations consume them, and by {frees} at the latest, as the oldest expire",
            held=held,
        )

    def forget(self, sender: str) -> None:
        """End a probe whose call never ran (its request failed before)."""
        self._probing.discard(sender)

    def _remember(self, sender: str, refusal: OverQuota) -> None:
        if len(self._refused) >= REFUSALS_KEPT:
            now = time.monotonic()
            self._refused = {s: r for s, r in self._refused.items() if r.until > now}
            if len(self._refused) >= REFUSALS_KEPT:
                return
        self._refused[sender] = refusal

    def free(self, sender: str, field: str, count: int) -> None:
        """Take ``count`` bytes off ``sender``'s ``field`` with its next call."""
        self._changes[sender][field] -= count
        self._schedule()

    def consumed(self, stored: list[bytes]) -> None:
        """Take off the bytes of the messages a take consumed, as stored (records.py)."""
        if not self.max_bytes:
            return
        for record in stored:
            share = records.sender_share(record)
            if share:
                origin, sent_at, size = share
                self.free(origin, self.field(epoch(sent_at)), size)

    def _schedule(self) -> None:
        if self._flushing is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._flushing = loop.call_later(FLUSH_SECONDS, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flushing = None
        task = asyncio.ensure_future(self.flush())
        task.add_done_callback(_log_failure)
        self._flush_task = task

    async def flush(self) -> None:
        """Report what the process has not reported yet of every sender, FLUSH_CHUNK senders
        a round trip; each answer is what the process knows of that sender next."""
        senders = list(set(self._changes) | set(self._admitted))
        calls = [self.report_call(sender) for sender in senders]
        failure = None
        for start in range(0, len(calls), FLUSH_CHUNK):
            chunk = calls[start : start + FLUSH_CHUNK]
            try:
                results = await self._run(chunk)
            except Exception as e:
                results = [e] * len(chunk)
            for call, sender, result in zip(chunk, senders[start:], results, strict=False):
                if isinstance(result, Exception):
                    self.unsent(sender, call)
                    failure = failure or result
                else:
                    self.answered(sender, result, forced=True)
        if failure:
            raise failure

    async def close(self) -> None:
        """Send what is pending, once (best effort), and stop the timer."""
        self._closed = True
        if self._flushing:
            self._flushing.cancel()
            self._flushing = None
        if self._flush_task is not None:  # one under way finishes before the connections close
            await asyncio.gather(self._flush_task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush()


@functools.lru_cache(maxsize=4096)
def _log_failure(task: "asyncio.Future[None]") -> None:
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error:
            log.warning("freed quota bytes not sent (counted until they expire): %s", error)
