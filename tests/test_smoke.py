"""The installed ``echoes`` command, run the way a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import ECHOES

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
