"""The OpenAPI 3.1 document of the API (GET /openapi.json), built from schemas.py.

The request and response schemas are the very objects the server validates with, so the
document cannot drift from the code; tests/test_contract.py runs schemathesis against it.
"""

from typing import Any

from .. import __version__
from ..config import Settings
from . import schemas

JSON = "application/json"


def document(config: Settings) -> dict[str, Any]:
    """The OpenAPI document for a server running with ``config``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "echoes",
            "version": __version__,
            "description": (
                "A Redis-backed message inbox. Callers name themselves in the From header;"
                " a name is any string of at most max_from_length UTF-8 bytes, without"
                " control, format or separator characters or surrounding white space (compared"
                " in Unicode NFC). Every error has the body"
                " {error, status, details}."
            ),
        },
        "paths": {
            "/send": {
                "post": _inbox(
                    "Store one copy of a message per destination.",
                    config,
                    sends=True,
                    receives=False,
                )
            },
            "/receive": {
                "post": _inbox(
                    "Take every record waiting for the caller.", config, sends=False, receives=True
                )
            },
            "/exchange": {
                "post": _inbox(
                    "Send, then receive, in one call.", config, sends=True, receives=True
                )
            },
            "/status": {"post": _status(config)},
            "/": _with_head(_get("The service's name and version.", schemas.ABOUT)),
            "/health": _with_head(
                _get("Redis and the wake-up listener are fine.", schemas.HEALTH, unavailable=True)
            ),
            "/metrics": {"get": _text("Prometheus metrics.")},
            "/openapi.json": {"get": _get("This document.", {"type": "object"})},
        },
        "components": {
            "schemas": {
                "Send": schemas.SEND,
                "Msg": schemas.MSG,
                "Ack": schemas.ACK,
                "Error": schemas.ERROR,
            }
        },
    }


def _inbox(summary: str, config: Settings, sends: bool, receives: bool) -> dict[str, Any]:
    parameters = [_from(config)]
    responses = {
        "400": _error("A bad request: nothing changed."),
        "403": _error("A POST from a web page on an origin not allowed: nothing changed."),
        "413": _error(
            "The body is larger than max_body_size, or would store more than max_request_bytes."
        ),
    }
    if receives:
        parameters += _take_parameters(config)
        ok = {
            "description": "The records taken, oldest first.",
            "headers": {
                schemas.REMAINING_HEADER: {"schema": {"type": "string", "pattern": "^[0-9]+$"}},
                schemas.ATTEMPT_HEADER: {"schema": {"type": "string"}},
            },
            "content": {JSON: {"schema": schemas.RECEIVED}},
        }
    else:
        ok = {
            "description": "How many copies were stored.",
            "content": {JSON: {"schema": schemas.SENT}},
        }
    responses["200"] = ok
    if sends or receives:
        responses["429"] = _error(
            "A destination's inbox is full, or the caller holds too many long polls."
        )
    if sends:
        responses["507"] = _error("Redis is out of memory.")
    responses["503"] = _error("Redis is unavailable, or too many requests are waiting.")
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
    }
    if sends:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": schemas.SEND}}}
    return operation


def _status(config: Settings) -> dict[str, Any]:
    ok = {
        "description": "Each copy's state: waiting, consumed (within the dedup window), unknown.",
        "content": {JSON: {"schema": schemas.STATUS}},
    }
    return {
        "summary": "What became of each copy of one of the caller's messages.",
        "parameters": [_from(config)],
        "requestBody": {"required": True, "content": {JSON: {"schema": schemas.STATUS_QUERY}}},
        "responses": {
            "200": ok,
            "400": _error("A bad request."),
            "403": _error("A POST from a web page on an origin not allowed."),
            "503": _error("Redis is unavailable."),
        },
    }


def _from(config: Settings) -> dict[str, Any]:
    return {
        "name": "From",
        "in": "header",
        "required": True,
        "description": f"The caller's name (at most {config.max_from_length} UTF-8 bytes).",
        "schema": {"type": "string", "minLength": 1},
    }


def _take_parameters(config: Settings) -> list[dict[str, Any]]:
    return [
        {
            "name": "limit",
            "in": "query",
            "description": f"Most records to take (at most {config.max_batch}).",
            "schema": {"type": "integer", "minimum": 1},
        },
        {
            "name": "attempt",
            "in": "query",
            "description": "Token under which the batch stays retrievable for a retry.",
            "schema": schemas.TOKEN,
        },
        {
            "name": "wait",
            "in": "query",
            "description": f"Seconds to wait for a record (served up to {config.max_wait}).",
            "schema": {"type": "number", "minimum": 0},
        },
    ]


def _get(summary: str, schema: dict[str, Any], unavailable: bool = False) -> dict[str, Any]:
    responses = {"200": {"description": summary, "content": {JSON: {"schema": schema}}}}
    if unavailable:
        responses["503"] = _error("Not healthy; the details say why.")
    return {"summary": summary, "responses": responses}


def _with_head(get: dict[str, Any]) -> dict[str, Any]:
    """GET and HEAD of one resource: HEAD answers the same statuses, without a body."""
    responses = {code: {"description": r["description"]} for code, r in get["responses"].items()}
    return {"get": get, "head": {"summary": get["summary"], "responses": responses}}


def _text(summary: str) -> dict[str, Any]:
    content = {"text/plain": {"schema": {"type": "string"}}}
    return {"summary": summary, "responses": {"200": {"description": summary, "content": content}}}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
