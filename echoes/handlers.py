"""HTTP endpoints, the base handler they share, and make_app()."""

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import tornado.web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import __version__, validation
from .config import Settings
from .errors import APIError, error_body
from .store import Store

log = logging.getLogger("echoes")
T = TypeVar("T")

REMAINING_HEADER = "Echoes-Remaining"
ATTEMPT_HEADER = "Echoes-Attempt"
RETRY_AFTER_SECONDS = "1"


class APIHandler(tornado.web.RequestHandler):
    """Base of every endpoint: JSON out, CORS headers, one error shape.

    Every response is JSON. Every error, including Tornado's own 404 and 405, has the body
    ``{"error": <reason phrase>, "status": <code>, "details": [<what to fix>, ...]}``;
    a client mistake is a 4xx and never a stack trace, Redis unavailable is a 503.
    Handlers reach the configuration and the store through the application settings.
    """

    allow = "OPTIONS"

    @property
    def config(self) -> Settings:
        return self.application.settings["config"]

    @property
    def store(self) -> Store:
        return self.application.settings["store"]

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        origin = self.application.settings["config"].cors_origin
        if origin:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header(
                "Access-Control-Expose-Headers", f"{REMAINING_HEADER}, {ATTEMPT_HEADER}"
            )

    def options(self, *args: str) -> None:
        """CORS preflight: POST with the From and Content-Type headers is allowed."""
        self.set_header("Access-Control-Allow-Methods", self.allow)
        self.set_header("Access-Control-Allow-Headers", "From, Content-Type")
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)
        self.finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        details = error.details if isinstance(error, APIError) else []
        if status_code == 405:
            self.set_header("Allow", self.allow)
            details = [
                f"{self.request.method} {self.request.path} is not allowed; use {self.allow}"
            ]
        for name, value in getattr(error, "headers", {}).items():
            self.set_header(name, value)
        self.finish(error_body(status_code, details))

    async def redis(self, work: Awaitable[T], attempt: str | None = None) -> T:
        """Await store work within redis_timeout, turning Redis trouble into 503/507."""
        try:
            async with asyncio.timeout(self.config.redis_timeout):
                return await work
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, ReadOnlyError) as e:
            details = [f"Redis at {self.config.redis_display} is unavailable ({type(e).__name__})"]
            if attempt:
                details.append(
                    f"retry with ?attempt={attempt} to get what this request may have taken"
                )
            raise APIError(503, *details, headers={"Retry-After": RETRY_AFTER_SECONDS}) from e
        except ResponseError as e:
            # Redis 7 answers -OOM (OutOfMemoryError); 6.2 wraps it in a script error.
            if isinstance(e, OutOfMemoryError) or "OOM command not allowed" in str(e):
                raise APIError(507, "Redis is out of memory: nothing was stored") from e
            raise


@tornado.web.stream_request_body
class InboxHandler(APIHandler):
    """POST /send, /receive and /exchange: parse, check, one store call, write."""

    allow = "POST, OPTIONS"

    def initialize(self, sends: bool, receives: bool) -> None:
        self.sends, self.receives = sends, receives
        self.chunks: list[bytes] = []

    def prepare(self) -> None:
        # The body is not read yet: refuse an oversized one before buffering it.
        length = self.request.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > self.config.max_body_size:
            raise APIError(413, f"the body is larger than {self.config.max_body_size} bytes")

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    async def post(self) -> None:
        """Store the message (send), then take the caller's records (receive)."""
        caller = validation.caller(self.request.headers.get_list("From"), self.config)
        body = b"".join(self.chunks)
        message = validation.message(body, self.config) if self.sends else None
        take = validation.take(self.request.query_arguments, self.config) if self.receives else None
        sent, batch = await self.redis(
            self.store.exchange(caller, message, take), take.attempt if take else None
        )
        log.debug("%s: sent %d, took %d", caller, sent, batch.count if batch else 0)
        if batch is None:
            self.finish({"sent": sent})
            return
        self.set_header(REMAINING_HEADER, str(batch.remaining))
        self.set_header(ATTEMPT_HEADER, take.attempt if take else "")
        self.finish(batch.json)


class RootHandler(APIHandler):
    """GET / and HEAD /: name and version."""

    allow = "GET, HEAD, OPTIONS"

    def get(self) -> None:
        self.finish({"name": "echoes", "version": __version__})

    head = get


class NotFoundHandler(APIHandler):
    """Every unknown path: 404 in the error shape."""

    def prepare(self) -> None:
        raise APIError(404, f"no such endpoint: {self.request.path}")


def make_app(config: Settings, store: Store) -> tornado.web.Application:
    """The Tornado application serving the echoes API."""
    return tornado.web.Application(
        routes(),
        config=config,
        store=store,
        default_handler_class=NotFoundHandler,
        compress_response=False,
    )


def routes() -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    """Every endpoint of the API."""
    return [
        (r"/", RootHandler, {}),
        (r"/send", InboxHandler, {"sends": True, "receives": False}),
        (r"/receive", InboxHandler, {"sends": False, "receives": True}),
        (r"/exchange", InboxHandler, {"sends": True, "receives": True}),
    ]
