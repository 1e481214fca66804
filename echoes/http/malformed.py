"""Requests Tornado refuses before any handler runs, answered in echoes' error shape.

Tornado answers a request it cannot parse (folded headers, a bad Content-Length, both
Content-Length and Transfer-Encoding, a bad request line) with a bare
``HTTP/1.1 400 Bad Request``, no body, and closes the connection, after logging why at INFO on
``tornado.general``. The streams of ``stream_class`` put a JSON 400 in the error shape with
that reason in its place, count it (``echoes_requests_total{endpoint="other",status="400"}``)
and write an access line. Headers over the size limit are another matter: Tornado's stream
closes the connection itself before any answer can be written (README, "Errors").
"""

import json
import logging
from typing import Any

from tornado.iostream import IOStream

from ..logs import logfmt
from ..metrics import Metrics
from .errors import error_body

access_log = logging.getLogger("echoes.access")
BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"


class Reasons(logging.Filter):
    """Keeps the reason Tornado logs (at INFO) just before it writes its bare 400.

    That line is dropped: the access line replaces it. Tornado's other lines pass as the
    root logger's level (--log-level) says, as they did before this logger was set to INFO.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last = "unparsable request"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Malformed HTTP message from %s: %s" and isinstance(record.args, tuple):
            self.last = str(record.args[-1])
            return False
        return record.levelno >= logging.getLogger().getEffectiveLevel()


_reasons = Reasons()
_tornado_log = logging.getLogger("tornado.general")
_tornado_log.addFilter(_reasons)
_tornado_log.setLevel(logging.INFO)  # the reasons are logged at INFO, whatever --log-level


def stream_class(metrics: Metrics | None) -> type[IOStream]:
    """An IOStream that writes Tornado's bare 400 in the error shape.

    A class rather than a wrapper around each stream's write: a server holds ten thousand
    streams of long polls at once, and a closure per stream is 300 bytes each.
    """

    class ShapedIOStream(IOStream):
        def write(self, data: Any, *args: Any, **kwargs: Any) -> Any:
            if data == BARE_400:
                data = answer(400, [f"malformed HTTP request: {_reasons.last}"])
                if metrics:
                    metrics.requests.labels("other", "400").inc()
                access_log.info("%s", logfmt({"status": 400, "malformed": _reasons.last}))
            return super().write(data, *args, **kwargs)

    return ShapedIOStream


def answer(status: int, details: list[str]) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection."""
    body = json.dumps(error_body(status, details)).encode()
    reason = error_body(status, [])["error"]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
