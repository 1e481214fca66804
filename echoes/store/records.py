"""The records an inbox holds: stored compact, rendered in the spec's ``msg`` and ``ack`` shapes.

Redis stores each record as ``<kind><time><key>\\n<name JSON>[\\n<body JSON>]`` (kind ``m``, a
message; ``M``, a message that wants an ack, whose name is followed by ``\\n<name>``, the
origin's name as keys.py encodes it into key names; ``a``, an ack), without the field names
and punctuation every record would repeat; the scripts hand stored records back as they
are, and ``render`` makes of each the JSON a receive returns (in echoes, not in Redis:
joining bytes costs Python little, and Redis's one thread nothing). A take queues a message's
ack in its origin's inbox by itself, from that encoded name (lua/take.lua makes the ack as
``ack`` and ``ack_id`` do here). Within an inbox a record is known by its id: 64 bits of a
hash of what makes it one record, whatever the length of the names: a message's origin and
key (blake2b, in base64url: 11 characters), an ack's destination and key (SHA-1, which Lua
has, in hex: 16 characters). A resend with the same (origin, key) has the same id, so it
replaces the copy still waiting, or is found among the consumed ones (the dedup window).

A record of BIG_RECORD bytes or more is stored whole in a key of its own (its body key,
keys.py), and its inbox's hash holds its ``stub``: the record's head (kind ``n`` for ``m``,
``N`` for ``M``, and the time, key and names as the record has them), then
``\n#<bytes>:<token>``. Redis's Lua hashes every byte of every string a script touches, about
a microsecond a kilobyte: the scripts see only stubs, and echoes writes and reads the bodies
with plain commands (lua/common.lua says how the scripts use them).
"""

import base64
import functools
import hashlib
import json
import secrets
import time
from typing import Any

from .keys import encode_name

# ASCII output: always valid JSON, even for a body string holding a lone surrogate escape.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
TIME_LENGTH = 20  # "2026-11-28T09:30:04Z"
# Longest encoded name a message holds, with room: --max-from-length is at most 8192 bytes.
ENCODED_NAME_MAX = 11000
_MSG = '{"type":"msg","idempotencyKey":"","origin":,"body":,"expectsAck":false,"sentAt":""}'
_ACK = '{"type":"ack","idempotencyKey":"","destination":,"receivedAt":""}'
# Bytes a record gains when rendered, at most: the longest punctuation, less what the stored
# form spends on its kind and separators (the take's byte budget counts rendered bytes; a
# message that wants an ack renders smaller still, without its encoded origin).
RENDER_OVERHEAD = max(len(_MSG) - 3, len(_ACK) - 2)
# Records of this many bytes or more are stored as a stub and a body key. Below it a record
# costs a script at most a millisecond and a half per take (1,000 of them, its default most),
# above it one key more (some 60 bytes of Redis) is little beside the record.
BIG_RECORD = 1024
STUB_KINDS = (b"n", b"N")


def timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC time with a trailing Z, to the second, as in the spec."""
    return _second(int(time.time() if now is None else now))


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


@functools.lru_cache(maxsize=4096)
def _name(raw: bytes) -> str:
    """A name as a record holds it (JSON), read once for the many records that carry it."""
    return str(json.loads(raw))


@functools.lru_cache(maxsize=4096)
def name_json(name: str) -> str:
    """A name as records hold it (JSON)."""
    return _dumps(name)


def msg(origin: str, key: str, body: Any, expects_ack: bool, sent_at: str) -> bytes:
    """A message record as stored."""
    named = f"{name_json(origin)}\n{encode_name(origin)}" if expects_ack else name_json(origin)
    return f"{'M' if expects_ack else 'm'}{sent_at}{key}\n{named}\n{_dumps(body)}".encode("ascii")


def stub(record: bytes, token: str) -> bytes:
    """The stub a big ``record`` (a message) is known by in its inbox's hash: its head, its
    size and the token of its body key."""
    k = record.index(b"\n", 1 + TIME_LENGTH)
    head = record.index(b"\n", k + 1)  # after the origin's name JSON
    kind = b"n"
    if record[:1] == b"M":  # and after its encoded name
        kind, head = b"N", record.index(b"\n", head + 1)
    return b"%s%s\n#%d:%s" % (kind, record[1:head], len(record), token.encode("ascii"))


def body_token() -> str:
    """A new body key's token: no two puts share one (a resend replaces the waiting copy's)."""
    return secrets.token_urlsafe(12)


def is_stub(record: bytes) -> bool:
    return record[:1] in STUB_KINDS


def stub_token(record: bytes) -> str:
    """The token of a stub's body key."""
    return record[record.rindex(b":") + 1 :].decode("ascii")


