"""The follow protocol of every echoes client, without I/O: requests, answers, retries.

``follow()`` does the subtle part of a long-poll client: it takes every batch under an attempt
token, so a lost response or a restarted server neither drops nor repeats a record (the retry
gets the same batch); it honours ``Retry-After`` and backs off with jitter on 503 and on
connection errors. With a ``state`` file the token of the batch in flight is saved before the
request and cleared only once the whole batch was handed out, so a follower killed and
restarted within ``--attempt-ttl`` hands out that batch again instead of losing it: at least
once across its own crash, exactly once otherwise.

``Follower`` and the ``request``/``answer`` functions are that protocol; the clients in
clients.py only move bytes.

Nothing the server says is taken on trust: ``Retry-After`` is read as seconds or an
HTTP-date and waited between MIN_DELAY (0.5 s) and MAX_DELAY (60 s); anything else in it
falls back to the backoff. A 200 must be what echoes answers (a batch: an array of
records; a send: an object with a whole ``sent``; a status: an array of copies, each a
destination with a known state; ``Echoes-Remaining`` a whole number), else BadAnswer. A
redirection is not followed (so ``From`` and credentials never go to another origin): it
is a BadAnswer naming where it pointed. The clients bound each answer's size
(``max_answer_bytes``) and each exchange's whole time (the request's ``timeout``).
"""

import base64
import email.utils
import json
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from .state import State

DEFAULT_URL = "http://127.0.0.1:8000"
# Seconds a follow request asks to wait: below the 50 s default --max-wait and proxies' 60 s.
FOLLOW_WAIT = 45.0
MAX_BACKOFF = 30.0
# The longest and the shortest a client waits before trying again, whatever Retry-After
# says (a server saying 0, or a date gone by, is not tried again in a loop).
MAX_DELAY = 60.0
MIN_DELAY = 0.5
# The largest answer a client reads: 8 times the server's default --max-batch-bytes.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
RECORD_FIELDS: dict[str, dict[str, type]] = {
    "msg": {"idempotencyKey": str, "origin": str, "expectsAck": bool, "sentAt": str},
    "ack": {"idempotencyKey": str, "destination": str, "receivedAt": str},
}
# What /status says of a copy (the server's http/schemas.py names the same three, and
# tests/test_clients.py checks that they agree: a client imports nothing of the server).
COPY_STATES = ("waiting", "consumed", "unknown")
# What a 200 of each path must hold (answer()): a batch of records unless named here.
EXPECTS = {"/send": "sent", "/status": "states"}


class EchoesError(Exception):
    """echoes refused a request (4xx): ``status`` and the server's ``details``."""

    def __init__(self, status: int, details: list[str]):
        super().__init__(f"{status}: {'; '.join(details)}")
        self.status = status
        self.details = details


class Unavailable(Exception):
    """echoes or its Redis is unavailable for now (503, or no connection): try again later.
    ``retry_after``: the seconds the server asked for (at most MAX_DELAY), or None."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class BadAnswer(Exception):
    """The server's answer is not one echoes gives: not JSON, of the wrong shape, too large,
    or a redirection elsewhere. Not retried: the URL may not be echoes'."""


@dataclass(frozen=True)
class Request:
    """One HTTP request to echoes."""

    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float
    expects: str = "batch"  # what a 200 must hold: "batch" (records), "sent" or "states"


@dataclass(frozen=True)
class Answer:
    """What a /send, /receive, /exchange or /status returned."""

    records: list[dict[str, Any]] | None = None  # /receive and /exchange
    sent: int = 0
    remaining: int = 0  # Echoes-Remaining: records still waiting after this batch
    states: list[dict[str, str]] | None = None  # /status: each copy's destination and state


def new_key() -> str:
    """A fresh idempotency key or attempt token (the alphabet echoes accepts)."""
    return secrets.token_urlsafe(18)


def header_value(name: str) -> str:
    """``name`` as an HTTP header value: its UTF-8 bytes, one character each (echoes decodes
    header bytes as UTF-8; http.client and Tornado send characters below 256 as one byte)."""
    return name.encode("utf-8").decode("latin-1")


