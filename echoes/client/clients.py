"""The two Python clients of echoes: ``Client`` (urllib) and ``AsyncClient`` (Tornado).

    from echoes.client import Client
    olivia = Client("http://127.0.0.1:8000", "olivia")
    olivia.send(["maurice"], {"text": "hi"}, key="k1")     # 1: copies stored
    olivia.status("k1", ["maurice"])                         # [{"destination": ..., "state": ...}]
    for record in Client("http://127.0.0.1:8000", "maurice").follow():
        print(record)                                        # forever, oldest first

Behind a proxy that authenticates (conf/nginx.conf), pass ``user`` and ``password`` (HTTP
Basic; a ``user:password@`` in the URL works too) or ``headers={"Authorization": "Bearer
..."}``. Neither is ever shown: errors name the URL without them.

Both build their requests and read their answers through protocol.py, and share every
method but the one that moves bytes (``call``) and the follow loop; libraries echoes
already depends on: http.client for the synchronous one (transport.py), Tornado's
AsyncHTTPClient for the other. Each exchange is bounded: its whole time by the request's
timeout, its answer by ``max_answer_bytes``; redirections are not followed.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tornado.httpclient

from . import transport
from .protocol import (
    DEFAULT_URL,
    FOLLOW_WAIT,
    MAX_ANSWER_BYTES,
    Answer,
    BadAnswer,
    Follower,
    Request,
    State,
    Unavailable,
    answer,
    credentials,
    message,
    request,
    status_query,
)


class _Requests:
    """The requests of one caller (the From name) to one echoes; ``call`` moves the bytes.

    With AsyncClient each method returns an awaitable of what Client's returns.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        caller: str = "",
        timeout: float = 30.0,
        *,
        user: str | None = None,
        password: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ):
        self.url, self.headers = credentials(url, user, password, headers)
        self.caller, self.timeout, self.max_answer_bytes = caller, timeout, max_answer_bytes

    def __repr__(self) -> str:  # no credentials
        return f"{type(self).__name__}({self.url!r}, {self.caller!r})"

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

    def status(self, key: str, destinations: list[str]) -> Any:
        """What became of the copies of the caller's message ``key`` sent to ``destinations``:
        for each, ``{"destination": D, "state": "waiting" | "consumed" | "unknown"}``, with
        ``consumedAt`` when consumed (within the server's --dedup-window)."""
        query = status_query(key, destinations)
        return self._then(self._post("/status", {}, query, None), _states)

    def _post(self, path: str, query: dict[str, Any], body: Any, wait: float | None) -> Any:
        timeout = self.timeout + (wait or 0)
        return self.call(request(self.url, self.caller, path, query, body, timeout, self.headers))

    def follower(
        self, state: str | Path | None, wait: float, on_retry: Callable[[str, float], None] | None
    ) -> Follower:
        """The follow protocol for this caller (StateInUse if another follower has ``state``)."""
        return Follower(self.url, self.caller, State(state), wait, on_retry, self.headers)

    def _then(self, answered: Any, result: Callable[[Answer], Any]) -> Any:
        raise NotImplementedError

    def call(self, request: Request) -> Any:
        raise NotImplementedError


def _sent(answer: Answer) -> int:
    return answer.sent


def _states(answer: Answer) -> list[dict[str, str]]:
    return answer.states or []


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
        follower = self.follower(state, wait, on_retry)
        try:
            while not stop():
                try:
                    answered = self.call(follower.request())
                except Unavailable as e:
                    time.sleep(follower.failed(e))
                    continue
                yield from answered.records or []
                follower.handed_out()
        finally:
            follower.close()

    def call(self, request: Request) -> Answer:
        """Make one request (as built by this client or a Follower); its answer."""
        try:
            status, headers, body = transport.post(
                request.url, request.headers, request.body, request.timeout, self.max_answer_bytes
            )
        except transport.TooLarge as e:
            raise BadAnswer(str(e)) from None
        except (OSError, transport.TimedOut) as e:  # refused, reset, timed out
            raise Unavailable(f"cannot reach {self.url}: {e}") from None
        return answer(status, headers, body, request.expects)


class AsyncClient(_Requests):
    """The asyncio flavour of Client (Tornado's AsyncHTTPClient): the same methods, awaited."""

    def __init__(self, url: str = DEFAULT_URL, caller: str = "", timeout: float = 30.0, **kw: Any):
        super().__init__(url, caller, timeout, **kw)
        # Tornado's simple client: request_timeout bounds the whole exchange, and it ends
        # one whose body grows past max_body_size (as a closed connection: _Body tells).
        self._http = tornado.httpclient.AsyncHTTPClient(
            force_instance=True, max_body_size=self.max_answer_bytes
        )

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
        follower = self.follower(state, wait, on_retry)
        try:
            while not stop():
                try:
                    answered = await self.call(follower.request())
                except Unavailable as e:
                    await asyncio.sleep(follower.failed(e))
                    continue
                for record in answered.records or []:
                    yield record
                follower.handed_out()
        finally:
            follower.close()

    def close(self) -> None:
        """Close the HTTP client's connections."""
        self._http.close()

    async def call(self, request: Request) -> Answer:
        """Make one request (as built by this client or a Follower); its answer."""
        body = _Body(self.max_answer_bytes)
        try:
            response = await self._http.fetch(
                request.url,
                method="POST",
                headers=request.headers,
                body=request.body,
                request_timeout=request.timeout,
                follow_redirects=False,
                raise_error=False,
                header_callback=body.header,
                streaming_callback=body.data,
            )
        except (OSError, tornado.httpclient.HTTPClientError) as e:  # Tornado's 599s raise
            if body.too_large:
                raise BadAnswer(
                    f"the answer is longer than {self.max_answer_bytes} bytes"
                ) from None
            raise Unavailable(f"cannot reach {self.url}: {e}") from None
        return answer(response.code, response.headers, b"".join(body.chunks), request.expects)


class _Body:
    """An answer's body as Tornado streams it, and whether it was cut for its size: Tornado
    ends an answer past max_body_size as if the connection had closed."""

    def __init__(self, limit: int):
        self.limit, self.chunks, self.size, self.declared = limit, list[bytes](), 0, 0

    def header(self, line: str) -> None:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            self.declared = int(value)

    def data(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    @property
    def too_large(self) -> bool:
        # Tornado reads a body in chunks of up to 64 KiB and refuses the one past the limit.
        return self.declared > self.limit or self.size + 65536 > self.limit
