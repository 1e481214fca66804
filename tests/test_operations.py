"""Running echoes in production: systemd, health, metrics, logs, processes, ACL, the proxy."""

import asyncio
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from conftest import KEY, basic_auth, eventually, needs, needs_redis_7, until, waiters_on, waiting
from conftest import http_get as get
from conftest import http_post as post
from redis.exceptions import NoPermissionError

from echoes import __version__, logs, systemd
from echoes.store import records, scripts

ROOT = Path(__file__).resolve().parent.parent
needs_systemd_analyze = needs("systemd-analyze")
# conf/redis.conf's echoes user may call functions (+fcall): Redis 6.2 knows neither.
needs_functions = needs_redis_7("functions, and the +fcall ACL of conf/redis.conf")


# --- systemd ---------------------------------------------------------------------------------


@needs_systemd_analyze
def test_unit_is_hardened_to_ok_exposure():
    unit = ROOT / "systemd" / "echoes.service"
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for echoes.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5 and match.group(2) == "OK"


@needs_systemd_analyze
def test_unit_verifies(tmp_path):
    # verify also checks that ExecStart exists: point it at the echoes under test.
    echoes = shutil.which("echoes", path=os.path.dirname(sys.executable))
    text = (ROOT / "systemd" / "echoes.service").read_text()
    assert "ExecStart=/opt/echoes/bin/echoes --config=/etc/echoes/echoes.conf" in text
    unit = tmp_path / "echoes.service"
    unit.write_text(text.replace("/opt/echoes/bin/echoes", echoes))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "echoes.service" not in result.stderr, result.stderr


def test_notify_sends_datagrams_to_path_and_abstract_sockets(tmp_path):
    for address in (str(tmp_path / "notify"), "@echoes-test-notify"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address.replace("@", "\0", 1))
            assert systemd.notify("READY=1", {"NOTIFY_SOCKET": address})
            assert sock.recv(64) == b"READY=1"
    assert not systemd.notify("READY=1", {})
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({}) is None


def test_sd_notify_ready_watchdog_stopping(spawn_echoes, settings, tmp_path, monkeypatch):
    address = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}"
    )
    messages = []
    while "READY=1" not in messages:
        messages.append(sock.recv(64).decode())
    # Ready means listening, Redis answering and the listener subscribed: /health agrees.
    assert get(echoes.url + "/health")[0] == 200
    while messages.count("WATCHDOG=1") < 2:
        messages.append(sock.recv(64).decode())
    echoes.popen.send_signal(signal.SIGTERM)
    while "STOPPING=1" not in messages:
        messages.append(sock.recv(64).decode())
    assert echoes.popen.wait(10) == 0
    sock.close()


# --- health, metrics, logs ------------------------------------------------------------------


async def test_health_follows_redis(start_echoes, own_redis):
    echoes = await start_echoes(redis_url=own_redis.url, redis_timeout=1)
    response = await echoes.request("GET", "/health")
    assert response.status == 200 and response.json["status"] == "ok"
    assert response.json["wake"] == "keyspace" and response.json["notifications"] is True
    own_redis.stop()
    response = await echoes.request("GET", "/health")
    assert response.status == 503 and response.json["error"] == "Service Unavailable"
    assert any("Redis" in d for d in response.json["details"])
    own_redis.start()

    async def healthy():
        return (await echoes.request("GET", "/health")).status == 200

    await eventually(healthy, timeout=15)


async def test_metrics_move(echoes):
    def value(name, **labels):
        return echoes.echoes.metrics.registry.get_sample_value(name, labels) or 0

    await echoes.send("a", KEY, ["b", "c"], ack=True)
    await echoes.receive("b")
    task = await waiting(echoes, "d")
    assert value("echoes_waiters") == 1
    await echoes.send("a", KEY, ["d"])
    assert (await task).status == 200
    response = await echoes.request("GET", "/metrics")
    text = response.body.decode()
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'echoes_requests_total{endpoint="/send",status="200"} 2.0' in text
    assert value("echoes_records_sent_total") == 3
    assert value("echoes_records_received_total") == 2
    assert value("echoes_acks_queued_total") == 1
    assert value("echoes_wakeups_total") >= 1 and value("echoes_waiters") == 0
    assert value("echoes_wake_mode", mode="keyspace") == 1
    assert value("echoes_listener_connected") == 1
    assert value("echoes_request_duration_seconds_count", endpoint="/receive", waited="yes") == 1
    await echoes.request("GET", "/no/such/path/1")
    assert value("echoes_requests_total", endpoint="other", status="404") == 1


