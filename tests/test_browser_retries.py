"""echoes/client/web/echoes.js against servers that lie, in node (no browser needed): its
Retry-After, its listeners, the answers it believes, its bounds and its credentials. Each
case is one of issue 23; the module in a real Chromium is tests/test_browser.py."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import needs
from fakes import FakeHTTP, http_answer

WEB = Path(__file__).resolve().parent.parent / "echoes" / "client" / "web"
pytestmark = needs("node")

# A fake fetch answering from a list of [status, headers, body]; each scenario's result
# printed as JSON. Runs as an ES module with the copy of echoes.js beside it.
PRELUDE = """
import * as echoes from "./echoes.mjs";
import { readFileSync } from "node:fs";
const [scenario, arg] = JSON.parse(readFileSync(process.argv[2], "utf8"));
const calls = [];
function fake(answers) {
  return async (url, init) => {
    calls.push({ url, headers: init.headers, redirect: init.redirect });
    const [status, headers, body] = answers[Math.min(calls.length, answers.length) - 1];
    if (body === "never") {  // headers, then a body that never comes (until aborted)
      const stream = new ReadableStream({
        start(c) { init.signal.addEventListener("abort", () => c.error(new Error("aborted"))); },
      });
      return new Response(stream, { status, headers });
    }
    return new Response(body, { status, headers });
  };
}
const out = (value) => console.log(JSON.stringify(value));
"""

SCENARIOS = {
    # follow() against 503s with this Retry-After for `arg` ms: the retries it made, the
    # delays it chose, and the most abort listeners its signal ever had at once.
    "retries": """
const stop = new AbortController();
let listeners = 0, most = 0;
const add = stop.signal.addEventListener.bind(stop.signal);
const remove = stop.signal.removeEventListener.bind(stop.signal);
stop.signal.addEventListener = (...a) => {
  listeners++;
  most = Math.max(most, listeners);
  add(...a);
};
stop.signal.removeEventListener = (...a) => { listeners--; remove(...a); };
const client = new echoes.Echoes("http://e", "me", {
  fetch: fake([[503, { "Retry-After": arg.value }, '{"details": ["busy"]}']]) });
const delays = [];
setTimeout(() => stop.abort(), arg.ms);
for await (const r of client.follow({ signal: stop.signal, onRetry: (_, d) => delays.push(d) }));
out({ requests: calls.length, delays, most, left: listeners });
""",
    # One call against this answer: what it returned or threw.
    "answer": """
const [status, headers, body, path] = arg;
const client = new echoes.Echoes("http://e", "me", { fetch: fake([[status, headers, body]]),
                                                     timeout: 0.3, maxAnswerBytes: 1000 });
try {
  out({ ok: await client.call(path || "/receive", {}, path === "/send" ? {} : undefined) });
} catch (e) {
  out({ error: e.constructor.name, message: e.message });
}
""",
    # Credentials: the headers the server got.
    "credentials": """
const client = new echoes.Echoes("http://e", "josé", { ...arg,
                                  fetch: fake([[200, {}, '{"sent": 1}']]) });
await client.send(["李"], "hi");
out(calls[0]);
""",
    # The real fetch against a server that redirects to another one.
    "redirect": """
