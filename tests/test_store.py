"""The store's second design (issues 20, 21, 25): compact records, one key per inbox of one,
bytes per inbox, the dedup window, the fences against late commands, /status, and the
migration from the first design. Each scenario of the issues failed on 2c56c3c."""

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from conftest import KEY, eventually, inbox_keys

from echoes.store import Take, records
from echoes.store.keys import Keys, encode_name
from echoes.store.migrate import migrate
from echoes.store.scripts import Call

FIRST_DESIGN = Path(__file__).parent.parent / "bench"  # its Lua, kept for the migration


def first_json(origin, key, body, ack, at):
    """A message as the first design stored and returned it (records.py before issue 20)."""
    fields = {"type": "msg", "idempotencyKey": key, "origin": origin, "body": body}
    fields |= {"expectsAck": ack, "sentAt": at}
    return json.dumps(fields, separators=(",", ":")).encode()


# --- records ----------------------------------------------------------------------------------


async def test_records_come_back_byte_for_byte_as_the_first_design_rendered_them(echoes):
    body = {"é": [1, "\u2028", None, 1.5], "q": '"\\'}
    await echoes.send("josé", KEY, ["李"], body, ack=True)
    response = await echoes.post("/receive", "李")
    [record] = response.json
    expected = first_json("josé", KEY, body, True, record["sentAt"])
    assert response.body == b"[" + expected + b"]"
    # records.render, the Python twin of the scripts' render, agrees.
    stored = records.msg("josé", KEY, body, True, record["sentAt"])
    assert records.render(stored) == expected
    [ack] = await echoes.receive("josé")
    stored_ack = records.ack(KEY, "李", ack["receivedAt"])
    assert json.dumps(ack, separators=(",", ":")).encode() == records.render(stored_ack)


async def test_an_inbox_of_one_is_one_key_and_grows_an_index_from_two(echoes):
    prefix = echoes.settings.key_prefix
    await echoes.send("a", "key-000000000001", ["b"], "one")
    assert len(await inbox_keys(echoes.redis, prefix)) == 1
    await echoes.send("a", "key-000000000002", ["b"], "two")
    assert len(await inbox_keys(echoes.redis, prefix)) == 2
    assert [r["body"] for r in await echoes.receive("b")] == ["one", "two"]
    inbox = echoes.store.keys.inbox("b")
    assert await echoes.redis.exists(inbox.records, inbox.index) == 0
    assert await echoes.redis.zcard(inbox.tombstones) == 2  # what the dedup window remembers


# --- bytes per inbox --------------------------------------------------------------------------


async def test_an_inbox_holds_at_most_max_inbox_bytes(start_echoes):
    echoes = await start_echoes(max_inbox_bytes=1000)
    await echoes.send("a", "key-000000000001", ["b"], "x" * 500)
    refused = await echoes.post(
        "/send",
        "a",
        {"idempotencyKey": "key-000000000002", "destination": ["b", "c"], "body": "y" * 500},
    )
    assert refused.status == 429
    assert any("--max-inbox-bytes" in d and "'b'" in d for d in refused.json["details"])
    assert "stored for 1 of the destinations" in refused.json["details"]
    # A replacement that grows the record past the cap is refused too; consumption frees it.
    response = await echoes.post("/receive?limit=1", "b")
    assert response.headers["Echoes-Remaining"] == "0"
    await echoes.send("a", "key-000000000002", ["b"], "y" * 500)


async def test_the_byte_count_is_exact_through_puts_replacements_takes_and_expiry(start_echoes):
    echoes = await start_echoes(message_ttl=1)
    inbox = echoes.store.keys.inbox("b")
    sizes = {}
    for i, body in enumerate(["x" * 10, "y" * 100, "z" * 1000]):
        key = f"key-00000000000{i}"
        await echoes.send("a", key, ["b"], body)
        sizes[key] = len(records.msg("a", key, body, False, records.timestamp()))
    await echoes.send("a", "key-000000000001", ["b"], "w")  # a replacement shrinks it
    sizes["key-000000000001"] = len(records.msg("a", "key-000000000001", "w", False, "x" * 20))
    assert int(await echoes.redis.hget(inbox.records, "#b")) == sum(sizes.values())
    assert len(await echoes.receive("b", "?limit=1")) == 1
    del sizes["key-000000000000"]
    assert int(await echoes.redis.hget(inbox.records, "#b")) == sum(sizes.values())


