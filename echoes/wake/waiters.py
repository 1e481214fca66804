"""Waiting requests of this process, by inbox: the registry that wake-ups are routed through.

It knows nothing of Redis: the listener calls ``wake(name)`` for notifications, the sweep
calls it for inboxes found non-empty. A wake-up is only a hint: the waiter re-reads its
inbox and goes back to waiting if another waiter got there first. ``watch`` (the listener's
subscriptions) hears when an inbox gets its first waiter and loses its last.
"""

import asyncio
from typing import Protocol

from ..config import Settings
from .subscriptions import settled

# How many takes of waiting requests run at once (Waiters.taking says why).
TAKES_AT_ONCE = 256


class Watch(Protocol):
    """What hears of inboxes getting their first waiter and losing their last."""

    def want(self, name: str) -> None: ...

    def release(self, name: str) -> None: ...

    def covered(self, name: str, timeout: float) -> "asyncio.Future[bool]": ...


class Full(Exception):
    """This process already holds its maximum of waiting requests."""


class CallerFull(Exception):
    """This caller already holds its share of this process's waiting requests."""


class Waiter:
    """One waiting request.

    A bare future and a timer handle rather than an asyncio.Event and asyncio.timeout(), and
    no coroutine of its own: ten thousand of them are held at once, and each of those would
    cost hundreds of bytes more.
    """

    __slots__ = ("_future", "_timer", "_woken", "name")

    def __init__(self, name: str):
        self.name = name
        self._woken = False
        self._future: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        """Make the current or next wait() return True."""
        if self._future is not None and not self._future.done():
            self._future.set_result(True)
            self.forget()
        else:
            self._woken = True

    def wait(self, timeout: float) -> "asyncio.Future[bool]":
        """A future that becomes True at the next wake-up, or False after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if self._woken:
            self._woken = False
            future.set_result(True)
            return future
        self._future = future
        self._timer = loop.call_later(timeout, self._expire)
        return future

    def _expire(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(False)
        self.forget()

    def forget(self) -> None:
        """Drop the pending wait's timer (the request is over or was answered)."""
        if self._timer is not None:
            self._timer.cancel()
        self._future = self._timer = None


class Waiters:
    """Inbox name -> the requests of this process waiting on it."""

    def __init__(self, limit: int, per_name: int | None = None, watch: Watch | None = None):
        self.limit = limit
        self.watch = watch
        self.per_name = limit if per_name is None else per_name
        self.closing = False
        # Lists, not sets: most inboxes have one waiter, and an empty set is 216 bytes.
        self._by_name: dict[str, list[Waiter]] = {}
        self._count = 0
        # At most TAKES_AT_ONCE takes at once. Ten thousand long polls arriving together
        # are subscribed together and then take together, each take holding some
        # 5 KB of coroutines and commands until Redis answers: 46 MB more at that peak
        # (BENCHMARKS.md), which the process then keeps (freed Python objects among live
        # ones are not given back to the system). A few hundred at a time fill a pipeline
        # batch as well: a take costs Redis some 30 us, so 256 are 8 ms of its time.
        self.taking = asyncio.Semaphore(TAKES_AT_ONCE)

    def __len__(self) -> int:
        return self._count

    def configure(self, settings: Settings) -> None:
        """Apply the limits of ``settings`` to the next registrations."""
        self.limit, self.per_name = settings.max_waiters, settings.max_waiters_per_caller

    def register(self, name: str) -> Waiter:
        """A new waiter on ``name``; unregister it when the request ends."""
        if self._count >= self.limit:
            raise Full(f"{self.limit} requests are already waiting in this process")
        group = self._by_name.setdefault(name, [])
        if len(group) >= self.per_name:
            raise CallerFull(f"{self.per_name} requests of this caller are already waiting")
        waiter = Waiter(name)
        group.append(waiter)
        self._count += 1
        if len(group) == 1 and self.watch is not None:
            self.watch.want(name)
        return waiter

    def covered(self, name: str, timeout: float) -> "asyncio.Future[bool]":
        """True once arrivals in ``name``'s inbox reach this registry (see Watch); False if
        that took longer than ``timeout`` (the listener's sweep covers it then)."""
        return self.watch.covered(name, timeout) if self.watch is not None else settled(True)

    def unregister(self, waiter: Waiter) -> None:
        """Forget ``waiter``."""
        group = self._by_name.get(waiter.name)
        if group is None or waiter not in group:
            return
        group.remove(waiter)
        waiter.forget()
        self._count -= 1
        if not group:
            del self._by_name[waiter.name]
            if self.watch is not None:
                self.watch.release(waiter.name)

    def wake(self, name: str) -> int:
        """Wake every waiter on ``name``; how many there were."""
        group = self._by_name.get(name, ())
        for waiter in group:
            waiter.wake()
        return len(group)

    def names(self) -> list[str]:
        """Every inbox with a waiter."""
        return list(self._by_name)

    def close(self) -> None:
        """Shutting down: wake every waiter, to answer at once without consuming."""
        self.closing = True
        for name in self.names():
            self.wake(name)
