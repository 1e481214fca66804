"""One HTTP POST for the synchronous Client, bounded in time and size (http.client).

urllib bounds each socket read, not the exchange: an answer trickled a byte every 10 s ran
70 s past a 31 s timeout, a 400 MB answer took 847 MB, and a 302 was followed to another
host with the caller's ``From``. Here every read and write of the exchange waits at most
until one deadline (the socket's timeout is set to what is left before each of them), the
answer is read up to a limit, and nothing is followed: the caller gets the redirection's
status and headers. Proxies come from the environment as urllib takes them
(``http_proxy``, ``https_proxy``, ``no_proxy``).
"""

import http.client
import io
import socket
import ssl
import time
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
    try:
        conn.request("POST", target, body=body, headers=dict(headers))
        response = conn.getresponse()
        return response.status, response.headers, _read(response, limit)
    except TimeoutError:
        raise TimedOut(f"no whole answer within {timeout:g} s") from None
    except http.client.HTTPException as e:
        raise OSError(f"{type(e).__name__}: {e}") from e
    finally:
        conn.close()


class _Bounded:
    """A connection whose socket, once connected, reads and writes only until a deadline."""

    deadline = 0.0

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]  # TCP (and TLS): the socket timeout bounds it
        conn: Any = self
        conn.sock = _Socket(conn.sock, self.deadline)


class _HTTP(_Bounded, http.client.HTTPConnection):
    pass


class _HTTPS(_Bounded, http.client.HTTPSConnection):
    pass


class _Socket:
    """A socket whose every read and write ends by ``deadline`` (time.monotonic())."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock, self._deadline = sock, deadline

    def left(self) -> None:
        """Give the next operation what is left of the time; TimeoutError if nothing is."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the deadline passed")
        self._sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self.left()  # sendall's timeout bounds the whole call
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kw: Any) -> io.BufferedReader:
        """What http.client reads the answer from (the socket's own raw file, which keeps
        it open until closed, under a reader that gives each read what is left)."""
        return io.BufferedReader(_Reader(self._sock.makefile("rb", buffering=0), self))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Reader(io.RawIOBase):
    """The raw reader under http.client's buffered one: each read ends by the deadline."""

    def __init__(self, raw: Any, sock: _Socket):
        self._raw, self._sock = raw, sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.left()
        return int(self._raw.readinto(buffer) or 0)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` (through the environment's proxy, if any), and the target
    of the request line."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    proxies = {} if urllib.request.proxy_bypass(host) else urllib.request.getproxies()
    proxy = proxies.get(parts.scheme)
    kind = _HTTPS if https else _HTTP
    options: dict[str, Any] = {"timeout": timeout}
    if https:
        options["context"] = ssl.create_default_context()
    if proxy:
        via = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        conn = kind(via.hostname or "", via.port or 80, **options)
        if https:
            conn.set_tunnel(host, port)  # CONNECT: the proxy sees no header of ours
        else:
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
    else:
        conn = kind(host, port, **options)
    conn.deadline = time.monotonic() + timeout
    return conn, target


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
