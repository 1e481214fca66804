"""Turn the parts of a request into the store's inputs, or an APIError saying what is wrong."""

import itertools
import json
import math
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from ..config import Settings
from ..store.inboxes import Message, Take
from . import schemas
from .errors import APIError

# Tokens echoes makes itself: unique per process (random prefix) and per request (counter),
# without a system call per request as secrets.token_urlsafe() would make.
_TOKEN_PREFIX = "e" + secrets.token_urlsafe(12) + "-"
_tokens = itertools.count(1)
_SECONDS = re.compile(r"\d{1,9}(\.\d*)?|\.\d+")
# Query parameters /receive and /exchange understand; any other is a mistake worth naming.
TAKE_PARAMETERS = ("limit", "attempt", "wait")
# Characters no name may hold: controls (Cc), format characters (Cf: zero-width spaces,
# bidirectional overrides), line and paragraph separators (Zl, Zp) and lone surrogates (Cs).
_FORBIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}
# Zero-width (non-)joiners are format characters that writing systems and emoji need.
_JOINERS = {"\u200c", "\u200d"}


def normal_name(name: str) -> str:
    """``name`` in Unicode NFC, so that one name typed two ways is one inbox."""
    return unicodedata.normalize("NFC", name)


def name_problem(name: str, max_length: int) -> str | None:
    """Why ``name`` (already in NFC) cannot name an inbox, or None.

    A name is anything that can be sent back in a From header: non-empty, at most
    ``max_length`` UTF-8 bytes, no control, format or separator characters (invisible, or
    able to make a name look like another), no surrounding white space (HTTP strips it from
    header values, so such a name could never read its inbox).
    """
    if not name:
        return "is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if size > max_length:
        return f"is longer than {max_length} bytes"
    if name != name.strip():
        return "has leading or trailing white space"
    for c in name:
        if unicodedata.category(c) in _FORBIDDEN and c not in _JOINERS:
            return f"contains a control character or an invisible one (U+{ord(c):04X})"
    return None


def caller(values: Sequence[str], settings: Settings) -> str:
    """The caller's name from the From header values (Tornado decodes them as Latin-1)."""
    if not values:
        raise APIError(400, "the From header is required: it names the caller")
    if len(values) > 1:
        raise APIError(400, "send exactly one From header")
    try:
        name = values[0].encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise APIError(400, "the From header is not valid UTF-8") from None
    name = normal_name(name)
    problem = name_problem(name, settings.max_from_length)
    if problem:
        raise APIError(400, f"the From header {problem}")
    return name


def message(body: bytes, settings: Settings) -> Message:
    """The message a /send or /exchange body describes."""
    document = parse_json(body)
    errors = schemas.send_errors(document)
    if errors:
        raise APIError(400, *errors)
    return Message(
        key=document["idempotencyKey"],
        body=document["body"],
        expects_ack=document.get("expectsAck", False),
        destinations=destinations(document["destination"], settings),
    )


def status_query(body: bytes, settings: Settings) -> tuple[str, tuple[str, ...]]:
    """The idempotency key and destinations a /status body asks about."""
    document = parse_json(body)
    errors = schemas.errors("status", document)
    if errors:
        raise APIError(400, *errors)
    return document["idempotencyKey"], destinations(document["destination"], settings)


def destinations(names: Sequence[str], settings: Settings) -> tuple[str, ...]:
    """A body's destination names, each checked and in NFC, without repeats."""
    normal = [normal_name(d) for d in names]
    if len(normal) > settings.max_destinations:
        raise APIError(400, f"$.destination: more than {settings.max_destinations} destinations")
    for i, name in enumerate(normal):
        problem = name_problem(name, settings.max_from_length)
        if problem:
            raise APIError(400, f"$.destination[{i}]: {problem}")
    return tuple(dict.fromkeys(normal))


def parse_json(body: bytes) -> Any:
    """Decode a UTF-8 JSON body; NaN and Infinity are not JSON and are refused."""
    if not body.strip():
        raise APIError(400, "a JSON body is required")
    try:
        return json.loads(
            body.decode("utf-8"),
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_integer,
        )
    except UnicodeDecodeError as e:
        raise APIError(400, f"the body is not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise APIError(
            400, f"the body is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise APIError(400, "the body nests too deeply") from None


def _no_constant(name: str) -> NoReturn:
    raise json.JSONDecodeError(f"{name} is not allowed", name, 0)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise APIError(400, f"the body holds a number too large for a double: {text[:40]}")
    return number


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # past sys.get_int_max_str_digits() (4300 digits)
        raise APIError(
            400, f"the body holds a number of {len(text)} digits (at most 4300)"
        ) from None


def no_other_parameters(query: Mapping[str, Sequence[bytes]], known: Sequence[str]) -> None:
    """Refuse query parameters the endpoint does not know (``?wiat=5`` is not a long poll)."""
    unknown = sorted(set(query) - set(known))
    if unknown:
        names = ", ".join(repr(n[:40]) for n in unknown[:5])
        allowed = ", ".join(known) if known else "none"
        raise APIError(400, f"unknown query parameters: {names} (this endpoint takes: {allowed})")


def take(query: Mapping[str, Sequence[bytes]], settings: Settings) -> Take:
    """What a /receive or /exchange takes, from its query (?limit=N&attempt=TOKEN&wait=S)."""
    limit = settings.max_batch
    raw_limit = _single(query, "limit")
    if raw_limit is not None:
        if not raw_limit.isdigit() or int(raw_limit) < 1:
            raise APIError(400, "limit must be a whole number of at least 1")
        limit = min(int(raw_limit), settings.max_batch)
    attempt = _single(query, "attempt")
    if attempt is None:
        attempt = f"{_TOKEN_PREFIX}{next(_tokens):x}"
    elif not schemas.is_token(attempt):
        raise APIError(400, f"attempt must match {schemas.TOKEN_PATTERN}")
    return Take(limit=limit, attempt=attempt, wait=wait(_single(query, "wait"), settings))


def wait(raw: str | None, settings: Settings) -> float:
    """Seconds to wait for a record: >= 0, decimals allowed, served up to max_wait."""
    if raw is None:
        return 0.0
    if not _SECONDS.fullmatch(raw):
        raise APIError(400, "wait must be a number of seconds, at least 0 (like 30 or 2.5)")
    return min(float(raw), settings.max_wait)


def _single(query: Mapping[str, Sequence[bytes]], name: str) -> str | None:
    values = query.get(name, ())
    if len(values) > 1:
        raise APIError(400, f"give {name} at most once")
    if not values:
        return None
    try:
        return values[0].decode("ascii")
    except UnicodeDecodeError:
        raise APIError(400, f"{name} must be ASCII") from None
