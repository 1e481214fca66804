"""The shapes of the scripts' replies (the ``-- returns`` of each lua/*.lua), checked before
the store believes them.

A server that is not the Redis echoes expects (a proxy, a fake Cluster node, another
program's function of the same name) may answer anything: a put answered ``OK`` was counted
as a copy not stored and the send answered ``200 {"sent": 0}``; a take answered ``7`` was a
TypeError and a 500. Each reply is checked here against its script's shape; one that fits
none is Unavailable("BadReply"), a 503 with Retry-After, and an error line in the log. An
error reply (OOM, say) passes: the store classifies it. Every script of scripts.NAMES has
its shape here (tests/test_hostile_redis.py checks).
"""

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from . import records
from .failures import Unavailable
from .keys import decode_name, encode_name
from .scripts import Call

log = logging.getLogger("echoes.store")
_ACK_ID = re.compile(rb"[0-9a-f]{16}")  # records.ack_id
_KINDS = (b"m", b"M", b"a", *records.STUB_KINDS)
_STUB_TAIL = re.compile(rb"\n#\d+:[\w-]+\Z")  # records.stub's


def _set(reply: Any) -> bool:
    """SET of a big record's body: OK."""
    return reply in (b"OK", "OK", True)


def _mget(reply: Any) -> bool:
    """MGET of big records' bodies: each a message record, or none (gone)."""
    return isinstance(reply, list) and all(
        body is None or (_stored(body) and body[:1] in (b"m", b"M")) for body in reply
    )


def _put(reply: Any) -> bool:
    """put.lua: 1 stored, 2 a duplicate, 0 too many records, 3 too many bytes, 4 stored in
    place of a waiting copy."""
    return type(reply) is int and reply in (0, 1, 2, 3, 4)


def _take(reply: Any) -> bool:
    """take.lua: {"2", records taken, records left, acks queued, acks refused, each record as
    stored..., then (origin, id, ack) of each ack to queue} ("3": the same, replayed), or a
    batch the first design parked: {"1", batch as a JSON array, taken, left, message ids...}."""
    if not isinstance(reply, list) or not reply:
        return False
    if reply[0] in (b"2", b"3") and len(reply) >= 5:
        _, count, left, queued, lost, *rest = reply
        if not _counts(count, left, queued, lost) or len(rest) < int(count):
            return False
        stored, acks = rest[: int(count)], rest[int(count) :]
        return (
            all(_stored(record) for record in stored)
            and len(acks) % 3 == 0
            and all(_ack(*acks[i : i + 3]) for i in range(0, len(acks), 3))
        )
    if reply[0] == b"1" and len(reply) >= 4:
        _, batch, count, left, *ids = reply
        whole = isinstance(batch, bytes) and batch[:1] == b"[" and batch[-1:] == b"]"
        return whole and _counts(count, left) and all(_first_design_id(i) for i in ids)
    return False


def _counts(*counts: Any) -> bool:
    """Whether each is a whole number >= 0: an integer reply, or the digits Lua's '%d' (or
    ZSCORE) gives as a string."""
    for count in counts:  # a loop, not all() of a generator: one call per request's reply
        value = count if type(count) is int else _whole(count)
        if value is None or value < 0:
            return False
    return True


def _whole(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, bytes) and value.lstrip(b"-").isdigit() and value[:1] != b"+":
        return int(value)
    return None


def _stored(record: Any) -> bool:
    """A record as records.py stores it: <kind><time><key>\\n<name JSON>[\\n<body JSON>], a
    message that wants an ack with \\n<encoded name> after its name JSON (its JSON pieces are
    not parsed: that is the cost the stored form saves; records.py renders one without the
    encoded name too); or a big record's stub ("n", "N": its head, then \\n#<bytes>:<token>)."""
    if not isinstance(record, bytes) or record[:1] not in _KINDS:
        return False
    if record[:1] in records.STUB_KINDS and _STUB_TAIL.search(record) is None:
        return False
    # Its pieces end at newlines: one after the key, and for a message one after the name (a
    # JSON name holds none). Found from the front: never a scan of the whole body.
    key_ends = record.find(b"\n", 1 + records.TIME_LENGTH)
    return key_ends > 0 and (record[:1] == b"a" or record.find(b"\n", key_ends + 1) > 0)