def request(
    base: str,
    caller: str,
    path: str,
    query: dict[str, Any],
    body: Any = None,
    timeout: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> Request:
    """A POST to ``base`` + ``path`` as ``caller``, with ``headers`` (credentials) too."""
    query = {k: v for k, v in query.items() if v is not None}
    url = base.rstrip("/") + path + ("?" + urlencode(query) if query else "")
    data = b"" if body is None else json.dumps(body).encode()
    sent = dict(headers or {})
    sent |= {"From": header_value(caller), "Content-Type": "application/json"}
    return Request(url, sent, data, timeout, EXPECTS.get(path, "batch"))


def credentials(
    url: str,
    user: str | None = None,
    password: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """``url`` without a ``user:password@`` part, and the headers to send with every
    request: ``headers``, plus HTTP Basic credentials from ``user`` and ``password`` or from
    the URL. ValueError if they conflict (From is the caller's, set by ``--as``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{display(url)} is not an http:// or https:// URL")
    given = dict(headers or {})
    if any(name.lower() == "from" for name in given):
        raise ValueError("From is the caller's name: give it as the caller (--as), not a header")
    if parts.username is not None and user is None:
        user = unquote(parts.username)
        password = unquote(parts.password) if parts.password is not None else password
    if user is not None:
        if any(name.lower() == "authorization" for name in given):
            raise ValueError("give either a user and password or an Authorization header")
        token = f"{user}:{password or ''}".encode()
        given["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
    return display(url), given


def display(url: str) -> str:
    """``url`` without its ``user:password@`` part: how a client shows it."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def message(destinations: list[str], body: Any, key: str | None, ack: bool) -> dict[str, Any]:
    return {
        "idempotencyKey": key or new_key(),
        "destination": list(destinations),
        "body": body,
        "expectsAck": ack,
    }


def status_query(key: str, destinations: list[str]) -> dict[str, Any]:
    """The body of a /status: what became of the copies of message ``key`` sent to each of
    ``destinations``."""
    return {"idempotencyKey": key, "destination": list(destinations)}


def answer(status: int, headers: Any, body: bytes, expects: str = "batch") -> Answer:
    """The answer of a 200 (``expects``: a "batch", a "sent" count or "states"), or the
    exception of anything else (BadAnswer if it is not an answer echoes gives)."""
    if status == 200:
        return _ok(headers, body, expects)
    if 300 <= status < 400:
        where = display(str(headers.get("Location", "")))
        raise BadAnswer(
            f"{status}: the server redirects to {where or 'nowhere'}, which is not followed:"
            " use echoes' own URL"
        )
    details = _details(status, body)
    retry = retry_after(headers.get("Retry-After"))
    if status >= 500 or (status == 429 and headers.get("Retry-After")):
        raise Unavailable(f"{status}: {'; '.join(details)}", retry)
    raise EchoesError(status, details)


def _ok(headers: Any, body: bytes, expects: str) -> Answer:
    """A 200's Answer, if it has echoes' shape."""
    document = _json(body)
    if expects == "batch":
        records = _array(document, _is_record, "a batch of records", "a batch", "a record")
        remaining = headers.get("Echoes-Remaining", "0")
        if not (isinstance(remaining, str) and remaining.isascii() and remaining.isdigit()):
            raise BadAnswer(f"the server answered Echoes-Remaining: {_shown(remaining)}")
        return Answer(records=records, remaining=int(remaining))
    if expects == "states":
        states = _array(document, _is_copy_state, "the copies' states", "a status", "a copy's")
        return Answer(states=states)
    sent = document.get("sent") if isinstance(document, dict) else None
    if type(sent) is not int or sent < 0:
        raise BadAnswer(f"the server answered {_shown(document)}, not a send's count")
    return Answer(sent=sent)


def _array(document: Any, valid: Callable[[Any], bool], shape: str, whole: str, item: str) -> Any:
    """``document`` if it is an array of items ``valid`` accepts, else BadAnswer naming what."""
    if not isinstance(document, list):
        raise BadAnswer(f"the server answered {_shown(document)}, not {shape}")
    bad = next((x for x in document if not valid(x)), None)
    if bad is not None:
        raise BadAnswer(f"the server answered {whole} holding {_shown(bad)}, not {item}")
    return document


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        raise BadAnswer(f"the server answered {_shown(body)}, which is not JSON") from None


def _is_record(record: Any) -> bool:
    if not isinstance(record, dict) or record.get("type") not in RECORD_FIELDS:
        return False
    fields = RECORD_FIELDS[record["type"]].items()
    return all(isinstance(record.get(name), kind) for name, kind in fields) and (
        record["type"] == "ack" or "body" in record
    )


def _is_copy_state(copy: Any) -> bool:
    if not isinstance(copy, dict) or not isinstance(copy.get("destination"), str):
        return False
    if copy.get("state") not in COPY_STATES:
        return False
    return isinstance(copy.get("consumedAt", ""), str)


def _details(status: int, body: bytes) -> list[str]:
    """The details of an error answer: its JSON ``details`` if they are strings."""
    try:
        error = json.loads(body)
    except (ValueError, RecursionError):
        error = None
    details = error.get("details") if isinstance(error, dict) else None
    if isinstance(details, list) and details and all(isinstance(d, str) for d in details):
        return [d[:1000] for d in details[:20]]
    if isinstance(error, dict) and isinstance(error.get("error"), str):
        return [error["error"][:200]]
    return [body[:200].decode("utf-8", "replace") or f"HTTP {status}"]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def retry_after(value: Any, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (seconds, or an HTTP-date), at most
    MAX_DELAY; None for anything else (negative, not finite, not a time): back off."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # not an HTTP-date, which is GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        seconds = max(seconds, 0.0)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_DELAY)


class Follower:
    """The follow protocol, without I/O: which request next, and how long to wait after a
    failure. The same token is used until a batch was handed out whole."""

    def __init__(
        self,
        base: str,
        caller: str,
        state: State,
        wait: float = FOLLOW_WAIT,
        on_retry: Callable[[str, float], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        self.base, self.caller, self.state, self.wait = base, caller, state, wait
        self.headers = dict(headers or {})
        state.lock()
        self.token = state.load() or new_key()
        self.failures = 0
        self.on_retry = on_retry or (lambda reason, delay: None)

    def request(self) -> Request:
        """The next long poll; its token is saved first (see State)."""
        self.state.save(self.token)
        query = {"wait": self.wait, "attempt": self.token}
        timeout = self.wait + 30
        return request(self.base, self.caller, "/receive", query, None, timeout, self.headers)

    def failed(self, error: Unavailable) -> float:
        """Seconds to wait before retrying the same request: Retry-After, else backoff;
        with jitter, between MIN_DELAY and MAX_DELAY."""
        self.failures += 1
        backoff = min(MAX_BACKOFF, 0.5 * 2 ** min(self.failures, 10))
        delay = error.retry_after if error.retry_after is not None else backoff
        delay *= random.uniform(1.0, 1.5)  # jitter: many followers do not come back at once
        delay = max(MIN_DELAY, min(delay, MAX_DELAY))
        self.on_retry(str(error), delay)
        return delay

    def close(self) -> None:
        """Let another follower use the state file."""
        self.state.unlock()

    def handed_out(self) -> None:
        """The whole batch reached the caller: the next request takes new records."""
        self.failures = 0
        self.state.clear()
        self.token = new_key()