async def test_one_access_line_per_request_with_from_only_at_debug(echoes, caplog):
    caplog.set_level(logging.INFO, logger="echoes.access")
    await echoes.send("josé", KEY, ["b"])
    [line] = [r for r in caplog.records if r.name == "echoes.access"]
    assert line.method == "POST" and line.path == "/send" and line.status == 200
    assert line.sent == 1 and line.taken == 0 and line.duration_ms >= 0
    assert "josé" not in line.getMessage() and not hasattr(line, "from")
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="echoes.access")
    await echoes.receive("b")
    [line] = [r for r in caplog.records if r.name == "echoes.access"]
    assert getattr(line, "from") == "b" and line.taken == 1


async def test_the_access_line_keeps_the_query_and_quotes_what_clients_send(echoes, caplog):
    # Issue 12: the query (a client's wait) was dropped, and a From of "v status=200 sent=999"
    # forged fields of the line at debug level.
    caplog.set_level(logging.DEBUG, logger="echoes.access")
    await echoes.post("/receive?wait=0.1&limit=5", "v status=200 sent=999")
    [line] = [r.getMessage() for r in caplog.records if r.name == "echoes.access"]
    fields = dict(token.split("=", 1) for token in shlex.split(line))  # as a log shipper would
    assert fields["path"] == "/receive?wait=0.1&limit=5" and fields["status"] == "200"
    assert fields["from"] == "v status=200 sent=999" and fields["sent"] == "0"


def test_json_log_lines_carry_the_extra_fields_an_rfc3339_time_and_the_pid():
    record = logging.LogRecord("echoes.access", logging.INFO, "", 0, "hello %s", ("you",), None)
    record.status = 200
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "hello you" and entry["status"] == 200
    assert entry["level"] == "info" and entry["logger"] == "echoes.access"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert entry["pid"] == os.getpid()


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("journald", [False, True])
@pytest.mark.parametrize("level", [logging.INFO, logging.ERROR])
def test_an_access_line_without_a_record_is_what_the_formatter_makes_of_one(fmt, journald, level):
    # Issue 24: the access lines skip the logging machinery, not a character of their shape.
    fields = {"method": "POST", "path": "/receive?wait=1", "status": 200, "duration_ms": 1.5}
    fields |= {"sent": 0, "taken": 2, "from": 'v "x" status=1'}
    json_lines = fmt == "json"
    formatter = logs.JsonFormatter(journald) if json_lines else logs.TextFormatter(journald, True)
    handler = logs.Handler(sys.stderr)
    lines = logs.AccessLines(handler, fmt, journald, with_pid=True)
    record = logging.LogRecord(logs.ACCESS, level, "", 0, "%s", (logs.logfmt(fields),), None)
    record.__dict__.update(fields)
    assert lines.render(level, fields, record.created) == formatter.format(record) + "\n"


async def test_access_lines_wait_a_moment_in_batches_and_go_before_any_other_line():
    stream = io.StringIO()
    handler = logs.Handler(stream)
    handler.setFormatter(logs.TextFormatter())
    handler.access = lines = logs.AccessLines(handler, "text", journald=False, with_pid=False)
    lines.write(logging.INFO, {"path": "/a"})
    lines.write(logging.INFO, {"path": "/b"})
    handler.writer.drain()
    assert stream.getvalue() == ""
    handler.emit(logging.LogRecord("echoes", logging.WARNING, "", 0, "careful", None, None))
    handler.writer.drain()  # written by the writer's thread
    written = [line.rsplit(": ", 1)[1] for line in stream.getvalue().splitlines()]
    assert written == ["path=/a", "path=/b", "careful"]
    lines.write(logging.INFO, {"path": "/c"})
    await eventually(lambda: "path=/c" in stream.getvalue())  # within ACCESS_FLUSH_SECONDS
    for i in range(logs.ACCESS_BATCH_LINES):
        lines.write(logging.INFO, {"n": i})
    handler.writer.drain()
    assert stream.getvalue().count("n=") == logs.ACCESS_BATCH_LINES  # a full batch at once