async def test_a_take_within_its_byte_budget_returns_at_least_one_record(start_echoes):
    echoes = await start_echoes(max_batch_bytes=300)
    for i in range(5):
        await echoes.send("a", f"key-00000000000{i}", ["b"], "x" * 200)
    first = await echoes.post("/receive", "b")
    assert len(first.json) == 1 and first.headers["Echoes-Remaining"] == "4"
    each = len(records.msg("a", KEY, "x" * 200, False, records.timestamp()))
    small = await start_echoes(max_batch_bytes=3 * (each + records.RENDER_OVERHEAD))
    assert len(await small.receive("b")) == 3  # the same inbox, a larger budget


# --- big records: stored apart, their bodies never handed to a script -----------------------

BIG = "x" * 100_000


async def hash_values(redis, records_key):
    return {f: v for f, v in (await redis.hgetall(records_key)).items() if f[:1] != b"#"}


async def body_keys(redis, inbox):
    return await redis.keys(inbox.records + ":*")


@pytest.mark.parametrize("ack", [False, True])
async def test_a_big_record_is_a_stub_in_its_inbox_and_comes_back_whole(echoes, ack):
    # Redis's Lua hashes every byte a script is handed: a 1 MB record through take.lua cost
    # 1.3 ms of Redis's one thread, on top of what it copies. The hash holds a stub.
    inbox = echoes.store.keys.inbox("b")
    await echoes.send("a", KEY, ["b"], "small")
    await echoes.send("a", "key-000000000002", ["b"], BIG, ack=ack)
    values = await hash_values(echoes.redis, inbox.records)
    assert len(values) == 2 and all(len(v) < records.BIG_RECORD for v in values.values())
    [body] = await body_keys(echoes.redis, inbox)
    assert 0 < await echoes.redis.pttl(body) <= echoes.settings.message_ttl * 1000 + 1000
    response = await echoes.post("/receive", "b")
    expected = records.msg("a", "key-000000000002", BIG, ack, response.json[1]["sentAt"])
    assert response.json[1]["body"] == BIG and response.json[1]["expectsAck"] is ack
    assert response.body.endswith(b"," + records.render(expected) + b"]")
    # Taken: the body lives as long as the parked batch, for a retry with the same token.
    assert await echoes.redis.pttl(body) <= echoes.settings.attempt_ttl * 1000 + 1000
    attempt = response.headers["Echoes-Attempt"]
    replay = await echoes.post(f"/receive?attempt={attempt}", "b")
    assert replay.body == response.body
    if ack:
        [acked] = await echoes.receive("a")
        assert acked["type"] == "ack" and acked["idempotencyKey"] == "key-000000000002"


async def test_a_send_no_inbox_takes_leaves_no_body_behind(start_echoes):
    # A refused send (full by bytes) deletes the body it wrote; a resend replaces the waiting
    # copy's body; a record expired and dropped by a put takes its body with it.
    echoes = await start_echoes(max_inbox_bytes=250_000)
    inbox = echoes.store.keys.inbox("b")
    await echoes.send("a", "key-000000000001", ["b"], BIG)
    await echoes.send("a", "key-000000000002", ["b"], BIG)
    refused = await echoes.post(
        "/send", "a", {"idempotencyKey": "key-000000000003", "destination": ["b"], "body": BIG}
    )
    assert refused.status == 429 and "--max-inbox-bytes" in refused.json["details"][0]
    assert len(await body_keys(echoes.redis, inbox)) == 2
    await echoes.send("a", "key-000000000002", ["b"], "y" * 90_000)  # a resend, another body
    assert len(await body_keys(echoes.redis, inbox)) == 2
    values = await hash_values(echoes.redis, inbox.records)
    held = int(await echoes.redis.hget(inbox.records, "#b"))
    assert held == sum(records.size_of(v) for v in values.values()) > 190_000
    # Both expire (their scores are their expiries); the next send finds the inbox full,
    # drops them and their bodies, and is stored.
    for member in await echoes.redis.zrange(inbox.index, 0, -1):
        await echoes.redis.zadd(inbox.index, {member: 1})
    await echoes.send("a", "key-000000000004", ["b"], BIG)
    [stub] = (await hash_values(echoes.redis, inbox.records)).values()
    assert await body_keys(echoes.redis, inbox) == [inbox.body(records.stub_token(stub)).encode()]
    assert int(await echoes.redis.hget(inbox.records, "#b")) == records.size_of(stub)
    assert [r["idempotencyKey"] for r in await echoes.receive("b")] == ["key-000000000004"]
    # A resend of it within the dedup window is a duplicate: the body it wrote goes at once,
    # the consumed copy's stays for a retry of its take.
    again = await echoes.post(
        "/send", "a", {"idempotencyKey": "key-000000000004", "destination": ["b"], "body": BIG}
    )
    assert again.json == {"sent": 1, "duplicates": 1}
    assert await body_keys(echoes.redis, inbox) == [inbox.body(records.stub_token(stub)).encode()]


