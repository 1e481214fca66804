"""The API against its own OpenAPI document, with schemathesis: seeded and bounded.

Every operation gets MAX_EXAMPLES generated requests that fit the document, and those with
parameters as many that do not (bodies, headers, query parameters), against a real echoes
process on a real Redis: no 5xx, and every response (status, content type, headers, body)
matches the document.
"""

import urllib.request

import hypothesis
import pytest
import schemathesis
from jsonschema import Draft202012Validator
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.modes import GenerationMode

from echoes.config import Settings
from echoes.http import schemas, validation
from echoes.http.app import routes
from echoes.http.errors import error_body
from echoes.http.openapi import document

MAX_EXAMPLES = 90  # per operation and mode: about 550 requests in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_every_response_matches_the_document(spawn_echoes, settings):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        "--max-wait=0.05",  # generated ?wait= values must not hold the run up
        "--log-level=warning",
    )
    # Driven through hypothesis directly: schemathesis's pytest loader (from_fixture) does
    # not load under pytest 9.2 ("'Function' object has no attribute '_nodeid'").
    api = schemathesis.openapi.from_url(echoes.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /send", "POST /receive", "POST /exchange", "GET /health"} <= labels
    cases = [(op, GenerationMode.POSITIVE) for op in operations]
    # Only operations with parameters or a body have requests that do not fit the document.
    cases += [(op, GenerationMode.NEGATIVE) for op in operations if op.method.upper() == "POST"]
    for operation, mode in cases:

        @hypothesis.given(case=operation.as_strategy(mode))
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,  # seeded: the same cases on every run
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            database=None,
        )
        def check(case):
            case.call_and_validate(checks=CHECKS)

        check()
    # The run really exercised the server: count what it answered.
    with urllib.request.urlopen(echoes.url + "/metrics") as response:
        text = response.read().decode()
    answered = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("echoes_requests_total{")
    )
    # Three operations take parameters and bodies, in both modes; the others have one case.
    assert answered >= 3 * 2 * MAX_EXAMPLES * 0.8, answered
    print(f"schemathesis: {answered:.0f} requests, no failure")


def test_the_document_is_built_from_the_validating_schemas():
    paths = document(Settings())["paths"]
    body = paths["/send"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body is schemas.SEND
    ok = paths["/receive"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok is schemas.RECEIVED
    # The query parameters the document lists are the ones the server accepts (others: 400).
    for path in ("/receive", "/exchange"):
        names = [p["name"] for p in paths[path]["post"]["parameters"] if p["in"] == "query"]
        assert tuple(names) == validation.TAKE_PARAMETERS
    assert not [p for p in paths["/send"]["post"]["parameters"] if p["in"] == "query"]


def test_the_document_lists_exactly_the_routed_endpoints_and_methods():
    paths = document(Settings())["paths"]
    routed = {path: handler for path, handler, _ in routes()}
    assert set(paths) == set(routed)
    for path, handler in routed.items():
        allowed = {m.strip().lower() for m in handler.allow.split(",")} - {"options"}
        assert set(paths[path]) == allowed, path


@pytest.mark.parametrize("status", [400, 403, 404, 405, 413, 429, 503, 507])
def test_every_error_has_the_documented_shape(status):
    Draft202012Validator(schemas.ERROR).validate(error_body(status, ["why"]))
