"""Each figure of the benchmark, measured beside its baseline in the same run."""

import asyncio
import dataclasses
import json
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from echoes.config import Settings
from echoes.store import servers
from echoes.store.inboxes import Message, Store, Take
from echoes.store.keys import Keys
from echoes.store.scripts import Call

from . import cpu, original
from .httpclient import Connection
from .services import HERE, Service, worker_pid

Row = dict[str, Any]
# The store the figures drive directly: records live an hour, no inbox cap.
# One sender fills the stores of figure 2: its quotas (issue 22) off.
STORE_SETTINGS = Settings(message_ttl=3600, max_inbox_records=0, sender_rate=0, max_sender_bytes=0)


def store_at(redis_url: str, prefix: str) -> Store:
    """A store of its own on ``redis_url``, as the figures drive it directly."""
    settings = dataclasses.replace(STORE_SETTINGS, redis_url=redis_url)
    return Store(servers.connect(settings), Keys(prefix), settings)


WARMUP = 20


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


# --- 1 and 6: throughput of /exchange --------------------------------------------------------


def wrk(url: str, seconds: float, connections: int = 32) -> Row:
    """wrk -t1 -c32 on POST /exchange with bench/exchange.lua: req/s, p50, p99 in ms."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(HERE / "exchange.lua")]
    out = subprocess.run(
        [*command, url + "/exchange"], capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["non2xx"] == 0, result
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "requests": result["requests"],
    }


def throughput(
    starters: dict[str, Callable[[], Service]],
    rounds: int,
    seconds: float,
    redis_urls: dict[str, list[str]],
) -> dict[str, Row]:
    """Each target in turn, round after round (interleaved), started afresh and alone each
    time, warmed up for a second; medians over the rounds. Besides the rate and latency,
    the CPU time the server and Redis (``redis_urls[name]``: the servers each target uses)
    spent per request while wrk ran (bench/cpu.py)."""
    runs: dict[str, list[Row]] = {name: [] for name in starters}
    for _ in range(rounds):
        for name, start in starters.items():
            service = start()
            meter = cpu.Meter(service.popen.pid, redis_urls[name])
            try:
                wrk(service.url, 1)
                before = meter.read()
                row = wrk(service.url, seconds)
                row |= cpu.per_request(before, meter.read(), row["requests"])
                runs[name].append(row)
            finally:
                meter.close()
                service.stop()
    return {name: medians(rows) for name, rows in runs.items()}


def medians(rows: list[Row]) -> Row:
    """The median of each figure over ``rows`` (of each server's, for a dict of them)."""
    out: Row = {}
    for key, value in rows[0].items():
        if isinstance(value, dict):
            out[key] = {k: median([r[key][k] for r in rows]) for k in value}
        else:
            out[key] = median([r[key] for r in rows])
    return out


# --- 2: receive cost against stored volume --------------------------------------------------


async def fill(store: Store, start: int, stop: int, users: int) -> None:
    """Store records start..stop-1 for ``users`` other users, pipelined 1000 at a time."""
    for base in range(start, stop, 1000):
        calls = []
        for i in range(base, min(base + 1000, stop)):
            body = {"n": i, "text": "x" * 60}
            message = Message(f"fill-{i:012d}", body, False, (f"user{i % users}",))
            calls += store.puts(f"sender{i % 7}", message)
        await store.scripts.run(store.servers, calls)


async def receive_cost(
    redis_url: str, echoes: Service, sizes: list[int], repeats: int, slow_repeats: int
) -> list[Row]:
    """Median time to take one waiting record, with ``sizes`` records stored for others."""
    store = store_at(redis_url, "echoes:")
    legacy = original.Original(aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1"))
    rows, stored = [], 0
    for size in sizes:
        await fill(store, stored, size, users=max(1, size // 10))
        await legacy.fill(stored, size, users=max(1, size // 10))
        stored = size
        # A connection per size: filling a million records outlasts the idle timeout.
        http = await Connection.open("127.0.0.1", echoes.port)
        store_ms, http_ms, legacy_ms = [], [], []
        for i in range(-WARMUP, repeats):  # the first WARMUP rounds are not kept
            # A new key each time: a resend of a consumed one would be a duplicate.
            probe = Message(f"probe-{size}-{i:08d}", "ping", False, ("probe",))
            await store.exchange("bench", probe, None)
            started = time.perf_counter()
            batch = (await store.exchange("probe", None, Take(10, f"attempt-{size}-{i:06d}"))).batch
            took = (time.perf_counter() - started) * 1000
            assert batch and batch.count == 1
            probe = Message(f"probe-{size}-{i:08d}-http", "ping", False, ("probe",))
            await store.exchange("bench", probe, None)
            started = time.perf_counter()
            status, body, _ = await http.request("POST", "/receive", {"From": "probe"})
            assert status == 200 and body.count(b'"msg"') == 1
            if i >= 0:
                store_ms.append(took)
                http_ms.append((time.perf_counter() - started) * 1000)
        for i in range(slow_repeats):
            await legacy.send("probe", f"probe-{i:08d}", b"ping")
            started = time.perf_counter()
            assert len(await legacy.receive("probe")) == 1
            legacy_ms.append((time.perf_counter() - started) * 1000)
        http.close()
        rows.append(
            {
                "stored": size,
                "echoes_store_ms": median(store_ms),
                "echoes_http_ms": median(http_ms),
                "original_ms": median(legacy_ms),
            }
        )
    await store.close()
    await legacy.client.aclose()
    return rows


# --- 3 and 4: wake-up latency, and the memory of idle waiters --------------------------------


async def wakeups(
    kind: str, waiter: Service, sender: Service, count: int, samples: int, tag: str
) -> Row:
    """Hold ``count`` long polls on ``waiter``; send to random ones through ``sender``.

    Latency: the waiting response received minus the send's response received, one send
    at a time. Also the RSS of the process holding the waiters (Nchan: its worker), once it
    settled (``rss_mb``), and when the last waiter was counted (``rss_registered_mb``).
    """
    names = [f"{tag}{i}" for i in range(count)]
    conns = await asyncio.gather(*(Connection.open("127.0.0.1", waiter.port) for _ in names))
    for conn, name in zip(conns, names, strict=True):
        if kind == "echoes":
            conn.send("POST", "/receive?wait=45", {"From": name})
        else:
            conn.send("GET", f"/sub/{name}", {})
    answers = [asyncio.ensure_future(conn.response()) for conn in conns]
    await held(kind, waiter, names)
    pid = waiter.popen.pid if kind == "echoes" else worker_pid(waiter.popen.pid)
    registered = waiter.rss_mb(pid)
    rss = await settled_rss(waiter, pid)
    sending = await Connection.open("127.0.0.1", sender.port)
    # Steady state: let the burst of arrivals settle, and warm the sender's connections.
    await asyncio.sleep(1.0)
    for n in range(5):
        await send(kind, sending, f"{tag}warm", f"warm-{n:08d}", n)
    latencies = []
    for n, i in enumerate(random.sample(range(count), samples)):
        if kind == "echoes":
            body = json.dumps(
                {"idempotencyKey": f"wake-{n:08d}", "destination": [names[i]], "body": n}
            )
            status, _, sent_at = await sending.request(
                "POST", "/send", {"From": "sender"}, body.encode()
            )
        else:
            status, _, sent_at = await sending.request(
                "POST", f"/pub/{names[i]}", {}, str(n).encode()
            )
        assert status in (200, 201, 202), status
        got, body, received_at = await asyncio.wait_for(answers[i], 10)
        assert got == 200 and str(n).encode() in body, (got, body)
        latencies.append((received_at - sent_at) * 1000)
    sending.close()
    for conn in conns:
        conn.close()
    for answer in answers:
        answer.cancel()
    await asyncio.gather(*answers, return_exceptions=True)
    return {
        "waiters": count,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "rss_mb": rss,
        "rss_registered_mb": registered,
    }


async def settled_rss(service: Service, pid: int, timeout: float = 10) -> float:
    """The RSS of ``pid`` once it grew by under 1 MB in a second (at most ``timeout`` s).

    echoes counts a waiter (/health) before its first take, so when the last one is
    counted thousands are still taking, and the RSS grows for a second or two more.
    """
    readings = [service.rss_mb(pid)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        readings.append(service.rss_mb(pid))
        if len(readings) > 10 and readings[-1] - readings[-11] < 1.0:
            break
    return readings[-1]


async def send(kind: str, conn: Connection, name: str, key: str, n: int) -> float:
    """Send ``n`` to ``name``; the time the send's response was received."""
    if kind == "echoes":
        body = json.dumps({"idempotencyKey": key, "destination": [name], "body": n}).encode()
        status, _, sent_at = await conn.request("POST", "/send", {"From": "sender"}, body)
    else:
        status, _, sent_at = await conn.request("POST", f"/pub/{name}", {}, str(n).encode())
    assert status in (200, 201, 202), status
    return sent_at


async def held(kind: str, waiter: Service, names: list[str], timeout: float = 120) -> None:
    """Until the server holds a waiting request for every name (Nchan: the last ones)."""
    deadline = time.monotonic() + timeout
    conn = await Connection.open("127.0.0.1", waiter.port)
    try:
        while time.monotonic() < deadline:
            try:
                if kind == "echoes":
                    _, body, _ = await conn.request("GET", "/health", {})
                    if json.loads(body)["waiters"] >= len(names):
                        return
                else:  # the channel info of the last subscribers to arrive
                    replies = [await conn.request("GET", f"/pub/{n}", {}) for n in names[-20:]]
                    if all(b"active subscribers: 1" in body for _, body, _ in replies):
                        return
            except asyncio.IncompleteReadError:
                # nginx closes a connection after 1,000 requests (keepalive_requests): on a
                # slow machine the polls of the last subscribers pass that. A new one.
                conn.close()
                conn = await Connection.open("127.0.0.1", waiter.port)
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{kind} never held {len(names)} waiters")
    finally:
        conn.close()


# --- 5: Redis memory per stored record -------------------------------------------------------


async def memory_per_record(redis_url: str, records: int) -> Row:
    """INFO used_memory growth per record of a 100-byte body, in a fresh database."""
    client = aioredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2")
    store = store_at(redis_url.rsplit("/", 1)[0] + "/2", "mem:")
    # The function library's own memory is not a record's.
    await store.scripts.load(store.servers.all()[0])
    before = (await client.info("memory"))["used_memory"]
    for base in range(0, records, 1000):
        calls: list[Call] = []
        for i in range(base, min(base + 1000, records)):
            message = Message(f"mem-{i:012d}", "x" * 100, False, (f"user{i % 1000}",))
            calls += store.puts("sender", message)
        await store.scripts.run(store.servers, calls)
    after = (await client.info("memory"))["used_memory"]
    await client.flushdb()
    await client.aclose()
    await store.close()
    return {"records": records, "bytes_per_record": (after - before) / records, "payload": 100}


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")
