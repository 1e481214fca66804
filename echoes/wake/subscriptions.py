"""Which wake-up channels this process subscribes to: one per inbox it has waiters on.

No Redis here: the listener sends what ``changes()`` returns and reports back what Redis
confirmed. An inbox is subscribed when its first waiter comes (``want``) and unsubscribed
``linger`` seconds after its last waiter left (``release``), so a client that polls again at
once costs no churn; subscribes and unsubscribes wanted in the same moment go out as one
command each. ``covered(name)`` returns once Redis confirmed the inbox's subscription: a
waiter that awaits it before its first take misses no arrival.
"""

import asyncio
from collections.abc import Callable, Set

Callback = Callable[[], None]

LINGER_SECONDS = 5.0


class Subscriptions:
    """Wanted, sent and confirmed subscriptions, by inbox name."""

    def __init__(self, channel_of: Callable[[str], str], linger: float = LINGER_SECONDS):
        self.channel_of = channel_of
        self.linger = linger
        self.changed = asyncio.Event()  # something to send: the listener's flush waits on it
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._covering: dict[str, list[asyncio.Future[bool]]] = {}
        self._leaving: dict[str, asyncio.TimerHandle] = {}
        self._on_leave: dict[str, Callback] = {}

    def want(self, name: str) -> None:
        """``name`` has a waiter: subscribe to its channel (if not already)."""
        leaving = self._leaving.pop(name, None)
        if leaving:
            leaving.cancel()
        if name in self._wanted:
            return
        self._wanted.add(name)
        self._to_unsubscribe.discard(name)
        if name not in self._confirmed:
            self._to_subscribe.add(name)
            self.changed.set()

    def release(self, name: str, on_leave: Callback | None = None) -> None:
        """``name`` has no waiter left: unsubscribe after ``linger`` seconds unless wanted again
        (then call ``on_leave``)."""
        if name not in self._wanted or name in self._leaving:
            return
        loop = asyncio.get_running_loop()
        self._leaving[name] = loop.call_later(self.linger, self._leave, name)
        if on_leave is not None:
            self._on_leave[name] = on_leave

    def _leave(self, name: str) -> None:
        self._leaving.pop(name, None)
        self._unwant(name)
        left = self._on_leave.pop(name, None)
        if left is not None:
            left()

    def drop(self, name: str) -> bool:
        """Unsubscribe ``name`` now (it moved to another server); whether it had waiters."""
        lingering = self._leaving.pop(name, None)
        if lingering:
            lingering.cancel()
        self._on_leave.pop(name, None)
        waited = name in self._wanted and lingering is None
        self._unwant(name)
        return waited

    def _unwant(self, name: str) -> None:
        """Nobody waits on ``name`` here any more: unsubscribe it if it was subscribed."""
        self._covering.pop(name, None)  # its waiters are gone (their timers settle them)
        self._wanted.discard(name)
        self._to_subscribe.discard(name)
        if name in self._confirmed:
            self._to_unsubscribe.add(name)
            self.changed.set()

    def covered(self, name: str, timeout: float) -> "asyncio.Future[bool]":
        """A future that becomes True once ``name``'s subscription is confirmed, False after
        ``timeout`` s.

        A future and a timer for each waiter, not a coroutine in asyncio.wait_for around a
        shielded future (a task's worth of objects more): ten thousand long polls arriving
        at once all wait here together, before their first take.
        """
        if name in self._confirmed:
            return settled(True)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._covering.setdefault(name, []).append(future)
        future.get_loop().call_later(timeout, self._uncovered, name, future)
        return future

    def _uncovered(self, name: str, future: "asyncio.Future[bool]") -> None:
        """``future``'s wait for ``name``'s subscription is over: False unless settled."""
        waiting = self._covering.get(name)
        if waiting and future in waiting:
            waiting.remove(future)
            if not waiting:
                del self._covering[name]
        _settle(future, False)

    def changes(self) -> tuple[list[str], list[str]]:
        """Channels to subscribe to and to unsubscribe from now; taken, not left pending."""
        subscribe = [self.channel_of(n) for n in self._to_subscribe]
        unsubscribe = [self.channel_of(n) for n in self._to_unsubscribe]
        # Not covered from the moment the unsubscribe is sent: a waiter coming back now waits
        # for a new subscription, which Redis confirms after the unsubscribe (same connection).
        self._confirmed -= self._to_unsubscribe
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        self.changed.clear()
        return subscribe, unsubscribe

    def confirmed(self, name: str) -> None:
        """Redis confirmed the subscription of ``name``'s channel."""
        self._confirmed.add(name)
        for future in self._covering.pop(name, ()):
            _settle(future, True)

    def lost_one(self, name: str) -> None:
        """Redis ended ``name``'s subscription itself: subscribe to it again if still wanted."""
        self._confirmed.discard(name)
        if name in self._wanted:
            self._to_subscribe.add(name)
            self.changed.set()

    def lost(self) -> None:
        """The connection is gone, and its subscriptions with it: every wanted one again."""
        self._confirmed.clear()
        self._to_unsubscribe.clear()
        self._to_subscribe = set(self._wanted)
        if self._to_subscribe:
            self.changed.set()

    @property
    def wanted(self) -> Set[str]:
        """Inboxes subscribed to, or to be (read-only: not a copy, the listener counts it
        at every flush)."""
        return self._wanted


def settled(value: bool) -> "asyncio.Future[bool]":
    """A future of the running loop with ``value`` as its result."""
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _settle(future: "asyncio.Future[bool]", value: bool) -> None:
    if not future.done():
        future.set_result(value)