def test_access_lines_still_waiting_are_written_at_exit():
    code = (
        "import asyncio, logging; from echoes import logs; logs.configure('info', 'text')\n"
        "async def main():\n  logs.access(logging.INFO, {'path': '/last'})\n"
        "asyncio.run(main())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "echoes.access: path=/last" in result.stderr, result


@pytest.mark.parametrize("processes", [1, 2])
def test_no_access_line_is_lost_at_shutdown(spawn_echoes, settings, processes):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        f"--processes={processes}",
        "--log-level=info",
    )
    for i in range(20):
        assert get(echoes.url + f"/?n={i}")[0] == 200
    echoes.popen.send_signal(signal.SIGTERM)
    assert echoes.popen.wait(10) == 0
    log = echoes.log.read_text()
    assert all(f'path="/?n={i}" status=200' in log for i in range(20)), log


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_under_journald_lines_carry_a_priority_and_no_time_of_their_own(tmp_path, fmt):
    # JOURNAL_STREAM names the stream systemd connected to stderr (here: a file).
    log = tmp_path / "journal"
    # Run the formatter as echoes configures it, in a child whose stderr is that file.
    code = (
        "import logging; from echoes import logs;"
        f"logs.configure('info', {fmt!r}, with_pid=True);"
        "logging.getLogger('echoes').warning('careful'); logging.getLogger('echoes').info('hi')"
    )
    with log.open("w") as stderr:
        stream = os.fstat(stderr.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{stream.st_dev}:{stream.st_ino}")
        subprocess.run([sys.executable, "-c", code], stderr=stderr, env=env, check=True)
    warning, info = log.read_text().splitlines()
    assert warning.startswith("<4>") and info.startswith("<6>")
    if fmt == "text":
        assert re.fullmatch(r"<4>echoes\[\d+\]: careful", warning)
    else:
        assert json.loads(warning[3:])["message"] == "careful"
    # Without JOURNAL_STREAM: no priority prefix, a time of its own.
    with log.open("w") as stderr:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        subprocess.run([sys.executable, "-c", code], stderr=stderr, env=env, check=True)
    assert not log.read_text().startswith("<")


async def test_an_evicting_redis_is_warned_about(start_echoes, own_redis, caplog):
    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.config_set("maxmemory-policy", "allkeys-lru")
    await admin.aclose()
    echoes = await start_echoes(redis_url=own_redis.url)
    await echoes.echoes.ready()
    assert any("allkeys-lru" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


# --- reload on SIGHUP -------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_sighup_reloads_the_log_level_and_limits_and_says_what_needs_a_restart(
    spawn_echoes, settings, tmp_path, processes
):
    # Issue 12: kill -HUP ended echoes without a log line.
    conf = tmp_path / "echoes.conf"
    conf.write_text('log_level = "warning"\nmax_destinations = 1\n')
    echoes = spawn_echoes(
        f"--config={conf}",
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        f"--processes={processes}",
    )
    two = {"idempotencyKey": KEY, "destination": ["b", "c"], "body": 1}
    assert post(echoes.url + "/send", "a", two)[0] == 400  # over max_destinations
    worker_pids(echoes.url, processes)  # every worker serves, so handles SIGHUP
    conf.write_text('log_level = "info"\nmax_destinations = 10\nwake = "publish"\n')
    echoes.popen.send_signal(signal.SIGHUP)
    until(
        lambda: (
            echoes.log.read_text().count("reloaded the configuration") >= processes
            or echoes.popen.poll() is not None
        ),
        what=echoes.log.read_text,
    )
    assert echoes.popen.poll() is None, echoes.log.read_text()
    log = echoes.log.read_text()
    assert "log_level 'warning' -> 'info'" in log and "max_destinations 1 -> 10" in log
    assert "needs a restart to change: wake" in log
    # Every worker took the new limit, and the access lines now show (level info).
    for _ in range(4):
        assert post(echoes.url + "/send", "a", two) == (200, {"sent": 2, "duplicates": 0})
    until(lambda: "path=/send status=200" in echoes.log.read_text(), what=echoes.log.read_text)
    # A bad file on reload keeps the running configuration.
    conf.write_text("max_destinations = 'many'\n")
    echoes.popen.send_signal(signal.SIGHUP)
    until(lambda: "reload refused" in echoes.log.read_text(), what=echoes.log.read_text)
    assert echoes.popen.poll() is None
    assert post(echoes.url + "/send", "a", two) == (200, {"sent": 2, "duplicates": 0})
    echoes.popen.send_signal(signal.SIGTERM)
    assert echoes.popen.wait(10) == 0


def test_sighup_while_the_file_is_empty_keeps_the_running_configuration(
    spawn_echoes, settings, tmp_path
):
    # Issue 23: SIGHUP while the file was momentarily empty was accepted: max_inbox_records
    # 2 -> 10000 and cors_origins 'https://app.example' -> '' (browser requests got 403).
    conf = tmp_path / "echoes.conf"
    conf.write_text("max_inbox_records = 2\ncors_origins = 'https://app.example'\n")
    echoes = spawn_echoes(
        f"--config={conf}",
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
    )
    conf.write_text("")  # an editor, or a writer in place, between truncate and write
    echoes.popen.send_signal(signal.SIGHUP)
    until(lambda: "reload refused" in echoes.log.read_text(), what=echoes.log.read_text)
    assert "no longer sets cors_origins, max_inbox_records" in echoes.log.read_text()
    page = {"Origin": "https://app.example"}
    for n in range(3):
        body = {"idempotencyKey": f"key-{n:012d}", "destination": ["full"], "body": n}
        assert post(echoes.url + "/send", "a", body, headers=page)[0] == (200 if n < 2 else 429)
    echoes.popen.send_signal(signal.SIGTERM)
    assert echoes.popen.wait(10) == 0


# --- several processes ----------------------------------------------------------------------


def worker_pids(url: str, count: int, besides: set[int] = frozenset()) -> set[int]:
    """The pids of ``count`` workers answering /health at ``url`` (not those ``besides``);
    each request is a new connection, which the kernel spreads over the workers."""
    pids: set[int] = set()

    def answered() -> bool:
        status, body = get(url + "/health")
        if status == 200 and json.loads(body)["pid"] not in besides:
            pids.add(json.loads(body)["pid"])
        return len(pids) >= count if not besides else bool(pids)

    until(answered, 20, what=lambda: f"only {pids} answered")
    return pids


def test_two_processes_serve_wake_each_other_and_restart(spawn_echoes, settings):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        "--processes=2",
        "--recheck-interval=60",
    )
    pids = worker_pids(echoes.url, 2)
    assert echoes.popen.pid not in pids

    # Waiters spread over both workers; sends through either wake every one of them.
    from concurrent.futures import ThreadPoolExecutor

    names = [f"user{i}" for i in range(20)]
    with ThreadPoolExecutor(len(names)) as pool:
        waits = [pool.submit(post, echoes.url + "/receive?wait=30", n) for n in names]
        until(lambda: "echoes_waiters 20.0" in get(echoes.url + "/metrics")[1].decode())
        for i, name in enumerate(names):
            body = {"idempotencyKey": f"key-{i:012d}", "destination": [name], "body": i}
            assert post(echoes.url + "/send", "sender", body) == (200, {"sent": 1, "duplicates": 0})
        results = [w.result(timeout=10) for w in waits]
    assert [r[1][0]["body"] for r in results] == list(range(20))

    # process_* per worker (labelled by pid), not summed; the limit summed over workers.
    metrics = get(echoes.url + "/metrics")[1].decode()
    for pid in pids:
        assert f'process_open_fds{{pid="{pid}"}}' in metrics
    assert "echoes_waiters_limit 20000.0" in metrics and "_created" not in metrics

    # A worker killed outright is replaced.
    victim = pids.pop()
    os.kill(victim, signal.SIGKILL)
    worker_pids(echoes.url, 2, besides=pids | {victim})  # a new one answers
    echoes.popen.send_signal(signal.SIGTERM)
    assert echoes.popen.wait(10) == 0


