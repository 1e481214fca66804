"""What echoes trusts of the servers around it: sentinels, Cluster nodes, the Redis URL.

Sentinels and Cluster nodes that lie are small RESP servers written here (tests/fakes.py);
the master they should name is a real redis-server on loopback. Each case is one of issue 23.
"""

import json

import pytest
from conftest import http_get, http_post, until

from bench.services import free_port
from echoes import options
from echoes.topology import display

MESSAGE = {"idempotencyKey": "key-000000000001", "destination": ["maurice"], "body": "hi"}


# Every credential below holds "secret"; none may be shown anywhere.
SECRET_URLS = [
    "redis://127.0.0.1:{port}/0?username=u-secret&password=pw-secret",
    "redis://u-secret:pw-secret@127.0.0.1:{port}/0",
    "unix://u-secret:pw-secret@/nowhere/redis.sock?db=0&password=pw2-secret",
    "redis+sentinel://u-secret:pw-secret@127.0.0.1:{port}/echoes"
    "?sentinel_username=s-secret&sentinel_password=spw-secret",
    "redis+sentinel://127.0.0.1:{port}/echoes/0?username=u-secret&password=pw-secret",
    "redis+cluster://127.0.0.1:{port}?username=u-secret&password=pw-secret",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_credential_of_the_redis_url_is_shown_anywhere(spawn_echoes, url):
    # Issue 23: ?password= appeared in every 503's details, in /health, in a /metrics label
    # and three times in the log (the user:pw@ form was already redacted).
    url = url.format(port=free_port())  # nothing listens there: Redis is unavailable
    process = spawn_echoes(f"--redis-url={url}", "--log-level=debug", "--redis-timeout=0.3")
    shown = [
        http_post(process.url + "/send", "olivia", MESSAGE),
        http_post(process.url + "/receive?wait=0.1", "olivia"),
        http_get(process.url + "/health"),
        http_get(process.url + "/metrics"),
    ]
    assert [status for status, _ in shown] == [503, 503, 503, 200]
    # The wake-up listener's reconnections are logged too.
    until(lambda: process.log.read_text().count("WARNING echoes.listener") >= 2)
    text = json.dumps([str(body) for _, body in shown]) + process.log.read_text()
    assert display(url) in text  # the address is shown...
    assert "secret" not in text  # ...and no user name or password, wherever it was


def test_a_url_redis_py_cannot_read_stops_start_up_without_showing_it(capsys):
    # redis-py's own message quoted a piece of the password ("Port could not be cast to
    # integer value as 'pw'"), in a traceback.
    with pytest.raises(SystemExit) as exit:
        options.load_or_exit(["echoes", "--redis-url=redis://u:pw/secret@h:1/0"], {})
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1, err
    assert "percent-encode" in err and "redis://h:1/0" in err
    assert "pw" not in err and "secret" not in err


def test_display_drops_every_credential_and_keeps_the_address():
    cases = {
        "redis://h:1/0?username=u&password=p": "redis://h:1/0",
        "redis://u:p@h:1/0": "redis://h:1/0",
        "redis://u:p/q@h:1/0": "redis://h:1/0",
        "redis://:p%40@h:1/0?db=3&ssl_password=x#frag": "redis://h:1/0?db=3",
        "unix://u:p@/run/r.sock?db=2&password=p": "unix:///run/r.sock?db=2",
        "redis+sentinel://u:p@a:1,b:2/echoes/1?sentinel_password=s": (
            "redis+sentinel://a:1,b:2/echoes/1"
        ),
        "rediss+cluster://a:1,b:2?password=p": "rediss+cluster://a:1,b:2",
        "embedded": "embedded",
    }
    for url, shown in cases.items():
        assert display(url) == shown, url
