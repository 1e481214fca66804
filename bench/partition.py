"""Network partitions, tested the way Jepsen tests databases: ``python -m bench.partition``.

A Redis Cluster of 3 primaries with 2 replicas each (node timeout 2 s, the cluster settings
of conf/redis-cluster-node.conf), every node on a loopback address of its own (127.0.42.N,
bench/topologies.py); two echoes processes on 127.0.0.1. Under load, links are cut with
iptables (bench/firewall.py) as each scenario says, held, healed; then every inbox is
drained. The clients behave as the README asks: 9 senders resend every answer that is not
200 with the same idempotencyKey until it is 200; 20 inboxes are long-polled under attempt
tokens (a receive not answered 200 is retried with its token); 10 more are read only at the
end. Every loop is bounded: after the load, resends and the drain get SETTLE s.

Accounting: **lost** = a send answered 200 whose record never arrived (split brain: one
acknowledged from LAG s before the cut until the heal, which the cut-off side alone may
have confirmed; any other would be a late command's); **more than sent** = a record
delivered more often than it was sent; **stranded** = a send still not answered 200, or an
inbox whose drain still failed, SETTLE s after the load. **resumed s**: from a replica of
the cut primary becoming primary to the next send to that shard answered 200 (after the
heal, where the wait cannot be met meanwhile). Needs root and iptables.
tests/test_partition.py runs two scenarios in a short form.
"""

import argparse
import asyncio
import collections
import json
import math
import random
import shlex
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echoes.store.keys import Keys

from .faults import LOAD_OPTIONS, Client, Ledger
from .firewall import Firewall, unusable
from .services import Service, raise_file_limit, start_echoes
from .topologies import Cluster, Node

HERE = Path(__file__).resolve().parent
CONF = HERE.parent / "conf" / "redis-cluster-node.conf"
# What of the shipped node configuration decides who may be promoted and where replicas go.
CONF_SETTINGS = (
    "cluster-replica-validity-factor",
    "cluster-require-full-coverage",
    "cluster-migration-barrier",
    "cluster-allow-replica-migration",
)
ECHOES_HOST = "127.0.0.1"
SENDERS, POLLED, AT_END = 9, 20, 10
INBOXES = [f"polled{i}" for i in range(POLLED)] + [f"end{i}" for i in range(AT_END)]
WARM, AFTER, SETTLE, POLL_WAIT = 4.0, 5.0, 60.0, 2.0
LAG = 1.0  # how far behind the cut an acknowledged send may still be the cut-off side's alone


@dataclass
class Where:
    """The cut shard's primary and one of its replicas, everyone else, and echoes."""

    primary: str
    replica: str
    others: set[str]
    echoes: str = ECHOES_HOST


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    sides: Callable[[Where], tuple[set[str], set[str]]]  # every link between them is cut


SCENARIOS = [
    Scenario(
        "primary-alone",
        "a primary alone",
        lambda w: ({w.primary}, {w.replica, w.echoes, *w.others}),
    ),
    Scenario(
        "minority-echoes-majority",
        "the primary and one replica cut from the rest, echoes on the majority side",
        lambda w: ({w.primary, w.replica}, {w.echoes, *w.others}),
    ),
    Scenario(
        "minority-echoes-both",
        "the same, echoes reaching both sides",
        lambda w: ({w.primary, w.replica}, w.others),
    ),
    Scenario(
        "minority-echoes-minority",
        "the same, echoes reaching only the minority",
        lambda w: ({w.primary, w.replica, w.echoes}, w.others),
    ),
    Scenario(
        "echoes-from-primary",
        "echoes cut from one primary, no node cut",
        lambda w: ({w.echoes}, {w.primary}),
    ),
]
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Account:
    """What the clients saw, and when the cut began, ended and was answered by a failover."""

    ledger: Ledger = field(default_factory=Ledger)  # answers, for the table
    sent: dict[tuple[str, str], float] = field(default_factory=dict)  # -> first 200
    pending: set[tuple[str, str]] = field(default_factory=set)  # never answered 200 yet
    received: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    undrained: set[str] = field(default_factory=set)
    deadline: float = math.inf  # past it, nobody retries
    cut_at: float = 0.0
    healed_at: float = 0.0
    promoted_at: float | None = None


def cluster_settings(conf: Path = CONF) -> dict[str, str]:
    """The CONF_SETTINGS of conf/redis-cluster-node.conf, as redis-server options."""
    found = {}
    for line in conf.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name in CONF_SETTINGS:
            found[name.replace("-", "_")] = value.strip()
    return found