def test_workers_do_not_outlive_a_killed_supervisor(spawn_echoes, settings):
    echoes = spawn_echoes(f"--redis-url={settings.redis_url}", "--processes=2")
    pids = worker_pids(echoes.url, 2)
    echoes.popen.kill()  # SIGKILL: the supervisor cannot forward anything
    echoes.popen.wait()
    until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
        what=lambda: "workers outlived their supervisor",
    )


# --- the least-privilege Redis user of conf/redis.conf --------------------------------------


def acl_rules(user, prefix="echoes:"):
    """The ACL rules of conf/redis.conf's ``user``, with this test's key prefix."""
    [line] = [
        x
        for x in (ROOT / "conf" / "redis.conf").read_text().splitlines()
        if x.startswith(f"user {user} ")
    ]
    rules = line.split()[2:]
    passwords = {">CHANGE-ME": ">pw", ">ADMIN-PASSWORD": ">adminpw"}
    return [passwords.get(r, r.replace("echoes:", prefix)) for r in rules]


# What echoes sends itself, outside its scripts: health, memory figures, wake-ups, the sweep,
# the notification probe (an hset and an hdel), the scripts' calls, big records' bodies (SET,
# MGET), and ROLE (is the master Sentinel names one?).
PYTHON_COMMANDS = {
    *("ping", "info", "fcall", "exists", "hset", "hdel", "role"),
    *("set", "mget"),  # the bodies of big records (records.py)
    *("subscribe", "unsubscribe", "ssubscribe", "sunsubscribe"),  # Cluster: shard channels
}


