"""The store's cost, by what is stored: ``python -m bench.store [--quick] [--json PATH]``.

Three figures, each beside the first design (its scripts are kept here:
first_design_put.lua and first_design_take.lua) on the same Redis in the same run:

1. Redis time per script call (INFO commandstats) of a send refused by a full inbox, and of
   a receive of one record (``?limit=1``) and of a default receive (up to --max-batch-bytes),
   from an inbox holding records of 100 B, 10 KB and 1 MB: what a call costs should not
   depend on what else the inbox holds.
2. Redis memory per waiting record (a 100-byte body) in inboxes of 100 and of one, beside
   the record's JSON, and per tombstone (a consumed copy the dedup window remembers).
3. A bystander's /exchange latency while another caller receives from an inbox of large
   records and sends to a full one, through echoes (the bystander shares Redis and echoes;
   each attacker is a process of its own, as the bystander is). The attackers run at the
   lowest CPU priority (``--attackers-nice``, 19): on this two-core machine their own
   Python, reading 1 MB answers and refilling the hoard, would otherwise take the cores
   echoes and Redis run on, where real attackers bring machines of their own; they still
   get every cycle nothing else wants, and how many requests they made is reported.
"""

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from echoes.config import Settings
from echoes.store import Message, Store, Take, records
from echoes.store.keys import Keys, encode_name
from echoes.store.servers import connect

from . import figures
from .httpclient import Connection
from .services import raise_file_limit, start_echoes, start_redis

HERE = Path(__file__).parent
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "record_sizes": [100, 10_000, 1_000_000],
        "stored": 300,
        "calls": 30,
        "memory": 100_000,
        "attack_records": 1000,
        "attack_size": 1_000_000,
        "seconds": 10,
    },
    "quick": {
        "record_sizes": [100, 10_000],
        "stored": 20,
        "calls": 5,
        "memory": 2_000,
        "attack_records": 20,
        "attack_size": 10_000,
        "seconds": 1,
    },
}


def settings(url: str, prefix: str, **options: Any) -> Settings:
    """The store's settings for a figure: the sender quotas (issue 22) off, since one
    sender fills every inbox here, and they are not what these figures measure."""
    options = {"sender_rate": 0, "max_sender_bytes": 0, **options}
    return Settings(redis_url=url, key_prefix=prefix, **options)


SCRIPT_CALLS = ("cmdstat_fcall", "cmdstat_evalsha", "cmdstat_eval")
# What the store sends beside its scripts for a big record: its body's SET and MGET, and the
# DEL of a refused send's body (records.py); their time counts with the calls they go with.
BODY_COMMANDS = ("cmdstat_set", "cmdstat_mget")


async def usec_per_call(admin: aioredis.Redis, work: Any) -> float:
    """Redis's own time per script call of awaiting ``work`` (INFO commandstats), the body
    commands that go with the calls included."""
    await admin.config_resetstat()
    await work
    stats = await admin.info("commandstats")
    spent = sum(v["usec"] for k, v in stats.items() if k in SCRIPT_CALLS + BODY_COMMANDS)
    count = sum(v["calls"] for k, v in stats.items() if k in SCRIPT_CALLS)
    return float(spent / max(count, 1))


class SecondDesign:
    """This design, through the store."""

    def __init__(self, url: str, prefix: str, cap: int):
        s = settings(url, prefix, max_inbox_records=cap, max_inbox_bytes=0)
        self.store = Store(connect(s), Keys(prefix), s)

    async def put(self, name: str, key: str, body: Any) -> None:
        await self.store.exchange("a", Message(key, body, False, (name,)), None)

    async def take(self, name: str, limit: int, token: str) -> None:
        await self.store.exchange(name, None, Take(limit, token))

    async def close(self) -> None:
        await self.store.close()


