"""One echoes process or several: their parts, start-up, readiness and orderly shutdown."""

import asyncio
import collections
import contextlib
import dataclasses
import gc
import importlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
import tornado.http1connection
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from tornado.iostream import IOStream

from . import heap, logs, metrics, processes, systemd, topology
from .config import DEFAULT_REDIS_URL, EMBEDDED, ConfigError, Settings
from .embedded import RedisServer
from .http import accept, malformed
from .http.app import make_app
from .http.base import Context
from .metrics import Metrics
from .store import Store, Unavailable, servers, shards
from .store.failures import classified, problem
from .store.keys import Keys
from .wake import listener
from .wake.waiters import Waiters

log = logging.getLogger("echoes")
Reload = Callable[[], Settings]

MAX_HEADER_SIZE = 65536
# Options a SIGHUP cannot apply: they shape sockets, processes, Redis clients and key names.
RESTART_ONLY = frozenset(
    {
        "address",
        "port",
        "processes",
        "redis_url",
        "data_dir",
        "key_prefix",
        "wake",
        "redis_max_connections",
    }
)
# Thousands of long-poll clients reconnect at once after a restart: Tornado's default
# backlog (128) drops their SYNs and they retry seconds later. The kernel caps it at somaxconn.
LISTEN_BACKLOG = 4096
# SIGTERM to exit: waiters answer at once, requests in flight get this long to finish.
DRAIN_SECONDS = 4.0
CLOSE_SECONDS = 0.9
# Python collects its oldest generation of objects after 10 collections of the middle one
# (and once what survived into it since its last full collection is a quarter of what it
# holds). Ten thousand waiting requests are a million tracked objects: each full collection
# then holds the event loop 0.1-0.7 s, and with 10 there were 18 of them while 10,000 long
# polls arrived, and some in the seconds after, the wake-up p99's swing (BENCHMARKS.md).
# With 100, three. Young garbage is collected as before (the first two thresholds stay).
FULL_COLLECTION_AFTER = 100
# Not ready this long after start: say once why (in the log, and to systemd's status).
EXPLAIN_SECONDS = 2.0
EMBEDDED_HINT = (
    "nothing answers at the default --redis-url (redis://127.0.0.1:6379/0): start Redis there,"
    " point --redis-url at yours, or run echoes on a private Redis of its own with"
    " `echoes --redis-url=embedded`"
)


def make_servers(settings: Settings, client: aioredis.Redis | None = None) -> servers.Servers:
    """The Redis servers --redis-url names, or ``client``'s one server (tests: fakeredis)."""
    if client is None:
        return servers.connect(settings)
    return servers.Servers(client, settings, settings.redis_display, subscriber=client)


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server, whose accept loop pauses when out of file descriptors, and
    whose own refusals of unparsable requests come in the error shape (malformed.py)."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._stream_class = malformed.stream_class(self._metrics())
        self._trusted = frozenset(self.trusted_downstream or ())

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        stream.__class__ = self._stream_class  # the same stream, answering 400s in shape
        lighten(stream)
        # HTTPServer.handle_stream, but for the context's copy of trusted_downstream, a set
        # of its own per connection (216 bytes, empty here) that is only ever read: the
        # connections share one frozenset of it instead.
        context = tornado.httpserver._HTTPRequestContext(stream, address, self.protocol, None)
        context.trusted_downstream = self._trusted  # type: ignore[assignment]
        conn = tornado.http1connection.HTTP1ServerConnection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)

    def _metrics(self) -> Metrics | None:
        context = getattr(self.request_callback, "settings", {}).get("context")
        return context.metrics if context else None  # None in bench.ceiling's app

    def set_limits(self, settings: Settings) -> None:
        """Give connections accepted from now on the limits of ``settings`` (not named
        configure: Tornado's Configurable has a classmethod of that name)."""
        params = self.conn_params
        params.max_body_size = settings.max_body_size
        params.body_timeout = settings.body_timeout
        params.header_timeout = settings.idle_connection_timeout

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        # TCPServer.add_sockets with echoes' accept handler (accept.py says why); stop()
        # calls the returned remover as it would Tornado's.
        metrics = self._metrics()
        paused = metrics.accept_paused.inc if metrics else lambda: None
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept.add_accept_handler(
                sock, self._handle_connection, paused
            )


