"""Fault injection with accounting: ``python -m bench.faults [--soak] [--json PATH]``.

Each scenario runs a mixed load of sends and (long-polling) receives by well-behaved clients
against real echoes processes on a real Redis, injects a fault mid-load, drains every inbox
afterwards, and accounts for every record: lost = a send answered 200 whose record was never
received; duplicated = a record received more than once. Well-behaved, as the README tells
clients to be: a receive carries an attempt token and, when its answer is lost (503, a
dropped connection), is retried with the same token; a send that was not answered 200 is
resent with the same idempotencyKey until it is (``resends`` counts them): a resend of a copy
that was in fact stored, and maybe consumed meanwhile, must not be delivered twice.
tests/test_faults.py runs every scenario in its short form; --soak runs them ten times longer.
"""

import argparse
import asyncio
import collections
import contextlib
import json
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from echoes.embedded import RedisServer

from .httpclient import Connection
from .services import Service, free_port, raise_file_limit, require, start_echoes

USERS = 12
# echoes' options under this load: its four senders each send as fast as they are answered,
# which on a fast machine is past the default --sender-rate (500 a second): they would be
# answered 429. Quotas are not what the fault scenarios test (bench.abuse and
# tests/test_quotas.py do).
LOAD_OPTIONS = ("--sender-rate=0",)
RESEND_SECONDS = 30.0


@dataclass
class Ledger:
    """What the clients saw."""

    acknowledged: dict[tuple[str, str], float] = field(default_factory=dict)  # -> when: 200
    resends: int = 0  # sends made again, with the same key, after an answer that was not 200
    slowest_delivery_ms: float = 0.0  # from a send's 200 to the record's arrival, under load
    draining: bool = False
    received: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: int = 0
    slowest_ms: float = 0.0
    stopped: float = 0.0  # when the load stopped (monotonic), before the drain
    delivered: dict[tuple[str, str], float] = field(default_factory=dict)  # -> first, live

    def row(self, scenario: str, injected: str, **extra: Any) -> dict[str, Any]:
        lost = len(set(self.acknowledged) - set(self.received))
        duplicated = sum(n - 1 for n in self.received.values() if n > 1)
        return {
            "scenario": scenario,
            "injected": injected,
            "requests": self.requests,
            "records_sent": len(self.acknowledged),
            "records_received": sum(self.received.values()),
            "lost": lost,
            "duplicated": duplicated,
            "resends": self.resends,
            "statuses": dict(self.statuses),
            "slowest_ms": round(self.slowest_ms, 1),
            "slowest_delivery_ms": round(self.slowest_delivery_ms, 1),
            **extra,
        }


class Client:
    """One keep-alive connection to one of several echoes processes, reconnecting as needed."""

    def __init__(self, ports: list[int], ledger: Ledger):
        self.ports, self.ledger = ports, ledger
        self.conn: Connection | None = None

    async def post(self, path: str, sender: str, body: Any = None) -> tuple[int, Any]:
        """One request; status 0 for a connection that failed."""
        data = json.dumps(body).encode() if body is not None else b""
        self.ledger.requests += 1
        started = time.monotonic()
        try:
            if self.conn is None:
                self.conn = await Connection.open("127.0.0.1", random.choice(self.ports))
            status, raw, _ = await asyncio.wait_for(
                self.conn.request("POST", path, {"From": sender}, data), 30
            )
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            self.ledger.statuses[type(e).__name__] += 1
            if self.conn:
                self.conn.close()
            self.conn = None
            await asyncio.sleep(0.05)
            return 0, None
        self.ledger.slowest_ms = max(self.ledger.slowest_ms, (time.monotonic() - started) * 1000)
        self.ledger.statuses[str(status)] += 1
        return status, json.loads(raw) if raw else None

    def close(self) -> None:
        if self.conn:
            self.conn.close()


async def sender(client: Client, index: int, stop: asyncio.Event) -> None:
    """Unique messages to random users, until stopped, each resent with its key until it is
    answered 200 (the last one too, after the stop: up to RESEND_SECONDS)."""
    n = 0
    while not stop.is_set():
        n += 1
        reader = f"user{random.randrange(USERS)}"
        key = f"s{index}-{n:010d}"
        body = {"idempotencyKey": key, "destination": [reader], "body": n}
        deadline = time.monotonic() + RESEND_SECONDS
        while (await client.post("/send", f"sender{index}", body))[0] != 200:
            if time.monotonic() > deadline:
                return  # never acknowledged: not counted
            client.ledger.resends += 1
            await asyncio.sleep(0.05)
        client.ledger.acknowledged[(reader, key)] = time.monotonic()


async def receiver(client: Client, reader: str, stop: asyncio.Event, wait: float) -> None:
    """Receive until stopped, retrying a failed receive with the same attempt token."""
    n = 0
    while not stop.is_set():
        await take(client, reader, f"{reader}-{n:08d}-tok", wait)
        n += 1


async def take(client: Client, reader: str, token: str, wait: float = 0) -> int:
    """One receive, retried under its token until it is answered 200; records taken."""
    query = f"?attempt={token}" + (f"&wait={wait}" if wait else "")
    while True:
        status, records = await client.post("/receive" + query, reader)
        if status == 200:
            ledger, now = client.ledger, time.monotonic()
            for r in records:
                record = (reader, r["idempotencyKey"])
                ledger.received[record] += 1
                if not ledger.draining:
                    ledger.delivered.setdefault(record, now)
                if record in ledger.acknowledged and not ledger.draining:
                    delivery = (now - ledger.acknowledged[record]) * 1000
                    ledger.slowest_delivery_ms = max(ledger.slowest_delivery_ms, delivery)
            return len(records)
        await asyncio.sleep(0.05)  # answered 503 or lost: back off a little, same token