async def send(client: Client, index: int, account: Account, stop: asyncio.Event) -> None:
    """New messages until ``stop``; each resent with its key until answered 200."""
    n = 0
    while not stop.is_set():
        n += 1
        record = (random.choice(INBOXES), f"s{index}-{n:010d}")
        body = {"idempotencyKey": record[1], "destination": [record[0]], "body": n}
        account.pending.add(record)
        while time.monotonic() < account.deadline:
            status, _ = await client.post("/send", f"sender{index}", body)
            if status == 200:
                account.pending.discard(record)
                account.sent[record] = time.monotonic()
                break
            if 400 <= status < 500:  # the harness's own mistake: resending cannot help
                raise RuntimeError(f"/send answered {status} to {body}")
            await asyncio.sleep(0.05)


async def take(client: Client, name: str, token: str, account: Account, wait: float = 0) -> int:
    """One receive, retried under ``token`` until 200; records taken, -1 if it gave up."""
    query = f"?attempt={token}" + (f"&wait={wait:g}" if wait else "")
    while time.monotonic() < account.deadline:
        status, records = await client.post("/receive" + query, name)
        if status == 200:
            for r in records:
                account.received[(name, r["idempotencyKey"])] += 1
            return len(records)
        if 400 <= status < 500:
            raise RuntimeError(f"/receive{query} answered {status}")
        await asyncio.sleep(0.05)
    return -1


