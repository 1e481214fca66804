"""The bytes of requests one process holds at once, in all and per caller
(--max-bytes-in-flight, --max-caller-bytes-in-flight).

A request reserves, before its body is read, the most it may hold: its body (Content-Length,
or --max-body-size without one) and what it could store in Redis (its body times its
destinations, up to --max-request-bytes). It waits for room (no body read meanwhile: Tornado
reads it once prepare() returns), gives back what it does not need once its body is parsed,
and the rest once its store call is answered. A request always fits when its caller holds
nothing (in the process's bound: when the process holds nothing), so a request of the
largest size is never refused for its size alone. Knows nothing of Redis or Tornado.
"""

import asyncio
from collections import deque
from dataclasses import dataclass, field

from ..config import Settings

PROCESS, CALLER = "process_in_flight", "caller_in_flight"


class Crowded(Exception):
    """No room within the wait allowed: ``limit`` is PROCESS or CALLER."""

    def __init__(self, limit: str, detail: str):
        super().__init__(detail)
        self.limit = limit


@dataclass(eq=False, slots=True)
class Reservation:
    """Bytes a request holds of its process's budget, until released."""

    budget: "Budget"
    caller: str
    size: int

    def shrink(self, size: int) -> None:
        """Hold only ``size`` bytes (never more than reserved)."""
        if size < self.size:
            self.budget.give_back(self.caller, self.size - size)
            self.size = size

    def release(self) -> None:
        """Hold nothing any more (idempotent)."""
        self.shrink(0)


@dataclass(eq=False)
class _Waiter:
    caller: str
    size: int
    future: "asyncio.Future[Reservation]" = field(default_factory=asyncio.Future)


class Budget:
    """Reservations of one process's bytes in flight, and the requests waiting for room."""

    def __init__(self, settings: Settings):
        self.used = 0
        self._by_caller: dict[str, int] = {}
        self._waiting: deque[_Waiter] = deque()
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Take the bounds (at start, and on a reload)."""
        self.total = settings.max_bytes_in_flight
        self.per_caller = settings.max_caller_bytes_in_flight
        self._wake()

    def held_by(self, caller: str) -> int:
        """Bytes ``caller`` holds in this process."""
        return self._by_caller.get(caller, 0)

    def _full(self, caller: str, size: int) -> str | None:
        """Which bound ``size`` more bytes of ``caller`` would pass, if any."""
        held = self._by_caller.get(caller, 0)
        if self.per_caller and held and held + size > self.per_caller:
            return CALLER
        if self.total and self.used and self.used + size > self.total:
            return PROCESS
        return None

    def _take(self, caller: str, size: int) -> Reservation:
        self.used += size
        self._by_caller[caller] = self._by_caller.get(caller, 0) + size
        return Reservation(self, caller, size)

    def reserve_now(self, caller: str, size: int) -> Reservation | None:
        """``size`` bytes for ``caller`` if there is room now, else None (reserve() waits)."""
        if size <= 0:
            return Reservation(self, caller, 0)
        if self._full(caller, size) is None:
            return self._take(caller, size)
        return None

    async def reserve(self, caller: str, size: int, timeout: float) -> Reservation:
        """``size`` bytes for ``caller``, waiting up to ``timeout`` s for room; Crowded if
        there is none by then (a wait cancelled leaves nothing reserved)."""
        now = self.reserve_now(caller, size)
        if now is not None:
            return now
        waiter = _Waiter(caller, size)
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done():  # let in as the wait ended
                return waiter.future.result()
            raise self._crowded(caller, size) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.result().release()
            raise
        finally:
            if not waiter.future.done():
                self._waiting.remove(waiter)
                waiter.future.cancel()

    def _crowded(self, caller: str, size: int) -> Crowded:
        limit = self._full(caller, size) or CALLER
        if limit == CALLER:
            return Crowded(
                CALLER,
                f"this caller's requests in flight hold {self.held_by(caller)} bytes in this"
                f" process, and this one may need {size} more (--max-caller-bytes-in-flight"
                f"={self.per_caller}): send fewer at once",
            )
        return Crowded(
            PROCESS,
            f"this echoes process holds {self.used} bytes of requests in flight"
            f" (--max-bytes-in-flight={self.total}); try again shortly",
        )

    def give_back(self, caller: str, size: int) -> None:
        """Return ``size`` bytes of ``caller``'s; let in the waiters that fit now."""
        self.used -= size
        left = self._by_caller.get(caller, 0) - size
        if left > 0:
            self._by_caller[caller] = left
        else:
            self._by_caller.pop(caller, None)
        self._wake()

    def _wake(self) -> None:
        """Let in, oldest first, each waiter that fits (one that does not is skipped: a
        caller past its share never holds up the others)."""
        if not self._waiting:
            return
        for waiter in list(self._waiting):
            if self._full(waiter.caller, waiter.size) is None:
                self._waiting.remove(waiter)
                waiter.future.set_result(self._take(waiter.caller, waiter.size))
