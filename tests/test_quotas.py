"""One sender cannot degrade the service for the others (issue 22): its quotas in Redis (a
request rate, the bytes it holds), and the bytes in flight of one process and one caller.

Short, bounded versions of `python -m bench.abuse`'s attacks; timings are the benchmark's."""

import asyncio
import dataclasses
import json
import socket
import time
from typing import Any

import pytest
import redis as sync_redis
from conftest import Client, eventually, http_post, needs

from bench.topologies import Cluster
from echoes.config import Settings
from echoes.http.budget import CALLER, PROCESS, Budget, Crowded
from echoes.store import records, senders
from echoes.store.keys import Keys
from echoes.store.scripts import Call

BODY = "x" * 1000  # a record of about 1 KB as stored


def held_by(clients: list[Any], prefix: str, sender: str) -> int:
    """Bytes of ``sender``'s records in every inbox, as stored, read from Redis itself."""
    origin = json.dumps(sender).encode()
    total = 0
    for client in clients:
        for key in client.scan_iter(match=f"{prefix}*:m", count=1000):
            for field, record in client.hgetall(key).items():
                mine = record[:1] in b"mMnN" and record.split(b"\n")[1] == origin
                if not field.startswith(b"#") and mine:
                    total += records.size_of(record)
    return total


def message(key: str, destinations: list[str], body: Any = BODY) -> dict[str, Any]:
    return {"idempotencyKey": key, "destination": destinations, "body": body}


def sync_client(echoes: Client) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(echoes.settings.redis_url)


async def fill(echoes: Client, sender: str, count: int, width: int = 4) -> list[Any]:
    """``count`` sends of ``sender`` to ``width`` fresh inboxes each; the responses."""
    answers = []
    for i in range(count):
        names = [f"inbox-{i}-{j}" for j in range(width)]
        answers.append(await echoes.post("/send", sender, message(f"key-{i:012d}", names)))
    return answers


async def test_a_sender_holds_at_most_its_quota_over_many_inboxes(start_echoes):
    quota = 40_000  # about ten sends of 4 copies of 1 KB
    echoes = await start_echoes(max_sender_bytes=quota, sender_rate=0)
    answers = await fill(echoes, "mallory", 30)
    refused = [a for a in answers if a.status == 429]
    assert refused and all(a.status in (200, 429) for a in answers)
    held = held_by([sync_client(echoes)], echoes.settings.key_prefix, "mallory")
    assert 0 < held <= quota
    refusal = refused[0]
    assert "--max-sender-bytes" in refusal.json["details"][0]
    assert int(refusal.headers["Retry-After"]) >= 1
    assert '"sender-bytes";q=40000;qu="content-bytes"' in refusal.headers["RateLimit-Policy"]
    assert refusal.headers["RateLimit"].startswith('"sender-bytes";r=')
    # A bystander is never refused; its own quota is its own.
    await echoes.send("alice", "key-000000000001", ["bob"], BODY)
    sample = echoes.echoes.metrics.registry.get_sample_value
    assert sample("echoes_refusals_total", {"limit": "sender_bytes"}) == len(refused)
    assert sample("echoes_limit", {"option": "max_sender_bytes"}) == quota


async def test_consumed_and_refused_copies_free_the_senders_bytes(start_echoes, monkeypatch):
    monkeypatch.setattr(senders, "FLUSH_SECONDS", 0.05)
    monkeypatch.setattr(senders, "BYTES_REFUSAL_SECONDS", 0.05)
    echoes = await start_echoes(max_sender_bytes=14_000, sender_rate=0, max_inbox_records=2)
    quota_key = echoes.store.keys.sender("mallory")

    async def counted() -> int:
        return int(await echoes.redis.hget(quota_key, "#") or 0)

    for i in range(10):  # ten copies of ~1 KB in one inbox; a cap of 2 refuses eight
        await echoes.post("/send", "mallory", message(f"key-{i:012d}", ["bob"]))
    await eventually(lambda: counted_is(counted, lambda n: 0 < n < 3000))
    for _ in range(10):  # a resend replaces the waiting copy: counted once
        await echoes.post("/send", "mallory", message("key-000000000000", ["carol"]))
    await eventually(lambda: counted_is(counted, lambda n: 0 < n < 4000))
    assert len(await echoes.receive("bob")) == 2
    assert len(await echoes.receive("carol")) == 1
    await eventually(lambda: counted_is(counted, lambda n: n == 0))
    answers = await fill(echoes, "mallory", 3)  # 12.6 KB again: the quota is free
    assert [a.status for a in answers] == [200, 200, 200]