def test_the_acl_allows_exactly_what_echoes_and_its_scripts_run():
    scripts = "".join(p.read_text() for p in (ROOT / "echoes" / "store" / "lua").glob("*.lua"))
    called = {c.lower() for c in re.findall(r"redis_p?call\('(\w+)'", scripts)}
    allowed = {r[1:] for r in acl_rules("echoes") if r.startswith("+")}
    assert called | PYTHON_COMMANDS == allowed


@pytest.fixture
async def admin(own_redis):
    """A client of own_redis's default user (every right, until a test takes them away)."""
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()  # also when the test failed: no socket left for a later test


@needs_functions
@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_echoes_works_under_the_documented_acl(
    start_echoes, own_redis, admin, settings, wake
):
    await admin.execute_command(
        "ACL", "SETUSER", "echoes", *acl_rules("echoes", settings.key_prefix)
    )
    # The admin loads echoes' function library, as the README says: the echoes user may not.
    printed = subprocess.run(
        [sys.executable, "-m", scripts.__name__], capture_output=True, text=True, check=True
    )
    library = printed.stdout
    assert printed.stderr == ""  # no RuntimeWarning of runpy's for the admin to wonder about
    await admin.execute_command("FUNCTION", "LOAD", "REPLACE", library)
    url = f"unix://echoes:pw@{own_redis.socket}"
    echoes = await start_echoes(redis_url=url, wake=wake, recheck_interval=60)
    await echoes.send("olivia", KEY, ["maurice"], "hi", ack=True)
    task = await waiting(echoes, "george")
    await echoes.send("maurice", KEY, ["george"], "hello")
    assert [r["body"] for r in (await asyncio.wait_for(task, 5)).json] == ["hello"]
    assert [r["type"] for r in await echoes.receive("maurice")] == ["msg"]
    assert [r["type"] for r in await echoes.receive("olivia")] == ["ack"]
    big = "x" * records.BIG_RECORD  # its body is SET and read with MGET (records.py)
    await echoes.send("olivia", "key-000000000002", ["maurice"], big)
    assert [r["body"] for r in await echoes.receive("maurice")] == [big]
    assert (await echoes.request("GET", "/health")).status == 200
    # ...and the user can touch nothing else, and run no Lua of its own.
    other = aioredis.Redis.from_url(url)
    for command in [
        ("GET", "unrelated"),
        ("EVAL", "while true do end", 0),
        ("SCRIPT", "LOAD", "return 1"),
        ("FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('x', function() end)"),
        ("SCRIPT", "KILL"),
        ("CONFIG", "SET", "maxmemory", "1"),
    ]:
        with pytest.raises(NoPermissionError):
            await other.execute_command(*command)
    await other.aclose()


async def test_redis_conf_leaves_no_user_without_a_password(own_redis, admin):
    # Issue 13: with conf/redis.conf applied, an unauthenticated FLUSHALL answered OK.
    await admin.execute_command("ACL", "SETUSER", "admin", *acl_rules("admin"))
    await admin.execute_command("ACL", "SETUSER", "default", *acl_rules("default"))
    reader, writer = await asyncio.open_unix_connection(str(own_redis.socket))
    writer.write(b"FLUSHALL\r\n")  # as an attacker would, no client library
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"-NOAUTH")
    writer.close()
    operator = aioredis.Redis.from_url(f"unix://admin:adminpw@{own_redis.socket}")
    assert await operator.ping()
    await operator.aclose()


