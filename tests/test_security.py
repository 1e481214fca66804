"""Hostile clients and transport security: slow clients, floods, hostile input, TLS + ACL."""

import asyncio
import json
import os
import subprocess
import time

import pytest
import redis.asyncio as aioredis
from conftest import KEY, free_port, needs, waiting

from echoes.embedded import RedisServer


async def closed_within(port: int, send: list[bytes], pause: float, timeout: float) -> float:
    """Send ``send`` piece by piece, ``pause`` apart; seconds until the server hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        for piece in send:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)
            if reader.at_eof():
                break
        await asyncio.wait_for(reader.read(), timeout)  # until EOF
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started


def port_of(client) -> int:
    return int(client.base_url.rsplit(":", 1)[1])


async def test_slowloris_headers_are_cut_off(start_echoes):
    echoes = await start_echoes(idle_connection_timeout=0.5)
    trickle = [b"POST /send HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 50
    assert await closed_within(port_of(echoes), trickle, 0.1, timeout=10) < 3


async def test_a_trickled_body_is_cut_off_and_stores_nothing(start_echoes):
    echoes = await start_echoes(body_timeout=0.5)
    body = json.dumps({"idempotencyKey": KEY, "destination": ["b"], "body": "x" * 100}).encode()
    head = f"POST /send HTTP/1.1\r\nFrom: a\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    pieces = [head] + [body[i : i + 1] for i in range(len(body))]
    assert await closed_within(port_of(echoes), pieces, 0.05, timeout=10) < 3
    assert await echoes.receive("b") == []


async def test_a_flood_of_idle_connections_leaves_the_server_serving(start_echoes):
    echoes = await start_echoes()
    # Opened from the server's own event loop, so without blocking it.
    flood = [await asyncio.open_connection("127.0.0.1", port_of(echoes)) for _ in range(1000)]
    try:
        assert (await echoes.request("GET", "/health")).status == 200
        await echoes.send("a", KEY, ["b"])
        assert len(await echoes.receive("b")) == 1
    finally:
        for _, writer in flood:
            writer.close()


async def test_hostile_input_is_refused_and_stores_nothing(echoes):
    hostile = [
        ("/send", {"idempotencyKey": KEY, "destination": ["b"] * 10_000, "body": 1}, 400),
        ("/send", b'{"body": "' + b"x" * (1 << 20) + b'"}', 413),  # 1 MiB + a little
        ("/send", b"[" * 50_000, 400),
        ("/send", {"idempotencyKey": "k" * 11, "destination": ["b"], "body": 1}, 400),
        ("/send", {"idempotencyKey": "k" * 65, "destination": ["b"], "body": 1}, 400),
        ("/send", {"idempotencyKey": KEY, "destination": ["b\r\nFrom: c"], "body": 1}, 400),
        ("/exchange", {"idempotencyKey": 1, "destination": ["*"], "body": 1}, 400),
    ]
    for path, body, status in hostile:
        assert (await echoes.post(path, "a", body)).status == status, (path, status)
    for sender in ["x" * 5000, "\xff\xfe"]:
        assert (await echoes.post("/send", sender, {})).status == 400
    # Raw CR/LF and a NUL inside a header: Tornado's parser refuses the request.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(echoes))
    writer.write(b"POST /receive HTTP/1.1\r\nFrom: a\rb\r\n\r\n")
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line == b"" or b" 400 " in status_line
    assert await echoes.redis.keys(echoes.settings.key_prefix + "*") == []
    # Keys at the bounds are fine.
    for key in ["k" * 12, "k" * 64]:
        await echoes.send("a", key, ["b"])
    assert len(await echoes.receive("b")) == 2
    assert (await echoes.request("GET", "/health")).status == 200


# --- rediss:// with an ACL user ------------------------------------------------------------


def make_certificates(directory) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "redis.crt",
    )
    return {name: str(directory / name) for name in ("ca.crt", "redis.crt", "redis.key")}


@needs("openssl")
async def test_rediss_with_an_acl_user(start_echoes, tmp_path):
    certs = make_certificates(tmp_path)
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        tls_port=str(tls_port),
        tls_cert_file=certs["redis.crt"],
        tls_key_file=certs["redis.key"],
        tls_ca_cert_file=certs["ca.crt"],
        tls_auth_clients="no",
    )
    try:
        server.start()
    except Exception:
        if os.environ.get("CI"):
            raise
        pytest.skip("this redis-server was built without TLS")
    try:
        admin = aioredis.Redis.from_url(server.url)
        await admin.acl_setuser(
            "echoes",
            enabled=True,
            passwords=["+s3cret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        await admin.config_set("requirepass", "admin-only")  # the default user is locked out
        await admin.aclose()
        url = f"rediss://echoes:s3cret@127.0.0.1:{tls_port}/0?ssl_ca_certs={certs['ca.crt']}"
        echoes = await start_echoes(redis_url=url, recheck_interval=60)
        task = await waiting(echoes, "b")
        await echoes.send("a", KEY, ["b"], "over TLS")
        assert [r["body"] for r in (await asyncio.wait_for(task, 5)).json] == ["over TLS"]
        health = await echoes.request("GET", "/health")
        assert health.status == 200
        # A client that does not trust the CA is refused by TLS, not answered in clear.
        untrusted = aioredis.Redis.from_url(f"rediss://echoes:s3cret@127.0.0.1:{tls_port}/0")
        with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
            await untrusted.ping()
        await untrusted.aclose()
    finally:
        server.stop()