class FirstDesign:
    """The first design's put and take, run by EVAL as 2c56c3c ran them."""

    def __init__(self, client: aioredis.Redis, prefix: str, cap: int):
        self.client, self.prefix, self.cap = client, prefix, cap
        self.put_lua = (HERE / "first_design_put.lua").read_text()
        self.take_lua = (HERE / "first_design_take.lua").read_text()

    def _keys(self, name: str) -> tuple[str, str, str]:
        tag = f"{self.prefix}{{{encode_name(name)}}}"
        return f"{tag}:q", f"{tag}:r", f"{tag}:p"

    async def put(self, name: str, key: str, body: Any) -> None:
        await self.put_many([(name, key, body)])

    async def put_many(self, puts: list[tuple[str, str, Any]]) -> None:
        """Each (inbox name, key, body) put, in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        for name, key, body in puts:
            q, r, p = self._keys(name)
            fields = {"type": "msg", "idempotencyKey": key, "origin": "a", "body": body}
            fields |= {"expectsAck": False, "sentAt": records.timestamp()}
            record = json.dumps(fields, separators=(",", ":"))
            args = (f"m:{key}:a", record, 0, 604800000, "", self.cap, "p")
            pipe.eval(self.put_lua, 3, q, r, p, *args)
        await pipe.execute()

    async def take(self, name: str, limit: int, token: str) -> None:
        q, r, p = self._keys(name)
        attempt = f"{q[:-2]}:a:{token}"
        args = (limit, 300000, 8388608, token, 1)
        await self.client.eval(self.take_lua, 4, q, r, attempt, p, *args)

    async def close(self) -> None:
        pass


async def costs_of(
    design: Any, admin: aioredis.Redis, size: int, sizes: dict[str, Any]
) -> dict[str, float]:
    """Redis us per call of one design against a full inbox of records of ``size`` bytes: a
    refused send and a one-record receive (median of ``calls``, the inbox refilled after each
    take), then one default receive (up to 1000 records or 8 MiB)."""
    body = "x" * size
    for i in range(sizes["stored"]):
        await design.put("full", f"key-{i:012d}", body)
    refused, one = [], []
    for i in range(sizes["calls"]):
        refused.append(await usec_per_call(admin, design.put("full", "key-refused-00", 0)))
        one.append(await usec_per_call(admin, design.take("full", 1, f"token-{i:010d}")))
        await design.put("full", f"refill-{i:09d}", body)
    default = await usec_per_call(admin, design.take("full", 1000, "token-default"))
    return {
        "send_to_full_us": figures.median(refused),
        "receive_limit_1_us": figures.median(one),
        "receive_default_us": default,
    }


async def call_costs(url: str, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """Figure 1: per record size, Redis us per call of each design."""
    admin = aioredis.Redis.from_url(url)
    rows = []
    for size in sizes["record_sizes"]:
        row: dict[str, Any] = {"record_bytes": size, "stored": sizes["stored"]}
        for name, design in (
            ("second", SecondDesign(url, f"new{size}:", sizes["stored"])),
            ("first", FirstDesign(admin, f"old{size}:", sizes["stored"])),
        ):
            row[name] = await costs_of(design, admin, size, sizes)
            await design.close()
        await admin.flushdb()
        rows.append(row)
    await admin.aclose()
    return rows


async def memory(url: str, records_count: int) -> dict[str, Any]:
    """Figure 2: bytes per waiting record in inboxes of 100 and of one; per tombstone."""
    admin = aioredis.Redis.from_url(url)
    s = settings(url, "mem:", max_inbox_records=0, max_inbox_bytes=0)
    store = Store(connect(s), Keys("mem:"), s)
    old = FirstDesign(admin, "memold:", 0)
    await store.scripts.load(store.servers.all()[0])
    body = "x" * 100
    example = records.render(
        records.msg("sender", "mem-000000000000", body, False, records.timestamp())
    )
    row: dict[str, Any] = {"record_json_bytes": len(example), "records": records_count}
    for per_inbox in (100, 1):
        for design in ("second", "first"):
            await admin.flushdb()
            if design == "second":
                await store.scripts.load(store.servers.all()[0])
            before = (await admin.info("memory"))["used_memory"]
            for base in range(0, records_count, 1000):
                batch = range(base, min(base + 1000, records_count))
                if design == "second":
                    calls = []
                    for i in batch:
                        m = Message(f"mem-{i:012d}", body, False, (f"user{i // per_inbox}",))
                        calls += store.puts("sender", m)
                    await store.scripts.run(store.servers, calls)
                else:
                    await old.put_many(
                        [(f"user{i // per_inbox}", f"mem-{i:012d}", body) for i in batch]
                    )
            used = (await admin.info("memory"))["used_memory"] - before
            row[f"{design}_bytes_per_record_inboxes_of_{per_inbox}"] = used / records_count
    # Tombstones: consume every record of inboxes of 100, then weigh the tombstone sets.
    await admin.flushdb()
    await store.scripts.load(store.servers.all()[0])
    for base in range(0, records_count, 1000):
        calls = []
        for i in range(base, min(base + 1000, records_count)):
            calls += store.puts(
                "sender", Message(f"mem-{i:012d}", body, False, (f"user{i // 100}",))
            )
        await store.scripts.run(store.servers, calls)
    weights = []
    for u in range(records_count // 100):
        await store.exchange(f"user{u}", None, Take(1000, f"token-{u:010d}"))
        weights.append(await admin.memory_usage(store.keys.inbox(f"user{u}").tombstones, samples=0))
    row["bytes_per_tombstone"] = sum(w or 0 for w in weights) / records_count
    await admin.flushdb()
    await store.close()
    await admin.aclose()
    return row


async def post(conn: Connection, path: str, sender: str, document: Any = None) -> int:
    body = json.dumps(document).encode() if document is not None else b""
    status, _, _ = await conn.request("POST", path, {"From": sender}, body)
    return status


async def bystander(
    url: str, workdir: Path, sizes: dict[str, Any], nice: int = 19
) -> dict[str, Any]:
    """Figure 3: a bystander's /exchange latency, alone and beside the attacker: one caller
    receives (one record a call; each replaced in the hoard through the store, so the hoard
    stays full) from an inbox of ``attack_records`` records of ``attack_size`` bytes, and sends to
    another such inbox, full (--max-inbox-bytes), at once."""
    body = "x" * sizes["attack_size"]
    stored = len(records.msg("attacker", "fill-000000000000", body, False, records.timestamp()))
    full = sizes["attack_records"] * stored  # exactly full once every record is in
    # Without the sender quotas (issue 22), which would refuse the hoard itself long before
    # it is whole (2 GB from one sender): this figure is about what the store bounds.
    limits = (f"--max-inbox-bytes={full}", "--max-inbox-records=0", "--max-sender-bytes=0")
    echoes = start_echoes(url, workdir, *limits, "--sender-rate=0")
    try:
        conn = await Connection.open("127.0.0.1", echoes.port)
        for i in range(sizes["attack_records"]):  # two inboxes, full by bytes
            message = {"idempotencyKey": f"fill-{i:012d}", "destination": ["hoard", "full"]}
            assert await post(conn, "/send", "attacker", message | {"body": body}) == 200
        conn.close()
        alone = await _latencies(echoes.port, sizes["seconds"])
        # The attackers are processes of their own (their 1 MB answers are read there, not in
        # the bystander's event loop), under way for a second before the bystander measures.
        seconds = sizes["seconds"]
        refill = f"{url} {sizes['attack_size']}"
        attacks = [
            _attacker(echoes.port, seconds + 1.5, "receive", refill, nice),
            _attacker(echoes.port, seconds + 1.5, "send", "", nice),
        ]
        beside, *statuses = await asyncio.gather(_latencies(echoes.port, seconds, 1.0), *attacks)
        admin = aioredis.Redis.from_url(url)
        held = int(await admin.hget(Keys("echoes:").inbox("hoard").records, "#b") or 0)
        await admin.aclose()
    finally:
        echoes.stop()
    return {
        "alone": alone,
        "beside_attack": beside,
        "attack_statuses": statuses,
        "attackers_nice": nice,
        "hoard_bytes": held,
        "max_inbox_bytes": full,
    }


async def _attack(port: int, seconds: float, kind: str, refill: str = "") -> dict[str, int]:
    """One attacker's loop: receives from the hoard one record a call (each a 1 MB answer),
    or sends to the full inbox; the statuses of its answers. With ``refill`` (a Redis URL
    and a size), each record received is replaced in the hoard straight through the store,
    so that the hoard stays as large for as long as the figure runs: echoes serves only the
    receives, Redis pays for the refills too."""
    conn = await Connection.open("127.0.0.1", port)
    statuses: dict[str, int] = {}
    end = time.monotonic() + seconds
    i = 0
    hoard, body = None, ""
    if refill:
        url, size = refill.rsplit(" ", 1)
        hoard, body = SecondDesign(url, "echoes:", 0), "x" * int(size)
    while time.monotonic() < end:
        if kind == "receive":
            status = await post(conn, f"/receive?limit=1&attempt=att-{i:012d}", "hoard")
            if hoard:
                await hoard.put("hoard", f"back-{i:012d}", body)
        else:
            message = {"idempotencyKey": f"more-{i:012d}", "destination": ["full"], "body": 0}
            status = await post(conn, "/send", "attacker", message)
        statuses[f"{kind} {status}"] = statuses.get(f"{kind} {status}", 0) + 1
        i += 1
    conn.close()
    if hoard:
        await hoard.close()
    return statuses


async def _attacker(port: int, seconds: float, kind: str, refill: str, nice: int) -> dict[str, int]:
    """``_attack`` in a process of its own, at CPU priority ``nice``: its answers' statuses."""
    process = await asyncio.create_subprocess_exec(
        "nice", "-n", str(nice),
        sys.executable, "-m", "bench.store", "--attack", kind, str(port), str(seconds),
        refill,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    statuses: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return statuses


async def _latencies(port: int, seconds: float, after: float = 0.0) -> dict[str, float]:
    await asyncio.sleep(after)
    conn = await Connection.open("127.0.0.1", port)
    spent = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        message = {"idempotencyKey": f"by-{i:012d}", "destination": ["bystander"], "body": i}
        started = time.perf_counter()
        status = await post(conn, "/exchange", "bystander", message)
        spent.append((time.perf_counter() - started) * 1000)
        assert status == 200, status
        i += 1
        await asyncio.sleep(0.005)
    conn.close()
    return {
        "p50_ms": figures.median(spent),
        "p99_ms": figures.percentile(spent, 99),
        "n": len(spent),
    }


FIGURES = ("call_costs", "memory", "bystander")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--only", choices=FIGURES, action="append", help="run this figure only (repeat for more)"
    )
    parser.add_argument(
        "--attackers-nice",
        type=int,
        default=19,
        help="CPU priority of figure 3's attackers (nice -n; 0 is the bystander's own)",
    )
    # KIND PORT SECONDS REFILL: one attacker, in a process of its own (figure 3)
    parser.add_argument("--attack", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        kind, port, seconds, refill = args.attack
        print(json.dumps(asyncio.run(_attack(int(port), float(seconds), kind, refill))))
        return
    sizes = SIZES["quick" if args.quick else "full"]
    raise_file_limit()
    print("$ " + shlex.join(["python", "-m", "bench.store", *sys.argv[1:]]), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        redis, url = start_redis(Path(scratch))
        try:
            print(f"Redis: {redis.binary}", flush=True)
            figures_run: dict[str, Callable[[], Awaitable[Any]]] = {
                "call_costs": lambda: call_costs(url, sizes),
                "memory": lambda: memory(url, sizes["memory"]),
                "bystander": lambda: bystander(url, Path(scratch), sizes, args.attackers_nice),
            }
            results = {
                name: asyncio.run(run())
                for name, run in figures_run.items()
                if not args.only or name in args.only
            }
        finally:
            redis.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        figures.write_json(args.json, results)


if __name__ == "__main__":
    main()