def size_of(value: bytes) -> int:
    """The bytes of the record a value of an inbox's hash stands for: itself, or its stub's
    count (lua/common.lua's record_size)."""
    if is_stub(value):
        return int(value[value.rindex(b"\n#") + 2 : value.rindex(b":")])
    return len(value)


def ack(key: str, destination: str, received_at: str) -> bytes:
    """An ack record as stored, queued for a message's origin when ``destination`` consumed it
    (take.lua makes them; python -m echoes.store.migrate makes them of the first design's)."""
    return f"a{received_at}{key}\n{name_json(destination)}".encode("ascii")


def render(record: bytes) -> bytes:
    """The JSON a receive returns for a stored record (what json.dumps of the spec's fields
    gives; tests compare the two)."""
    return b"".join(_rendered(record))


def batch(stored: list[bytes]) -> bytes:
    """The JSON array a receive returns for these stored records, made in one copy: the
    records' parts are views into them, so a batch of large records is never held twice."""
    parts: list[bytes | memoryview] = [b"["]
    for i, record in enumerate(stored):
        if i:
            parts.append(b",")
        parts += _rendered(record)
    parts.append(b"]")
    return b"".join(parts)


def _rendered(record: bytes) -> list[bytes | memoryview]:
    view = memoryview(record)
    kind, at = record[:1], view[1 : 1 + TIME_LENGTH]
    k = record.index(b"\n", 1 + TIME_LENGTH)
    key = view[1 + TIME_LENGTH : k]
    if kind == b"a":
        return [
            b'{"type":"ack","idempotencyKey":"',
            key,
            b'","destination":',
            view[k + 1 :],
            b',"receivedAt":"',
            at,
            b'"}',
        ]
    n = record.index(b"\n", k + 1)
    ack = b"false"
    body = n + 1
    if kind == b"M":  # the origin's encoded name follows its JSON (not in this round's first
        # form of it, never released: then the body does, which holds no newline)
        ack, body = b"true", record.find(b"\n", n + 1, n + 1 + ENCODED_NAME_MAX) + 1 or n + 1
    return [
        b'{"type":"msg","idempotencyKey":"',
        key,
        b'","origin":',
        view[k + 1 : n],
        b',"body":',
        view[body:],
        b',"expectsAck":',
        ack,
        b',"sentAt":"',
        at,
        b'"}',
    ]


def _id(kind: str, name: str, key: str) -> str:
    digest = hashlib.blake2b(f"{kind}\0{key}\0{name}".encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def msg_id(origin: str, key: str) -> str:
    """The id of the message (origin, key) in any destination's inbox."""
    return _id("m", origin, key)


def ack_id(destination: str, key: str) -> str:
    """The id of the ack for message ``key`` consumed by ``destination`` (take.lua's)."""
    return hashlib.sha1(f"{encode_name(destination)}\0{key}".encode("ascii")).hexdigest()[:16]


def sender_share(record: bytes) -> tuple[str, str, int] | None:
    """(origin, sentAt, bytes as stored) of a stored message, what its consumption frees of
    its sender's quota (senders.py); None for an ack."""
    if record[:1] == b"a":
        return None
    k = record.index(b"\n", 1 + TIME_LENGTH)
    n = record.index(b"\n", k + 1)
    return _name(record[k + 1 : n]), record[1 : 1 + TIME_LENGTH].decode("ascii"), len(record)


def first_design_ack(entry: bytes, consumer: str, received_at: str) -> tuple[bytes, bytes, bytes]:
    """The ack ``consumer`` owes for a message that a batch parked by the first design names
    (``m:<key>:<origin>``), as take.lua returns one: origin's encoded name, id, the ack."""
    _, key, origin = entry.decode("utf-8").split(":", 2)
    stored = ack(key, consumer, received_at)
    return encode_name(origin).encode("ascii"), ack_id(consumer, key).encode("ascii"), stored