async def drain(ports: list[int], ledger: Ledger) -> None:
    """Take everything left, from every inbox."""
    client = Client(ports, ledger)
    for u in range(USERS):
        n = 0
        while await take(client, f"user{u}", f"drain-user{u}-{n:06d}"):
            n += 1
    client.close()


async def under_load(
    ports: list[int], seconds: float, inject: Callable[[], Awaitable[None]], wait: float = 1.0
) -> Ledger:
    """Run senders and receivers for ``seconds``, calling ``inject`` half-way; then drain."""
    ledger, stop = Ledger(), asyncio.Event()
    clients = [Client(ports, ledger) for _ in range(4 + USERS)]
    tasks = [asyncio.create_task(sender(clients[i], i, stop)) for i in range(4)]
    tasks += [
        asyncio.create_task(receiver(clients[4 + u], f"user{u}", stop, wait)) for u in range(USERS)
    ]
    await asyncio.sleep(seconds / 2)
    await inject()
    await asyncio.sleep(seconds / 2)
    stop.set()
    ledger.stopped = time.monotonic()
    await asyncio.gather(*tasks)
    for c in clients:
        c.close()
    ledger.draining = True
    await drain(ports, ledger)
    return ledger


# --- the scenarios ----------------------------------------------------------------------------


def redis_for_faults(workdir: Path) -> tuple[RedisServer, str]:
    """Redis as production should run it: append-only, fsync on every write."""
    port = free_port()
    server = RedisServer(workdir / "redis", port=str(port), appendfsync="always")
    server.start()
    return server, f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def deployment(
    workdir: Path, processes: int = 1, *args: str
) -> Iterator[tuple[RedisServer, str, list[Service]]]:
    """A Redis for faults and ``processes`` echoes processes on it, stopped afterwards."""
    redis, url = redis_for_faults(workdir)
    services: list[Service] = []
    try:
        services = [start_echoes(url, workdir, *LOAD_OPTIONS, *args) for _ in range(processes)]
        yield redis, url, services
    finally:
        for service in services:
            service.stop()
        redis.stop()


def redis_restart(workdir: Path, seconds: float) -> dict[str, Any]:
    """Redis stopped and started again in the middle of the load."""
    with deployment(workdir, 1, "--redis-timeout=1") as (redis, _, [echoes]):

        async def inject() -> None:
            redis.stop()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis.start)

        ledger = asyncio.run(under_load([echoes.port], seconds, inject))
        alive = echoes.popen.poll() is None
    injected = "SIGTERM to redis-server, 1 s down, started again"
    return ledger.row("Redis restarted", injected, echoes_alive=alive)


def worker_killed(workdir: Path, seconds: float) -> dict[str, Any]:
    """One of two echoes processes killed with SIGKILL in the middle of the load."""
    with deployment(workdir, 2) as (_, _, [first, second]):

        async def inject() -> None:
            second.popen.kill()

        # Clients spread over both; after the kill they reconnect to whichever answers.
        ledger = asyncio.run(under_load([first.port, second.port], seconds, inject))
    return ledger.row("echoes process killed", "SIGKILL to one of two echoes processes")


def redis_paused(workdir: Path, seconds: float) -> dict[str, Any]:
    """Redis stalled (CLIENT PAUSE) for longer than the request timeout."""
    with deployment(workdir, 1, "--redis-timeout=0.5") as (_, url, [echoes]):

        async def inject() -> None:
            admin = aioredis.Redis.from_url(url)
            await admin.execute_command("CLIENT", "PAUSE", "2000")
            await admin.aclose()

        # Waits of 0.5 s: a request never lasts much past 0.5 s, stalled or not.
        ledger = asyncio.run(under_load([echoes.port], seconds, inject, wait=0.5))
    return ledger.row("Redis stalled", "CLIENT PAUSE 2000 ms; --redis-timeout=0.5")


def listener_killed(workdir: Path, seconds: float) -> dict[str, Any]:
    """The wake-up listener's connection killed over and over while requests wait."""
    # A slow safety sweep: only notifications and the re-check after resubscribing wake.
    with deployment(workdir, 1, "--recheck-interval=60") as (_, url, [echoes]):
        kills = 0

        async def inject() -> None:
            nonlocal kills
            admin = aioredis.Redis.from_url(url)
            for _ in range(10):
                kills += await admin.client_kill_filter(_type="pubsub")
                await asyncio.sleep(seconds / 40)
            await admin.aclose()

        ledger = asyncio.run(under_load([echoes.port], seconds, inject, wait=5))
    return ledger.row("wake-up listener killed", f"CLIENT KILL TYPE pubsub, {kills} times")


SCENARIOS = [redis_restart, worker_killed, redis_paused, listener_killed]


def report(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        "| scenario | injected | requests | records sent (200) | resends | received | lost"
        " | duplicated | answers | slowest answer ms | slowest delivery ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(
            f"| {r['scenario']} | {r['injected']} | {r['requests']} | {r['records_sent']}"
            f" | {r['resends']} | {r['records_received']} | {r['lost']} | {r['duplicated']}"
            f" | {answers}"
            f" | {r['slowest_ms']} | {r['slowest_delivery_ms']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--soak", action="store_true", help="60 s of load per scenario, not 6")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    require("python -m bench.faults", "redis-server")
    raise_file_limit()
    seconds = 60.0 if args.soak else 6.0
    command = "python -m bench.faults" + (" --soak" if args.soak else "")
    rows = []
    with tempfile.TemporaryDirectory(prefix="echoes-faults-") as tmp:
        for scenario in SCENARIOS:
            print(f"{scenario.__name__} ...", flush=True)
            rows.append(scenario(Path(tmp) / scenario.__name__, seconds))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(report(rows, command))


if __name__ == "__main__":
    main()