async def counted_is(counted: Any, check: Any) -> bool:
    return check(await counted())


async def test_a_request_flood_is_answered_429_and_others_pass(start_echoes):
    echoes = await start_echoes(sender_rate=2, sender_burst=5)
    statuses = [(await echoes.post("/receive", "mallory")).status for _ in range(12)]
    assert statuses[:5] == [200] * 5 and statuses.count(429) >= 5
    refusal = await echoes.post("/send", "mallory", message(KEY_, ["bob"]))
    assert refusal.status == 429 and "--sender-rate" in refusal.json["details"][0]
    assert refusal.headers["RateLimit"].startswith('"sender-rate";r=0;t=')
    assert '"sender-rate";q=5;w=3' in refusal.headers["RateLimit-Policy"]
    assert (await echoes.post("/receive", "alice")).status == 200
    assert await echoes.receive("bob") == []  # the refused send stored nothing


KEY_ = "key-000000000009"


def script_calls(redis: sync_redis.Redis) -> int:
    """Script calls Redis ran so far: FCALL on Redis 7, EVALSHA on 6.2."""
    stats = redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("fcall", "evalsha"))


async def test_an_exchange_counts_its_request_in_its_takes_script_call(start_echoes):
    # A caller known far from its quotas is counted by its take (take.lua's KEYS[6]): no
    # script call of its own; its rate still runs out.
    echoes = await start_echoes(sender_rate=1, sender_burst=6)
    redis = sync_client(echoes)
    await echoes.post("/exchange", "mallory", message("key-000000000100", ["bob"], "hi"))
    calls = script_calls(redis)
    answer = await echoes.post("/exchange", "mallory", message("key-000000000101", ["bob"], "hi"))
    assert answer.status == 200
    # One exchange.lua call for its put and take on Redis 7; a put and a take on 6.2. (A big
    # record's put goes apart, after its body's SET: records.BIG_RECORD.)
    assert script_calls(redis) - calls == (1 if echoes.store.scripts.functions else 2)
    quota = redis.hgetall(echoes.store.keys.sender("mallory"))
    assert int(quota[b"g"]) > 0  # the rate's due time, written by the take
    statuses = [
        (await echoes.post("/exchange", "mallory", message(f"key-{i:012d}", ["bob"]))).status
        for i in range(10)
    ]
    assert 429 in statuses and statuses[0] == 200


async def test_a_sender_far_from_its_quotas_is_admitted_by_the_process_and_reported(
    start_echoes,
):
    # Rate 1/s, burst 320: the probe leaves 319, so this process may admit 20 by itself (a
    # sixteenth of the burst); the 21st request is counted by its take with those 20, and a
    # flush reports the rest. The rate's due time moves a second per request counted.
    echoes = await start_echoes(sender_rate=1, sender_burst=320)
    redis = sync_client(echoes)
    key = echoes.store.keys.sender("mallory")

    async def exchange(i: int) -> None:
        body = message(f"key-{i:012d}", ["bob"])
        assert (await echoes.post("/exchange", "mallory", body)).status == 200

    await exchange(0)  # the probe, counted by its take
    due = int(redis.hget(key, "g"))
    for i in range(1, 21):
        await exchange(i)
    assert int(redis.hget(key, "g")) == due  # admitted by the process: Redis not asked
    for i in range(21, 26):
        await exchange(i)
    await echoes.store.senders.flush()
    assert (int(redis.hget(key, "g")) - due) / 1000 == 25  # every request counted once