async def poll(client: Client, name: str, account: Account, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        await take(client, name, f"{name}-{n:06d}", account, POLL_WAIT)
        n += 1


async def drain(client: Client, account: Account) -> None:
    """Take everything left from every inbox, under fresh tokens."""
    account.deadline = time.monotonic() + SETTLE
    for name in INBOXES:
        for n in range(100_000):
            got = await take(client, name, f"drain-{name}-{n:06d}", account)
            if got < 0:
                account.undrained.add(name)
            if got <= 0:
                break


def promoted(cluster: Cluster, replicas: list[Node], until: float) -> float | None:
    """When one of ``replicas`` (of the cut primary) first says it is a primary."""
    while time.monotonic() < until:
        for node in replicas:
            try:
                if node.client().info("replication").get("role") == "master":
                    return time.monotonic()
            except OSError:
                pass
        time.sleep(0.05)
    return None


async def exercise(
    ports: list[int],
    cut: Callable[[], Any],
    heal: Callable[[], Any],
    watch: Callable[..., Any],
    hold: float,
) -> Account:
    """The load; the cut after WARM s, held ``hold`` s, healed; AFTER s more; the drain."""
    account, stop = Account(), asyncio.Event()
    clients = [Client(ports, account.ledger) for _ in range(SENDERS + POLLED + 1)]
    senders = [asyncio.create_task(send(clients[i], i, account, stop)) for i in range(SENDERS)]
    pollers = [
        asyncio.create_task(poll(clients[SENDERS + i], INBOXES[i], account, stop))
        for i in range(POLLED)
    ]
    await asyncio.sleep(WARM)
    await asyncio.to_thread(cut)
    account.cut_at = time.monotonic()
    watching = asyncio.create_task(asyncio.to_thread(watch, account.cut_at + hold))
    await asyncio.sleep(hold)
    await asyncio.to_thread(heal)
    account.healed_at = time.monotonic()
    account.promoted_at = await watching
    await asyncio.sleep(AFTER)
    stop.set()
    account.deadline = time.monotonic() + SETTLE
    await asyncio.gather(*senders, *pollers)
    await drain(clients[-1], account)
    for client in clients:
        client.close()
    return account


def health(service: Service) -> dict[str, Any]:
    """An echoes process's /health answer (a 503's body too)."""
    try:
        with urllib.request.urlopen(service.url + "/health", timeout=10) as response:
            return {"status": response.status, **json.loads(response.read())}
    except urllib.error.HTTPError as e:
        return {"status": e.code, **json.loads(e.read() or b"{}")}


def run(scenario: Scenario, wait: int, workdir: Path, hold: float) -> dict[str, Any]:
    """One scenario on a fresh Cluster and fresh echoes processes; its row."""
    cluster = Cluster(workdir / "cluster", replicas=2, addresses=True)
    services: list[Service] = []
    try:
        # As conf/redis-cluster-node.conf says: the migration barrier is the wait.
        settings = cluster_settings() | {"cluster_migration_barrier": str(max(1, wait))}
        cluster.start(**settings)
        args = [*LOAD_OPTIONS, f"--redis-wait-replicas={wait}", "--recheck-interval=5"]
        services = [start_echoes(cluster.url, workdir, *args) for _ in range(2)]
        primary = cluster.primary_of(Keys("echoes:").inbox(INBOXES[0]).records)
        replicas = cluster.replicas_of(primary)
        where = Where(primary.host, replicas[0].host, {n.host for n in cluster.nodes})
        where.others -= {where.primary, where.replica}
        side, other = scenario.sides(where)
        keys = Keys("echoes:")
        victims = {n for n in INBOXES if cluster.primary_of(keys.inbox(n).records) is primary}
        with Firewall() as firewall:
            account = asyncio.run(
                exercise(
                    [s.port for s in services],
                    lambda: firewall.partition(side, other),
                    firewall.heal,
                    lambda until: promoted(cluster, replicas, until),
                    hold,
                )
            )
        after = [len(cluster.replicas_of(p)) for p in cluster.primaries()]
        healths = [health(s) for s in services]
    finally:
        for service in services:
            service.stop()
        cluster.stop()
    return row(scenario, wait, account, victims, after, healths)


def row(
    scenario: Scenario,
    wait: int,
    account: Account,
    victims: set[str],
    replicas_after: list[int],
    healths: list[dict[str, Any]],
) -> dict[str, Any]:
    """The accounting of one run."""
    stranded_inboxes = account.undrained
    missing = set(account.sent) - set(account.received)
    lost = {r for r in missing if r[0] not in stranded_inboxes}
    # Split brain: acknowledged by the cut-off side's replicas alone, from a moment before
    # the cut (what the majority's replicas had not received yet) until the heal.
    split = [r for r in lost if account.cut_at - LAG <= account.sent[r] <= account.healed_at]
    after_cut = sorted(round(account.sent[r] - account.cut_at, 2) for r in lost)
    resumed = None
    if account.promoted_at is not None:
        later = [t for r, t in account.sent.items() if r[0] in victims and t > account.promoted_at]
        resumed = round(min(later) - account.promoted_at, 2) if later else None
    return {
        "scenario": scenario.name,
        "cut": scenario.title,
        "wait": wait,
        "sent": len(account.sent),
        "received": sum(account.received.values()),
        "lost": len(lost),
        "lost_split_brain": len(split),
        "lost_s_after_cut": [after_cut[0], after_cut[-1]] if after_cut else [],
        "more_than_sent": sum(1 for n in account.received.values() if n > 1),
        "stranded_sends": len(account.pending),
        "stranded_inboxes": sorted(stranded_inboxes),
        "stranded": len(account.pending) + len(missing - lost),
        "promoted_s": (
            round(account.promoted_at - account.cut_at, 2) if account.promoted_at else None
        ),
        "resumed_s": resumed,
        "replicas_after": sorted(replicas_after, reverse=True),
        "health_after": [h.get("status") for h in healths],
        "warnings": sorted({w for h in healths for w in h.get("warnings", [])}),
        "answers": dict(account.ledger.statuses),
    }


def table(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        "| cut | `--redis-wait-replicas` | sends answered 200 | lost (after the cut) | delivered"
        " more often than sent | stranded | replicas per primary after | replica promoted s"
        " | sends served again s after | answers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items()))
        lines.append(
            f"| {r['cut']} | {r['wait']} | {r['sent']} | {_lost(r)}"
            f" | {r['more_than_sent']} | {r['stranded']} | {r['replicas_after']}"
            f" | {_dash(r['promoted_s'])} | {_dash(r['resumed_s'])} | {answers} |"
        )
    return "\n".join(lines)


def _lost(r: dict[str, Any]) -> str:
    if not r["lost"]:
        return "0"
    first, last = r["lost_s_after_cut"]
    return f"**{r['lost']}** ({r['lost_split_brain']} split brain; acknowledged {first}..{last} s)"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.partition", description=__doc__)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each cut is held")
    parser.add_argument("--scenario", nargs="+", choices=list(BY_NAME), default=list(BY_NAME))
    parser.add_argument("--wait", type=int, nargs="+", default=[1, 2], help="replicas to WAIT")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reason = unusable()
    if reason:
        sys.exit(f"python -m bench.partition: {reason}")
    raise_file_limit()
    # SIGTERM (timeout, Ctrl-C's cousin) unwinds like an exception: the cuts are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = shlex.join(["python", "-m", "bench.partition", *sys.argv[1:]])
    print(f"reproduce with: {command}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="echoes-partition-") as tmp:
        for name in args.scenario:
            for wait in args.wait:
                print(f"{name}, --redis-wait-replicas={wait} ...", flush=True)
                workdir = Path(tmp) / f"{name}-{wait}"
                rows.append(run(BY_NAME[name], wait, workdir, args.hold))
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows, command))


if __name__ == "__main__":
    main()
