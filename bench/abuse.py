"""One sender attacking, beside the same attack with the limits off: ``python -m bench.abuse``.

Each attack runs ``--seconds`` (60) against a fresh echoes on a fresh Redis (maxmemory 2 GB,
noeviction), while a bystander makes one /exchange every 20 ms; the attacker is a process
of its own. The attacks (issue 22):

- fill: 8 connections, each sending 0.9 MB bodies to 16 new inboxes per request;
- large: 32 connections, each sending 0.9 MB bodies to the same 16 inboxes;
- flood: wrk, 32 connections of small /send requests as fast as they are answered.

For each: the bystander's /exchange p50 and p99, how many of its requests were refused, the
attacker's answers (stored, refused), the bytes the attacker's records hold in Redis at the
end (read from the records themselves) and Redis's used_memory at its peak, and echoes'
peak RSS. "limits off" is --max-sender-bytes=0 --sender-rate=0 --max-bytes-in-flight=0
--max-caller-bytes-in-flight=0.
"""

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from echoes.embedded import RedisServer

from .figures import median, percentile
from .httpclient import Connection
from .services import HERE, Service, free_port, raise_file_limit, start_echoes

OFF = (
    "--max-sender-bytes=0",
    "--sender-rate=0",
    "--max-bytes-in-flight=0",
    "--max-caller-bytes-in-flight=0",
)
BODY = "x" * 900_000
ATTACKER = "mallory"


# --- the attacker (a process of its own: python -m bench.abuse --attack KIND URL SECONDS) ----


async def attack_connection(url: str, kind: str, n: int, until: float, counts: dict) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = None
    i = 0
    while time.monotonic() < until:
        i += 1
        names = [f"{kind}-{n}-{i}-{j}" if kind == "fill" else f"victim-{j}" for j in range(16)]
        body = {"idempotencyKey": f"key-{n:04d}-{i:09d}", "destination": names, "body": BODY}
        try:
            connection = connection or await Connection.open(host, int(port))
            status, _, _ = await connection.request(
                "POST", "/send", {"From": ATTACKER}, json.dumps(body).encode()
            )
            counts[status] = counts.get(status, 0) + 1
        except (ConnectionError, asyncio.IncompleteReadError):
            counts["closed"] = counts.get("closed", 0) + 1
            if connection:
                connection.close()
            connection = None
            await asyncio.sleep(0.01)


async def attack(url: str, kind: str, seconds: float) -> None:
    width = 8 if kind == "fill" else 32
    counts: dict[Any, int] = {}
    until = time.monotonic() + seconds
    await asyncio.gather(*(attack_connection(url, kind, n, until, counts) for n in range(width)))
    print(json.dumps({str(k): v for k, v in counts.items()}))


def flood(url: str, seconds: float) -> dict[str, int]:
    """wrk with bench/flood.lua; its answers by status."""
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds:.0f}s", "-s", str(HERE / "flood.lua"), url + "/send"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- the bystander and the meters ----------------------------------------------------------


async def bystander(service: Service, until: float) -> dict[str, Any]:
    connection = await Connection.open("127.0.0.1", service.port)
    latencies, refused, i = [], 0, 0
    while time.monotonic() < until:
        i += 1
        body = {"idempotencyKey": f"key-{i:012d}", "destination": ["bob"], "body": {"n": i}}
        start = time.monotonic()
        status, _, done = await connection.request(
            "POST", "/exchange", {"From": "alice"}, json.dumps(body).encode()
        )
        latencies.append((done - start) * 1000)
        refused += status != 200
        await connection.request("POST", "/receive", {"From": "bob"})
        await asyncio.sleep(max(0.0, 0.02 - (time.monotonic() - start)))
    connection.close()
    return {
        "p50_ms": median(latencies),
        "p99_ms": percentile(latencies, 99),
        "requests": len(latencies),
        "refused": refused,
    }


async def sample(service: Service, client: redis.Redis, until: float, peaks: dict) -> None:
    while time.monotonic() < until:
        peaks["rss_mb"] = max(peaks.get("rss_mb", 0), service.rss_mb())
        used = int(client.info("memory")["used_memory"]) / 2**20
        peaks["redis_mb"] = max(peaks.get("redis_mb", 0), used)
        await asyncio.sleep(0.5)


def held_by_attacker(client: redis.Redis) -> float:
    """MB of the attacker's records in every inbox, as stored, read from the records."""
    origin = json.dumps(ATTACKER).encode()
    total = 0
    for key in client.scan_iter(match="echoes:*:m", count=1000):
        for field, record in client.hgetall(key).items():
            mine = record[:1] in b"mM" and record.split(b"\n", 2)[1] == origin
            if not field.startswith(b"#") and mine:
                total += len(record)
    return total / 2**20


def one(kind: str, limits: bool, seconds: float, workdir: Path) -> dict[str, Any]:
    port = free_port()
    server = RedisServer(workdir / f"redis-{kind}-{limits}", port=str(port), appendonly="no")
    server.options["maxmemory"] = "2gb"
    server.start()
    url = f"redis://127.0.0.1:{port}/0"
    service = start_echoes(url, workdir, *(() if limits else OFF))
    client = redis.Redis.from_url(url)
    try:
        return asyncio.run(run_attack(kind, service, client, seconds))
    finally:
        service.stop()
        client.close()
        server.stop()


async def run_attack(kind: str, service: Service, client: redis.Redis, seconds: float) -> Any:
    until = time.monotonic() + seconds
    if kind == "flood":
        attacker = asyncio.create_task(asyncio.to_thread(flood, service.url, seconds))
    else:
        attacker = asyncio.create_task(attacker_process(service.url, kind, seconds))
    peaks: dict[str, float] = {}
    meter = asyncio.create_task(sample(service, client, until, peaks))
    await asyncio.sleep(1)  # the attack under way
    seen = await bystander(service, until)
    answers = await attacker
    await meter
    return seen | peaks | {"attacker": answers, "held_mb": held_by_attacker(client)}


async def attacker_process(url: str, kind: str, seconds: float) -> dict[str, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.abuse", "--attack", kind, url, str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


def attacker_summary(answers: dict[str, int]) -> str:
    stored = sum(v for k, v in answers.items() if k.startswith("2"))
    refused = sum(v for k, v in answers.items() if not k.startswith("2"))
    return f"{stored} stored, {refused} refused"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--attack", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("attacks", nargs="*", default=["fill", "large", "flood"])
    args = parser.parse_args()
    if args.attack:
        kind, url, seconds = args.attack
        asyncio.run(attack(url, kind, float(seconds)))
        return
    raise_file_limit()
    print(f"command: python -m bench.abuse --seconds {args.seconds:g} {' '.join(args.attacks)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="echoes-abuse-") as tmp:
        for kind in args.attacks:
            for limits in (True, False):
                row = one(kind, limits, args.seconds, Path(tmp))
                rows.append((kind, limits, row))
                print(kind, "limits" if limits else "off", json.dumps(row), flush=True)
    print(
        "\n| attack | limits | bystander p50 ms | p99 ms | bystander refused | attacker"
        " | attacker's records in Redis MB | Redis peak MB | echoes peak RSS MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, limits, r in rows:
        print(
            f"| {kind} | {'on' if limits else 'off'} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f}"
            f" | {r['refused']} of {r['requests']} | {attacker_summary(r['attacker'])}"
            f" | {r['held_mb']:.0f} | {r['redis_mb']:.0f} | {r['rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