async def test_a_take_of_big_records_keeps_to_its_byte_budget(start_echoes):
    each = len(records.msg("a", KEY, BIG, False, records.timestamp())) + records.RENDER_OVERHEAD
    echoes = await start_echoes(max_batch_bytes=2 * each)
    for i in range(5):
        await echoes.send("a", f"key-00000000000{i}", ["b"], BIG)
    first = await echoes.post("/receive", "b")
    assert len(first.json) == 2 and first.headers["Echoes-Remaining"] == "3"
    assert [r["idempotencyKey"] for r in first.json] == ["key-000000000000", "key-000000000001"]
    assert len(await echoes.receive("b", "?limit=10")) == 2


async def test_a_big_record_the_previous_release_stored_whole_is_taken(echoes):
    # The release before stored every record in the hash: such records are still taken, once.
    inbox = echoes.store.keys.inbox("b")
    record = records.msg("a", KEY, BIG, True, records.timestamp())
    call = echoes.store._put("b", records.msg_id("a", KEY), record, (0, 0), 0)
    assert await echoes.store.scripts.run(echoes.store.servers, [call]) == [1]
    assert await body_keys(echoes.redis, inbox) == []
    [taken] = await echoes.receive("b")
    assert taken["body"] == BIG and await echoes.receive("b") == []
    [acked] = await echoes.receive("a")
    assert acked["type"] == "ack"


# --- the dedup window -------------------------------------------------------------------------


async def test_a_replayed_receive_does_not_queue_a_consumed_ack_again(echoes):
    await echoes.send("a", KEY, ["b"], "hi", ack=True)
    token = "attempt-00000001"
    assert len(await echoes.receive("b", f"?attempt={token}")) == 1
    [ack] = await echoes.receive("a")
    assert ack["type"] == "ack"
    assert len(await echoes.receive("b", f"?attempt={token}")) == 1  # the replay
    assert await echoes.receive("a") == []  # its ack was consumed: not queued again


async def test_a_waiting_copy_is_still_replaced_by_a_resend(echoes):
    await echoes.send("a", KEY, ["b"], "first")
    assert (await echoes.send("a", KEY, ["b"], "second")).json == {"sent": 1, "duplicates": 0}
    assert [r["body"] for r in await echoes.receive("b")] == ["second"]


async def test_a_take_finds_live_records_behind_many_expired_ones(echoes):
    # 100 records that expire at once, then 3 live ones: a take drops at most 64 expired
    # records and still returns the live ones, whatever its limit (take.lua reads the head of
    # the index by rank, and by score past 64 expired ones).
    store = echoes.store
    for limit, name in ((1, "one"), (None, "all")):
        stamp = records.timestamp(int(time.time()))
        expiring = []
        for i in range(100):
            key = f"key-{i:012d}"
            record = records.msg("a", key, i, False, stamp)
            expiring += store.restore(name, record, records.msg_id("a", key), 50)
        await store.scripts.run(store.servers, expiring)
        await asyncio.sleep(0.1)
        for i in range(3):
            await echoes.send("a", f"live-{i:012d}", [name], f"live {i}")
        query = "" if limit is None else f"?limit={limit}"
        got = []
        for _ in range(3):
            response = await echoes.post("/receive" + query, name)
            got += [r["body"] for r in response.json]
            if len(got) == 3:
                break
        assert got == ["live 0", "live 1", "live 2"], limit
        inbox = store.keys.inbox(name)
        left = await echoes.redis.zcard(inbox.index)
        assert left < 100 - 64 + 1 and await echoes.redis.hlen(inbox.records) == left + (left > 0)
        assert (await echoes.receive(name)) == []
        assert await echoes.redis.exists(inbox.records, inbox.index) == 0  # all gone now


# --- edges a differential review of the scripts found (old and new alike) -------------------


def stored_msg(key, body="x"):
    return records.msg("a", key, body, False, records.timestamp(int(time.time()))), key


async def run(echoes, *calls):
    store = echoes.store
    return await store.scripts.run(store.servers, list(calls))


