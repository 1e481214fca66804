"""The spec's JSON schemas: the one source for validating requests and describing responses.

SEND, MSG and ACK are copied from the API description (../shared/spec/echoes-api.txt).
"""

import functools
import re
from collections.abc import Iterator
from typing import Any

import fastjsonschema

# Response headers of /receive and /exchange.
REMAINING_HEADER = "Echoes-Remaining"  # records still waiting after this batch
ATTEMPT_HEADER = "Echoes-Attempt"  # the token this batch is kept under for a retry

# Idempotency keys and attempt tokens share one alphabet, which has no ':' (see records.py).
TOKEN_PATTERN = "^[A-Za-z0-9\\-_=]{12,64}$"
TOKEN = {"type": "string", "pattern": TOKEN_PATTERN}

SEND: dict[str, Any] = {
    "type": "object",
    "properties": {
        "idempotencyKey": TOKEN,
        "destination": {"type": "array", "items": {"type": "string"}},
        "body": {},
        "expectsAck": {"type": "boolean"},
    },
    "required": ["idempotencyKey", "destination", "body"],
}

ACK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"const": "ack"},
        "idempotencyKey": TOKEN,
        "destination": {"type": "string"},
        "receivedAt": {"type": "string", "format": "date-time"},
    },
    "required": ["type", "idempotencyKey", "destination", "receivedAt"],
}

MSG: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"const": "msg"},
        "idempotencyKey": TOKEN,
        "origin": {"type": "string"},
        "body": {},
        "expectsAck": {"type": "boolean"},
        "sentAt": {"type": "string", "format": "date-time"},
    },
    "required": ["type", "idempotencyKey", "origin", "body", "expectsAck", "sentAt"],
}

RECEIVED: dict[str, Any] = {"type": "array", "items": {"oneOf": [MSG, ACK]}}


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262, where '$' matches only at the very end; Python's '$'
    # also matches before a final newline, which would let "key\n" through.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


@functools.cache
def validator(schema_id: str) -> Any:
    """jsonschema's validator of the schema named ``schema_id``, made on first use.

    jsonschema (with referencing, attrs and rpds) is only needed to list what is wrong with
    an invalid body; imported when first needed, it costs the other processes nothing (about
    3.5 MB each).
    """
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
            yield ValidationError(f"{instance!r} does not match {pattern!r}")

    extended = validators.extend(Draft202012Validator, {"pattern": pattern})
    return extended({"send": SEND, "token": TOKEN, "status": STATUS_QUERY}[schema_id])


# The send schema compiled to Python by fastjsonschema: a valid body passes in about 1 us
# instead of 22 us (BENCHMARKS.md). It stops at the first error, so an invalid body goes
# on to jsonschema, the reference, which lists every error with its path.
_send_fast = fastjsonschema.compile(SEND)
_token_fast = fastjsonschema.compile(TOKEN)


def is_token(value: Any) -> bool:
    """Whether ``value`` is an idempotency key or attempt token (TOKEN)."""
    try:
        _token_fast(value)
        return True
    except fastjsonschema.JsonSchemaException:
        return False


def send_errors(document: Any, limit: int = 200) -> list[str]:
    """Every way ``document`` breaks the send schema, as "<JSON path>: <reason>" lines."""
    try:
        _send_fast(document)
        return []
    except fastjsonschema.JsonSchemaException:
        return errors("send", document, limit)


def errors(schema_id: str, document: Any, limit: int = 200) -> list[str]:
    """Every way ``document`` breaks the schema ``schema_id``, as "<path>: <reason>" lines."""
    found = sorted(validator(schema_id).iter_errors(document), key=lambda e: e.json_path)
    return [f"{e.json_path}: {_short(e.message, limit)}" for e in found]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- Responses of echoes' own (not in the spec), described here for the OpenAPI document ---

ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "the HTTP reason phrase"},
        "status": {"type": "integer", "description": "the HTTP status code"},
        "details": {"type": "array", "items": {"type": "string"}, "description": "what to fix"},
    },
    "required": ["error", "status", "details"],
    "additionalProperties": False,
}

SENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sent": {"type": "integer", "minimum": 0, "description": "copies stored"},
        "duplicates": {
            "type": "integer",
            "minimum": 0,
            "description": "of those, copies already consumed within the dedup window:"
            " answered as stored, not delivered again",
        },
    },
    "required": ["sent", "duplicates"],
}

# POST /status: what became of each copy of one of the caller's messages.
STATUS_QUERY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "idempotencyKey": TOKEN,
        "destination": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["idempotencyKey", "destination"],
}

STATUS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "destination": {"type": "string"},
            "state": {"enum": ["waiting", "consumed", "unknown"]},
            "consumedAt": {"type": "string", "format": "date-time"},
        },
        "required": ["destination", "state"],
    },
}

ABOUT: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"const": "echoes"}, "version": {"type": "string"}},
    "required": ["name", "version"],
}

HEALTH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"const": "ok"},
        "version": {"type": "string"},
        "pid": {"type": "integer"},
        "wake": {"enum": ["keyspace", "publish"]},
        "notifications": {"type": "boolean"},
        "waiters": {"type": "integer", "minimum": 0},
        "redis": {"type": "object"},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["status", "version", "pid", "wake", "notifications", "waiters"],
}
