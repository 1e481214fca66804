"""The two Python clients of echoes: ``Client`` (urllib) and ``AsyncClient`` (Tornado).

    from echoes.client import Client
    olivia = Client("http://127.0.0.1:8000", "olivia")
    olivia.send(["maurice"], {"text": "hi"}, ack=True)     # 1: copies stored
    for record in Client("http://127.0.0.1:8000", "maurice").follow():
        print(record)                                        # forever, oldest first

Both build their requests and read their answers through protocol.py, and share every
method but the one that moves bytes (``call``) and the follow loop; libraries echoes
already depends on: urllib for the synchronous one, Tornado's AsyncHTTPClient for the other.
"""

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import tornado.httpclient

from .protocol import (
    DEFAULT_URL,
    FOLLOW_WAIT,
    Answer,
    Follower,
    Request,
    State,
    Unavailable,
    answer,
    message,
    request,
)


class _Requests:
    """The requests of one caller (the From name) to one echoes; ``call`` moves the bytes.

    With AsyncClient each method returns an awaitable of what Client's returns.
    """

    def __init__(self, url: str = DEFAULT_URL, caller: str = "", timeout: float = 30.0):
        self.url, self.caller, self.timeout = url, caller, timeout

    def send(
        self, destinations: list[str], body: Any, key: str | None = None, ack: bool = False
    ) -> Any:
        """Store one copy of ``body`` per destination; how many were stored."""
        sent = message(destinations, body, key, ack)
        return self._then(self._post("/send", {}, sent, None), _sent)

    def receive(
        self, limit: int | None = None, wait: float | None = None, attempt: str | None = None
    ) -> Any:
        """Take the caller's waiting records (waiting up to ``wait`` s for one to come)."""
        query = {"limit": limit, "wait": wait, "attempt": attempt}
        return self._then(self._post("/receive", query, None, wait), _records)

    def exchange(
        self,
        destinations: list[str],
        body: Any,
        key: str | None = None,
        ack: bool = False,
        limit: int | None = None,
        wait: float | None = None,
    ) -> Any:
        """Send, then take the caller's records, in one request."""
        sent = message(destinations, body, key, ack)
        query = {"limit": limit, "wait": wait}
        return self._then(self._post("/exchange", query, sent, wait), _records)

    def _post(self, path: str, query: dict[str, Any], body: Any, wait: float | None) -> Any:
        return self.call(
            request(self.url, self.caller, path, query, body, self.timeout + (wait or 0))
        )

    def _then(self, answered: Any, result: Callable[[Answer], Any]) -> Any:
        raise NotImplementedError

    def call(self, request: Request) -> Any:
        raise NotImplementedError


def _sent(answer: Answer) -> int:
    return answer.sent


def _records(answer: Answer) -> list[dict[str, Any]]:
    return answer.records or []


class Client(_Requests):
    """A synchronous echoes client (urllib)."""

    def _then(self, answered: Answer, result: Callable[[Answer], Any]) -> Any:
        return result(answered)

    def follow(
        self,
        state: str | Path | None = None,
        wait: float = FOLLOW_WAIT,
        on_retry: Callable[[str, float], None] | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[dict[str, Any]]:
        """Every record for the caller, oldest first, until ``stop()`` (see protocol.py)."""
        follower = Follower(self.url, self.caller, State(state), wait, on_retry)
        while not stop():
            try:
                answered = self.call(follower.request())
            except Unavailable as e:
                time.sleep(follower.failed(e))
                continue
            yield from answered.records or []
            follower.handed_out()

    def call(self, request: Request) -> Answer:
        """Make one request (as built by this client or a Follower); its answer."""
        http = urllib.request.Request(
            request.url, data=request.body, headers=request.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(http, timeout=request.timeout) as response:
                return answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as e:
            with e:
                return answer(e.code, e.headers, e.read())
        except OSError as e:  # URLError, a reset, a timeout
            raise Unavailable(f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from e


class AsyncClient(_Requests):
    """The asyncio flavour of Client (Tornado's AsyncHTTPClient): the same methods, awaited."""

    def __init__(self, url: str = DEFAULT_URL, caller: str = "", timeout: float = 30.0):
        super().__init__(url, caller, timeout)
        self._http = tornado.httpclient.AsyncHTTPClient(force_instance=True)

    async def _then(self, answered: Awaitable[Answer], result: Callable[[Answer], Any]) -> Any:
        return result(await answered)

    async def follow(
        self,
        state: str | Path | None = None,
        wait: float = FOLLOW_WAIT,
        on_retry: Callable[[str, float], None] | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record for the caller, oldest first, until ``stop()`` (see protocol.py)."""
        follower = Follower(self.url, self.caller, State(state), wait, on_retry)
        while not stop():
            try:
                answered = await self.call(follower.request())
            except Unavailable as e:
                await asyncio.sleep(follower.failed(e))
                continue
            for record in answered.records or []:
                yield record
            follower.handed_out()

    def close(self) -> None:
        """Close the HTTP client's connections."""
        self._http.close()

    async def call(self, request: Request) -> Answer:
        """Make one request (as built by this client or a Follower); its answer."""
        try:
            response = await self._http.fetch(
                request.url,
                method="POST",
                headers=request.headers,
                body=request.body,
                request_timeout=request.timeout,
                raise_error=False,
            )
        except OSError as e:
            raise Unavailable(f"cannot reach {self.url}: {e}") from e
        if response.code == 599:  # Tornado's own: no connection, or timed out
            raise Unavailable(f"cannot reach {self.url}: {response.error}")
        return answer(response.code, response.headers, response.body or b"")
