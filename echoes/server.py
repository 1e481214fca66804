"""One echoes process: its parts, how they start, and the orderly shutdown."""

import asyncio
import dataclasses
import logging
import signal
import socket

import redis.asyncio as aioredis
import tornado.httpserver
import tornado.netutil
import tornado.web

from . import listener
from .config import EMBEDDED, Settings
from .embedded import RedisServer
from .handlers import InFlight, make_app
from .keys import Keys
from .store import Store, connect
from .waiters import Waiters

log = logging.getLogger("echoes")

MAX_HEADER_SIZE = 65536
# SIGTERM to exit: waiters answer at once, requests in flight get this long to finish.
DRAIN_SECONDS = 4.0


def make_store(settings: Settings, client: aioredis.Redis | None = None) -> Store:
    """The store for these settings, on ``client`` or else a connection pool of its own."""
    if client is None:
        client = connect(settings.redis_url, settings.redis_timeout, settings.redis_max_connections)
    return Store(
        client,
        Keys(settings.key_prefix),
        message_ttl=settings.message_ttl,
        attempt_ttl=settings.attempt_ttl,
        max_batch_bytes=settings.max_batch_bytes,
        publish=settings.wake == "publish",
    )


def make_server(app: tornado.web.Application, settings: Settings) -> tornado.httpserver.HTTPServer:
    """An HTTP server with every limit set explicitly (Tornado's defaults suit no public server)."""
    return tornado.httpserver.HTTPServer(
        app,
        max_body_size=settings.max_body_size,
        body_timeout=settings.body_timeout,
        idle_connection_timeout=settings.idle_connection_timeout,
        max_header_size=MAX_HEADER_SIZE,
    )


class Echoes:
    """The parts of one process: store, waiters, wake-up listener, application, HTTP server.

    ``client`` replaces the Redis connections (tests pass fakeredis).
    """

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None):
        self.settings = settings
        self.store = make_store(settings, client)
        self.waiters = Waiters(settings.max_waiters)
        self.listener = listener.Listener(
            client or listener.connect(settings.redis_url, settings.redis_timeout),
            self.store,
            self.waiters,
            settings.wake,
            settings.recheck_interval,
        )
        self.app = make_app(settings, self.store, self.waiters)
        self.inflight: InFlight = self.app.settings["inflight"]
        self.server = make_server(self.app, settings)
        self._listening: asyncio.Task[None] | None = None

    def start(self, sockets: list[socket.socket]) -> None:
        """Serve on ``sockets`` and start the wake-up listener."""
        self._listening = asyncio.create_task(self.listener.run())
        self.server.add_sockets(sockets)

    async def stop(self) -> None:
        """Stop accepting, answer waiters with [], let requests in flight finish, close."""
        self.server.stop()
        self.waiters.close()
        if not await self.inflight.drained(DRAIN_SECONDS):
            log.warning("%d requests still in flight at shutdown", self.inflight.count)
        await self.server.close_all_connections()
        if self._listening:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        await self.listener.client.aclose()
        await self.store.client.aclose()


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    embedded = None
    if settings.redis_url == EMBEDDED:
        embedded = RedisServer(settings.data_dir)
        embedded.start()
        settings = dataclasses.replace(settings, redis_url=embedded.url)
    echoes = Echoes(settings)
    echoes.start(tornado.netutil.bind_sockets(settings.port, settings.address))
    log.info(
        "echoes listening on http://%s:%d, Redis at %s, wake-ups by %s",
        settings.address,
        settings.port,
        settings.redis_display,
        settings.wake,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = asyncio.create_task(embedded.supervise()) if embedded else None
    try:
        await stop.wait()
        log.info("stopping")
        await echoes.stop()
    finally:
        if supervisor:
            supervisor.cancel()
        if embedded:
            embedded.stop()
