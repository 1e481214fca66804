"""The application: the small endpoints, the access log, and make_app() with every route."""

import asyncio
import json
import logging
import os
from typing import Any

import tornado.web

from .. import __version__, logs, metrics
from ..metrics import Metrics
from ..store import Shard, Store, Unavailable, replication
from ..store.failures import problem
from . import validation
from .base import APIHandler, Context, unavailable
from .errors import APIError
from .inbox import InboxHandler

log = logging.getLogger("echoes")
access_log = logging.getLogger(logs.ACCESS)


class StatusHandler(APIHandler):
    """POST /status: what became of each copy of one of the caller's messages."""

    allow = "POST, OPTIONS"

    async def post(self) -> None:
        refused = self.context.origins.refusal(self.request.headers)
        if refused:
            raise APIError(403, refused)
        caller = validation.caller(self.request.headers.get_list("From"), self.config)
        validation.no_other_parameters(self.request.query_arguments, ())
        key, destinations = validation.status_query(self.request.body, self.config)
        states = await self.redis(self.store.status(caller, key, destinations))
        answer = []
        for copy in states:
            item = {"destination": copy.destination, "state": copy.state}
            if copy.consumed_at:
                item["consumedAt"] = copy.consumed_at
            answer.append(item)
        self.finish(json.dumps(answer, separators=(",", ":")))


class RootHandler(APIHandler):
    """GET / and HEAD /: name and version."""

    allow = "GET, HEAD, OPTIONS"

    def get(self) -> None:
        self.finish({"name": "echoes", "version": __version__})

    head = get


class HealthHandler(APIHandler):
    """GET /health: 200 when Redis answers, every shard has the replicas the wait needs (and
    its cluster is up), and the wake-up listener is subscribed, else 503."""

    allow = "GET, HEAD, OPTIONS"

    async def get(self) -> None:
        listener, wait = self.context.listener, self.config.redis_wait_replicas
        trouble, found = await self._redis()
        for failure in trouble.values():
            self.metrics.redis_errors.labels(failure.kind).inc()
        problems = [problem(name, failure) for name, failure in trouble.items()]
        problems += [text for shard in found if (text := shard.short(wait))]
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
                "waiters": len(self.context.waiters),
                "redis": {
                    "topology": self.store.servers.kind,
                    "servers": listener.servers,
                    "waitReplicas": wait,
                    "replicas": {shard.server: shard.replicas for shard in found},
                },
                "warnings": [text for shard in found if (text := shard.spare(wait))],
            }
        )

    async def _redis(self) -> tuple[dict[str, Unavailable], list[Shard]]:
        """What is wrong with each server (store.ping), and each shard's replication."""
        try:
            async with asyncio.timeout(self.config.redis_timeout):
                return await asyncio.gather(self.store.ping(), _replication(self.store))
        except TimeoutError:
            return {self.config.redis_display: Unavailable("TimeoutError")}, []

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
        try:  # each shard's replicas, for the alert on a stranded shard
            async with asyncio.timeout(self.config.redis_timeout):
                found = await _replication(self.store)
        except TimeoutError:
            found = []
        wait = self.config.redis_wait_replicas
        for shard in found:
            self.metrics.redis_replicas.labels(shard.server).set(shard.replicas)
            self.metrics.redis_shard_ok.labels(shard.server).set(int(not shard.short(wait)))
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(self.metrics.exposition())


async def _replication(store: Store) -> list[Shard]:
    """Each shard's replication, or [] when the servers cannot be known (store.ping says)."""
    try:
        return await replication(store.servers)
    except Unavailable:
        return []


class OpenAPIHandler(APIHandler):
    """GET /openapi.json: the OpenAPI 3.1 document of this API."""

    allow = "GET, OPTIONS"

    def get(self) -> None:
        self.finish(self.context.openapi)


class NotFoundHandler(APIHandler):
    """Every unknown path: 404 in the error shape."""

    def prepare(self) -> None:
        raise APIError(404, f"no such endpoint: {self.request.path}")


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
    m: Metrics = handler.context.metrics  # type: ignore[attr-defined]
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
    logs.access(level, fields)


def make_app(context: Context) -> tornado.web.Application:
    """The Tornado application serving the echoes API."""
    return tornado.web.Application(
        routes(),
        context=context,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )


def routes() -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    """Every endpoint of the API."""
    return [
        (r"/", RootHandler, {}),
        (r"/send", InboxHandler, {"sends": True}),
        (r"/receive", InboxHandler, {"receives": True}),
        (r"/exchange", InboxHandler, {"sends": True, "receives": True}),
        (r"/status", StatusHandler, {}),
        (r"/health", HealthHandler, {}),
        (r"/metrics", MetricsHandler, {}),
        (r"/openapi.json", OpenAPIHandler, {}),
    ]