try {
  out({ ok: await new echoes.Echoes(arg, "olivia").receive() });
} catch (e) {
  out({ error: e.constructor.name, message: e.message });
}
""",
}


def run(tmp_path, scenario, arg=None):
    """``scenario`` in node with ``arg``: its JSON result (and node's stderr)."""
    shutil.copy(WEB / "echoes.js", tmp_path / "echoes.mjs")
    script = tmp_path / f"{scenario}.mjs"
    script.write_text(PRELUDE + SCENARIOS[scenario])
    given = tmp_path / f"{scenario}.json"
    given.write_text(json.dumps([scenario, arg]))
    result = subprocess.run(
        ["node", str(script), str(given)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


@pytest.mark.parametrize("value", ["3000000", "Wed, 21 Oct 2015 07:28:00 GMT", "abc", "-5", "0"])
def test_follow_never_hot_loops_and_removes_its_listeners(tmp_path, value):
    # Issue 23: Retry-After 3000000 overflowed the timer to 1 ms (1,568 retries in 3 s); an
    # HTTP-date or abc gave a NaN delay (1,610 retries in 3 s); each retry added an abort
    # listener never removed (MaxListenersExceeded).
    result, stderr = run(tmp_path, "retries", {"value": value, "ms": 1500})
    print(f"Retry-After {value!r}: {result['requests']} requests in 1.5 s")
    assert result["requests"] <= 4  # at most one per MIN_DELAY (0.5 s)
    assert all(0.5 <= d <= 60 for d in result["delays"]), result["delays"]
    assert result["most"] <= 1 and result["left"] == 0
    assert "MaxListenersExceeded" not in stderr


def test_retry_after_is_seconds_or_a_date_at_most_a_minute(tmp_path):
    result, _ = run(tmp_path, "answer", [503, {"Retry-After": "3000000"}, "{}"])
    assert result["error"] == "Unavailable"
    cases = {"3000000": 60, "2": 2, "abc": None, "nan": None, "-5": None, "Infinity": None}
    for value, seconds in cases.items():
        script = tmp_path / "value.mjs"
        script.write_text(
            'import { retryAfter } from "./echoes.mjs";'
            f" console.log(JSON.stringify(retryAfter({json.dumps(value)})));"
        )
        printed = subprocess.run(
            ["node", str(script)], capture_output=True, text=True, cwd=tmp_path, check=True
        ).stdout
        assert json.loads(printed) == seconds, value


NOT_ECHOES = {
    "object": [200, {}, '{"records": []}'],
    "remaining": [200, {"Echoes-Remaining": "lots"}, "[]"],
    "not records": [200, {}, "[1, 2]"],
    "nested": [200, {}, "[" * 100000 + "]" * 100000],
    "html": [200, {}, "<html>login</html>"],
    "send": [200, {}, '{"sent": "1"}', "/send"],
    "too large": [200, {}, "[" + " " * 5000 + "]"],
    "status object": [200, {}, '{"states": []}', "/status"],
    "status state": [200, {}, '[{"destination": "m", "state": "gone"}]', "/status"],
    "status time": [
        200,
        {},
        '[{"destination": "m", "state": "consumed", "consumedAt": 5}]',
        "/status",
    ],
    "redirect": [302, {"Location": "http://elsewhere/receive"}, ""],
}


@pytest.mark.parametrize("case", NOT_ECHOES, ids=list(NOT_ECHOES))
def test_an_answer_that_is_not_echoes_is_a_bad_answer(tmp_path, case):
    result, _ = run(tmp_path, "answer", NOT_ECHOES[case])
    assert result.get("error") == "BadAnswer", result


def test_an_answer_that_never_ends_is_cut_at_the_timeout(tmp_path):
    result, _ = run(tmp_path, "answer", [200, {}, "never"])
    assert result["error"] == "Unavailable" and "within 0.3 s" in result["message"]


def test_a_valid_answer_passes(tmp_path):
    record = {"type": "ack", "idempotencyKey": "k" * 12, "destination": "m", "receivedAt": "x"}
    result, _ = run(tmp_path, "answer", [200, {"Echoes-Remaining": "2"}, json.dumps([record])])
    assert result["ok"] == {"records": [record], "remaining": 2}
    copies = [{"destination": "m", "state": "consumed", "consumedAt": "2026-12-01T00:00:00Z"}]
    result, _ = run(tmp_path, "answer", [200, {}, json.dumps(copies), "/status"])
    assert result["ok"] == {"states": copies}


def test_credentials_and_no_redirection_followed(tmp_path):
    sent, _ = run(tmp_path, "credentials", {"user": "josé", "password": "pw"})
    token = "Basic " + __import__("base64").b64encode("josé:pw".encode()).decode()
    assert sent["headers"]["Authorization"] == token and sent["redirect"] == "manual"
    bearer = {"headers": {"Authorization": "Bearer tok"}}
    assert run(tmp_path, "credentials", bearer)[0]["headers"]["Authorization"] == "Bearer tok"
    elsewhere = FakeHTTP(lambda request: [http_answer(200, b"[]")])
    server = FakeHTTP(lambda request: [http_answer(302, Location=elsewhere.url + "/receive")])
    try:
        result, _ = run(tmp_path, "redirect", server.url)
        assert result["error"] == "BadAnswer" and "not followed" in result["message"]
        assert elsewhere.requests == []  # From never went there
    finally:
        server.close()
        elsewhere.close()