class Queue(list[Any]):
    """A list with deque's popleft, for the two queues Tornado keeps per connection.

    An empty collections.deque is 760 bytes (it allocates a block of 64 slots at once), and
    an IOStream has two, empty but for the moments a response is being written: 1.5 KB of
    each of ten thousand long polls. These queues hold a few items at most (one per write
    not yet sent; a write of over 2 KB is one item), so popping the first is cheap.
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def lighten(stream: IOStream) -> None:
    """Swap the stream's empty deques for Queues (left as they are unless they are empty
    deques where Tornado 6.4 to 6.x keeps them)."""
    buffer = stream._write_buffer
    for owner, name in ((stream, "_write_futures"), (buffer, "_buffers")):
        queue = getattr(owner, name, None)
        if type(queue) is collections.deque and not queue:
            setattr(owner, name, Queue())


def make_server(app: tornado.web.Application, settings: Settings) -> HTTPServer:
    """An HTTP server with every limit set explicitly (Tornado's defaults suit no public server)."""
    return HTTPServer(
        app,
        max_body_size=settings.max_body_size,
        body_timeout=settings.body_timeout,
        idle_connection_timeout=settings.idle_connection_timeout,
        max_header_size=MAX_HEADER_SIZE,
    )


class Echoes:
    """The parts of one process: store, waiters, wake-up listener, metrics, app, HTTP server.

    ``client`` replaces the Redis connections (tests pass fakeredis).
    """

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None):
        self.settings = settings
        self.metrics = metrics.Metrics(settings.wake, settings.max_waiters)
        self.metrics.configure(settings)
        keys = Keys(settings.key_prefix)
        redis_servers = make_servers(settings, client)
        self.store = Store(redis_servers, keys, settings)
        self.waiters = Waiters(settings.max_waiters, settings.max_waiters_per_caller)
        self.listener = listener.Listener(
            redis_servers,
            self.store,
            keys,
            self.waiters,
            settings.wake,
            settings.recheck_interval,
            self.metrics,
        )
        self.context = Context.of(
            settings, self.store, self.waiters, self.listener.state, self.metrics
        )
        self.app = make_app(self.context)
        self.inflight = self.context.inflight
        self.server = make_server(self.app, settings)
        self._listening: asyncio.Task[None] | None = None
        self._refreshing: tornado.ioloop.PeriodicCallback | None = None

    def reconfigure(self, new: Settings) -> None:
        """Apply what changed in ``new`` that can change while running; log the rest."""
        old = self.settings
        changed = [
            f.name
            for f in dataclasses.fields(Settings)
            if getattr(old, f.name) != getattr(new, f.name)
        ]
        later = [name for name in changed if name in RESTART_ONLY]
        self.settings = dataclasses.replace(new, **{name: getattr(old, name) for name in later})
        self._apply(self.settings)
        live = [_change(name, old, new) for name in changed if name not in RESTART_ONLY]
        log.info(
            "reloaded the configuration: %s; needs a restart to change: %s",
            ", ".join(live) or "nothing changed",
            ", ".join(later) or "nothing",
        )

    def _apply(self, settings: Settings) -> None:
        """Hand every part the options it reads while running."""
        for part in (self.context, self.store, self.waiters, self.metrics, self.listener):
            part.configure(settings)
        self.server.set_limits(settings)
        logs.configure(settings.log_level, settings.log_format, settings.processes != 1)

    def start(self, sockets: list[socket.socket]) -> None:
        """Serve on ``sockets`` and start the wake-up listener."""
        self._listening = asyncio.create_task(self.listener.run())
        self.server.add_sockets(sockets)
        if self.metrics.process:  # several workers: each keeps its own process_* current
            self._refreshing = tornado.ioloop.PeriodicCallback(self.metrics.process.refresh, 5000)
            self._refreshing.start()

    async def ready(self) -> None:
        """Return once Redis answered and the wake-up listener is subscribed."""
        await self.listener.subscribed.wait()
        with contextlib.suppress(Unavailable, TimeoutError):  # only warnings: never block readiness
            async with asyncio.timeout(self.settings.redis_timeout):
                await self.store.check_settings()
                wait = self.settings.redis_wait_replicas
                await classified(shards.warn_about(self.store.servers, wait))
                for name, failure in (await self.store.ping()).items():
                    if failure.kind == "NotLoaded":  # every request would be answered 503
                        log.error("%s", problem(name, failure))

    async def why_not_ready(self) -> str:
        """Why Redis cannot serve yet, in words, with the fix where there is one."""
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                trouble = await self.store.ping()
        except TimeoutError:
            trouble = {self.settings.redis_display: Unavailable("TimeoutError")}
        said = [problem(name, failure) for name, failure in trouble.items()]
        refused = any(failure.kind == "ConnectionError" for failure in trouble.values())
        if refused and self.settings.redis_url == DEFAULT_REDIS_URL:
            said = [EMBEDDED_HINT]
        return "; ".join(said) or "the wake-up listener is not subscribed yet"

    async def stop(self) -> None:
        """Stop accepting, answer waiters with [], let requests in flight finish, close."""
        self.server.stop()
        if self._refreshing:
            self._refreshing.stop()
        self.waiters.close()
        if not await self.inflight.drained(DRAIN_SECONDS):
            log.warning("%d requests still in flight at shutdown", self.inflight.count)
        if self._listening:
            self._listening.cancel()
        try:
            # Closing sockets to a Redis that was just restarted can stall: the exit within
            # 5 s that systemd and clients count on matters more than a tidy close.
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.server.close_all_connections()
                if self._listening:
                    await asyncio.gather(self._listening, return_exceptions=True)
                await self.store.close()
        except TimeoutError:
            log.warning("connections still closing after %.0f s; exiting anyway", CLOSE_SECONDS)


