"""One HTTP POST for the synchronous Client, bounded in time and size (http.client).

urllib bounds each socket read, not the exchange: an answer trickled a byte every 10 s ran
70 s past a 31 s timeout, a 400 MB answer took 847 MB, and a 302 was followed to another
host with the caller's ``From``. Here the whole exchange has one deadline (a timer shuts the
socket down when it passes, wherever the exchange is), the answer is read up to a limit,
and nothing is followed: the caller gets the redirection's status and headers. Proxies
come from the environment as urllib takes them (``http_proxy``, ``https_proxy``,
``no_proxy``).
"""

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


class TooLarge(Exception):
    """The answer is longer than the limit."""


class TimedOut(Exception):
    """No whole answer within the deadline."""


def post(
    url: str, headers: Mapping[str, str], body: bytes, timeout: float, limit: int
) -> tuple[int, Any, bytes]:
    """POST ``body`` to ``url``: status, headers and body, all within ``timeout`` seconds
    (TimedOut) and at most ``limit`` bytes of body (TooLarge). OSError if unreachable."""
    conn, target = _connection(url, timeout)
    cut = threading.Event()
    timer = None
    try:
        conn.connect()  # bounded by the socket timeout; then the timer bounds the rest
        # The socket itself: http.client drops its own reference once the answer's headers
        # say the connection closes, and the answer goes on reading from it.
        timer = threading.Timer(timeout, _cut, (conn.sock, cut))
        timer.daemon = True
        timer.start()
        conn.request("POST", target, body=body, headers=dict(headers))
        response = conn.getresponse()
        body = _read(response, limit)
        if cut.is_set():  # cut mid-answer: what was read is not all of it
            raise TimedOut(f"no whole answer within {timeout:g} s")
        return response.status, response.headers, body
    except (OSError, http.client.HTTPException) as e:
        if cut.is_set():
            raise TimedOut(f"no whole answer within {timeout:g} s") from None
        if isinstance(e, http.client.HTTPException):
            raise OSError(f"{type(e).__name__}: {e}") from e
        raise
    finally:
        if timer:
            timer.cancel()
        conn.close()


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` (through the environment's proxy, if any), and the target
    of the request line."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    proxy = (
        None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
    )
    kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
    options: dict[str, Any] = {"timeout": timeout}
    if https:
        options["context"] = ssl.create_default_context()
    if not proxy:
        return kind(host, port, **options), target
    via = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    conn = kind(via.hostname or "", via.port or 80, **options)
    if https:
        conn.set_tunnel(host, port)  # CONNECT: the proxy sees no header of ours
        return conn, target
    return conn, f"http://{parts.netloc.rpartition('@')[2]}{target}"


def _cut(sock: socket.socket, cut: threading.Event) -> None:
    """The deadline passed: wake the blocked read, whatever it was waiting for."""
    cut.set()
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _read(response: http.client.HTTPResponse, limit: int) -> bytes:
    length = response.getheader("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise TooLarge(f"the answer is {int(length)} bytes, more than {limit}")
    chunks, size = [], 0
    while chunk := response.read1(65536):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the answer is longer than {limit} bytes")
        chunks.append(chunk)
    if response.length:  # the connection closed before Content-Length was all there
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)
