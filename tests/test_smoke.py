"""The installed ``echoes`` command, run the way a user runs it."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import ECHOES, ROOT, free_port, http_get, readme_block

from echoes import __version__
from echoes.config import Settings


def curl(port, sender, path, data=None):
    """As `curl -H "From: sender" localhost:port/path [-d data]` sends it."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST")
    request.add_header("From", sender)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        request.data = data.encode()
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_option_on_stdout(flag):
    # `echoes --help | less` must show it: help goes to stdout, with status 0.
    result = subprocess.run([ECHOES, flag], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    for name in Settings.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in result.stdout


def test_version_is_one_line():
    result = subprocess.run([ECHOES, "--version"], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"echoes {__version__}\n", "")


def test_bad_option_exits_2_with_one_line():
    result = subprocess.run([ECHOES, "--port=x"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("echoes: error:") and result.stderr.count("\n") == 1


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "echoes", "--port=x"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2


def test_the_spec_example_on_the_embedded_redis(spawn_echoes, tmp_path):
    data = tmp_path / "data"
    echoes = spawn_echoes("--redis-url=embedded", f"--data-dir={data}")
    process, port = echoes.popen, echoes.port
    # The embedded Redis logs into echoes' own stream (journald), not a file nothing rotates.
    assert "echoes.redis-server: Ready to accept connections" in echoes.log.read_text() or (
        "echoes.redis-server: The server is now ready to accept connections"
        in echoes.log.read_text()
    )
    assert not list(data.glob("*.log"))
    sent = curl(
        port,
        "olivia",
        "/exchange",
        """{
      "idempotencyKey": "000000000000",
      "destination": ["maurice", "george"],
      "body": "Hey there, are you ok?",
      "expectsAck": true
    }""",
    )
    assert sent == []
    got = curl(
        port,
        "maurice",
        "/exchange",
        """{
      "idempotencyKey": "111111111111",
      "destination": ["olivia", "george"],
      "body": {"message": "Yep fine check this loremipsum", "lorem": "ipsum"}
    }""",
    )
    assert [r["body"] for r in got] == ["Hey there, are you ok?"]
    assert len(curl(port, "george", "/receive")) == 2
    assert curl(port, "george", "/receive") == []
    assert [r["type"] for r in curl(port, "olivia", "/receive")] == ["msg", "ack", "ack"]

    # The embedded redis-server dies: echoes restarts it, and what it had stored survives.
    curl(
        port,
        "olivia",
        "/send",
        '{"idempotencyKey": "222222222222", "destination": ["g"], "body": 1}',
    )
    os.kill(int((data / "redis.pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert [r["body"] for r in curl(port, "g", "/receive")] == [1]
            break
        except urllib.error.HTTPError as e:
            assert e.code == 503 and time.monotonic() < deadline

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    # echoes stopped its redis-server, which removes its socket as it shuts down.
    assert not (data / "redis.sock").exists()


README_EXAMPLE = "<!-- tests/test_smoke.py runs the commands in the next block and compares"
README_QUICKSTART = "<!-- tests/test_smoke.py runs the command in the next block -->"
TIME = re.compile(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"')


def test_the_readme_example_answers_as_shown(spawn_echoes, settings):
    block = readme_block(README_EXAMPLE)
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}"
    )
    script = block.replace("127.0.0.1:8000", f"127.0.0.1:{echoes.port}")
    result = subprocess.run(
        ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Each answer: the "#>" lines after its command, joined.
    shown, answers = [], []
    for line in block.splitlines():
        if line.startswith("#> "):
            answers.append(line[3:].strip())
        elif answers:
            shown.append("".join(answers))
            answers = []
    shown += ["".join(answers)] if answers else []
    got = result.stdout.splitlines()
    assert len(shown) == 5 and [TIME.sub("T", x) for x in got] == [TIME.sub("T", x) for x in shown]
    assert all(TIME.search(x) for x in got if x != "[]")


def test_the_quickstart_runs_as_written(tmp_path):
    # The README's first command, in a copy of this checkout: a new virtualenv, then the
    # server on its embedded Redis (ECHOES_PORT instead of 8000, which may be taken here).
    command = readme_block(README_QUICKSTART).strip()
    assert command.startswith("python3 -m venv .venv && ") and "\n" not in command
    home = tmp_path / "checkout"
    ignored = (".venv", ".git", "*.egg-info", "__pycache__", "*_cache", "echoes-data", "build")
    shutil.copytree(ROOT, home, ignore=shutil.ignore_patterns(*ignored, ".hypothesis", "dist"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHOES_", "VIRTUAL_ENV"))}
    log = tmp_path / "quickstart.log"
    with log.open("w") as out:
        shell = subprocess.Popen(
            ["bash", "-c", command],
            cwd=home,
            env=env | {"ECHOES_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240  # pip installs echoes' dependencies first
        while True:
            try:
                if http_get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert shell.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C in its terminal
        assert shell.wait(30) == 0, log.read_text()
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert (home / "echoes-data" / "appendonly.aof").exists() or list(
        (home / "echoes-data").glob("appendonly*")
    )


def test_port_0_is_logged_as_bound_and_no_redis_says_how_to_start_embedded(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) == 0:
            pytest.skip("something answers at the default --redis-url, 127.0.0.1:6379")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOES_")}
    log = tmp_path / "echoes.log"
    with log.open("w") as err:
        echoes = subprocess.Popen([ECHOES, "--port=0"], stderr=err, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "--redis-url=embedded" not in log.read_text():
            assert echoes.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        [port] = re.findall(r"listening on http://127\.0\.0\.1:(\d+) ", text)
        status, body = http_get(f"http://127.0.0.1:{port}/health")  # the port it said
        assert status == 503 and "127.0.0.1:6379" in body.decode()
        [hint] = [line for line in text.splitlines() if "--redis-url=embedded" in line]
        assert "not ready: nothing answers at the default --redis-url" in hint
    finally:
        echoes.send_signal(signal.SIGTERM)
        assert echoes.wait(10) == 0
