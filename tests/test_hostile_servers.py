"""What the clients trust of the server they talk to: the CLI, ``echoes.client`` (both
flavours) and the follow state file, against fake HTTP servers written here
(tests/fakes.py: ``FakeHTTP``). Each case is one of issue 23; the browser module's are in
tests/test_browser_retries.py.
"""

import asyncio
import base64
import json
import os
import signal
import stat
import subprocess
import time

import pytest
from conftest import ECHOES, needs, until
from fakes import FakeHTTP, http_answer

from echoes.client import AsyncClient, BadAnswer, Client, StateInUse, Unavailable, protocol

RECORD = {
    "type": "msg",
    "idempotencyKey": "key-000000000001",
    "origin": "olivia",
    "body": "hi",
    "expectsAck": False,
    "sentAt": "2026-12-01T00:00:00Z",
}
PASSWORD = "s3cr3t-pw"


@pytest.fixture
def fake():
    """Start a FakeHTTP with a given respond(); closed after the test."""
    started = []

    def start(respond):
        started.append(FakeHTTP(respond))
        return started[-1]

    yield start
    for server in started:
        server.close()


def always(answer):
    return lambda request: [answer]


def cli(url, *args, env=None, home="/nonexistent", timeout=30):
    """The installed echoes command: (status, stdout, stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ECHOES_")}
    environ |= {"ECHOES_URL": url, "HOME": str(home)} | (env or {})
    result = subprocess.run(
        [ECHOES, *args], capture_output=True, text=True, env=environ, timeout=timeout
    )
    return result.returncode, result.stdout, result.stderr


# Retry-After


def test_retry_after_is_seconds_or_a_date_at_most_a_minute_else_the_backoff():
    now = 1_700_000_000.0
    date = "Tue, 14 Nov 2023 22:13:30 GMT"  # now + 10 s
    assert protocol.retry_after("3", now) == 3.0
    assert protocol.retry_after("999999", now) == protocol.MAX_DELAY == 60.0
    assert protocol.retry_after(date, now) == pytest.approx(10.0)
    assert protocol.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0  # past
    for garbage in ("inf", "-inf", "nan", "-5", "abc", "", "1e999", "Tue, 14 Nov 2023", None):
        assert protocol.retry_after(garbage, now) is None, garbage
    follower = protocol.Follower("http://x", "me", protocol.State(None))
    for value in ("999999", "inf", "nan", "-5", date, "abc"):
        delay = follower.failed(protocol.Unavailable("503", protocol.retry_after(value)))
        assert protocol.MIN_DELAY <= delay <= protocol.MAX_DELAY, (value, delay)


@pytest.mark.parametrize(
    "value", ["999999", "inf", "nan", "-5", "Wed, 21 Oct 2015 07:28:00 GMT", "lots"]
)
def test_follow_never_sleeps_longer_than_a_minute_nor_crashes_on_retry_after(fake, value):
    # Issue 23: Retry-After 999999 made follow sleep 13 days ("trying again in 1159823.3
    # s"); inf, nan, -5 or an HTTP-date crashed it with a traceback.
    server = fake(always(http_answer(503, b'{"details": ["busy"]}', Retry_After=value)))
    follower = subprocess.Popen(
        [ECHOES, "follow", "--as", "maurice", "--url", server.url],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = follower.stderr.readline()
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(10) == 0, follower.stderr.read()
    finally:
        follower.kill()
        follower.communicate()
    assert "trying again in" in line, line
    assert 0 <= float(line.split("trying again in ")[1].split()[0]) <= 60.0


# Answers of the wrong shape

NOT_ECHOES = {
    "nested": (200, b"[" * 100_000 + b"]" * 100_000, {}),
    "object": (200, b'{"records": []}', {}),
    "remaining": (200, b"[]", {"Echoes-Remaining": "lots"}),
    "not records": (200, b"[1, 2]", {}),
    "no type": (200, json.dumps([{"body": 1}]).encode(), {}),
    "html": (200, b"<html>login</html>", {}),
}


@pytest.mark.parametrize("case", NOT_ECHOES, ids=list(NOT_ECHOES))
def test_an_answer_that_is_not_echoes_is_a_clear_error(fake, case):
    # Issue 23: deeply nested JSON was a RecursionError, a 200 with an object body a
    # KeyError, Echoes-Remaining: lots a ValueError.
    status, body, headers = NOT_ECHOES[case]
    server = fake(always(http_answer(status, body, **headers)))
    code, out, err = cli(server.url, "receive", "--as", "maurice")
    assert (code, out) == (1, "") and "Traceback" not in err
    assert err.startswith("echoes: error: the server answered"), err
    with pytest.raises(BadAnswer):
        Client(server.url, "maurice").receive()
    with pytest.raises(BadAnswer):
        asyncio.run(_async(server.url, lambda c: c.receive()))


@pytest.mark.parametrize("body", [b"[]", b'{"sent": "2"}', b'{"sent": true}', b'{"sent": -1}'])
def test_a_send_answered_with_anything_but_a_whole_count_is_an_error(fake, body):
    server = fake(always(http_answer(200, body)))
    with pytest.raises(BadAnswer):
        Client(server.url, "olivia").send(["maurice"], "hi")


STATES_NOT_ECHOES = [
    b'{"states": []}',
    b'[{"destination": "maurice", "state": "gone"}]',
    b'[{"state": "waiting"}]',
    b'[{"destination": "maurice", "state": "consumed", "consumedAt": 5}]',
    b"[1]",
]


@pytest.mark.parametrize("body", STATES_NOT_ECHOES)
def test_a_status_answered_with_anything_but_copies_states_is_an_error(fake, body):
    server = fake(always(http_answer(200, body)))
    with pytest.raises(BadAnswer):
        Client(server.url, "olivia").status("k", ["maurice"])
    with pytest.raises(BadAnswer):
        asyncio.run(_async(server.url, lambda c: c.status("k", ["maurice"])))
    code, out, err = cli(server.url, "status", "--as", "olivia", "--key", "k", "--to", "maurice")
    assert (code, out) == (1, "") and err.startswith("echoes: error: the server answered"), err


async def _async(url, call, **kw):
    client = AsyncClient(url, "maurice", **kw)
    try:
        return await call(client)
    finally:
        client.close()


def test_a_valid_answer_still_passes(fake):
    body = json.dumps([RECORD]).encode()
    server = fake(always(http_answer(200, body, Echoes_Remaining="3")))
    assert Client(server.url, "maurice").receive() == [RECORD]
    assert asyncio.run(_async(server.url, lambda c: c.receive())) == [RECORD]


# Redirections


def test_a_redirection_is_not_followed_and_from_never_leaves_the_origin(fake):
    # Issue 23: a 302 was followed to another host, carrying From: olivia, and that host's
    # records were printed.
    elsewhere = fake(always(http_answer(200, json.dumps([RECORD]).encode())))
    server = fake(always(http_answer(302, Location=elsewhere.url + "/receive")))
    code, out, err = cli(server.url, "receive", "--as", "olivia")
    assert (code, out) == (1, "") and "redirects to" in err and "not followed" in err
    for call in (
        lambda: Client(server.url, "olivia").receive(),
        lambda: asyncio.run(_async(server.url, lambda c: c.receive())),
    ):
        with pytest.raises(BadAnswer, match="redirects to"):
            call()
    assert elsewhere.requests == []  # neither From nor anything else went there


# Bounds: size and time


def test_an_answer_too_large_is_refused_before_it_is_all_read(fake):
    # Issue 23: a 400 MB answer took 847 MB.
    def endless(request):
        yield b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n["
        for _ in range(400):  # 400 MiB, never all sent
            yield b" " * (1 << 20)

    server = fake(endless)
    follower = subprocess.Popen(
        [ECHOES, "receive", "--as", "maurice", "--url", server.url],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(follower.pid, 0)  # its own peak memory
    follower.returncode = os.waitstatus_to_exitcode(status)
    err = follower.stderr.read().decode()
    follower.stderr.close()
    peak = usage.ru_maxrss * 1024
    print(f"a 400 MiB answer: refused after {server.sent >> 20} MiB, peak RSS {peak >> 20} MB")
    assert follower.returncode == 1 and "longer than 67108864 bytes" in err
    assert server.sent < 200 << 20  # stopped reading well before the end
    assert peak < 400 << 20  # the answer was never held whole
    big = fake(always(http_answer(200, b"[" + b" " * 2000 + b"]")))
    for call in (
        lambda: Client(big.url, "maurice", max_answer_bytes=1000).receive(),
        lambda: asyncio.run(_async(big.url, lambda c: c.receive(), max_answer_bytes=1000)),
    ):
        with pytest.raises(BadAnswer):
            call()


@pytest.mark.parametrize("where", ["headers", "body"])
def test_an_answer_trickled_byte_by_byte_ends_at_the_timeout(fake, where):
    # Issue 23: an answer trickled a byte every 10 s ran 70 s past a 31 s timeout (each
    # read had its own timeout, the whole exchange none).
    whole = http_answer(200, json.dumps([RECORD]).encode())
    split = whole.index(b"\r\n\r\n") + 4 if where == "body" else 0

    def trickle(request):
        yield whole[:split]
        for byte in whole[split:]:
            time.sleep(0.05)
            yield bytes([byte])

    for flavour in ("sync", "async"):
        server = fake(trickle)
        with pytest.raises(Unavailable, match="cannot reach"):
            if flavour == "sync":
                Client(server.url, "maurice", timeout=0.5).receive()
            else:
                asyncio.run(_async(server.url, lambda c: c.receive(), timeout=0.5))
        # Stopped within the timeout's worth of the trickle (10 bytes), not at its end.
        got, of = server.sent - split, len(whole) - split
        print(f"{flavour}, trickled {where}: cut after {got} of {of} bytes (0.5 s timeout)")
        assert got < of, flavour


# Credentials


def seen(server):
    """(From, Authorization) of the requests ``server`` got."""
    return [(r.headers.get("from"), r.headers.get("authorization")) for r in server.requests]


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_cli_sends_credentials_from_user_env_netrc_url_or_a_header(fake, tmp_path):
    server = fake(always(http_answer(200, b"[]")))
    olivia = ("olivia", basic("olivia", PASSWORD))
    assert cli(server.url, "receive", "--user", f"olivia:{PASSWORD}")[0] == 0
    env = {"ECHOES_PASSWORD": PASSWORD}
    assert cli(server.url, "receive", "--user", "olivia", env=env)[0] == 0
    (tmp_path / "netrc").write_text(f"machine 127.0.0.1 login olivia password {PASSWORD}\n")
    assert cli(server.url, "receive", f"--netrc-file={tmp_path / 'netrc'}")[0] == 0
    (tmp_path / ".netrc").write_text(f"machine 127.0.0.1 login olivia password {PASSWORD}\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert cli(server.url, "receive", home=tmp_path)[0] == 0  # ~/.netrc
    in_url = server.url.replace("://", f"://olivia:{PASSWORD}@")
    assert cli(in_url, "receive")[0] == 0
    bearer = ["--as", "olivia", "--header", "Authorization: Bearer tok-1"]
    assert cli(server.url, "receive", *bearer)[0] == 0
    assert seen(server) == [olivia] * 5 + [("olivia", "Bearer tok-1")]
    code, _, err = cli(server.url, "receive", "--user", "olivia")  # no password anywhere
    assert code == 2 and "no password for --user olivia" in err
    code, _, err = cli(server.url, "receive", "--as", "a", "--header", "From: b")
    assert code == 2 and "--as" in err


def test_the_password_is_never_printed(fake):
    # Issue 23: a user:pw@ URL failed and printed the password in the error.
    def echo(request):  # a server that quotes what it was sent
        quoted = json.dumps({"details": [json.dumps(request.headers)]}).encode()
        return [http_answer(401, quoted)]

    server = fake(echo)
    for args in (
        ["--url", server.url.replace("://", f"://olivia:{PASSWORD}@")],
        ["--url", server.url, "--user", f"olivia:{PASSWORD}"],
        ["--url", server.url, "--as", "a", "--header", f"Authorization: Bearer {PASSWORD}"],
        ["--url", f"http://olivia:{PASSWORD}@127.0.0.1:1"],  # nothing listens: cannot reach
    ):
        code, out, err = cli("", "receive", *args)
        assert code == 1 and err.startswith("echoes: error:"), err
        assert PASSWORD not in out + err
        assert base64.b64encode(f"olivia:{PASSWORD}".encode()).decode() not in err
    client = Client(server.url.replace("://", f"://olivia:{PASSWORD}@"), "olivia")
    assert PASSWORD not in repr(client) + client.url


def test_the_python_clients_take_credentials(fake):
    server = fake(always(http_answer(200, b'{"sent": 1}')))
    assert Client(server.url, "olivia", user="olivia", password=PASSWORD).send(["m"], 1) == 1
    bearer = {"Authorization": "Bearer tok-2"}
    assert asyncio.run(_async(server.url, lambda c: c.send(["m"], 1), headers=bearer)) == 1
    assert seen(server) == [("olivia", basic("olivia", PASSWORD)), ("maurice", "Bearer tok-2")]
    with pytest.raises(ValueError):
        Client(server.url, "olivia", user="olivia", password="x", headers=bearer)


@needs("nginx")
def test_the_cli_reaches_echoes_behind_the_documented_nginx(spawn_echoes, settings, nginx_proxy):
    # Issue 23: behind conf/nginx.conf every request needs the user's credentials, and the
    # CLI had no way to send them.
    server = spawn_echoes(
        f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}"
    )
    url = nginx_proxy(server.port)
    env = {"ECHOES_PASSWORD": "secret"}  # conftest's PASSWORD for USERS
    code, out, _ = cli(url, "send", "--user", "olivia", "--to", "maurice", "hi", env=env)
    assert (code, out) == (0, '{"sent": 1}\n')
    code, out, _ = cli(url, "receive", "--user", "maurice", env=env)
    assert code == 0 and [r["origin"] for r in json.loads(out)] == ["olivia"]
    code, _, err = cli(url, "receive", "--user", "maurice", env={"ECHOES_PASSWORD": "wrong"})
    assert code == 1 and "401" in err and "wrong" not in err


# The follow state file


def test_the_state_file_is_private_and_never_written_through_a_planted_link(tmp_path):
    # Issue 23: a pre-planted FILE.tmp symlink made the follower overwrite the link's
    # target with the token, and the file was created 0644.
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    state = tmp_path / "follow.state"
    (tmp_path / "follow.state.tmp").symlink_to(target)
    os.umask(0o022)
    saved = protocol.State(state)
    saved.save("token-1")
    assert target.read_text() == "keep me\n"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert saved.load() == "token-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "follow.state",
        "follow.state.tmp",
        "precious",
    ]  # no temporary file left behind


def test_two_followers_cannot_share_a_state_file(fake, tmp_path):
    # Issue 23: two followers sharing one state file printed a record twice.
    server = fake(always(http_answer(200, b"[]")))
    state = tmp_path / "follow.state"
    first = subprocess.Popen(
        [ECHOES, "follow", "--as", "a", "--url", server.url, f"--state={state}", "--wait=1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: server.requests or first.poll() is not None)  # it holds the lock
        code, _, err = cli(server.url, "follow", "--as", "a", f"--state={state}")
        assert code == 2 and "used by another follower" in err and str(first.pid) in err
        with pytest.raises(StateInUse):
            next(iter(Client(server.url, "a").follow(state=state)))
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
    finally:
        first.kill()
        first.communicate()
    # Once the first is gone, the file is free again.
    records = Client(server.url, "a").follow(state=state, stop=iter([False, True]).__next__)
    assert list(records) == []
