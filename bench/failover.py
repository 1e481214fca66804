"""Failovers under load, with accounting: ``python -m bench.failover [--json PATH]``.

The clients and the accounting of bench/faults.py (lost: a send answered 200 whose record
was never received; duplicated: a record received more than once; receives retried with
their attempt token), against two echoes processes on a Redis Cluster (three primaries, one
replica each) or on a Sentinel-managed master with one replica, from the same
redis-server binary (bench/topologies.py). Mid-load a primary is SIGKILLed, or handed over
by CLUSTER FAILOVER / SENTINEL FAILOVER; a killed one is started again once its replica has
taken over, and comes back as a replica. With --redis-wait-replicas=1 nothing acknowledged
may be lost or repeated; without it, what a failover loses is what this reports.
tests/test_failover.py runs every scenario in its short form.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from echoes.store.keys import Keys

from .faults import LOAD_OPTIONS, USERS, Ledger, report, under_load
from .services import Service, raise_file_limit, require, start_echoes
from .topologies import MASTER_NAME, Cluster, Node, Sentinels, in_sync, wait_until

PREFIX = "echoes:"  # start_echoes runs echoes with its default key prefix
EVERYONE = {f"user{u}" for u in range(USERS)}
FAILOVERS = "echoes_redis_failovers_total"


def readers_on(node_of: Callable[[str], Node], node: Node) -> set[str]:
    """The readers of bench/faults.py's load whose inbox lives on ``node``."""
    keys = Keys(PREFIX)
    return {f"user{u}" for u in range(USERS) if node_of(keys.inbox(f"user{u}").records) is node}


def outage(ledger: Ledger, readers: set[str], began: float, ended: float) -> float:
    """The longest stretch from ``began`` (the fault) to ``ended`` (the end of the load)
    without a send to ``readers`` answered 200."""
    times = sorted(t for (reader, _), t in ledger.acknowledged.items() if reader in readers)
    times = [began, *(t for t in times if began <= t <= ended), ended]
    return max(b - a for a, b in itertools.pairwise(times))


def woken_after(ledger: Ledger, readers: set[str], after: float) -> int:
    """Records sent to ``readers`` after ``after`` (the failover over) and handed to their
    long polls before the load ended: the waiters were woken again."""
    return sum(
        1
        for record, sent in ledger.acknowledged.items()
        if record[0] in readers and sent > after and record in ledger.delivered
    )


def echoes_on(url: str, workdir: Path, wait_replicas: int) -> list[Service]:
    args = [*LOAD_OPTIONS, f"--redis-wait-replicas={wait_replicas}", "--recheck-interval=5"]
    return [start_echoes(url, workdir, *args) for _ in range(2)]


@dataclass
class Timeline:
    began: float = 0.0  # the fault
    over: float = 0.0  # the failover done, the lost node back as a replica
    ended: float = 0.0  # the load stopped (the drain follows)
    failovers_seen: list[int] = field(default_factory=list)  # by each echoes process


def failovers_seen(services: list[Service]) -> list[int]:
    """Each echoes process's echoes_redis_failovers_total."""
    seen = []
    for service in services:
        with urllib.request.urlopen(service.url + "/metrics", timeout=10) as response:
            families = text_string_to_metric_families(response.read().decode())
        values = [s.value for f in families for s in f.samples if s.name == FAILOVERS]
        seen.append(int(values[0]) if values else 0)
    return seen


def run(
    services: list[Service], seconds: float, inject: Callable[[], Any]
) -> tuple[Ledger, Timeline]:
    """The load of bench/faults.py with ``inject`` half-way (the load goes on for
    ``seconds`` / 2 after it returned)."""
    times = Timeline()

    async def injected() -> None:
        times.began = time.monotonic()
        await asyncio.to_thread(inject)
        times.over = time.monotonic()

    ledger = asyncio.run(under_load([s.port for s in services], seconds, injected))
    times.ended = ledger.stopped
    times.failovers_seen = failovers_seen(services)
    return ledger, times


def row(
    ledger: Ledger, times: Timeline, readers: set[str], scenario: str, injected: str
) -> dict[str, Any]:
    return ledger.row(
        scenario,
        injected,
        outage_s=round(outage(ledger, readers, times.began, times.ended), 2),
        failover_s=round(times.over - times.began, 2),
        readers_on_it=len(readers),
        woken_after=woken_after(ledger, readers, times.over),
        failovers_seen=times.failovers_seen,
    )


def cluster_primary_killed(workdir: Path, seconds: float, wait_replicas: int) -> dict[str, Any]:
    """SIGKILL to the primary of user0's inbox; started again once its replica took over,
    it comes back as that replica's replica."""
    with deployment(Cluster(workdir / "cluster"), workdir, wait_replicas) as (cluster, services):
        victim, readers = shard_of_user0(cluster)

        def inject() -> None:
            replica = cluster.replica_of(victim)
            victim.kill()
            wait_until(lambda: replica in cluster.primaries(), 30, "the replica took over")
            wait_until(cluster.healthy, 30, "the cluster is ok again")
            victim.restart()
            wait_until(lambda: in_sync(victim), 30, "the old primary is a replica in sync")

        ledger, times = run(services, seconds, inject)
    injected = f"SIGKILL to a primary, --redis-wait-replicas={wait_replicas}"
    return row(ledger, times, readers, "Cluster primary killed", injected)


