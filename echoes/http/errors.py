"""The one error shape of every error response.

{"error": <reason phrase>, "status": <code>, "details": [<what to fix>, ...]}
"""

from http import HTTPStatus
from typing import Any

from tornado.web import HTTPError


class APIError(HTTPError):
    """An error answered to the client, with details it can act on."""

    def __init__(self, status: int, *details: str, headers: dict[str, str] | None = None):
        super().__init__(status, "; ".join(details))
        self.details = list(details)
        self.headers = headers or {}


def error_body(status: int, details: list[str]) -> dict[str, Any]:
    """The JSON body of an error response."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return {"error": reason, "status": status, "details": details}