def put(echoes, name, key, body="x", limits=(0, 0), ttl_ms=None, counted=0):
    record, record_id = stored_msg(key, body)
    return echoes.store._put(name, record_id, record, limits, 0, ttl_ms, replaced=counted)


async def test_a_put_refused_at_an_inbox_of_one_record_leaves_it_as_it_was(echoes):
    # The second record would pass the cap of one record, or of its bytes: refused before the
    # one-record hash is turned into an indexed inbox, so nothing changed.
    for limits in ((1, 0), (0, len(stored_msg("key-000000000001")[0]) + 10)):
        name = f"capped-{limits[0]}"
        assert await run(echoes, put(echoes, name, "key-000000000001", limits=limits)) == [1]
        inbox = echoes.store.keys.inbox(name)
        before = await echoes.redis.hgetall(inbox.records), await echoes.redis.pttl(inbox.records)
        refused = await run(echoes, put(echoes, name, "key-000000000002", limits=limits))
        assert refused in ([0], [3])
        assert not await echoes.redis.exists(inbox.index)
        assert await echoes.redis.hgetall(inbox.records) == before[0]
        assert 0 <= before[1] - await echoes.redis.pttl(inbox.records) < 1000


async def test_a_promotion_keeps_the_first_records_lifetime(echoes):
    # A shorter ttl since (a reload): the inbox's keys still live as long as its first record.
    await run(echoes, put(echoes, "b", "key-000000000001", ttl_ms=10_000))
    await run(echoes, put(echoes, "b", "key-000000000002", ttl_ms=1_000))
    inbox = echoes.store.keys.inbox("b")
    assert await echoes.redis.pttl(inbox.records) > 9_000
    assert await echoes.redis.pttl(inbox.index) > 9_000


async def test_an_untake_keeps_a_copy_sent_again_meanwhile(start_echoes):
    echoes = await start_echoes(dedup_window=0)
    await echoes.send("a", "key-000000000001", ["b"], "first")
    await echoes.send("a", "key-000000000002", ["b"], "other")
    taken = await echoes.post("/receive?limit=1&attempt=token-0000000001", "b")
    assert [r["body"] for r in taken.json] == ["first"]
    await echoes.send("a", "key-000000000001", ["b"], "second version")
    assert await echoes.store.untake("b", "token-0000000001") == 0  # the newer copy stays
    inbox = echoes.store.keys.inbox("b")
    held = await echoes.redis.hgetall(inbox.records)
    held.pop(b"#x"), held.pop(b"#s")
    assert int(held.pop(b"#b")) == sum(len(v) for v in held.values())
    assert [r["body"] for r in await echoes.receive("b")] == ["other", "second version"]


async def test_a_replay_counts_the_record_of_a_one_record_inbox(echoes):
    await echoes.send("a", "key-000000000001", ["b"], "one")
    first = await echoes.post("/receive?attempt=token-0000000001", "b")
    await echoes.send("a", "key-000000000002", ["b"], "two")
    replay = await echoes.post("/receive?attempt=token-0000000001", "b")
    assert replay.json == first.json and replay.headers["Echoes-Remaining"] == "1"


async def test_a_take_of_less_than_one_record_takes_one(echoes):
    for i in range(3):
        await echoes.send("a", f"key-{i:012d}", ["b"], i)
    store = echoes.store
    call = store._take("b", Take(1, "token-0000000001"), 0)
    zero = dataclasses.replace(call, args=(0, *call.args[1:]))
    [taken] = await run(echoes, zero)
    assert taken[:3] == [b"2", 1, 2]


async def test_a_sender_quota_names_as_oldest_a_second_something_frees_at(echoes):
    # Three stretches charged; the first ends; the second is freed whole in the call that
    # finds the first ended: the oldest second left is the third's.
    key = echoes.store.keys.sender("s")
    t = int(time.time())
    fields = [str(t + 1), str(t + 30), str(t + 60)]
    for field in fields:
        await run(echoes, Call("sender", (key,), (0, 10, 100, field, 0, 0)))
    await asyncio.sleep(t + 1.1 - time.time())
    [reply] = await run(echoes, Call("sender", (key,), (0, 0, 0, "0", 0, "-", 0, fields[1], -100)))
    assert reply[2:4] == [100, int(fields[2])]
    assert await echoes.redis.hget(key, "o") == fields[2].encode()


async def test_an_expired_copy_never_consumed_may_be_sent_again(start_echoes):
    echoes = await start_echoes(message_ttl=1)
    await echoes.send("a", KEY, ["b"], "lost")
    await asyncio.sleep(1.1)
    assert (await echoes.send("a", KEY, ["b"], "again")).json == {"sent": 1, "duplicates": 0}
    assert [r["body"] for r in await echoes.receive("b")] == ["again"]


