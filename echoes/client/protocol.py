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
"""

import json
import os
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

DEFAULT_URL = "http://127.0.0.1:8000"
# Seconds a follow request asks to wait: below the 50 s default --max-wait and proxies' 60 s.
FOLLOW_WAIT = 45.0
MAX_BACKOFF = 30.0


class EchoesError(Exception):
    """echoes refused a request (4xx): ``status`` and the server's ``details``."""

    def __init__(self, status: int, details: list[str]):
        super().__init__(f"{status}: {'; '.join(details)}")
        self.status = status
        self.details = details


class Unavailable(Exception):
    """echoes or its Redis is unavailable for now (503, or no connection): try again later."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Request:
    """One HTTP request to echoes."""

    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float


@dataclass(frozen=True)
class Answer:
    """What a /send, /receive or /exchange returned."""

    records: list[dict[str, Any]] | None = None  # /receive and /exchange
    sent: int = 0
    remaining: int = 0  # Echoes-Remaining: records still waiting after this batch


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
) -> Request:
    query = {k: v for k, v in query.items() if v is not None}
    url = base.rstrip("/") + path + ("?" + urlencode(query) if query else "")
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"From": header_value(caller), "Content-Type": "application/json"}
    return Request(url, headers, data, timeout)


def message(destinations: list[str], body: Any, key: str | None, ack: bool) -> dict[str, Any]:
    return {
        "idempotencyKey": key or new_key(),
        "destination": list(destinations),
        "body": body,
        "expectsAck": ack,
    }


def answer(status: int, headers: Any, body: bytes) -> Answer:
    """The answer of a 200, or the exception of anything else."""
    if status == 200:
        document = json.loads(body)
        if isinstance(document, list):
            return Answer(records=document, remaining=int(headers.get("Echoes-Remaining", 0)))
        return Answer(sent=int(document["sent"]))
    try:
        error = json.loads(body)
        details = list(error.get("details", [])) or [str(error.get("error", ""))]
    except (ValueError, AttributeError):
        details = [body[:200].decode("utf-8", "replace") or f"HTTP {status}"]
    if status == 503 or status >= 500:
        retry = headers.get("Retry-After")
        raise Unavailable(f"{status}: {'; '.join(details)}", float(retry) if retry else None)
    if status == 429 and headers.get("Retry-After"):
        raise Unavailable(f"{status}: {'; '.join(details)}", float(headers["Retry-After"]))
    raise EchoesError(status, details)


class State:
    """The follower's state file: the attempt token of the batch in flight, if any."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def load(self) -> str | None:
        if self.path and self.path.exists():
            return self.path.read_text().strip() or None
        return None

    def save(self, token: str) -> None:
        if self.path:
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text(token + "\n")
            os.replace(temporary, self.path)  # atomic: never a half-written token

    def clear(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)


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
    ):
        self.base, self.caller, self.state, self.wait = base, caller, state, wait
        self.token = state.load() or new_key()
        self.failures = 0
        self.on_retry = on_retry or (lambda reason, delay: None)

    def request(self) -> Request:
        """The next long poll; its token is saved first (see State)."""
        self.state.save(self.token)
        query = {"wait": self.wait, "attempt": self.token}
        return request(self.base, self.caller, "/receive", query, timeout=self.wait + 30)

    def failed(self, error: Unavailable) -> float:
        """Seconds to wait before retrying the same request: Retry-After, else backoff."""
        self.failures += 1
        backoff = min(MAX_BACKOFF, 0.5 * 2 ** min(self.failures, 10))
        delay = error.retry_after if error.retry_after is not None else backoff
        delay *= random.uniform(1.0, 1.5)  # jitter: many followers do not come back at once
        self.on_retry(str(error), delay)
        return delay

    def handed_out(self) -> None:
        """The whole batch reached the caller: the next request takes new records."""
        self.failures = 0
        self.state.clear()
        self.token = new_key()
