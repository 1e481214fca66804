"""The clients: ``echoes send/receive/exchange/follow`` and echoes.client, against real servers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ECHOES, eventually, http_post, readme_block, without_venv_path

from echoes.client import AsyncClient, Client, EchoesError
from echoes.client import protocol as echoes_client

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(spawn_echoes, settings):
    return spawn_echoes(f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}")


def cli(server, *args, stdin=None, timeout=30):
    """Run the installed echoes command against ``server``: (status, stdout, stderr)."""
    env = dict(os.environ, ECHOES_URL=server.url)
    result = subprocess.run(
        [ECHOES, *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )
    return result.returncode, result.stdout, result.stderr


# What a user types, and what echoes prints (status, stdout as JSON, a piece of stderr).
def test_the_client_commands_as_a_user_types_them(server):
    assert cli(server, "send", "--as", "josé", "--to", "李", "--ack", '{"text": "hi"}') == (
        0,
        '{"sent": 1}\n',
        "",
    )
    assert cli(server, "send", "--as=josé", "--to=李", "--to=bob", "plain words")[1] == (
        '{"sent": 2}\n'
    )
    assert cli(server, "send", "--as", "olivia", "--to", "李", "-", stdin="[1, 2]\n")[0] == 0
    status, out, _ = cli(server, "receive", "--as", "李", "--limit", "2")
    records = json.loads(out)
    assert status == 0 and [r["body"] for r in records] == [{"text": "hi"}, "plain words"]
    assert records[0]["origin"] == "josé"
    status, out, _ = cli(server, "exchange", "--as", "李", "--to", "josé", "thanks")
    assert status == 0 and [r["body"] for r in json.loads(out)] == [[1, 2]]
    status, out, _ = cli(server, "receive", "--as", "josé", "--wait", "1")
    assert [(r["type"], r.get("body")) for r in json.loads(out)] == [
        ("ack", None),
        ("msg", "thanks"),
    ]
    # A refusal: the server's details on stderr, status 1; a missing name: status 2.
    status, out, err = cli(server, "receive", "--as", "x", "--limit", "0")
    assert (status, out) == (1, "") and "limit must be a whole number" in err
    status, _, err = cli(server, "receive")
    assert status == 2 and "--as NAME is required" in err
    status, _, err = cli(server, "send", "--as", "a", "body without --to")
    assert status == 2 and "--to" in err
    # What became of a message: consumed by 李, waiting for bob; unknown to another sender.
    cli(server, "send", "--as", "josé", "--to", "李", "--to", "bob", "--key", "key-of-status", "x")
    cli(server, "receive", "--as", "李")
    status, out, _ = cli(
        server, "status", "--as", "josé", "--key", "key-of-status", "--to", "李", "--to", "bob"
    )
    consumed, waiting = json.loads(out)
    assert status == 0 and consumed["state"] == "consumed" and consumed["destination"] == "李"
    assert waiting == {"destination": "bob", "state": "waiting"}
    status, out, _ = cli(
        server, "status", "--as", "olivia", "--key", "key-of-status", "--to", "bob"
    )
    assert (status, json.loads(out)) == (0, [{"destination": "bob", "state": "unknown"}])
    status, _, err = cli(server, "status", "--as", "josé", "--to", "bob")
    assert status == 2 and "--key" in err


def test_the_clients_know_the_states_the_server_answers():
    # A client imports nothing of the server, so each names /status's states: they agree.
    from echoes.http import schemas

    served = schemas.STATUS["items"]["properties"]["state"]["enum"]
    assert served == list(echoes_client.COPY_STATES)
    web = (ROOT / "echoes" / "client" / "web" / "echoes.js").read_text()
    assert f"const COPY_STATES = {json.dumps(served)};" in web


def test_follow_prints_records_as_they_arrive_and_ends_with_0_on_sigterm(server, tmp_path):
    follower = subprocess.Popen(
        [ECHOES, "follow", "--as", "maurice", "--wait", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, ECHOES_URL=server.url),
    )
    try:
        sender = Client(server.url, "olivia")
        for i in range(3):
            sender.send(["maurice"], i)
        lines = [json.loads(follower.stdout.readline()) for _ in range(3)]
        assert [r["body"] for r in lines] == [0, 1, 2]
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(10) == 0
    finally:
        follower.kill()
        follower.communicate()


def test_the_python_client_sync_and_async(server):
    olivia, maurice = Client(server.url, "olivia"), Client(server.url, "maurice")
    assert olivia.send(["maurice", "george"], {"n": 1}, ack=True) == 2
    assert [r["body"] for r in maurice.receive()] == [{"n": 1}]
    assert [r["type"] for r in olivia.exchange(["george"], "again")] == ["ack"]
    stop = iter([False, False, True]).__next__
    assert [r["body"] for r in Client(server.url, "george").follow(wait=1, stop=stop)] == [
        {"n": 1},
        "again",
    ]
    assert olivia.status("key-never-sent", ["maurice"]) == [
        {"destination": "maurice", "state": "unknown"}
    ]
    olivia.send(["nina"], "later", key="key-of-python")
    assert olivia.status("key-of-python", ["nina"]) == [{"destination": "nina", "state": "waiting"}]
    with pytest.raises(EchoesError) as refused:
        Client(server.url, "bad\u202ename").receive()
    assert refused.value.status == 400 and "U+202E" in refused.value.details[0]

    async def asynchronous():
        george = AsyncClient(server.url, "george")
        try:
            assert await george.send(["李"], "async") == 1
            got = [r async for r in AsyncClient(server.url, "李").follow(wait=1, stop=stop2)]
            assert [r["body"] for r in got] == ["async"]
            assert await george.exchange(["x"], 1, wait=0.2) == []
            [copy] = await george.status("key-never-sent", ["x"])
            assert copy == {"destination": "x", "state": "unknown"}
        finally:
            george.close()

    stop2 = iter([False, True]).__next__
    import asyncio

    asyncio.run(asynchronous())


def test_follow_across_server_restarts_and_its_own_crash_loses_nothing(
    spawn_echoes, own_redis, tmp_path
):
    """A follower with --state: the server restarted twice and the follower SIGKILLed and
    restarted while records keep coming. Every record is printed; none twice, except the
    batch in flight when the follower itself was killed (at least once across its crash)."""
    redis_url = f"--redis-url={own_redis.url}"
    server = spawn_echoes(redis_url)
    state = tmp_path / "follow.state"
    outputs = [tmp_path / "out1", tmp_path / "out2"]

    def start_follower(out):
        with out.open("w") as stdout:
            return subprocess.Popen(
                [ECHOES, "follow", "--as", "reader", "--wait", "2", f"--state={state}"],
                stdout=stdout,
                stderr=subprocess.DEVNULL,
                env=dict(os.environ, ECHOES_URL=server.url),
            )

    follower = start_follower(outputs[0])
    sender = Client(server.url, "writer")
    sent = 0

    def send_some(count):
        nonlocal sent
        for _ in range(count):
            for _ in range(100):  # the server may be restarting: resend with the same key
                try:
                    sender.send(["reader"], sent, key=f"key-{sent:012d}")
                    break
                except echoes_client.Unavailable:
                    time.sleep(0.1)
            sent += 1
            time.sleep(0.01)

    send_some(40)
    for _ in range(2):  # the server killed outright and started again on the same port
        server.popen.kill()
        server.popen.wait()
        send_some(0)
        server = spawn_echoes(redis_url, port=server.port)
        send_some(40)
    follower.kill()  # the follower's own crash
    follower.wait()
    send_some(20)
    follower = start_follower(outputs[1])
    send_some(20)

    def printed():
        lines = [json.loads(x) for out in outputs for x in out.read_text().splitlines()]
        return [r["body"] for r in lines]

    async def all_printed():
        return set(printed()) == set(range(sent))

    import asyncio

    asyncio.run(eventually(all_printed, timeout=30))
    follower.send_signal(signal.SIGINT)
    assert follower.wait(10) == 0
    bodies = printed()
    repeated = len(bodies) - len(set(bodies))
    first_run = [json.loads(x)["body"] for x in outputs[0].read_text().splitlines()]
    print(f"follow: {sent} records sent, {len(set(bodies))} printed, 0 lost, {repeated} repeated")
    print(f"(the first follower printed {len(first_run)}, across two server restarts)")
    assert set(bodies) == set(range(sent))
    assert len(first_run) == len(set(first_run))  # no repeat across the server restarts
    assert bodies[: len(first_run)] == sorted(first_run)  # oldest first
    assert repeated <= len(bodies) - len(first_run)  # repeats only from the follower's crash


README_CLIENTS = "<!-- tests/test_clients.py runs the commands in the next block -->"
README_PYTHON = "<!-- tests/test_clients.py runs the next block, twice -->"


def test_the_readme_client_commands_run_as_written(server, checkout):
    # As a user runs them after the Quickstart: in the checkout, in a shell where the
    # virtualenv is not active yet (the block activates it), against the server at
    # $ECHOES_URL (here this test's); `echoes follow` until Ctrl-C (here after 2 s).
    lines = []
    for line in readme_block(README_CLIENTS).splitlines():
        if line.startswith("export ECHOES_URL="):
            line = f"export ECHOES_URL={server.url}"
        if " follow " in f" {line} ":
            line = f"timeout --preserve-status -s INT 2 {line}"
        lines.append(line)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHOES_", "VIRTUAL_ENV"))}
    env |= {"HOME": str(checkout.parent), "PATH": without_venv_path()}
    result = subprocess.run(
        ["bash", "-e", "-c", "\n".join(lines)],
        cwd=checkout,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '"sent": 2' in result.stdout and '"sent": 1' in result.stdout, result.stdout
    assert '"type": "ack"' in result.stdout, result.stdout  # follow printed olivia's acks
    assert '[{"destination": "maurice", "state": "waiting"}]' in result.stdout, result.stdout


def test_the_readme_python_example_runs_and_leaves_nothing_to_replay(server, checkout):
    code = readme_block(README_PYTHON, "python").replace("http://127.0.0.1:8000", server.url)
    for _ in range(2):  # a second run prints its own record, not the first one again
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "olivia {'text': 'hi'}\n", result.stdout
    assert [p.name for p in checkout.iterdir()] == [".venv"]  # no state file left behind
    assert http_post(server.url + "/receive", "maurice") == (200, [])  # nothing left over


def test_follow_honours_retry_after_and_backs_off_with_jitter(tmp_path):
    said = []
    follower = echoes_client.Follower(
        "http://x", "me", echoes_client.State(tmp_path / "s"), on_retry=lambda r, d: said.append(r)
    )
    token = follower.token
    assert 3 <= follower.failed(echoes_client.Unavailable("503: busy", 3.0)) <= 4.5
    backoffs = [follower.failed(echoes_client.Unavailable("down")) for _ in range(8)]
    assert backoffs[0] < backoffs[-1] <= echoes_client.MAX_BACKOFF * 1.5
    assert said[0] == "503: busy" and len(said) == 9
    assert follower.request().url.endswith(f"attempt={token}")  # same token until handed out
    assert (tmp_path / "s").read_text().strip() == token
    follower.handed_out()
    assert follower.token != token and not (tmp_path / "s").exists()