async def test_without_a_window_a_resend_after_consumption_is_delivered_again(start_echoes):
    echoes = await start_echoes(dedup_window=0)
    await echoes.send("a", KEY, ["b"], "once")
    assert len(await echoes.receive("b")) == 1
    await echoes.send("a", KEY, ["b"], "once")
    assert len(await echoes.receive("b")) == 1
    assert not await echoes.redis.exists(echoes.store.keys.inbox("b").tombstones)


async def test_status_says_what_became_of_each_copy(echoes):
    await echoes.send("a", KEY, ["b", "c"], "hi")
    await echoes.receive("b")
    query = {"idempotencyKey": KEY, "destination": ["b", "c", "d"]}
    response = await echoes.post("/status", "a", query)
    assert response.status == 200
    b, c, d = response.json
    assert b["destination"] == "b" and b["state"] == "consumed" and b["consumedAt"].endswith("Z")
    assert c == {"destination": "c", "state": "waiting"}
    assert d == {"destination": "d", "state": "unknown"}
    # Another sender's message of the same key is another message: unknown.
    other = await echoes.post("/status", "mallory", query)
    assert [s["state"] for s in other.json] == ["unknown"] * 3
    bad = await echoes.post("/status", "a", {"destination": ["b"]})
    assert bad.status == 400 and bad.json["details"]


# --- late commands and clients that left ------------------------------------------------------


