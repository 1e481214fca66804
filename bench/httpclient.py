"""A minimal HTTP/1.1 client on asyncio streams, for thousands of concurrent long polls.

It does only what the benchmark needs (one request per call, Content-Length bodies) so that
the measuring side stays cheap; Nchan is measured with the same client.
"""

import asyncio
import time


class Connection:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        """Write a request (the response is read by response())."""
        lines = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def response(self) -> tuple[int, bytes, float]:
        """Read one response: status, body, and the monotonic time it was complete."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        body = await (self._chunked() if chunked else self.reader.readexactly(length))
        return status, body, time.monotonic()

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes, float]:
        self.send(method, path, headers, body)
        return await self.response()

    def close(self) -> None:
        self.writer.close()