def cluster_manual_failover(workdir: Path, seconds: float, wait_replicas: int) -> dict[str, Any]:
    """CLUSTER FAILOVER on the replica of user0's primary: the primary pauses its clients
    until the replica has caught up, then hands over."""
    with deployment(Cluster(workdir / "cluster"), workdir, wait_replicas) as (cluster, services):
        victim, readers = shard_of_user0(cluster)

        def inject() -> None:
            replica = cluster.replica_of(victim)
            replica.client().execute_command("CLUSTER", "FAILOVER")
            wait_until(lambda: replica in cluster.primaries(), 30, "the replica took over")
            wait_until(lambda: in_sync(victim), 30, "the old primary is a replica in sync")

        ledger, times = run(services, seconds, inject)
    injected = f"CLUSTER FAILOVER on a replica, --redis-wait-replicas={wait_replicas}"
    return row(ledger, times, readers, "Cluster manual failover", injected)


def sentinel_master_killed(workdir: Path, seconds: float, wait_replicas: int) -> dict[str, Any]:
    """SIGKILL to the master; started again once Sentinel promoted its replica, the
    sentinels make it the new master's replica."""
    with deployment(Sentinels(workdir / "sentinel"), workdir, wait_replicas) as (
        sentinels,
        services,
    ):
        victim = sentinels.current_master()

        def inject() -> None:
            victim.kill()
            wait_until(lambda: sentinels.current_master() is not victim, 30, "a new master")
            victim.restart()
            wait_until(lambda: in_sync(victim), 60, "the old master is a replica in sync")

        ledger, times = run(services, seconds, inject)
    injected = f"SIGKILL to the master, --redis-wait-replicas={wait_replicas}"
    return row(ledger, times, EVERYONE, "Sentinel master killed", injected)


def sentinel_manual_failover(workdir: Path, seconds: float, wait_replicas: int) -> dict[str, Any]:
    """SENTINEL FAILOVER: the sentinels promote the replica, then turn the old master into
    its replica; what the old master took meanwhile is lost unless replicas confirmed it."""
    with deployment(Sentinels(workdir / "sentinel"), workdir, wait_replicas) as (
        sentinels,
        services,
    ):
        before = sentinels.current_master()

        def inject() -> None:
            sentinels.sentinels[0].client().sentinel_failover(MASTER_NAME)
            wait_until(lambda: sentinels.current_master() is not before, 30, "a new master")
            wait_until(lambda: in_sync(before), 60, "the old master is a replica in sync")

        ledger, times = run(services, seconds, inject)
    injected = f"SENTINEL FAILOVER, --redis-wait-replicas={wait_replicas}"
    return row(ledger, times, EVERYONE, "Sentinel manual failover", injected)


def shard_of_user0(cluster: Cluster) -> tuple[Node, set[str]]:
    """The primary of user0's inbox, and the readers whose inboxes it serves."""
    primary = cluster.primary_of(Keys(PREFIX).inbox("user0").records)
    return primary, readers_on(cluster.primary_of, primary)


T = TypeVar("T", Cluster, Sentinels)


@contextlib.contextmanager
def deployment(topology: T, workdir: Path, wait_replicas: int) -> Iterator[tuple[T, list[Service]]]:
    """``topology`` started, two echoes processes on it; everything stopped afterwards."""
    topology.start()
    services: list[Service] = []
    try:
        services = echoes_on(topology.url, workdir, wait_replicas)
        yield topology, services
    finally:
        for service in services:
            service.stop()
        topology.stop()


SCENARIOS = [
    cluster_primary_killed,
    cluster_manual_failover,
    sentinel_master_killed,
    sentinel_manual_failover,
]


def table(rows: list[dict[str, Any]], command: str) -> str:
    """bench/faults.py's table, and for each failover: how long it took (until the lost node
    was a replica in sync again), the longest stretch without a send to the inboxes it
    served answered 200, and how many records sent after it reached a waiting reader."""
    lines = report(rows, command).splitlines()
    lines[2] += " failover s | longest outage s | sent after it, woken |"
    lines[3] += " --- | --- | --- |"
    for i, r in enumerate(rows):
        lines[4 + i] += f" {r['failover_s']} | {r['outage_s']} | {r['woken_after']} |"
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="of load per scenario")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    require("python -m bench.failover", "redis-server", "redis-cli")
    raise_file_limit()
    command = "python -m bench.failover" + (
        f" --seconds {args.seconds:g}" if args.seconds != 30 else ""
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="echoes-failover-") as tmp:
        for scenario in SCENARIOS:
            for wait_replicas in (1, 0):
                print(f"{scenario.__name__}, --redis-wait-replicas={wait_replicas} ...", flush=True)
                workdir = Path(tmp) / f"{scenario.__name__}-{wait_replicas}"
                rows.append(scenario(workdir, args.seconds, wait_replicas))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows, command))


if __name__ == "__main__":
    main()
