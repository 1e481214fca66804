"""Redis Cluster beside one Redis: ``python -m bench.cluster [--quick] [--json PATH]``.

Figure 1's /exchange load (wrk, bench/exchange.lua) and figure 3's wake-ups, on echoes
against one Redis and against a Cluster of three primaries with one replica each, all on
this machine and without persistence (as bench's own Redis), and on the Cluster again with
--redis-wait-replicas=1 (a WAIT for one replica ends each batch of writes); Redis's CPU per
request summed
over the primaries, and spread by primary; and a projection, labelled as one, of the rate N
shards sustain. On a 2-core machine the six Cluster nodes, echoes and wrk share the cores,
so the rates compare only with each other, and the projection is what carries.
"""

import argparse
import asyncio
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import figures
from .services import Service, raise_file_limit, require, start_echoes, start_redis
from .topologies import Cluster

SIZES = {
    "full": {"rounds": 3, "seconds": 10, "waiters": [1000], "samples": 300},
    "quick": {"rounds": 1, "seconds": 1, "waiters": [50], "samples": 20},
}
SHARDS = (3, 6, 12, 24)
WAITED = "Cluster, --redis-wait-replicas=1"


def run(workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    redis, url = start_redis(workdir)
    cluster = Cluster(workdir / "cluster").start(appendonly="no")
    try:
        nodes = [f"redis://{n.address}/0" for n in cluster.nodes]
        primaries = {f"redis://{n.address}/0" for n in cluster.primaries()}
        starters = {
            "one Redis": lambda: start_echoes(url, workdir),
            "Cluster, 3 primaries": lambda: start_echoes(cluster.url, workdir),
            WAITED: lambda: start_echoes(cluster.url, workdir, "--redis-wait-replicas=1"),
        }
        urls = {"one Redis": [url], "Cluster, 3 primaries": nodes, WAITED: nodes}
        throughput = figures.throughput(starters, sizes["rounds"], sizes["seconds"], urls)
        wake = {
            "one Redis": wakeups(url, workdir, sizes),
            "Cluster, 3 primaries": wakeups(cluster.url, workdir, sizes),
        }
    finally:
        cluster.stop()
        redis.stop()
    return {"sizes": sizes, "throughput": throughput, "wakeup": wake, "primaries": primaries}


def wakeups(url: str, workdir: Path, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    waiter, sender = start_echoes(url, workdir), start_echoes(url, workdir)
    try:
        return [
            asyncio.run(
                figures.wakeups("echoes", waiter, sender, n, min(n, sizes["samples"]), f"c{n}x")
            )
            for n in sizes["waiters"]
        ]
    finally:
        stop(waiter, sender)


def stop(*services: Service) -> None:
    for service in services:
        service.stop()


def report(r: dict[str, Any], command: str) -> str:
    t = r["throughput"]
    single, clustered, waited = t["one Redis"], t["Cluster, 3 primaries"], t[WAITED]

    def spread(row: dict[str, Any]) -> tuple[float, float]:
        """Redis CPU per request on the primaries, and on the replicas."""
        by_server = row["redis_us_by_server"]
        primaries = sum(us for u, us in by_server.items() if u in r["primaries"])
        return primaries, sum(by_server.values()) - primaries

    by_server = clustered["redis_us_by_server"]
    on_primaries, on_replicas = spread(clustered)
    waited_primaries, waited_replicas = spread(waited)
    lines = [
        f"`{command}`",
        "",
        "| POST /exchange, wrk -t1 -c32 | req/s | p50 ms | p99 ms | echoes CPU us/req"
        " | Redis CPU us/req (primaries) | replicas' CPU us/req | script calls/req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| one Redis | {single['rps']:.0f} | {single['p50_ms']:.2f} | {single['p99_ms']:.2f}"
        f" | {single['server_us']:.0f} | {single['redis_us']:.0f} | - | {single['scripts']:.2f} |",
        f"| Cluster, 3 primaries | {clustered['rps']:.0f} | {clustered['p50_ms']:.2f}"
        f" | {clustered['p99_ms']:.2f} | {clustered['server_us']:.0f} | {on_primaries:.0f}"
        f" | {on_replicas:.0f} | {clustered['scripts']:.2f} |",
        f"| {WAITED} | {waited['rps']:.0f} | {waited['p50_ms']:.2f} | {waited['p99_ms']:.2f}"
        f" | {waited['server_us']:.0f} | {waited_primaries:.0f} | {waited_replicas:.0f}"
        f" | {waited['scripts']:.2f} |",
        "",
        "Redis CPU per /exchange by primary: "
        + ", ".join(f"{us:.0f} us" for u, us in sorted(by_server.items()) if u in r["primaries"])
        + f" (of {on_primaries:.0f}); Cluster / one Redis: throughput"
        f" **{clustered['rps'] / single['rps']:.2f}**, echoes CPU per request"
        f" **{clustered['server_us'] / single['server_us']:.2f}**; with WAIT for one"
        f" replica / without: throughput **{waited['rps'] / clustered['rps']:.2f}**, p50"
        f" **{waited['p50_ms'] / clustered['p50_ms']:.2f}**",
        "",
        "| waiting requests | one Redis p50 ms | p99 ms | Cluster p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for one, many in zip(
        r["wakeup"]["one Redis"], r["wakeup"]["Cluster, 3 primaries"], strict=True
    ):
        lines.append(
            f"| {one['waiters']:,} | {one['p50_ms']:.2f} | {one['p99_ms']:.2f}"
            f" | {many['p50_ms']:.2f} | {many['p99_ms']:.2f} |"
        )
    lines += ["", projection(clustered["server_us"], on_primaries)]
    return "\n".join(lines)


def projection(server_us: float, primaries_us: float) -> str:
    """What N shards sustain, from the Cluster's figures above: a projection."""
    lines = [
        f"Projection, not a measurement: with {primaries_us:.0f} us of Redis CPU per /exchange"
        " summed over the primaries (a request touches at most four inboxes, so at most four"
        " primaries, however many there are), spread evenly (inboxes hash over the slots),"
        " each primary's one thread bounds its share; echoes processes (on as many VMs as"
        f" needed, each at {server_us:.0f} us per /exchange) are added to match:",
        "",
        "| shards (primaries) | /exchange per second | echoes cores busy |",
        "| --- | --- | --- |",
    ]
    for shards in SHARDS:
        rate = shards * 1e6 / primaries_us
        lines.append(f"| {shards} | {rate:,.0f} | {rate * server_us / 1e6:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    command = " ".join(["python -m bench.cluster", shlex.join(sys.argv[1:])]).strip()
    require("python -m bench.cluster", "wrk", "redis-server", "redis-cli")
    print(f"command: {command}", flush=True)
    raise_file_limit()
    with tempfile.TemporaryDirectory(prefix="echoes-bench-cluster-") as tmp:
        results = run(Path(tmp), SIZES["quick" if args.quick else "full"])
    results["primaries"] = sorted(results["primaries"])
    if args.json:
        figures.write_json(args.json, results)
    print(report(results | {"primaries": set(results["primaries"])}, command))


if __name__ == "__main__":
    main()