@needs_functions
async def test_without_its_library_echoes_answers_503_and_says_what_to_run(
    start_echoes, own_redis, admin, settings, caplog
):
    await admin.execute_command(
        "ACL", "SETUSER", "echoes", *acl_rules("echoes", settings.key_prefix)
    )
    await admin.function_flush()
    url = f"unix://echoes:pw@{own_redis.socket}"
    echoes = await start_echoes(redis_url=url)
    response = await echoes.post("/receive", "a")
    assert response.status == 503 and "function library" in response.json["details"][0]
    # The command to run is the exact one: the admin user, its password, this Python.
    command = f"{sys.executable} -m {scripts.__name__} | REDISCLI_AUTH=ADMIN-PASSWORD redis-cli"
    assert f"{command} --user admin -s {own_redis.socket} -x FUNCTION LOAD REPLACE" in caplog.text
    health = await echoes.request("GET", "/health")
    assert health.status == 503, health.body
    [detail] = health.json["details"]
    assert echoes.store.scripts.library in detail and command in detail, detail
    # The admin runs it (the shell's pipe, here by hand): /health is 200 again.
    printed = subprocess.run(
        [sys.executable, "-m", scripts.__name__], capture_output=True, text=True, check=True
    )
    library = printed.stdout
    assert printed.stderr == ""  # no RuntimeWarning of runpy's for the admin to wonder about
    await admin.execute_command("FUNCTION", "LOAD", "REPLACE", library)
    assert (await echoes.request("GET", "/health")).status == 200
    assert (await echoes.post("/receive", "a")).status == 200


@pytest.mark.parametrize("password", [None, "wrong"])
async def test_a_redis_that_refuses_echoes_credentials_is_named_in_health_and_log(
    start_echoes, own_redis, admin, caplog, password
):
    caplog.set_level(logging.DEBUG, "echoes.listener")
    # conf/redis.conf turns the default user off: echoes without the password in its URL
    # (systemd/install.sh's placeholder URL) was told "HELLO must be called with the
    # client already authenticated" and said "unavailable (ConnectionError)".
    await admin.execute_command("ACL", "SETUSER", "echoes", "on", ">pw", "~*", "&*", "+@all")
    await admin.execute_command("ACL", "SETUSER", "default", "off")
    user = f"echoes:{password}@" if password else ""
    echoes = await start_echoes(redis_url=f"unix://{user}{own_redis.socket}", subscribed=False)
    health = await echoes.request("GET", "/health")
    assert health.status == 503
    assert "refused echoes' credentials (authentication failed" in health.json["details"][0]
    assert "redis://USER:PASSWORD@HOST:PORT/DB" in health.json["details"][0]
    response = await echoes.post("/receive", "a")
    assert response.status == 503 and "authentication failed" in response.json["details"][0]

    def said():
        return [r.levelname for r in caplog.records if "refused echoes'" in r.getMessage()]

    # The listener says it in full once, then at debug while Redis refuses the same way.
    await eventually(lambda: said().count("DEBUG") >= 1)
    assert said().count("WARNING") == 1, said()


# --- the proxy of conf/nginx.conf -----------------------------------------------------------


