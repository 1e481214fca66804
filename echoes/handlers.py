"""HTTP endpoints, the base handler they share, the access log, and make_app()."""

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import tornado.web

from . import __version__, logs, metrics, openapi, schemas, validation
from .config import Settings
from .errors import APIError, error_body
from .failures import AUTHENTICATION, OutOfMemory, Unavailable, problem
from .listener import ListenerState
from .metrics import Metrics
from .origins import Origins
from .store import Message, Outcome, Store, Take, TooLarge
from .waiters import CallerFull, Full, Waiter, Waiters

log = logging.getLogger("echoes")
access_log = logging.getLogger("echoes.access")
T = TypeVar("T")

RETRY_AFTER_SECONDS = "1"
# Longest a new waiter waits for its inbox's subscription before its first take; past it the
# periodic sweep (--recheck-interval) still finds its records.
COVER_SECONDS = 1.0
# A body over --max-body-size announced by Content-Length is read and dropped, up to this
# many bytes, before the 413 is sent: a client that writes its whole body before reading
# (urllib, most scripts) then reads the 413 instead of a connection reset. Larger ones are
# answered at once and the connection closed, as nginx does past its own bound.
DISCARD_BODY_BYTES = 64 << 20


def unavailable(*details: str) -> APIError:
    """A 503 that tells the client when to try again."""
    return APIError(503, *details, headers={"Retry-After": RETRY_AFTER_SECONDS})


class APIHandler(tornado.web.RequestHandler):
    """Base of every endpoint: JSON out, CORS headers, one error shape.

    Every response is JSON. Every error, including Tornado's own 404 and 405, has the body
    ``{"error": <reason phrase>, "status": <code>, "details": [<what to fix>, ...]}``;
    a client mistake is a 4xx and never a stack trace, Redis unavailable is a 503.
    Handlers reach the configuration, store, waiters, listener state and metrics through
    the application settings (see make_app).
    """

    allow = "OPTIONS"
    # What the access log reports: message copies stored, records taken, waited or not.
    sent = taken = 0
    waited = False

    @property
    def config(self) -> Settings:
        return self.application.settings["config"]

    @property
    def store(self) -> Store:
        return self.application.settings["store"]

    @property
    def metrics(self) -> Metrics:
        return self.application.settings["metrics"]

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        allowed = self.application.settings["origins"].cors_header(self.request.headers)
        if allowed:
            self.set_header("Access-Control-Allow-Origin", allowed)
            self.set_header("Vary", "Origin")
            self.set_header(
                "Access-Control-Expose-Headers",
                f"{schemas.REMAINING_HEADER}, {schemas.ATTEMPT_HEADER}",
            )

    def options(self, *args: str) -> None:
        """CORS preflight: POST with the From and Content-Type headers, for allowed origins."""
        if not self.application.settings["origins"].cors_header(self.request.headers):
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


