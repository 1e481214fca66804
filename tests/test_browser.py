"""echoes/client/web/echoes.js in a real headless Chromium (Debian's, driven by Playwright), from a
page on another origin: against echoes directly and through conf/nginx.conf in a real nginx,
with names outside ASCII and a long poll."""

import base64
import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PASSWORD, free_port, needs
from fakes import FakeHTTP, http_answer
from playwright.sync_api import sync_playwright

WEB = Path(__file__).resolve().parent.parent / "echoes" / "client" / "web"
CHROMIUM = "/usr/bin/chromium"
# As the machine's own probe starts it: no sandbox as root, nothing fetched from outside.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = needs("chromium")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_origin() -> Iterator[str]:
    """echoes/client/web served on its own port: the page's origin, not echoes'."""
    handler = functools.partial(Quiet, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(page_origin):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            tab = browser.new_page()
            tab.goto(page_origin + "/example.html")
            yield tab
        finally:
            browser.close()


# Runs in the page: josé sends to 李, who is long-polling with follow(); 李 answers with an
# ack request; josé reads the reply and the ack. Returns what each saw.
SCENARIO = """
async ([url, headers, tryRefusal]) => {
  const { Echoes, EchoesError } = await import("./echoes.js");
  const as = (name) => new Echoes(url, name, { headers: headers[name] || {} });
  const jose = as("josé"), li = as("李");
  const stop = new AbortController();
  const seen = [];
  const following = (async () => {
    for await (const record of li.follow({ wait: 10, signal: stop.signal })) {
      seen.push(record);
      stop.abort();
    }
  })();
  await new Promise((r) => setTimeout(r, 500));   // 李 is waiting now
  const started = Date.now();
  const waiting = await jose.status("key-of-browser", ["李"]);
  const sent = await jose.send(["李"], { text: "¿qué tal?" }, { ack: true, key: "key-of-browser" });
  await following;
  const woken = Date.now() - started;
  const reply = await li.exchange(["josé"], "bien", { wait: 0 });
  const got = await jose.receive({ wait: 2 });
  const states = await jose.status("key-of-browser", ["李", "nobody"]);
  let refused = null;
  if (tryRefusal) {
    try {
      await as("bad\\u202ename").receive();
    } catch (e) {
      refused = e instanceof EchoesError && e.status;
    }
  }
  return { sent, seen, woken, reply, got, refused, waiting, states };
}
"""


def check(result):
    assert result["sent"] == 1
    [message] = result["seen"]
    assert message["origin"] == "josé" and message["body"] == {"text": "¿qué tal?"}
    assert result["woken"] < 5000  # the long poll answered on arrival, not on timeout
    assert result["reply"] == []
    assert sorted(r["type"] for r in result["got"]) == ["ack", "msg"]
    ack = next(r for r in result["got"] if r["type"] == "ack")
    assert ack["destination"] == "李"
    assert next(r for r in result["got"] if r["type"] == "msg")["origin"] == "李"
    # status(): nothing sent under the key yet, then consumed by 李 and unknown to nobody.
    assert result["waiting"] == [{"destination": "李", "state": "unknown"}]
    consumed, unknown = result["states"]
    assert consumed["destination"] == "李" and consumed["state"] == "consumed"
    assert consumed["consumedAt"].endswith("Z")
    assert unknown == {"destination": "nobody", "state": "unknown"}


def test_the_browser_client_against_echoes_directly(page, page_origin, spawn_echoes, settings):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        f"--cors-origins={page_origin}",
    )
    result = page.evaluate(SCENARIO, [echoes.url, {}, True])
    check(result)
    assert result["refused"] == 400
    print(f"browser, direct: long poll woken in {result['woken']} ms")


@needs("nginx")
def test_the_browser_client_through_nginx(page, page_origin, spawn_echoes, settings, nginx_proxy):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        f"--cors-origins={page_origin}",
    )
    url = nginx_proxy(echoes.port)
    # Each user's password goes in an Authorization header the page sets (preflighted: nginx
    # passes the OPTIONS without credentials, echoes allows the header for this origin).
    headers = {
        name: {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()}
        for name in ("josé", "李")
    }
    result = page.evaluate(SCENARIO, [url, headers, False])
    check(result)
    print(f"browser, through nginx: long poll woken in {result['woken']} ms")


def test_the_example_page_follows_and_sends(page, page_origin, spawn_echoes, settings):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        f"--cors-origins={page_origin}",
    )
    asked = []
    page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.goto(f"{page_origin}/example.html?url={echoes.url}")
    assert asked == [f"Send what you type here to {echoes.url}?"]  # echoes is on another origin
    page.fill("#me", "李")
    page.click("#start")
    page.wait_for_function("document.querySelector('#log').textContent.includes('following')")
    page.fill("#to", "李")
    page.fill("#text", "a note to myself")
    page.click("#send")
    page.wait_for_function(
        "document.querySelector('#log').textContent.includes('李: \"a note to myself\"')",
        timeout=10000,
    )
    page.wait_for_function(
        "document.querySelector('#log').textContent.includes('ack from 李')", timeout=10000
    )


def test_the_readme_browser_example_runs(page, page_origin, spawn_echoes, settings):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    marker = "<!-- tests/test_browser.py runs the next block in a page -->"
    code = readme.split(marker, 1)[1].split("```js\n", 1)[1].split("```", 1)[0]
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        f"--cors-origins={page_origin}",
    )
    messages = []
    page.on("console", lambda message: messages.append(message.text))
    page.add_script_tag(content=code.replace("http://127.0.0.1:8000", echoes.url), type="module")
    page.wait_for_function("true")
    deadline = time.monotonic() + 10
    while "josé hola" not in messages:
        assert time.monotonic() < deadline, messages
        page.wait_for_timeout(50)


def test_the_example_page_sends_nothing_to_a_url_the_user_did_not_accept(page, page_origin):
    # Issue 23: example.html took ?url= from its own address, so a crafted link sent what
    # the user types to another server.
    crafted = FakeHTTP(lambda request: [http_answer(200, b'{"sent": 1}')])
    try:
        page.on("dialog", lambda dialog: dialog.dismiss())
        page.goto(f"{page_origin}/example.html?url={crafted.url}")
        page.fill("#text", "my secret")
        page.click("#send")
        page.wait_for_function("document.querySelector('#log').textContent.includes('sent')")
        assert "ignored ?url=" in page.text_content("#log")
        assert crafted.requests == []
    finally:
        crafted.close()


def test_the_browser_client_reads_retry_after_across_origins(page, page_origin, spawn_echoes):
    # A page on another origin sees Retry-After (echoes exposes it: Access-Control-Expose-
    # Headers), and the module reads it as seconds rather than falling back to its backoff.
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every call is a 503
    echoes = spawn_echoes(
        f"--redis-url={down}", "--redis-timeout=0.2", f"--cors-origins={page_origin}"
    )
    retry = page.evaluate(
        """async (url) => {
          const { Echoes, Unavailable } = await import("./echoes.js");
          try { await new Echoes(url, "li").receive(); } catch (e) {
            return e instanceof Unavailable ? e.retryAfter : e.message;
          }
        }""",
        echoes.url,
    )
    assert retry == 1