def _ack(origin: Any, ack_id: Any, ack: Any) -> bool:
    """An ack take.lua made for echoes to queue: the origin's encoded name, its id, the ack."""
    return (
        isinstance(origin, bytes)
        and _encoded(origin)
        and isinstance(ack_id, bytes)
        and _ACK_ID.fullmatch(ack_id) is not None
        and _stored(ack)
        and ack[:1] == b"a"
    )


def _first_design_id(entry: Any) -> bool:
    return isinstance(entry, bytes) and entry.startswith(b"m:") and entry.count(b":") >= 2


def _untake(reply: Any) -> bool:
    """untake.lua: how many records went back."""
    return _counts(reply)


def _status(reply: Any) -> bool:
    """status.lua: {"waiting"}, {"consumed", ms since the epoch} or {"unknown"}."""
    if not isinstance(reply, list) or not reply:
        return False
    if reply[0] == b"consumed":
        return len(reply) == 2 and _counts(reply[1])
    return len(reply) == 1 and reply[0] in (b"waiting", b"unknown")


def _ping(reply: Any) -> bool:
    """ping.lua: 1."""
    return type(reply) is int and reply == 1


def _sender(reply: Any) -> bool:
    """sender.lua: {verdict 0, 1 or 2, requests left (may be negative), bytes held, the second
    the oldest of them frees by, ms until admitted again}."""
    if not isinstance(reply, list) or len(reply) != 5:
        return False
    verdict, left, held, oldest, wait = reply
    known = _whole(verdict) in (0, 1, 2) and _whole(left) is not None
    return known and _counts(held, oldest, wait)


def _encoded(name: bytes) -> bool:
    """Whether ``name`` is a name as keys.encode_name makes it (base64url of UTF-8)."""
    try:
        return bool(name) and encode_name(decode_name(name.decode("ascii"))) == name.decode()
    except (UnicodeDecodeError, ValueError):  # binascii.Error is a ValueError
        return False


# take.lua's own keys; a sixth is its caller's quota key, and the take then counts the request.
TAKE_KEYS = 5


def _counted_take(reply: Any) -> bool:
    """take.lua with the caller's quota (KEYS[6]): {take's reply, sender.lua's reply, or 0
    when Redis refused the count}."""
    if not isinstance(reply, list) or len(reply) != 2 or not _take(reply[0]):
        return False
    return reply[1] == 0 or _sender(reply[1])


def _exchange(reply: Any) -> bool:
    """exchange.lua: {each put's reply..., the take's}, each checked as its own call's."""
    return isinstance(reply, list) and len(reply) > 0


SHAPES: dict[str, Callable[[Any], bool]] = {
    "put": _put,
    "take": _take,
    "untake": _untake,
    "status": _status,
    "ping": _ping,
    "sender": _sender,
    "exchange": _exchange,
    "set": _set,
    "mget": _mget,
}


def _parts(call: Call, result: Any) -> bool:
    """Whether an exchange's reply has a part for each of its puts (ARGV[1]), and its take
    when its keys hold one; an MGET's, one for each key."""
    if call.script == "mget":
        return len(result) == len(call.keys)
    if call.script != "exchange":
        return True
    puts = int(call.args[0])
    return len(result) == puts + (len(call.keys) > 4 * puts)


def check(calls: Sequence[Call], results: Sequence[Any]) -> None:
    """Unavailable("BadReply") at the first of ``results`` its call's script cannot give."""
    for call, result in zip(calls, results, strict=True):
        counted_take = call.script == "take" and len(call.keys) > TAKE_KEYS
        shape = _counted_take if counted_take else SHAPES[call.script]
        if isinstance(result, Exception) or (shape(result) and _parts(call, result)):
            continue
        shown = repr(result)
        shown = shown if len(shown) <= 80 else shown[:80] + "..."
        log.error(
            "Redis answered a %s with %s, which echoes' %s.lua never returns: answered 503"
            " (is --redis-url a Redis running echoes' own scripts?)",
            call.script,
            shown,
            call.script,
        )
        raise Unavailable("BadReply", f"Redis answered a {call.script} with {shown}")