@tornado.web.stream_request_body
class InboxHandler(APIHandler):
    """POST /send, /receive and /exchange: parse, check, one store call, write.

    With ?wait=S and nothing to take, the request waits for a wake-up (see waiters.py), then
    takes again, until a record comes or S seconds pass. A client that disconnects while
    waiting is forgotten: nothing is taken on its behalf.
    """

    allow = "POST, OPTIONS"

    def initialize(self, sends: bool, receives: bool) -> None:
        self.sends, self.receives = sends, receives
        self.chunks: list[bytes] | None = None
        self.waiter: Waiter | None = None
        self.gone = False
        self.discarding = False
        self.caller = ""

    def prepare(self) -> None:
        if self.request.method != "POST":
            return  # 405 or a preflight: nothing is read or stored
        origins: Origins = self.application.settings["origins"]
        refused = origins.refusal(self.request.headers)
        if refused:
            raise APIError(403, refused)
        # The body is not read yet: an oversized one is never buffered (see DISCARD_BODY_BYTES).
        length = self.request.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > self.config.max_body_size:
            if int(length) > DISCARD_BODY_BYTES:
                raise APIError(413, self.too_large_detail())
            self.request.connection.set_max_body_size(int(length))  # type: ignore[union-attr]
            self.discarding = True

    def too_large_detail(self) -> str:
        return f"the body is larger than {self.config.max_body_size} bytes (--max-body-size)"

    def data_received(self, chunk: bytes) -> None:
        if self.discarding:
            return
        if self.chunks is None:
            self.chunks = []
        self.chunks.append(chunk)

    def on_connection_close(self) -> None:
        self.gone = True
        if self.waiter:
            self.waiter.wake()

    async def post(self) -> None:
        """Store the message (send), then take the caller's records (receive)."""
        if self.discarding:
            raise APIError(413, self.too_large_detail())
        self.caller = validation.caller(self.request.headers.get_list("From"), self.config)
        message, take = self.parse()
        with self.application.settings["inflight"]:
            if take and take.wait > 0:
                outcome = await self.wait_for_records(self.caller, message, take)
            else:
                outcome = await self.exchange(self.caller, message, take)
        self.sent, batch = outcome.sent, outcome.batch
        if batch:
            self.taken = batch.count
            self.metrics.acked.inc(batch.acks)
        self.check_sent(outcome, take)
        if self.gone:
            return
        if batch is None:
            self.finish({"sent": self.sent})
            return
        self.set_header(schemas.REMAINING_HEADER, str(batch.remaining))
        self.set_header(schemas.ATTEMPT_HEADER, take.attempt if take else "")
        await self.finish_within(batch.json, self.config.write_timeout)

    def parse(self) -> tuple[Message | None, Take | None]:
        """The message and the take this request asks for; the raw body is let go."""
        query = self.request.query_arguments
        validation.no_other_parameters(query, validation.TAKE_PARAMETERS if self.receives else ())
        body, self.chunks = b"".join(self.chunks or ()), None
        message = validation.message(body, self.config) if self.sends else None
        take = validation.take(query, self.config) if self.receives else None
        return message, take

    async def finish_within(self, answer: bytes, timeout: float) -> None:
        """Finish with ``answer``; cut off a client that has not read it after ``timeout`` s.

        Tornado buffers whatever the socket does not take: a client that never reads would
        pin the answer (up to --max-batch-bytes) for as long as it keeps the connection.
        """
        written = self.finish(answer)
        done, _ = await asyncio.wait({written}, timeout=timeout)
        if not done:
            log.warning("client did not read its answer within %s s; disconnected", timeout)
            self.metrics.slow_readers.inc()
            self.request.connection.stream.close()  # type: ignore[union-attr]

    def check_sent(self, outcome: Outcome, take: Take | None) -> None:
        """507 when Redis refused a copy for lack of memory, 429 when an inbox was full."""
        if not (outcome.out_of_memory or outcome.full):
            return
        details = [f"stored for {outcome.sent} of the destinations"]
        if take and outcome.batch and outcome.batch.count:
            details.append(
                f"the records this request took are kept: POST /receive?attempt={take.attempt}"
                f" within {self.config.attempt_ttl} s to get them"
            )
        if outcome.out_of_memory:
            raise self.insufficient_storage(*details)
        names = ", ".join(repr(n) for n in outcome.full[:10])
        more = f" and {len(outcome.full) - 10} more" if len(outcome.full) > 10 else ""
        limit = self.config.max_inbox_records
        raise APIError(429, f"inbox full ({limit} records waiting): {names}{more}", *details)

    async def exchange(self, caller: str, message: Message | None, take: Take | None) -> Outcome:
        """One store call, within redis_timeout."""
        try:
            return await self.redis(
                self.store.exchange(caller, message, take), take.attempt if take else None
            )
        except TooLarge as e:
            raise APIError(
                413, str(e), f"--max-request-bytes={self.config.max_request_bytes}"
            ) from None

    async def wait_for_records(self, caller: str, message: Message | None, take: Take) -> Outcome:
        """Send, take; while nothing was taken, wait for a wake-up and take again."""
        waiters: Waiters = self.application.settings["waiters"]
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
                outcome = await self.exchange(caller, None, take)
            return dataclasses.replace(outcome, sent=sent)
        finally:
            self.metrics.waiters.dec()
            waiters.unregister(self.waiter)
            self.waiter = None


class RootHandler(APIHandler):
    """GET / and HEAD /: name and version."""

    allow = "GET, HEAD, OPTIONS"

    def get(self) -> None:
        self.finish({"name": "echoes", "version": __version__})

    head = get


