"""The long-lived process: Redis connection, HTTP server, signals, orderly shutdown."""

import asyncio
import dataclasses
import logging
import signal

import redis.asyncio as aioredis
import tornado.httpserver
import tornado.web

from .config import EMBEDDED, Settings
from .embedded import RedisServer
from .handlers import make_app
from .keys import Keys
from .store import Store, connect

log = logging.getLogger("echoes")

MAX_HEADER_SIZE = 65536


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


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    embedded = None
    if settings.redis_url == EMBEDDED:
        embedded = RedisServer(settings.data_dir)
        embedded.start()
        settings = dataclasses.replace(settings, redis_url=embedded.url)
    store = make_store(settings)
    server = make_server(make_app(settings, store), settings)
    server.listen(settings.port, settings.address)
    log.info(
        "echoes listening on http://%s:%d, Redis at %s",
        settings.address,
        settings.port,
        settings.redis_display,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = asyncio.create_task(embedded.supervise()) if embedded else None
    try:
        await stop.wait()
        log.info("stopping")
        server.stop()
    finally:
        if supervisor:
            supervisor.cancel()
        await store.client.aclose()
        if embedded:
            embedded.stop()
