"""Servers that lie, for the tests of what echoes trusts (tests/test_hostile_*.py).

- ``FakeRedis``: a small asyncio TCP server speaking RESP (what redis-py sends: arrays of
  bulk strings; answers in RESP3, which redis-py asks for with HELLO 3). Each command goes to
  ``answer(command)``, a list of bytes, which returns the reply as a Python value (``resp``
  encodes it) or ``NO_ANSWER`` to say nothing; ``session`` is a dict of the connection the
  command came on. Every command and connection is recorded.
- ``resp(value)``: a value in RESP3: bytes and str as bulk strings, ``Simple`` as a simple
  string, ``Error`` as an error, int, None, list, dict.
"""

import asyncio
from collections.abc import Callable
from typing import Any


class Simple(str):
    """A RESP simple string (+OK)."""


class Error(str):
    """A RESP error (-ERR ...)."""


NO_ANSWER = object()


def resp(value: Any) -> bytes:
    """``value`` in RESP3."""
    if isinstance(value, Error):
        return f"-{value}\r\n".encode()
    if isinstance(value, Simple):
        return f"+{value}\r\n".encode()
    if value is None:
        return b"_\r\n"
    if isinstance(value, bool):
        return b"#t\r\n" if value else b"#f\r\n"
    if isinstance(value, int):
        return f":{value}\r\n".encode()
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, dict):
        items = b"".join(resp(k) + resp(v) for k, v in value.items())
        return b"%%%d\r\n%s" % (len(value), items)
    return b"*%d\r\n%s" % (len(value), b"".join(resp(v) for v in value))


HELLO = {"server": "redis", "version": "7.0.15", "proto": 3, "id": 1, "mode": "standalone"}


def common(command: list[bytes]) -> Any:
    """What any Redis answers to the handshake redis-py sends; None for other commands."""
    name = command[0].upper()
    if name == b"HELLO":
        return HELLO | {"role": "master", "modules": []}
    if name in (b"AUTH", b"SELECT", b"CLIENT", b"READONLY"):
        return Simple("OK")
    if name == b"PING":
        return Simple("PONG")
    return None


class FakeRedis:
    """A RESP server on loopback whose every answer comes from ``answer``."""

    def __init__(self, answer: Callable[[list[bytes]], Any]):
        self.answer = answer
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self.session: dict[str, Any] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> "FakeRedis":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def names(self) -> list[bytes]:
        """The name of every command received, in order (AUTH's arguments left out)."""
        return [b" ".join(c[:2]).upper() if c[0].upper() in MULTI else c[0] for c in self.commands]

    def said(self, text: bytes) -> bool:
        """Whether any command carried ``text`` in any argument (a password, say)."""
        return any(text in argument for c in self.commands for argument in c)

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        session: dict[str, Any] = {}
        try:
            while True:
                command = await _command(reader)
                if command is None:
                    return
                self.commands.append(command)
                self.session = session
                reply = self.answer(command)
                if reply is None:
                    reply = common(command)
                if reply is None:
                    reply = Error(f"ERR unknown command '{command[0].decode()}'")
                if reply is NO_ANSWER:
                    continue
                writer.write(reply if isinstance(reply, Raw) else resp(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


class Raw(bytes):
    """A reply sent as these very bytes (a malformed one, say)."""


MULTI = (b"SENTINEL", b"CLUSTER", b"FUNCTION", b"CLIENT", b"CONFIG")


async def _command(reader: asyncio.StreamReader) -> list[bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):  # an inline command
        return line.split()
    command = []
    for _ in range(int(line[1:])):
        size = int((await reader.readline())[1:])
        command.append((await reader.readexactly(size + 2))[:-2])
    return command


class FakeHTTP:
    """An HTTP server on loopback, in a thread, whose every answer comes from
    ``respond(request)``: an iterable of byte chunks written as they come (a generator may
    sleep between them, to trickle). ``request`` has ``method``, ``target``, ``headers``
    (lower-case names) and ``body``. Every request is recorded; ``sent`` counts the bytes
    written before the client hung up."""

    def __init__(self, respond: Callable[[Any], Any]):
        import socketserver
        import threading

        self.respond = respond
        self.requests: list[Any] = []
        self.sent = 0
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                fake._handle(self.rfile, self.wfile)

        socketserver.ThreadingTCPServer.daemon_threads = True
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, rfile: Any, wfile: Any) -> None:
        import types

        line = rfile.readline().decode("latin-1").split()
        if len(line) < 2:
            return
        headers = {}
        while (header := rfile.readline().decode("latin-1").strip()) != "":
            name, _, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = rfile.read(int(headers.get("content-length", 0)))
        request = types.SimpleNamespace(method=line[0], target=line[1], headers=headers, body=body)
        self.requests.append(request)
        try:
            for chunk in self.respond(request):
                wfile.write(chunk)
                wfile.flush()
                self.sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return


def http_answer(status: int, body: bytes = b"", **headers: str) -> bytes:
    """A whole HTTP/1.1 answer that closes its connection; ``headers`` with _ for -."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
