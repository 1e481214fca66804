"""The HTTP contract on fakeredis: shapes, errors, headers. Redis behaviour is in test_redis.py."""

import subprocess
import sys

import fakeredis
import pytest
from conftest import KEY
from jsonschema import Draft202012Validator
from tornado.httputil import HTTPHeaders

from echoes import __version__
from echoes.http import schemas
from echoes.http.errors import error_body

received = Draft202012Validator(
    schemas.RECEIVED, format_checker=Draft202012Validator.FORMAT_CHECKER
)


def assert_error(response, status, *fragments):
    """The documented error shape, with each fragment somewhere in the details."""
    assert response.status == status, response.body
    body = response.json
    assert body == error_body(status, body["details"])
    assert response.headers["Content-Type"].startswith("application/json")
    for fragment in fragments:
        assert any(fragment in d for d in body["details"]), body


async def test_send_then_receive_renders_the_spec_shapes(fake_echoes):
    response = await fake_echoes.send("olivia", KEY, ["maurice", "maurice"], {"a": [1]}, ack=True)
    assert response.json == {"sent": 1, "duplicates": 0}
    [msg] = await fake_echoes.receive("maurice")
    received.validate([msg])
    assert msg["type"] == "msg" and msg["origin"] == "olivia" and msg["body"] == {"a": [1]}
    assert msg["expectsAck"] is True and msg["sentAt"].endswith("Z")
    [ack] = await fake_echoes.receive("olivia")
    received.validate([ack])
    assert ack["type"] == "ack" and ack["destination"] == "maurice" and ack["idempotencyKey"] == KEY


async def test_expects_ack_defaults_to_false_and_sends_no_ack(fake_echoes):
    await fake_echoes.post(
        "/send", "a", {"idempotencyKey": KEY, "destination": ["b"], "body": None}
    )
    [msg] = await fake_echoes.receive("b")
    assert msg["expectsAck"] is False and msg["body"] is None
    assert await fake_echoes.receive("a") == []


async def test_exchange_sends_then_receives(fake_echoes):
    await fake_echoes.send("b", KEY, ["a"])
    body = {"idempotencyKey": KEY, "destination": ["a", "b"], "body": 2}
    response = await fake_echoes.post("/exchange", "a", body)
    assert response.status == 200
    assert [r["origin"] for r in response.json] == ["b", "a"]
    assert [r["origin"] for r in await fake_echoes.receive("b")] == ["a"]


async def test_form_encoded_json_body_is_accepted(fake_echoes):
    # curl -d sends application/x-www-form-urlencoded; the spec's example depends on it.
    body = b'{"idempotencyKey": "000000000000", "destination": ["g"], "body": "x"}'
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await fake_echoes.post("/send", "o", body, headers=headers)
    assert response.json == {"sent": 1, "duplicates": 0}


async def test_root_names_the_service(fake_echoes):
    response = await fake_echoes.request("GET", "/")
    assert response.json == {"name": "echoes", "version": __version__}
    head = await fake_echoes.request("HEAD", "/")
    assert head.status == 200 and head.body == b""


PAGE = "https://app.example"
SEND = {"idempotencyKey": "000000000000", "destination": ["b"], "body": "x"}


async def test_cors_is_off_by_default(fake_echoes):
    preflight = await fake_echoes.request("OPTIONS", "/exchange", headers={"Origin": PAGE})
    assert preflight.status == 204
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