class Proxy:
    """A TCP proxy in front of a Redis unix socket that can hold back what one connection
    sends (a batch in a retransmission queue) or swallow a reply and drop the connection."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.hold_next = 0.0  # seconds to hold the next FCALL of this kind ...
        self.kind = b""  # ... whose function name contains this
        self.swallow = False  # drop the reply to it and close, instead
        self.triggered = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        upstream_r, upstream_w = await asyncio.open_unix_connection(self.socket_path)
        self.writers += [writer, upstream_w]
        armed = asyncio.Event()

        async def up():
            while data := await reader.read(65536):
                if self.kind and self.kind in data and not self.triggered.is_set():
                    self.triggered.set()
                    if self.swallow:
                        armed.set()
                    else:
                        await asyncio.sleep(self.hold_next)
                upstream_w.write(data)
                await upstream_w.drain()

        async def down():
            while data := await upstream_r.read(65536):
                if armed.is_set():
                    await asyncio.sleep(0.5)  # meanwhile a reader takes the record
                    writer.transport.abort()
                    upstream_w.close()
                    return
                writer.write(data)
                await writer.drain()

        for work in (up(), down()):
            task = asyncio.create_task(work)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self):
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        await self.server.wait_closed()


def script_name(echoes, script: str) -> bytes:
    """What the proxy finds in a command of ``script``: its function (Redis 7) or its sha."""
    scripts = echoes.store.scripts
    return (scripts.function[script] if scripts.functions else scripts.sha[script]).encode()


@contextlib.asynccontextmanager
async def proxied(own_redis):
    proxy = Proxy(str(own_redis.socket))
    port = await proxy.start()
    try:
        yield proxy, f"redis://127.0.0.1:{port}/0"
    finally:
        await proxy.close()


async def test_echoes_own_rerun_of_a_put_is_not_delivered_twice(start_echoes, own_redis):
    async with proxied(own_redis) as (proxy, url):
        sender = await start_echoes(redis_url=url)
        reader = await start_echoes(redis_url=own_redis.url, key_prefix=sender.settings.key_prefix)
        await sender.send("a", "key-000000000000", ["warm"], "loads the library first")
        proxy.kind, proxy.swallow = script_name(sender, "put"), True
        sending = asyncio.create_task(sender.send("a", KEY, ["b"], "once"))
        await proxy.triggered.wait()
        taken = []
        await eventually(lambda: _took(reader, taken))  # the put ran; its reply is swallowed
        response = await sending  # echoes reran the put on a fresh connection
        assert response.json == {"sent": 1, "duplicates": 1}
        assert await reader.receive("b") == [] and len(taken) == 1


async def _took(echoes, taken):
    taken += await echoes.receive("b")
    return bool(taken)


async def test_a_late_take_takes_nothing(start_echoes, own_redis):
    # A take held back past its request's deadline (a TCP retransmission queue, a slow link)
    # reaches Redis after the client's retry under the same token was answered []: on
    # 2c56c3c it took every record and parked it under a token nobody would ask for again.
    async with proxied(own_redis) as (proxy, url):
        reader = await start_echoes(redis_url=url, redis_timeout=0.5)
        writer = await start_echoes(redis_url=own_redis.url, key_prefix=reader.settings.key_prefix)
        await reader.receive("warm")  # the scripts are loaded, and FCALL or EVALSHA known
        proxy.kind, proxy.hold_next = script_name(reader, "take"), 1.5
        token = "attempt-00000001"
        first = await reader.post(f"/receive?attempt={token}", "b")
        assert first.status == 503  # timed out: the take is still held in the proxy
        await writer.send("a", KEY, ["b"], "queued meanwhile")
        await asyncio.sleep(1.5)  # the held take reaches Redis, past its deadline
        assert [r["body"] for r in await writer.receive("b")] == ["queued meanwhile"]


async def test_a_take_past_its_deadline_changes_nothing(echoes, monkeypatch):
    await echoes.send("a", KEY, ["b"], "kept")
    monkeypatch.setattr(echoes.store, "_deadline", lambda: int(time.time() * 1000) - 1000)
    response = await echoes.post("/receive", "b")
    assert response.status == 503 and "Late" in response.json["details"][0]
    refused = await echoes.post(
        "/send", "a", {"idempotencyKey": "key-000000000002", "destination": ["b"], "body": 1}
    )
    assert refused.status == 503
    monkeypatch.undo()
    assert [r["body"] for r in await echoes.receive("b")] == ["kept"]


@pytest.mark.parametrize("kept", ["kept", "k" * 5000], ids=["small", "big"])
async def test_a_client_that_leaves_during_its_take_loses_nothing(
    start_echoes, own_redis, caplog, kept
):
    caplog.set_level(logging.INFO, logger="echoes.access")
    echoes = await start_echoes(redis_url=own_redis.url)
    await echoes.send("a", KEY, ["b"], kept, ack=True)
    admin = aioredis.Redis.from_url(own_redis.url)
    port = int(echoes.base_url.rsplit(":", 1)[1])
    try:
        await admin.execute_command("CLIENT", "PAUSE", "1000", "WRITE")  # the take is held
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /receive HTTP/1.1\r\nHost: x\r\nFrom: b\r\nContent-Length: 0\r\n\r\n"
            )
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)  # the pause ends, the take runs for a client that is gone
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    await eventually(lambda: "status=499" in caplog.text)
    # The take queued the message's ack, and the put-back took it out again: "a" hears of
    # its message once, when "b" consumes it.
    assert await echoes.receive("a") == []
    if kept != "kept":  # put back with its body, which lives as long as its record again
        [body] = await body_keys(echoes.redis, echoes.store.keys.inbox("b"))
        assert await echoes.redis.pttl(body) > echoes.settings.attempt_ttl * 1000 + 1000
    assert [r["body"] for r in await echoes.receive("b")] == [kept]
    assert "status=200 taken=1" not in caplog.text
    [ack] = await echoes.receive("a")
    assert ack["type"] == "ack" and ack["destination"] == "b"


async def test_a_take_queues_the_ack_as_records_py_makes_it(echoes):
    # take.lua makes the acks on one Redis; records.ack and records.ack_id are their Python
    # twins (python -m echoes.store.migrate makes acks with them): the two agree.
    await echoes.send("josé", KEY, ["李"], "hi", ack=True)
    await echoes.receive("李")
    inbox = echoes.store.keys.inbox("josé")
    [(ack_id, stored)] = (await echoes.redis.hgetall(inbox.records)).items()
    [ack] = await echoes.receive("josé")
    assert ack_id.decode() == records.ack_id("李", KEY)
    assert stored == records.ack(KEY, "李", ack["receivedAt"])


async def test_busy_redis_is_a_503_with_retry_after(start_echoes, own_redis):
    echoes = await start_echoes(redis_url=own_redis.url, redis_timeout=2)
    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.config_set("lua-time-limit", 50)
    blocker = aioredis.Redis.from_url(own_redis.url)
    loop = asyncio.create_task(blocker.eval("local t = redis.call('TIME') while true do end", 0))
    try:
        await asyncio.sleep(0.3)
        response = await echoes.post("/receive", "b")
        assert response.status == 503 and response.headers["Retry-After"]
        assert "Busy" in response.json["details"][0]
    finally:
        await admin.script_kill()
        with contextlib.suppress(Exception):
            await loop
        await blocker.aclose()
        await admin.aclose()


# --- the first design's records after an upgrade ---------------------------------------------


async def test_records_of_the_first_design_are_migrated_each_exactly_once(echoes):
    redis, prefix = echoes.redis, echoes.settings.key_prefix
    put = (FIRST_DESIGN / "first_design_put.lua").read_text()
    tag = f"{prefix}{{{encode_name('b')}}}"
    at = records.timestamp()
    bodies = [0, 1, "x" * 5000]  # the last one big: migrated as a stub and its body key
    for i in range(3):
        key = f"key-00000000000{i}"
        record = first_json("a", key, bodies[i], i == 1, at)
        await redis.eval(
            put,
            3,
            f"{tag}:q",
            f"{tag}:r",
            f"{tag}:p",
            f"m:{key}:a",
            record,
            int(i == 1),
            60000,
            "",
            0,
        )
    assert await echoes.receive("b") == []  # invisible until migrated
    assert await migrate(echoes.store, Keys(prefix)) == (3, 1)
    again = subprocess.run(  # the command, as the README says to run it: safe to run again
        [
            sys.executable,
            "-m",
            "echoes.store.migrate",
            f"--redis-url={echoes.settings.redis_url}",
            f"--key-prefix={prefix}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout == "echoes: moved 0 records of 0 inboxes to this version's layout\n"
    inbox = echoes.store.keys.inbox("b")
    values = await hash_values(redis, inbox.records)
    assert all(len(v) < records.BIG_RECORD for v in values.values())
    assert len(await body_keys(redis, inbox)) == 1
    taken = await echoes.receive("b")
    assert [r["body"] for r in taken] == bodies
    assert [json.dumps(r, separators=(",", ":")).encode() for r in taken] == [
        first_json("a", f"key-00000000000{i}", bodies[i], i == 1, at) for i in range(3)
    ]
    [ack] = await echoes.receive("a")  # the migrated record kept its ack flag
    assert ack["idempotencyKey"] == "key-000000000001" and ack["destination"] == "b"


async def test_a_quota_without_its_expiry_field_is_never_shortened(echoes):
    # A quota hash whose lifetime was set without "x" (another version): a request that
    # charges nothing asks its PTTL instead of cutting its life to the rate's due time.
    key = echoes.store.keys.sender("s")
    field = str(int(time.time()) + 4000)
    await run(echoes, Call("sender", (key,), (0, 10, 500, field, 0, 0)))
    await echoes.redis.hdel(key, "x")
    await echoes.redis.pexpire(key, 4_000_000)
    [reply] = await run(echoes, Call("sender", (key,), ("2.000", 1000, 0, "0", 0, 1)))
    assert reply[2] == 500  # the bytes still held
    assert await echoes.redis.pttl(key) > 3_900_000


async def test_an_inbox_without_its_expiry_field_keeps_its_records_lifetime(echoes):
    # Keys extended without "#x" (another version): a put of a shorter-lived record asks
    # their PTTL, and does not shorten them below the records they hold.
    for i in (1, 2):
        await run(echoes, put(echoes, "b", f"key-00000000000{i}", ttl_ms=7_200_000))
    inbox = echoes.store.keys.inbox("b")
    await echoes.redis.hdel(inbox.records, "#x")
    await run(echoes, put(echoes, "b", "key-000000000003", ttl_ms=1_000))
    assert await echoes.redis.pttl(inbox.index) > 7_000_000
    assert await echoes.redis.pttl(inbox.records) > 7_000_000


async def test_records_come_back_in_arrival_order_after_the_ttl_is_shortened(echoes):
    # --message-ttl lowered by a reload: a record sent since expires sooner than those
    # before it, and still comes after them.
    await run(echoes, put(echoes, "b", "key-000000000001", "a", ttl_ms=60_000))
    await run(echoes, put(echoes, "b", "key-000000000002", "b", ttl_ms=60_000))
    await run(echoes, put(echoes, "b", "key-000000000003", "c", ttl_ms=5_000))
    await run(echoes, put(echoes, "b", "key-000000000004", "d", ttl_ms=60_000))
    assert [r["body"] for r in await echoes.receive("b")] == ["a", "b", "c", "d"]


# --- what a review of the one-call exchange and the tombstones' new scores found ------------


async def test_a_tombstone_set_of_another_type_never_loses_the_batch(echoes):
    # take.lua writes tombstones after the records left the inbox, before they are parked:
    # a command there that fails must not fail the take (its records would be gone).
    await echoes.send("a", KEY, ["b"], "kept")
    await echoes.redis.set(echoes.store.keys.inbox("b").tombstones, "not a sorted set")
    token = "token-0000000001"
    first = await echoes.post(f"/receive?attempt={token}", "b")
    assert first.status == 200 and [r["body"] for r in first.json] == ["kept"]
    again = await echoes.post(f"/receive?attempt={token}", "b")
    assert again.json == first.json


# --- what a review of the acks a take queues itself found -----------------------------------


async def test_a_put_back_keeps_its_batch_when_an_origin_key_is_of_another_type(echoes):
    # The untake takes back the acks the take queued: a failure there (an origin's key of
    # another program's type) loses that take-back, never the batch put back.
    await echoes.send("a", KEY, ["b"], "kept", ack=True)
    origin = echoes.store.keys.inbox("a").records
    await echoes.redis.set(origin, "not a hash")
    with contextlib.suppress(Exception):
        await echoes.store.exchange("b", None, Take(10, "attempt-00000001"), wanted=lambda: False)
    await echoes.redis.delete(origin)
    assert [r["body"] for r in await echoes.receive("b")] == ["kept"]


async def test_a_message_stored_without_its_origins_encoded_name_is_taken(echoes):
    # A message that wants an ack as this round stored it before a take queued acks itself
    # (no encoded origin after its name JSON): it is returned whole, and no script can
    # address its ack.
    inbox = echoes.store.keys.inbox("b")
    stored = f'M{records.timestamp()}{KEY}\n"a"\n"old"'.encode()
    await echoes.redis.hset(inbox.records, records.msg_id("a", KEY), stored)
    await echoes.redis.pexpire(inbox.records, 60_000)
    response = await echoes.post("/receive?attempt=attempt-00000001", "b")
    assert response.status == 200 and [r["body"] for r in response.json] == ["old"]
    assert response.json[0]["expectsAck"] is True
    again = await echoes.post("/receive?attempt=attempt-00000001", "b")
    assert again.json == response.json


async def test_a_take_drops_at_most_64_more_tombstones_than_it_adds(start_echoes):
    # 200 tombstones long past the window: each take drops a bounded share of them (its work
    # stays bounded by what it returns), and takes go on until none is left.
    echoes = await start_echoes(dedup_window=10)
    tombstones = echoes.store.keys.inbox("b").tombstones
    old = -(int(time.time() * 1000) - 60_000)
    await echoes.redis.zadd(tombstones, {f"old-{i:08d}": old for i in range(200)})
    await echoes.send("a", KEY, ["b"], "one")
    assert len(await echoes.receive("b")) == 1
    assert await echoes.redis.zcard(tombstones) == 200 - 66 + 1  # 64 + 2 x 1 dropped
    for i in range(3):
        await echoes.send("a", f"key-{i + 10:012d}", ["b"], "more")
        assert len(await echoes.receive("b")) == 1
    assert not [m for m in await echoes.redis.zrange(tombstones, 0, -1) if m.startswith(b"old")]


async def test_a_large_request_stays_one_script_call_per_inbox(echoes):
    # One call for all its puts would hold Redis for all of them at once.
    await echoes.send("a", "key-000000000002", ["b", "c"], "small: one call on Redis 7")
    stats = await echoes.redis.info("commandstats")

    def calls(stats):
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("fcall", "evalsha"))

    before = calls(stats)
    response = await echoes.send("a", KEY, ["b", "c"], "x" * 150_000)  # 300 KB stored
    assert response.json == {"sent": 2, "duplicates": 0}
    assert calls(await echoes.redis.info("commandstats")) - before == 2


async def test_a_big_records_put_that_finds_no_body_is_a_503_and_stores_nothing(echoes):
    # Its SET and its put are two commands: where the put finds no body (a Cluster slot that
    # moved between them, say), nothing is stored and the send is answered 503, to resend.
    store, inbox = echoes.store, echoes.store.keys.inbox("b")
    command = store.scripts._command

    def elsewhere(call):  # the SET writes where its put does not look
        if call.script == "set":
            call = dataclasses.replace(call, keys=(inbox.arriving("elsewhere"),))
        return command(call)

    store.scripts._command = elsewhere
    try:
        message = {"idempotencyKey": KEY, "destination": ["b"], "body": BIG}
        refused = await echoes.post("/send", "a", message)
    finally:
        store.scripts._command = command
    assert refused.status == 503 and "(NoBody)" in refused.json["details"][0]
    assert await echoes.redis.exists(inbox.records) == 0
    assert await echoes.receive("b") == []