async def serve(
    settings: Settings, sockets: list[socket.socket], reload: Reload | None = None
) -> None:
    """Serve on ``sockets`` until SIGTERM or SIGINT, reloading on SIGHUP; tell systemd."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
    echoes = Echoes(settings)
    echoes.start(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload:
        loop.add_signal_handler(signal.SIGHUP, reloading, echoes, reload)
    helpers = [asyncio.create_task(announce_ready(echoes))]
    interval = systemd.watchdog_interval()
    if interval:
        helpers.append(asyncio.create_task(watchdog(interval)))
    await stop.wait()
    systemd.notify("STOPPING=1")
    log.info("stopping")
    for task in helpers:
        task.cancel()
    try:
        await echoes.stop()
    finally:
        logs.flush()  # a worker ends by os._exit, which runs no atexit


def _change(name: str, old: Settings, new: Settings) -> str:
    """``name old -> new``, with no password shown."""
    show = topology.display if name == "redis_url" else repr
    return f"{name} {show(getattr(old, name))} -> {show(getattr(new, name))}"


def reloading(echoes: Echoes, reload: Reload) -> None:
    """SIGHUP: read the configuration again and apply what can change while running."""
    systemd.notify("RELOADING=1")
    try:
        echoes.reconfigure(reload())
    except ConfigError as e:
        log.error("reload refused, the running configuration stays: %s", e)
    finally:
        systemd.notify("READY=1")


async def announce_ready(echoes: Echoes) -> None:
    """READY=1 to systemd once Redis answered and wake-ups are armed; if that takes longer
    than EXPLAIN_SECONDS, say once why, and tell systemd's status."""
    try:
        async with asyncio.timeout(EXPLAIN_SECONDS):
            await echoes.ready()
    except TimeoutError:
        why = await echoes.why_not_ready()
        log.error("not ready: %s", why)
        systemd.notify(f"STATUS=not ready: {why}")
        await echoes.ready()
        systemd.notify("STATUS=ready")
    systemd.notify("READY=1")
    log.info("ready: Redis answers and the wake-up listener is subscribed")


async def watchdog(interval: float) -> None:
    """WATCHDOG=1 while the event loop runs."""
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def run(settings: Settings, reload: Reload | None = None) -> int:
    """Start the embedded Redis if asked, bind, and serve in one process or several.

    ``reload`` reads the configuration again (SIGHUP).
    """
    heap.keep_freed_memory()
    embedded = None
    if settings.redis_url == EMBEDDED:
        embedded = RedisServer(settings.data_dir)
        embedded.start()
        settings = dataclasses.replace(settings, redis_url=embedded.url)
        if reload:
            reload = _with_redis_url(reload, embedded.url)
    sockets = tornado.netutil.bind_sockets(settings.port, settings.address, backlog=LISTEN_BACKLOG)
    count = settings.processes or os.cpu_count() or 1
    log.info(
        "echoes listening on http://%s:%d (%d process%s), Redis at %s, wake-ups by %s",
        settings.address,
        sockets[0].getsockname()[1],  # the port bound: another than --port=0's
        count,
        "" if count == 1 else "es",
        settings.redis_display,
        settings.wake,
    )
    try:
        if count == 1:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(serve_with(settings, sockets, embedded, reload))
            return 0
        return run_workers(count, settings, sockets, embedded, reload)
    finally:
        if embedded:
            embedded.stop()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where the ``uvloop`` extra is installed, else asyncio's (None).

    An extra, not the default: /exchange's rate +9% with it, but 10,000 waiting requests
    take 8 MB more (BENCHMARKS.md).
    """
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    log.info("event loop: uvloop %s", uvloop.__version__)
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _with_redis_url(reload: Reload, url: str) -> Reload:
    """``reload``, with the embedded Redis's URL where the configuration says 'embedded'."""

    def reread() -> Settings:
        settings = reload()
        if settings.redis_url == EMBEDDED:
            settings = dataclasses.replace(settings, redis_url=url)
        return settings

    return reread


async def serve_with(
    settings: Settings,
    sockets: list[socket.socket],
    embedded: RedisServer | None,
    reload: Reload | None = None,
) -> None:
    """serve(), restarting the embedded Redis whenever it dies."""
    supervisor = asyncio.create_task(embedded.supervise()) if embedded else None
    try:
        await serve(settings, sockets, reload)
    finally:
        if supervisor:
            supervisor.cancel()


def run_workers(
    count: int,
    settings: Settings,
    sockets: list[socket.socket],
    embedded: RedisServer | None,
    reload: Reload | None = None,
) -> int:
    """``count`` worker processes on the same sockets (metrics: see __main__)."""

    def reaped(pid: int) -> None:
        metrics.mark_process_dead(pid)
        if embedded and not embedded.running:
            log.error("embedded redis-server exited; restarting it")
            embedded.start()

    def work() -> int:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings, sockets, reload))
        return 0

    return processes.supervise(count, work, reaped)