async def test_bytes_reported_in_a_new_field_count_when_an_old_one_expires(echoes):
    # The report's bytes go in after the held bytes are summed again (which reads only the
    # fields Redis holds): before, a field the report created was left out of the sum.
    key = echoes.store.keys.sender("s")
    t = int(time.time())
    for charge, field in ((100, t + 1), (50, t + 60)):  # the second keeps the hash alive
        call = Call("sender", (key,), (0, 0, charge, str(field), 0, 0))
        await echoes.store.scripts.run(echoes.store.servers, [call])
    await asyncio.sleep(t + 1.1 - time.time())  # the first field's second has passed
    report = Call("sender", (key,), (0, 0, 0, "0", 0, "-", 0, str(t + 90), 500))
    [reply] = await echoes.store.scripts.run(echoes.store.servers, [report])
    assert reply[2:4] == [550, t + 60]
    assert await echoes.redis.hget(key, "#") == b"550"


async def test_a_failed_quota_report_is_kept_for_the_next():
    async def unreachable(calls: list[Any]) -> list[Any]:
        raise ConnectionError("down")

    keys = Keys("t:")
    quotas = senders.Senders(keys, Settings(sender_rate=1, sender_burst=320), unreachable)
    quotas.answered("s", [0, 319, 0, 0, 0], forced=True)  # far: a room of 20
    assert all(quotas.admit_here("s", 100, "99") for _ in range(20))
    assert not quotas.admit_here("s", 100, "99")  # the room is spent
    quotas.free("s", "98", 40)
    with pytest.raises(ConnectionError):
        await quotas.flush()
    call = quotas.report_call("s")  # what the failed report carried, kept
    assert call.args[5:] == ("-", 20, "99", 2000)  # the bytes freed are dropped: never less


async def test_a_reload_applies_new_quotas(start_echoes):
    echoes = await start_echoes(sender_rate=0)
    for _ in range(5):
        assert (await echoes.post("/receive", "mallory")).status == 200
    new = dataclasses.replace(echoes.settings, sender_rate=1, sender_burst=1)
    echoes.echoes.reconfigure(new)
    statuses = [(await echoes.post("/receive", "mallory")).status for _ in range(3)]
    assert statuses[0] == 200 and 429 in statuses
    sample = echoes.echoes.metrics.registry.get_sample_value
    assert sample("echoes_limit", {"option": "sender_rate"}) == 1


async def test_the_quota_holds_across_two_processes_on_one_redis(start_echoes):
    quota = 40_000
    first = await start_echoes(max_sender_bytes=quota, sender_rate=0)
    second = await start_echoes(max_sender_bytes=quota, sender_rate=0)

    async def attack(echoes: Client, tag: str) -> None:
        for i in range(20):
            names = [f"{tag}-{i}-{j}" for j in range(4)]
            await echoes.post("/send", "mallory", message(f"key-{tag}{i:010d}", names))

    await asyncio.gather(attack(first, "a"), attack(second, "b"))
    held = held_by([sync_client(first)], first.settings.key_prefix, "mallory")
    assert quota // 2 < held <= quota + 4 * 1100  # within one request of the cap


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


@needs("redis-cli")
async def test_the_quota_holds_on_a_three_primary_cluster(start_echoes, cluster, settings):
    quota = 40_000
    one = await start_echoes(redis_url=cluster.url, max_sender_bytes=quota, sender_rate=0)
    two = await start_echoes(redis_url=cluster.url, max_sender_bytes=quota, sender_rate=0)

    async def attack(echoes: Client, tag: str) -> None:
        for i in range(20):
            names = [f"{tag}-{i}-{j}" for j in range(4)]  # over every primary
            await echoes.post("/send", "mallory", message(f"key-{tag}{i:010d}", names))

    await asyncio.gather(attack(one, "a"), attack(two, "b"))
    clients = [primary.client() for primary in cluster.primaries()]
    held = held_by(clients, settings.key_prefix, "mallory")
    assert quota // 2 < held <= quota + 4 * 1100
    assert (await one.post("/send", "alice", message("key-000000000001", ["bob"]))).status == 200


# --- bytes in flight in one process ----------------------------------------------------------


def budget(total: int, per_caller: int) -> Budget:
    return Budget(Settings(max_bytes_in_flight=total, max_caller_bytes_in_flight=per_caller))


