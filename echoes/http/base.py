"""The base handler every endpoint shares (JSON out, one error shape, Redis trouble as
HTTP), and the one typed object that hands handlers what they use."""

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import tornado.web

from ..config import Settings
from ..metrics import Metrics
from ..store import OutOfMemory, Store, Unavailable
from ..store.failures import AUTHENTICATION
from ..wake.state import ListenerState
from ..wake.waiters import Waiters
from . import openapi, schemas
from .errors import APIError, error_body
from .origins import Origins

log = logging.getLogger("echoes")
T = TypeVar("T")

RETRY_AFTER_SECONDS = "1"


@dataclass
class Context:
    """Everything the handlers use, in one typed object: made by make_app, and handed the
    new settings by a reload (``configure``)."""

    config: Settings
    store: Store
    waiters: Waiters
    listener: ListenerState
    metrics: Metrics
    origins: Origins
    openapi: dict[str, Any]
    inflight: "InFlight"

    @classmethod
    def of(
        cls,
        config: Settings,
        store: Store,
        waiters: Waiters,
        listener: ListenerState,
        metrics: Metrics,
    ) -> "Context":
        origins, document = Origins(config.cors_origins), openapi.document(config)
        return cls(config, store, waiters, listener, metrics, origins, document, InFlight())

    def configure(self, settings: Settings) -> None:
        """Use ``settings`` from the next request on."""
        self.config = settings
        self.origins = Origins(settings.cors_origins)


class InFlight:
    """Counts the requests using Redis, so a shutdown can let them finish."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self.count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.count


def unavailable(*details: str) -> APIError:
    """A 503 that tells the client when to try again."""
    return APIError(503, *details, headers={"Retry-After": RETRY_AFTER_SECONDS})


class APIHandler(tornado.web.RequestHandler):
    """Base of every endpoint: JSON out, CORS headers, one error shape.

    Every response is JSON. Every error, including Tornado's own 404 and 405, has the body
    ``{"error": <reason phrase>, "status": <code>, "details": [<what to fix>, ...]}``;
    a client mistake is a 4xx and never a stack trace, Redis unavailable is a 503.
    Handlers reach what they use through one typed ``Context`` (``self.context``, the
    application's one setting: Tornado calls set_default_headers before initialize).
    """

    allow = "OPTIONS"
    # What the access log reports: message copies stored, records taken, waited or not.
    sent = taken = 0
    waited = False

    @property
    def context(self) -> Context:
        return self.application.settings["context"]

    @property
    def config(self) -> Settings:
        return self.context.config

    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def metrics(self) -> Metrics:
        return self.context.metrics

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        allowed = self.context.origins.cors_header(self.request.headers)
        if allowed:
            self.set_header("Access-Control-Allow-Origin", allowed)
            self.set_header("Vary", "Origin")
            self.set_header(
                "Access-Control-Expose-Headers",
                f"{schemas.REMAINING_HEADER}, {schemas.ATTEMPT_HEADER}",
            )

    def options(self, *args: str) -> None:
        """CORS preflight: POST with the From and Content-Type headers, for allowed origins."""
        if not self.context.origins.cors_header(self.request.headers):
            self.set_status(204)  # no CORS headers: the browser refuses the request
            self.finish()
            return
        self.set_header("Access-Control-Allow-Methods", self.allow)
        self.set_header("Access-Control-Allow-Headers", "From, Content-Type, Authorization")
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

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return  # answered in the error shape, and logged once by the access log
        super().log_exception(typ, value, tb)

    async def redis(self, work: Awaitable[T], attempt: str | None = None) -> T:
        """Await store work within redis_timeout: the one place Redis trouble becomes HTTP."""
        try:
            async with asyncio.timeout(self.config.redis_timeout):
                return await work
        except (Unavailable, TimeoutError) as e:
            kind = e.kind if isinstance(e, Unavailable) else "TimeoutError"
            self.metrics.redis_errors.labels(kind).inc()
            details = [f"Redis at {self.config.redis_display} is unavailable ({kind})"]
            if kind == "NotLoaded":
                log.error("%s", e)
                details = ["Redis lacks echoes' function library: see the server's log"]
            if kind == AUTHENTICATION:
                details = [
                    f"Redis at {self.config.redis_display} refused echoes' credentials"
                    " (authentication failed): see the server's log"
                ]
            if kind == "NotReplicated":
                details = [
                    f"Redis's replicas did not confirm the writes within"
                    f" {self.config.redis_timeout} s ({e};"
                    f" --redis-wait-replicas={self.config.redis_wait_replicas}):"
                    " a send may have been stored; resend it with the same idempotencyKey"
                ]
            if attempt:
                details.append(
                    f"retry with ?attempt={attempt} to get what this request may have taken"
                )
            raise unavailable(*details) from e
        except OutOfMemory as e:
            raise self.insufficient_storage("nothing was stored") from e

    def insufficient_storage(self, *details: str) -> APIError:
        """507: Redis is out of memory (maxmemory with noeviction)."""
        self.metrics.redis_errors.labels("OutOfMemoryError").inc()
        return APIError(507, "Redis is out of memory", *details)
