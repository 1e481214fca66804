"""Run every benchmark figure beside its baseline: ``python -m bench [--quick] [--json PATH]``.

Starts its own Redis, echoes processes, the ceiling server and Nchan (when Debian's
libnginx-mod-nchan is installed), measures, prints a markdown table and writes JSON.
A full run takes a few minutes; --quick uses tiny sizes (the test suite runs it).
"""

import argparse
import asyncio
import contextlib
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from . import figures
from .services import (
    Service,
    raise_file_limit,
    start_ceiling,
    start_echoes,
    start_nchan,
    start_redis,
)

FULL = {
    "rounds": 3,
    "seconds": 10,
    "volumes": [1_000, 100_000, 1_000_000],
    "repeats": 200,
    "slow_repeats": 5,
    "waiters": [100, 1_000, 10_000],
    "samples": 300,
    "records": 100_000,
}
QUICK = {
    "rounds": 1,
    "seconds": 1,
    "volumes": [100, 1_000],
    "repeats": 20,
    "slow_repeats": 3,
    "waiters": [20, 100],
    "samples": 20,
    "records": 1_000,
}
TARGETS = {
    "throughput_ratio": 0.8,
    "flat_ratio": 1.2,
    "wake_p50_ms_1000": 1.0,
    "wake_p99_ms_1000": 5.0,
    "wake_p99_ms_10000": 20.0,
    "rss_mb_10000": 250.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, well under a minute")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--waiters", type=int, nargs="+", help="waiting-request counts instead of the default"
    )
    args = parser.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    if args.waiters:
        sizes["waiters"] = args.waiters
    command = " ".join(["python -m bench", shlex.join(sys.argv[1:])]).strip()
    print(f"command: {command}", flush=True)
    print(f"file limit raised to {raise_file_limit()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="echoes-bench-") as tmp:
        results = run(Path(tmp), sizes)
    results["command"] = command
    figures.write_json(args.json, results)
    print(report(results))


def run(workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    """Each figure with only the processes it needs running: on two cores an idle echoes
    still hears every send (its wake-up listener), which would tax the one being measured."""
    redis, url = start_redis(workdir)
    try:
        print("1, 6: throughput of /exchange", flush=True)
        starters = {
            "ceiling": lambda: start_ceiling(url, workdir),
            "echoes": lambda: start_echoes(url, workdir),
            "echoes_2_processes": lambda: start_echoes(url, workdir, "--processes=2"),
        }
        throughput = figures.throughput(starters, sizes["rounds"], sizes["seconds"])
        print("2: receive cost against stored volume", flush=True)
        with running(start_echoes(url, workdir)) as echoes:
            volume = asyncio.run(
                figures.receive_cost(
                    url, echoes, sizes["volumes"], sizes["repeats"], sizes["slow_repeats"]
                )
            )
        asyncio.run(flushall(url))
        print("3, 4: wake-up latency and idle waiters", flush=True)
        wake = wakeups(url, workdir, sizes)
        print("5: Redis memory per record", flush=True)
        memory = asyncio.run(figures.memory_per_record(url, sizes["records"]))
    finally:
        redis.stop()
    return {
        "sizes": sizes,
        "targets": TARGETS,
        "throughput": throughput,
        "receive_cost": volume,
        "wakeup": wake,
        "memory": memory,
    }


def wakeups(url: str, workdir: Path, sizes: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Figures 3 and 4: echoes (waiters on one process, sends through another), then Nchan."""
    wake: dict[str, list[dict[str, Any]]] = {"echoes": [], "nchan": []}
    counts = sizes["waiters"]
    with (
        running(start_echoes(url, workdir)) as waiter,
        running(start_echoes(url, workdir)) as sender,
    ):
        for count in counts:
            row = figures.wakeups(
                "echoes", waiter, sender, count, min(count, sizes["samples"]), f"w{count}x"
            )
            wake["echoes"].append(asyncio.run(row))
    nchan = start_nchan(url, workdir, max(counts))
    if nchan:
        with running(nchan):
            for count in counts:
                row = figures.wakeups(
                    "nchan", nchan, nchan, count, min(count, sizes["samples"]), f"n{count}x"
                )
                wake["nchan"].append(asyncio.run(row))
    return wake


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()


async def flushall(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()


def report(r: dict[str, Any]) -> str:
    """The results as markdown tables, each figure beside its baseline and target."""
    t = r["throughput"]
    ratio = t["echoes"]["rps"] / t["ceiling"]["rps"]
    two = t["echoes_2_processes"]["rps"] / t["echoes"]["rps"]
    lines = [
        f"`{r['command']}`",
        "",
        "| 1, 6. POST /exchange, wrk -t1 -c32 | req/s | p50 ms | p99 ms | vs ceiling |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in t.items():
        vs = row["rps"] / t["ceiling"]["rps"]
        lines.append(
            f"| {name} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {vs:.2f} |"
        )
    lines += [
        "",
        f"echoes / ceiling: **{ratio:.2f}** (target >= {TARGETS['throughput_ratio']});"
        f" 2 processes / 1 process: **{two:.2f}**",
        "",
        "| 2. stored for others | echoes take (store) ms | echoes POST /receive ms"
        " | original (SCAN) ms |",
        "| --- | --- | --- | --- |",
    ]
    for row in r["receive_cost"]:
        lines.append(
            f"| {row['stored']:,} | {row['echoes_store_ms']:.3f} | {row['echoes_http_ms']:.3f}"
            f" | {row['original_ms']:.3f} |"
        )
    first, last = r["receive_cost"][0], r["receive_cost"][-1]
    http_ratio = last["echoes_http_ms"] / first["echoes_http_ms"]
    lines += [
        "",
        f"largest / smallest: echoes POST /receive **{http_ratio:.2f}**"
        f" (target <= {TARGETS['flat_ratio']}), echoes take"
        f" {last['echoes_store_ms'] / first['echoes_store_ms']:.2f}, original"
        f" **{last['original_ms'] / first['original_ms']:.0f}**",
        "",
        "| 3, 4. waiting requests | echoes p50 ms | echoes p99 ms | echoes RSS MB"
        " | Nchan p50 ms | Nchan p99 ms | Nchan worker RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    nchan = {row["waiters"]: row for row in r["wakeup"]["nchan"]}
    for row in r["wakeup"]["echoes"]:
        n = nchan.get(row["waiters"])
        other = f"{n['p50_ms']:.2f} | {n['p99_ms']:.2f} | {n['rss_mb']:.0f}" if n else "- | - | -"
        lines.append(
            f"| {row['waiters']:,} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f}"
            f" | {row['rss_mb']:.0f} | {other} |"
        )
    m = r["memory"]
    lines += [
        "",
        f"5. Redis memory per stored record ({m['records']:,} records, 100-byte body):"
        f" **{m['bytes_per_record']:.0f} bytes** beside a {m['payload']}-byte payload",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