async def test_a_caller_past_its_share_waits_and_others_pass():
    room = budget(100, 40)
    first = await room.reserve("mallory", 30, 1)
    waiting = asyncio.ensure_future(room.reserve("mallory", 30, 5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert (await room.reserve("alice", 50, 0.01)).size == 50  # not behind mallory
    first.release()
    second = await asyncio.wait_for(waiting, 1)
    assert room.held_by("mallory") == 30 and room.used == 80
    with pytest.raises(Crowded) as caller:
        await room.reserve("mallory", 20, 0.01)
    assert caller.value.limit == CALLER
    with pytest.raises(Crowded) as process:
        await room.reserve("bob", 30, 0.01)
    assert process.value.limit == PROCESS
    second.release()
    assert room.used == 50


def test_room_there_now_is_reserved_at_once_and_none_past_a_share():
    room = budget(100, 40)
    now = room.reserve_now("alice", 30)
    assert now is not None and room.used == 30
    assert room.reserve_now("alice", 20) is None and room.used == 30  # reserve() would wait
    assert room.reserve_now("bob", 0) is not None and room.used == 30
    now.release()
    assert room.used == 0 and not room.held_by("alice")


async def test_a_request_alone_always_fits_and_a_cancelled_wait_holds_nothing():
    room = budget(10, 5)
    big = await room.reserve("mallory", 1000, 0)  # larger than any bound, but alone
    waiting = asyncio.ensure_future(room.reserve("alice", 1, 5))
    await asyncio.sleep(0.01)
    waiting.cancel()
    big.release()  # lets alice in just before her wait ends: she gives it back
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert room.used == 0 and not room.held_by("alice")


def raw_post(port: int, sender: str, length: int) -> socket.socket:
    """A POST whose headers announce ``length`` bytes of body, none of them sent yet."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = f"POST /send HTTP/1.1\r\nHost: t\r\nFrom: {sender}\r\nContent-Length: {length}\r\n\r\n"
    sock.sendall(head.encode())
    return sock


async def test_a_callers_bodies_wait_before_they_are_read(start_echoes):
    echoes = await start_echoes(max_caller_bytes_in_flight=2_000_000, redis_timeout=1.0)
    port = int(echoes.base_url.rsplit(":", 1)[1])
    held = [raw_post(port, "mallory", 1_000_000) for _ in range(4)]  # 1 in, 3 wait
    room = echoes.echoes.context.budget
    await eventually(lambda: room.held_by("mallory") > 0)
    assert room.held_by("mallory") <= 2_000_000 + 16_777_216
    await echoes.send("alice", "key-000000000001", ["bob"])  # a bystander passes
    for sock in held:
        sock.close()
    await eventually(lambda: room.used == 0)


async def test_an_attack_of_large_sends_keeps_the_process_small(spawn_echoes, settings):
    process = spawn_echoes(
        f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}"
    )
    body = {
        "idempotencyKey": "",
        "destination": [f"d{j}" for j in range(16)],
        "body": "x" * 900_000,
    }

    async def attacker(n: int) -> None:
        connection = None
        for i in range(6):
            connection = connection or await asyncio.open_connection("127.0.0.1", process.port)
            reader, writer = connection
            data = json.dumps(body | {"idempotencyKey": f"key-{n:04d}{i:08d}"}).encode()
            head = f"POST /send HTTP/1.1\r\nHost: t\r\nFrom: mallory\r\nContent-Length: {len(data)}"
            try:
                writer.write(head.encode() + b"\r\n\r\n" + data)
                await writer.drain()
                line = await reader.readuntil(b"\r\n\r\n")
                length = int(line.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()  # refused before its body was read: the server hung up
                connection = None
        if connection:
            connection[1].close()

    async def bystander() -> list[int]:
        statuses = []
        loop = asyncio.get_running_loop()
        for i in range(10):
            status, _ = await loop.run_in_executor(
                None, post_json, process.url, "alice", message(f"key-{i:012d}", ["bob"], "hi")
            )
            statuses.append(status)
        return statuses

    attack = asyncio.gather(*(attacker(n) for n in range(16)))
    statuses = await bystander()
    await attack
    assert statuses == [200] * 10
    assert process.memory("VmHWM") < 400 << 20


def post_json(url: str, sender: str, body: Any) -> tuple[int, Any]:
    return http_post(url + "/send", sender, body)
