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

from echoes.embedded import find_binary, version_of

from . import figures, report
from .services import (
    NCHAN_MODULE,
    Service,
    missing,
    raise_file_limit,
    require,
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
    require("python -m bench", "wrk", "redis-server")
    print(f"command: {command}", flush=True)
    nchan = missing("nginx", NCHAN_MODULE)
    if nchan:
        print(f"the Nchan baseline (figures 3, 4) is skipped: {nchan}", flush=True)
    print(f"file limit raised to {raise_file_limit()}", flush=True)
    binary = find_binary()  # what start_redis() runs
    redis_server = f"redis-server {'.'.join(map(str, version_of(binary)))} ({binary})"
    print(redis_server, flush=True)
    with tempfile.TemporaryDirectory(prefix="echoes-bench-") as tmp:
        results = run(Path(tmp), sizes)
    results["command"] = command
    results["redis_server"] = redis_server
    figures.write_json(args.json, results)
    print(report.report(results))


def run(workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    """Each figure with only the processes it needs running: on two cores an idle echoes
    still hears every send (its wake-up listener), which would tax the one being measured."""
    redis, url = start_redis(workdir)
    try:
        print("1, 6: throughput of /exchange", flush=True)
        starters = {
            "ceiling": lambda: start_ceiling(url, workdir),
            "echoes": lambda: start_echoes(url, workdir),  # as shipped: an access line each
            "echoes_warning": lambda: start_echoes(url, workdir, log_level="warning"),
            "echoes_2_processes": lambda: start_echoes(url, workdir, "--processes=2"),
        }
        urls = {name: [url] for name in starters}
        throughput = figures.throughput(starters, sizes["rounds"], sizes["seconds"], urls)
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


if __name__ == "__main__":
    main()
