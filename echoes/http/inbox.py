"""POST /send, /receive and /exchange: the endpoints of the inboxes, long polls included."""

import asyncio
import contextlib
import dataclasses
import logging
import time

import tornado.web

from .. import heap
from ..store import Message, Outcome, Take, TooLarge
from ..wake.waiters import CallerFull, Full, Waiter
from . import schemas, validation
from .base import RETRY_AFTER_SECONDS, APIHandler, crowded, over_quota, unavailable
from .budget import Crowded, Reservation
from .errors import APIError

log = logging.getLogger("echoes")

# Longest a new waiter waits for its inbox's subscription before its first take; past it the
# periodic sweep (--recheck-interval) still finds its records.
COVER_SECONDS = 1.0
# A body over --max-body-size announced by Content-Length is read and dropped, up to this
# many bytes, before the 413 is sent: a client that writes its whole body before reading
# (urllib, most scripts) then reads the 413 instead of a connection reset. Larger ones are
# answered at once and the connection closed, as nginx does past its own bound.
DISCARD_BODY_BYTES = 64 << 20


@tornado.web.stream_request_body
class InboxHandler(APIHandler):
    """POST /send, /receive and /exchange: parse, check, one store call, write.

    With ?wait=S and nothing to take, the request waits for a wake-up (echoes.wake.waiters),
    then takes again, until a record comes or S seconds pass. A client that disconnects while
    waiting is forgotten: nothing is taken on its behalf.
    """

    allow = "POST, OPTIONS"
    # Slots, as APIHandler's (it says why).
    __slots__ = (
        "caller",
        "chunks",
        "discarding",
        "gone",
        "receives",
        "reservation",
        "reserving",
        "sends",
        "waiter",
    )

    def initialize(self, sends: bool = False, receives: bool = False) -> None:
        super().initialize()
        self.sends, self.receives = sends, receives
        self.chunks: list[bytes] | None = None
        self.waiter: Waiter | None = None
        self.gone = False
        self.discarding = False
        self.caller = ""
        self.reservation: Reservation | None = None
        self.reserving: asyncio.Task[Reservation] | None = None

    async def prepare(self) -> None:
        if self.request.method != "POST":
            return  # 405 or a preflight: nothing is read or stored
        refused = self.context.origins.refusal(self.request.headers)
        if refused:
            raise APIError(403, refused)
        # The body is not read yet: an oversized one is never buffered (see DISCARD_BODY_BYTES).
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.config.max_body_size:
            if int(length) > DISCARD_BODY_BYTES:
                raise APIError(413, self.too_large_detail())
            self.request.connection.set_max_body_size(int(length))  # type: ignore[union-attr]
            self.discarding = True
            return
        try:
            with contextlib.suppress(APIError):  # answered by post(), in the order it checks
                self.caller = validation.caller(self.request.headers.get_list("From"), self.config)
            chunked = "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
            unknown = self.config.max_body_size if chunked else 0
            await self.admit(int(length) if length.isdigit() else unknown)
        except APIError:
            self.discarding = True  # answered before the body: read it, but keep none of it
            raise

    async def admit(self, length: int) -> None:
        """Refuse a sender a refusal of its quotas holds for (no Redis); reserve the most
        this request may hold of the process's bytes in flight, waiting for room."""
        refusal = self.store.refused(self.caller) if self.caller else None
        if refusal:
            self.metrics.refusals.labels(refusal.limit).inc()
            raise over_quota(refusal, self.config)
        size = length
        if self.sends:
            size += min(self.config.max_request_bytes, length * self.config.max_destinations)
        budget = self.context.budget
        # Most requests find room at once: a task only for one that waits for it.
        self.reservation = budget.reserve_now(self.caller, size)
        if self.reservation is not None:
            self.metrics.bytes_in_flight.set(budget.used)
            return
        self.reserving = asyncio.ensure_future(
            budget.reserve(self.caller, size, self.config.redis_timeout)
        )
        try:
            self.reservation = await self.reserving
            self.metrics.bytes_in_flight.set(budget.used)
        except Crowded as e:
            self.metrics.refusals.labels(e.limit).inc()
            raise crowded(e) from None
        except asyncio.CancelledError:  # the client left while it waited (not us cancelled)
            if not self.gone:
                raise
            raise APIError(400, "the client closed the connection") from None
        finally:
            self.reserving = None

    def too_large_detail(self) -> str:
        return f"the body is larger than {self.config.max_body_size} bytes (--max-body-size)"

    def data_received(self, chunk: bytes) -> None:
        if self.discarding or self._finished:
            return
        if self.chunks is None:
            self.chunks = []
        self.chunks.append(chunk)

    def on_connection_close(self) -> None:
        self.gone = True
        if self.waiter:
            self.waiter.wake()
        if self.reserving:
            self.reserving.cancel()
        self.release()  # a body never finished never reaches on_finish

    def on_finish(self) -> None:
        self.release()

    def release(self) -> None:
        """Hold none of the process's bytes in flight any more."""
        if self.reservation:
            self.reservation.release()
            self.metrics.bytes_in_flight.set(self.context.budget.used)

    async def post(self) -> None:
        """Store the message (send), then take the caller's records (receive)."""
        if self.discarding:
            raise APIError(413, self.too_large_detail())
        self.caller = validation.caller(self.request.headers.get_list("From"), self.config)
        message, take = self.parse()
        with self.context.inflight:
            if take and take.wait > 0:
                outcome = await self.wait_for_records(self.caller, message, take)
            else:
                outcome = await self.exchange(self.caller, message, take)
        self.sent, batch = outcome.sent, outcome.batch
        if batch:
            self.taken = batch.count
            self.metrics.acked.inc(batch.acks)
        self.check_sent(outcome, take)
        if self.gone:  # nothing is taken for a client that left (Store.exchange's ``wanted``)
            if take and batch and batch.count:  # it left after the take came back
                await self.put_back(take.attempt)
            self.set_status(499, "Client Closed Request")  # nginx's word for it, in the log
            return
        if batch is None:
            self.finish({"sent": self.sent, "duplicates": outcome.duplicates})
            return
        self.set_header(schemas.REMAINING_HEADER, str(batch.remaining))
        self.set_header(schemas.ATTEMPT_HEADER, take.attempt if take else "")
        self.finish_within(batch.json, self.config.write_timeout)

    async def put_back(self, attempt: str) -> None:
        """Return a batch its client never got to the inbox (kept under ``attempt`` if not)."""
        try:
            self.taken = 0
            await self.redis(self.store.untake(self.caller, attempt))
        except APIError as e:
            log.warning("a batch for a client that left stays under its token: %s", e)

    def parse(self) -> tuple[Message | None, Take | None]:
        """The message and the take this request asks for; the raw body is let go."""
        query = self.request.query_arguments
        validation.no_other_parameters(query, validation.TAKE_PARAMETERS if self.receives else ())
        body, self.chunks = b"".join(self.chunks or ()), None
        message = validation.message(body, self.config) if self.sends else None
        if self.reservation:  # what it holds now: its body, and the copies it may store
            copies = len(message.destinations) if message else 0
            self.reservation.shrink(len(body) * (1 + copies))
        take = validation.take(query, self.config) if self.receives else None
        return message, take

    def finish_within(self, answer: bytes, timeout: float) -> None:
        """Finish with ``answer``; cut off a client that has not read it after ``timeout`` s.

        Tornado buffers whatever the socket does not take: a client that never reads would
        pin the answer (up to --max-batch-bytes) for as long as it keeps the connection.
        """
        written = self.finish(answer)
        if written.done():  # the socket took it all (most answers): nothing to watch
            return
        cut = asyncio.get_running_loop().call_later(timeout, self.cut_off, timeout)
        written.add_done_callback(lambda _: cut.cancel())

    def cut_off(self, timeout: float) -> None:
        """Disconnect a client that has not read its answer after ``timeout`` s."""
        log.warning("client did not read its answer within %s s; disconnected", timeout)
        self.metrics.slow_readers.inc()
        self.request.connection.stream.close()  # type: ignore[union-attr]
        asyncio.get_running_loop().call_soon(heap.give_back)  # the answer's memory, once freed

    def check_sent(self, outcome: Outcome, take: Take | None) -> None:
        """507 when Redis refused a copy for lack of memory, 429 when an inbox was full."""
        if not (outcome.out_of_memory or outcome.full or outcome.full_bytes):
            return
        details = [f"stored for {outcome.sent} of the destinations"]
        if take and outcome.batch and outcome.batch.count:
            details.append(
                f"the records this request took are kept: POST /receive?attempt={take.attempt}"
                f" within {self.config.attempt_ttl} s to get them"
            )
        if outcome.out_of_memory:
            raise self.insufficient_storage(*details)
        full = []
        if outcome.full:
            limit = self.config.max_inbox_records
            full.append(f"inbox full ({limit} records waiting): {_names(outcome.full)}")
        if outcome.full_bytes:
            limit = self.config.max_inbox_bytes
            full.append(
                f"inbox full ({limit} bytes of records waiting, --max-inbox-bytes):"
                f" {_names(outcome.full_bytes)}"
            )
        raise APIError(429, *full, *details)

    async def exchange(
        self, caller: str, message: Message | None, take: Take | None, admit: bool = True
    ) -> Outcome:
        """One store call, within redis_timeout (``admit``: counted against the caller's
        quotas); then this request holds none of the process's bytes in flight."""
        try:
            work = self.store.exchange(
                caller, message, take, wanted=lambda: not self.gone, admit=admit
            )
            return await self.redis(work, take.attempt if take else None)
        except TooLarge as e:
            raise APIError(
                413, str(e), f"--max-request-bytes={self.config.max_request_bytes}"
            ) from None
        finally:
            self.release()

    async def wait_for_records(self, caller: str, message: Message | None, take: Take) -> Outcome:
        """Send, take; while nothing was taken, wait for a wake-up and take again."""
        waiters = self.context.waiters
        deadline = time.monotonic() + take.wait
        try:
            self.waiter = waiters.register(caller)  # before the first take: no wake-up is missed
        except Full as e:
            raise unavailable(str(e)) from e
        except CallerFull as e:
            raise APIError(
                429,
                str(e),
                f"answer or close one first (--max-waiters-per-caller={waiters.per_name})",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from e
        self.waited = True
        self.metrics.waiters.inc()
        try:
            # Subscribed to the inbox before the take that decides to wait: no arrival missed.
            if not await waiters.covered(caller, min(COVER_SECONDS, self.config.redis_timeout)):
                log.debug("wake-up subscription for a waiter not confirmed; the sweep covers it")
            async with waiters.taking:  # see Waiters.taking
                outcome = await self.exchange(caller, message, take)
            if outcome.out_of_memory or outcome.full:
                return outcome  # the send failed: answer now, do not wait
            # Ten thousand requests may wait at once: keep no more than the count while waiting.
            sent, message = outcome.sent, None
            while outcome.batch and outcome.batch.count == 0 and not (self.gone or waiters.closing):
                left = deadline - time.monotonic()
                if left <= 0 or not await self.waiter.wait(left):
                    break
                if self.gone or waiters.closing:  # answer [] and take nothing
                    break
                async with waiters.taking:
                    outcome = await self.exchange(caller, None, take, admit=False)
            return dataclasses.replace(outcome, sent=sent)
        finally:
            self.metrics.waiters.dec()
            waiters.unregister(self.waiter)
            self.waiter = None


def _names(names: tuple[str, ...]) -> str:
    """Up to ten inbox names for an error's details, and how many more."""
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return ", ".join(repr(n) for n in names[:10]) + more
