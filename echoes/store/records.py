"""The records an inbox holds: stored compact, rendered in the spec's ``msg`` and ``ack`` shapes.

Redis stores each record as ``<kind><time><key>\\n<name JSON>[\\n<body JSON>]`` (kind ``m``, a
message; ``M``, a message that wants an ack; ``a``, an ack), without the field names and
punctuation every record would repeat; the scripts render it (lua/common.lua) into exactly
the JSON ``render`` gives here, which tests keep equal. Within an inbox a record is known by
its id: 64 bits of a hash of what makes it one record (a message's origin and key, an ack's
destination and key), in base64url: 11 characters, whatever the length of the names. A
resend with the same (origin, key) has the same id, so it replaces the copy still waiting,
or is found among the consumed ones (the dedup window).
"""

import base64
import hashlib
import json
import time
from typing import Any

# ASCII output: always valid JSON, even for a body string holding a lone surrogate escape.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
TIME_LENGTH = 20  # "2026-11-28T09:30:04Z"
_MSG = '{"type":"msg","idempotencyKey":"","origin":,"body":,"expectsAck":false,"sentAt":""}'
_ACK = '{"type":"ack","idempotencyKey":"","destination":,"receivedAt":""}'
# Bytes a record gains when rendered, at most: the longest punctuation, less what the stored
# form spends on its kind and separators (the take's byte budget counts rendered bytes).
RENDER_OVERHEAD = max(len(_MSG) - 3, len(_ACK) - 2)


def timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC time with a trailing Z, to the second, as in the spec."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def msg(origin: str, key: str, body: Any, expects_ack: bool, sent_at: str) -> bytes:
    """A message record as stored."""
    kind = "M" if expects_ack else "m"
    return f"{kind}{sent_at}{key}\n{_dumps(origin)}\n{_dumps(body)}".encode("ascii")


def ack(key: str, destination: str, received_at: str) -> bytes:
    """An ack record as stored, queued for a message's origin when ``destination`` consumed it."""
    return f"a{received_at}{key}\n{_dumps(destination)}".encode("ascii")


def render(record: bytes) -> bytes:
    """The JSON a receive returns for a stored record (lua/common.lua's render, in Python)."""
    text = record.decode("ascii")
    kind, at, rest = text[0], text[1 : 1 + TIME_LENGTH], text[1 + TIME_LENGTH :]
    key, name, *body = rest.split("\n", 2)
    if kind == "a":
        fields = {"type": "ack", "idempotencyKey": key, "destination": json.loads(name)}
        return _dumps(fields | {"receivedAt": at}).encode("ascii")
    fields = {"type": "msg", "idempotencyKey": key, "origin": json.loads(name)}
    fields |= {"body": json.loads(body[0]), "expectsAck": kind == "M", "sentAt": at}
    return _dumps(fields).encode("ascii")


def _id(kind: str, name: str, key: str) -> str:
    digest = hashlib.blake2b(f"{kind}\0{key}\0{name}".encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def msg_id(origin: str, key: str) -> str:
    """The id of the message (origin, key) in any destination's inbox."""
    return _id("m", origin, key)


def ack_id(destination: str, key: str) -> str:
    """The id of the ack for message ``key`` consumed by ``destination``."""
    return _id("a", destination, key)


def split_ack_entry(entry: bytes) -> tuple[str, str]:
    """(key, origin) of a message whose ack a take asks for: take.lua's ``<key>:<origin
    JSON>``, or a batch parked by the first design's ``m:<key>:<origin>``."""
    text = entry.decode("utf-8")
    if text.startswith("m:"):
        _, key, origin = text.split(":", 2)
        return key, origin
    key, origin = text.split(":", 1)
    return key, json.loads(origin)
