"""The base handler every endpoint shares (JSON out, one error shape, Redis trouble as
HTTP), and the one typed object that hands handlers what they use."""

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import tornado.web

from ..config import Settings
from ..metrics import Metrics
from ..store import OutOfMemory, OverQuota, Store, Unavailable
from ..store.failures import AUTHENTICATION, SENTINEL_AUTHENTICATION
from ..wake.state import ListenerState
from ..wake.waiters import Waiters
from . import openapi, schemas
from .budget import Budget, Crowded
from .errors import APIError, error_body
from .origins import Origins

log = logging.getLogger("echoes")
T = TypeVar("T")

RETRY_AFTER_SECONDS = "1"
# What a browser's script may read of a 429 or 503 besides the body.
EXPOSED_LIMITS = "Retry-After, RateLimit-Policy, RateLimit"


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
    budget: Budget

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
        budget = Budget(config)
        return cls(config, store, waiters, listener, metrics, origins, document, InFlight(), budget)

    def configure(self, settings: Settings) -> None:
        """Use ``settings`` from the next request on."""
        self.config = settings
        self.origins = Origins(settings.cors_origins)
        self.budget.configure(settings)


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


def rate_limit_policy(config: Settings) -> str:
    """The sender quotas as a RateLimit-Policy field (draft-ietf-httpapi-ratelimit-headers):
    the burst of requests, refilled at --sender-rate, and the bytes held, freed as they are
    consumed or expire (--message-ttl)."""
    policies = []
    if config.sender_rate:
        window = max(1, math.ceil(config.sender_burst / config.sender_rate))
        policies.append(f'"sender-rate";q={config.sender_burst};w={window}')
    if config.max_sender_bytes:
        policies.append(
            f'"sender-bytes";q={config.max_sender_bytes};qu="content-bytes";w={config.message_ttl}'
        )
    return ", ".join(policies)


def over_quota(error: OverQuota, config: Settings) -> APIError:
    """A 429 for a sender past a quota: Retry-After, RateLimit-Policy and RateLimit."""
    wait = max(1, math.ceil(error.retry_after))
    if error.limit == "sender_rate":
        current = f'"sender-rate";r=0;t={wait}'
    else:
        left = max(0, config.max_sender_bytes - error.held)
        current = f'"sender-bytes";r={left};t={wait}'
    headers = {"Retry-After": str(wait), "RateLimit-Policy": rate_limit_policy(config)}
    return APIError(429, str(error), headers=headers | {"RateLimit": current})


def crowded(error: Crowded) -> APIError:
    """429 for a caller past its share of the process's bytes in flight, 503 for a full
    process; either with Retry-After."""
    status = 429 if error.limit == "caller_in_flight" else 503
    return APIError(status, str(error), headers={"Retry-After": RETRY_AFTER_SECONDS})


# What Tornado (6.4 to 6.x) sets on a handler in the requests echoes serves: in
# RequestHandler.__init__ and clear(), _HandlerDelegate.execute and RequestHandler._execute.
TORNADO_ATTRIBUTES = (
    "application",
    "request",
    "ui",
    "_auto_finish",
    "_finished",
    "_headers",
    "_headers_written",
    "_prepared_future",
    "_reason",
    "_status_code",
    "_transforms",
    "_write_buffer",
    "path_args",
    "path_kwargs",
)


class APIHandler(tornado.web.RequestHandler):
    """Base of every endpoint: JSON out, CORS headers, one error shape.

    Every response is JSON. Every error, including Tornado's own 404 and 405, has the body
    ``{"error": <reason phrase>, "status": <code>, "details": [<what to fix>, ...]}``;
    a client mistake is a 4xx and never a stack trace, Redis unavailable is a 503.
    Handlers reach what they use through one typed ``Context`` (``self.context``, the
    application's one setting: Tornado calls set_default_headers before initialize).
    """

    allow = "OPTIONS"
    # Slots for what Tornado sets on a handler and for what the access log reports (message
    # copies stored, records taken, waited or not), not the instance's dict. Python 3.11
    # keeps the attributes of a class's instances in a table of keys they share, but lets
    # it grow by one key less with every instance made: ten thousand long polls arriving
    # at once make ten thousand handlers before any reaches _execute, whose attributes then
    # no longer fit, and every handler from then on has a dict of its own (800 bytes).
    __slots__ = (*TORNADO_ATTRIBUTES, "sent", "taken", "waited")

    def initialize(self) -> None:
        self.sent = self.taken = 0
        self.waited = False
        # Tornado's template namespace refers back to the handler (a cycle each request) and
        # is some 400 bytes of every waiting request; no handler here renders a template.
        # Tornado drops it so itself once a request is finished (_break_cycles).
        self.ui = None  # type: ignore[assignment]

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
                f"{schemas.REMAINING_HEADER}, {schemas.ATTEMPT_HEADER}, {EXPOSED_LIMITS}",
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
            if kind == SENTINEL_AUTHENTICATION:
                details = [
                    f"the sentinels of {self.config.redis_display} refused echoes' credentials"
                    f" ({kind}): see the server's log"
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
        except OverQuota as e:
            self.metrics.refusals.labels(e.limit).inc()
            raise over_quota(e, self.config) from None
        except OutOfMemory as e:
            raise self.insufficient_storage("nothing was stored") from e

    def insufficient_storage(self, *details: str) -> APIError:
        """507: Redis is out of memory (maxmemory with noeviction)."""
        self.metrics.redis_errors.labels("OutOfMemoryError").inc()
        return APIError(507, "Redis is out of memory", *details)