async def test_cors_preflight_allows_post_with_from_for_listed_origins(start_echoes):
    echoes = await start_echoes(client=fakeredis.FakeAsyncRedis(), cors_origins=PAGE + "/")
    response = await echoes.request("OPTIONS", "/exchange", headers={"Origin": PAGE})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == PAGE
    assert response.headers["Vary"] == "Origin"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "From" in response.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in response.headers
    other = await echoes.request("OPTIONS", "/exchange", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


@pytest.mark.parametrize("path", ["/send", "/receive", "/exchange"])
async def test_a_cross_site_post_is_refused_and_changes_nothing(fake_echoes, path):
    # A form or a text/plain fetch from another site needs no preflight: the Origin check
    # is what stops it from sending, or deleting records, as the user the proxy logged in.
    await fake_echoes.send("a", "k00000000001", ["b"])
    headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    response = await fake_echoes.post(path, "b", SEND, headers=headers)
    assert_error(response, 403, "cross-origin request from 'https://evil.example' refused")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert [r["idempotencyKey"] for r in await fake_echoes.receive("b")] == ["k00000000001"]


async def test_same_origin_listed_and_any_origin_pass(start_echoes):
    echoes = await start_echoes(client=fakeredis.FakeAsyncRedis(), cors_origins=PAGE)
    host = echoes.base_url.removeprefix("http://")
    for origin in (f"http://{host}", PAGE):
        response = await echoes.post("/receive", "a", headers={"Origin": origin})
        assert response.status == 200, (origin, response.body)
    anyone = await start_echoes(client=fakeredis.FakeAsyncRedis(), cors_origins="*")
    response = await anyone.post("/receive", "a", headers={"Origin": "https://x.example"})
    assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "*"


async def test_null_origin_is_refused(fake_echoes):
    response = await fake_echoes.post("/receive", "a", headers={"Origin": "null"})
    assert_error(response, 403, "refused")


@pytest.mark.parametrize(
    "headers, fragment",
    [
        ({}, "From header is required"),
        ({"From": "a\tb"}, "control character"),
        ({"From": "\xff\xfe"}, "not valid UTF-8"),
        ({"From": "x" * 257}, "longer than 256 bytes"),
    ],
)
async def test_bad_from_is_400(fake_echoes, headers, fragment):
    response = await fake_echoes.post("/receive", None, headers=headers)
    assert_error(response, 400, fragment)


async def test_two_from_headers_are_400(fake_echoes):
    headers = HTTPHeaders()
    headers.add("From", "a")
    headers.add("From", "b")
    response = await fake_echoes.http.fetch(
        fake_echoes.base_url + "/receive",
        method="POST",
        body=b"",
        headers=headers,
        raise_error=False,
    )
    assert response.code == 400 and b"exactly one From" in response.body


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"", "JSON body is required"),
        (b"{", "not JSON"),
        (b"\xff{}", "not valid UTF-8"),
        (b'{"idempotencyKey": NaN}', "NaN is not allowed"),
        (b"[" * 100000 + b"]" * 100000, "nests too deeply"),
        ({}, "'idempotencyKey' is a required property"),
        ({"idempotencyKey": "short", "destination": [], "body": 1}, "$.idempotencyKey"),
        ({"idempotencyKey": KEY + "\n", "destination": [], "body": 1}, "$.idempotencyKey"),
        ({"idempotencyKey": "k" * 65, "destination": [], "body": 1}, "$.idempotencyKey"),
        ({"idempotencyKey": KEY + ":", "destination": [], "body": 1}, "$.idempotencyKey"),
        ({"idempotencyKey": KEY, "destination": "b", "body": 1}, "$.destination"),
        ({"idempotencyKey": KEY, "destination": [1], "body": 1}, "$.destination[0]"),
        ({"idempotencyKey": KEY, "destination": [""], "body": 1}, "$.destination[0]: is empty"),
        ({"idempotencyKey": KEY, "destination": [" b"], "body": 1}, "white space"),
        ({"idempotencyKey": KEY, "destination": ["b\n"], "body": 1}, "white space"),
        ({"idempotencyKey": KEY, "destination": ["b\u0000c"], "body": 1}, "control character"),
        ({"idempotencyKey": KEY, "destination": ["\ud800"], "body": 1}, "not valid Unicode"),
        ({"idempotencyKey": KEY, "destination": ["é" * 129], "body": 1}, "longer than 256 bytes"),
        ({"idempotencyKey": KEY, "destination": ["b"] * 1001, "body": 1}, "more than 1000"),
        ({"idempotencyKey": KEY, "destination": ["b"], "body": 1, "expectsAck": 1}, "expectsAck"),
    ],
)
async def test_bad_send_body_is_400_and_stores_nothing(fake_echoes, body, fragment):
    for path in ("/send", "/exchange"):
        response = await fake_echoes.post(path, "a", body)
        assert_error(response, 400, fragment)
    assert await fake_echoes.redis.keys("*") == []


