"""The records an inbox holds, rendered once at send time in the spec's ``msg`` and ``ack`` shapes.

A record is stored as the exact JSON a receive returns, so a receive joins stored strings
into an array without decoding them. Within an inbox a record is identified by its id:
``m:<idempotencyKey>:<origin>`` for a message, ``a:<idempotencyKey>:<destination>`` for an
ack. The key's alphabet has no ``:``, so the first two colons split an id unambiguously,
and a resend with the same (origin, key) replaces the copy that is still waiting.
"""

import json
import time
from typing import Any

# ASCII output: always valid JSON, even for a body string holding a lone surrogate escape.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC time with a trailing Z, to the second, as in the spec."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def msg(origin: str, key: str, body: Any, expects_ack: bool, sent_at: str) -> bytes:
    """A message record as a receive returns it."""
    record = {
        "type": "msg",
        "idempotencyKey": key,
        "origin": origin,
        "body": body,
        "expectsAck": expects_ack,
        "sentAt": sent_at,
    }
    return _dumps(record).encode("ascii")


def ack(key: str, destination: str, received_at: str) -> bytes:
    """An ack record, queued for a message's origin when ``destination`` consumed it."""
    record = {
        "type": "ack",
        "idempotencyKey": key,
        "destination": destination,
        "receivedAt": received_at,
    }
    return _dumps(record).encode("ascii")


def msg_id(origin: str, key: str) -> str:
    """The id of the message (origin, key) in any destination's inbox."""
    return f"m:{key}:{origin}"


def ack_id(destination: str, key: str) -> str:
    """The id of the ack for message ``key`` consumed by ``destination``."""
    return f"a:{key}:{destination}"


def split_msg_id(record_id: bytes) -> tuple[str, str]:
    """Return (key, origin) of a message id."""
    _, key, origin = record_id.decode("utf-8").split(":", 2)
    return key, origin