@needs("nginx")
def test_nginx_sets_from_to_the_authenticated_user(spawn_echoes, settings, nginx_proxy):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}"
    )
    url = nginx_proxy(echoes.port)
    auth = basic_auth
    body = {"idempotencyKey": KEY, "destination": ["maurice"], "body": "hi"}
    # The client claims to be mallory; nginx sends the authenticated name instead.
    assert post(url + "/send", "mallory", body, auth("olivia")) == (
        200,
        {"sent": 1, "duplicates": 0},
    )
    status, records = post(url + "/receive", "olivia", None, auth("maurice"))
    assert status == 200 and [r["origin"] for r in records] == ["olivia"]
    assert post(url + "/receive", "maurice", None, {})[0] == 401
    # A long poll is answered as soon as the record arrives, through the proxy.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        wait = pool.submit(post, url + "/receive?wait=30", None, None, auth("maurice"))
        until(lambda: waiters_on(echoes.url) == 1)
        later = {"idempotencyKey": "key-000000000002", "body": "later"}
        post(url + "/send", None, body | later, auth("olivia"))
        status, records = wait.result(timeout=10)
    assert status == 200 and [r["body"] for r in records] == ["later"]
    # A page on another site makes the logged-in user's browser POST (text/plain needs no
    # preflight, the browser adds the credentials): refused, and nothing is consumed.
    post(
        url + "/send",
        None,
        body | {"idempotencyKey": "key-000000000003", "body": "kept"},
        auth("olivia"),
    )
    forged = auth("maurice") | {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    assert post(url + "/receive", None, None, forged)[0] == 403
    assert post(url + "/send", None, body, forged)[0] == 403
    # The same from the proxy's own origin passes.
    own = auth("maurice") | {"Origin": url}
    status, records = post(url + "/receive", None, None, own)
    assert status == 200 and [r["body"] for r in records] == ["kept"]
    # A CORS preflight passes without credentials; the POST after it still needs them.
    preflight = urllib.request.Request(
        url + "/exchange", method="OPTIONS", headers={"Origin": "https://app.example"}
    )
    with urllib.request.urlopen(preflight, timeout=10) as answer:
        assert answer.status == 204
    assert post(url + "/receive", None, None, {"Origin": url})[0] == 401


@needs("promtool")
def test_alert_rules_are_valid_and_fire_when_they_should():
    rules = ROOT / "conf" / "echoes-alerts.yml"
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


async def test_metrics_have_process_build_and_limit_series_and_no_created(echoes):
    text = (await echoes.request("GET", "/metrics")).body.decode()
    for series in [
        "process_resident_memory_bytes ",
        "process_open_fds ",
        f'echoes_build_info{{version="{__version__}"}} 1.0',
        f"echoes_waiters_limit {float(echoes.settings.max_waiters)}",
        f'echoes_redis_memory_bytes{{kind="used",server="{echoes.settings.redis_display}"}} ',
        f'echoes_redis_up{{server="{echoes.settings.redis_display}"}} 1.0',
    ]:
        assert series in text, series
    assert "_created" not in text


def test_install_script_lays_out_a_working_service(tmp_path):
    # systemctl, as install.sh calls it: a stand-in that writes down its arguments.
    calls = tmp_path / "systemctl-calls"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    systemctl.chmod(0o755)
    env = dict(os.environ, ROOT=str(tmp_path), SYSTEMCTL=str(systemctl))
    install = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh")],
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    # No password in the Redis URL yet: nothing is started, and it says what to do next.
    assert calls.read_text() == "daemon-reload\n"
    assert "not started" in install.stdout and "systemctl enable --now echoes" in install.stdout
    assert (tmp_path / "opt/echoes/docs/configuration.md").exists()  # the README's links
    unit = (tmp_path / "etc/systemd/system/echoes.service").read_text()
    assert unit == (ROOT / "systemd" / "echoes.service").read_text()
    conf = tmp_path / "etc/echoes/echoes.conf"
    assert conf.read_text() == (ROOT / "conf" / "echoes.conf").read_text()
    installed = tmp_path / "opt/echoes/bin/echoes"
    result = subprocess.run(
        [str(installed), "--help", f"--config={conf}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--redis-url" in result.stdout + result.stderr
    # The secret is in a file only root reads; the config file, readable by all, has none.
    secret = tmp_path / "etc/echoes/redis_url"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.stat().st_uid == os.getuid()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert "LoadCredential=redis_url:/etc/echoes/redis_url" in unit
    # The installed echoes reads it as systemd hands it over ($CREDENTIALS_DIRECTORY).
    secret.write_text("http://not-redis\n")
    result = subprocess.run(
        [str(installed), f"--config={conf}"],
        env=dict(os.environ, CREDENTIALS_DIRECTORY=str(secret.parent)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--redis-url must start with" in result.stderr
    # A second run keeps the configuration and the secret an operator edited.
    conf.write_text(conf.read_text() + "\nport = 9000\n")
    secret.write_text("redis://echoes:pw@127.0.0.1:6379/0\n")
    subprocess.run(["sh", str(ROOT / "systemd" / "install.sh")], env=env, check=True, timeout=600)
    assert "port = 9000" in conf.read_text() and "pw@" in secret.read_text()
    # Now the URL has its password: enabled, and (re)started without waiting for readiness.
    assert calls.read_text().splitlines()[1:] == [
        "daemon-reload",
        "enable echoes.service",
        "restart --no-block echoes.service",
    ]