async def test_schema_errors_are_all_listed_with_their_paths(fake_echoes):
    body = {"idempotencyKey": 5, "destination": ["ok", 7], "expectsAck": "yes"}
    response = await fake_echoes.post("/send", "a", body)
    assert_error(response, 400, "$.idempotencyKey", "$.destination[1]", "$.expectsAck", "'body'")


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("?limit=0", "limit must be"),
        ("?limit=-1", "limit must be"),
        ("?limit=x", "limit must be"),
        ("?limit=1&limit=2", "at most once"),
        ("?attempt=short", "attempt must match"),
        ("?attempt=" + "a" * 65, "attempt must match"),
    ],
)
async def test_bad_query_is_400(fake_echoes, query, fragment):
    await fake_echoes.send("a", KEY, ["b"])
    response = await fake_echoes.post("/receive" + query, "b")
    assert_error(response, 400, fragment)
    assert len(await fake_echoes.receive("b")) == 1


async def test_unknown_path_is_404(fake_echoes):
    assert_error(await fake_echoes.post("/nope", "a"), 404, "/nope")


@pytest.mark.parametrize("path", ["/send", "/receive", "/exchange"])
async def test_get_is_405_and_never_consumes(fake_echoes, path):
    await fake_echoes.send("a", KEY, ["b"])
    response = await fake_echoes.request("GET", path, "b")
    assert_error(response, 405, "use POST")
    assert response.headers["Allow"] == "POST, OPTIONS"
    assert len(await fake_echoes.receive("b")) == 1


async def test_oversized_body_is_413_before_it_is_read(start_echoes):
    echoes = await start_echoes(client=fakeredis.FakeAsyncRedis(), max_body_size=100)
    body = {"idempotencyKey": KEY, "destination": ["b"], "body": "x" * 200}
    response = await echoes.post("/send", "a", body)
    assert_error(response, 413, "larger than 100 bytes")
    assert await echoes.redis.keys("*") == []


async def test_limit_takes_the_oldest_and_reports_what_remains(fake_echoes):
    for i in range(5):
        await fake_echoes.send("a", f"key-00000000000{i}", ["b"], i)
    response = await fake_echoes.post("/receive?limit=2", "b")
    assert [r["body"] for r in response.json] == [0, 1]
    assert response.headers["Echoes-Remaining"] == "3"
    response = await fake_echoes.post("/receive", "b")
    assert [r["body"] for r in response.json] == [2, 3, 4]
    assert response.headers["Echoes-Remaining"] == "0"


async def test_max_batch_caps_every_response(start_echoes):
    echoes = await start_echoes(client=fakeredis.FakeAsyncRedis(), max_batch=2)
    for i in range(3):
        await echoes.send("a", f"key-00000000000{i}", ["b"], i)
    response = await echoes.post("/receive?limit=100", "b")
    assert len(response.json) == 2 and response.headers["Echoes-Remaining"] == "1"


VALID_BODIES = [
    {"idempotencyKey": KEY, "destination": [], "body": None},
    {"idempotencyKey": "=" * 64, "destination": ["a", "é"], "body": [1, {"x": []}], "extra": 1},
    {"idempotencyKey": KEY, "destination": ["b"], "body": 1.5, "expectsAck": False},
]
INVALID_BODIES = [
    [],
    "text",
    {"idempotencyKey": KEY + "\n", "destination": [], "body": 1},
    {"idempotencyKey": "\n" + KEY, "destination": [], "body": 1},
    {"idempotencyKey": KEY, "destination": [None], "body": 1},
    {"idempotencyKey": KEY, "destination": {}, "body": 1},
    {"idempotencyKey": KEY, "destination": [], "body": 1, "expectsAck": None},
    {"idempotencyKey": 12345678901234, "destination": [], "body": 1},
    {"destination": [], "body": 1},
]


@pytest.mark.parametrize("document", VALID_BODIES + INVALID_BODIES)
def test_the_fast_validator_agrees_with_jsonschema(document):
    reference = list(schemas.validator("send").iter_errors(document))
    try:
        schemas._send_fast(document)
        fast_ok = True
    except Exception:
        fast_ok = False
    assert fast_ok == (not reference) == (document in VALID_BODIES)
    assert (schemas.send_errors(document) == []) == fast_ok


def test_the_server_imports_jsonschema_only_for_an_invalid_body():
    # Each echoes process is about 3.5 MB lighter without it (BENCHMARKS.md, idle memory).
    code = (
        "import sys, echoes.server, echoes.__main__; print('jsonschema' in sys.modules);"
        " from echoes.http import schemas; schemas.send_errors({});"
        " print('jsonschema' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