class HealthHandler(APIHandler):
    """GET /health: 200 when Redis answers and the wake-up listener is subscribed, else 503."""

    allow = "GET, HEAD, OPTIONS"

    async def get(self) -> None:
        listener: ListenerState = self.application.settings["listener"]
        try:
            async with asyncio.timeout(self.config.redis_timeout):
                trouble = await self.store.ping()
        except TimeoutError:
            trouble = {self.config.redis_display: Unavailable("TimeoutError")}
        for failure in trouble.values():
            self.metrics.redis_errors.labels(failure.kind).inc()
        problems = [problem(name, failure) for name, failure in trouble.items()]
        if not listener.connected:
            problems.append("the wake-up listener is not subscribed")
        if problems:
            raise unavailable(*problems)
        self.finish(
            {
                "status": "ok",
                "version": __version__,
                "pid": os.getpid(),
                "wake": listener.mode,
                "notifications": listener.notifications,
                "waiters": len(self.application.settings["waiters"]),
                "redis": {"topology": self.store.servers.kind, "servers": listener.servers},
            }
        )

    head = get


class MetricsHandler(APIHandler):
    """GET /metrics: Prometheus text format."""

    allow = "GET, OPTIONS"

    async def get(self) -> None:
        try:  # Redis's memory, for the alert on it; a scrape still answers without Redis
            for server, used, limit in await self.redis(self.store.memory()):
                self.metrics.redis_up.labels(server).set(int(used is not None))
                if used is not None and limit is not None:
                    self.metrics.redis_memory.labels("used", server).set(used)
                    self.metrics.redis_memory.labels("max", server).set(limit)
        except APIError as e:
            log.debug("no Redis memory figures for /metrics: %s", e)
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(self.metrics.exposition())


class OpenAPIHandler(APIHandler):
    """GET /openapi.json: the OpenAPI 3.1 document of this API."""

    allow = "GET, OPTIONS"

    def get(self) -> None:
        self.finish(self.application.settings["openapi"])


class NotFoundHandler(APIHandler):
    """Every unknown path: 404 in the error shape."""

    def prepare(self) -> None:
        raise APIError(404, f"no such endpoint: {self.request.path}")


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


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log line and the request metrics, once per request."""
    request, status = handler.request, handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    duration = request.request_time()
    sent, taken = getattr(handler, "sent", 0), getattr(handler, "taken", 0)
    waited = getattr(handler, "waited", False)
    # Label by route, never by an arbitrary path: unknown paths would grow the series forever.
    routed = isinstance(handler, APIHandler) and not isinstance(handler, NotFoundHandler)
    endpoint = request.path if routed else "other"
    m: Metrics = handler.application.settings["metrics"]
    m.requests.labels(endpoint, str(status)).inc()
    m.latency.labels(endpoint, "yes" if waited else "no").observe(duration)
    m.sent.inc(sent)
    m.received.inc(taken)
    if not access_log.isEnabledFor(level):
        return
    # The path with its query (a client's ?wait= matters); logfmt() quotes what clients send.
    fields = {"method": request.method, "path": request.uri, "status": status}
    fields |= {"duration_ms": round(duration * 1000, 2), "sent": sent, "taken": taken}
    if access_log.isEnabledFor(logging.DEBUG):
        fields["from"] = getattr(handler, "caller", "")
    access_log.log(level, "%s", logs.logfmt(fields), extra=fields)


def make_app(
    config: Settings,
    store: Store,
    waiters: Waiters,
    listener: ListenerState,
    metrics: Metrics,
) -> tornado.web.Application:
    """The Tornado application serving the echoes API."""
    return tornado.web.Application(
        routes(),
        config=config,
        store=store,
        waiters=waiters,
        listener=listener,
        metrics=metrics,
        inflight=InFlight(),
        origins=Origins(config.cors_origins),
        openapi=openapi.document(config),
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )


def routes() -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    """Every endpoint of the API."""
    return [
        (r"/", RootHandler, {}),
        (r"/send", InboxHandler, {"sends": True, "receives": False}),
        (r"/receive", InboxHandler, {"sends": False, "receives": True}),
        (r"/exchange", InboxHandler, {"sends": True, "receives": True}),
        (r"/health", HealthHandler, {}),
        (r"/metrics", MetricsHandler, {}),
        (r"/openapi.json", OpenAPIHandler, {}),
    ]
