"""Big records stored apart (records.BIG_RECORD), at their edges: what a reviewing helper
found in the first form of the design (1df8c76), each failing there."""

import asyncio

from conftest import KEY, needs, needs_redis_7
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from bench.topologies import Cluster

BIG = "x" * 100_000


@needs("redis-cli")
@needs_redis_7("functions on a Cluster")
async def test_a_big_send_into_a_slot_being_imported_is_never_half_stored_nor_acked(
    start_echoes, tmp_path
):
    # Resharding: the inbox keys are migrated, the slot still importing. The put's rename of
    # its body onto an undeclared key failed there after its stub was written (a 500), and
    # the stub, without a body, was later acked but never delivered. The body key is now
    # declared (the importing node refuses the put before it runs), renamed before the stub
    # is written, and a take leaves out (and does not ack) a stub whose body is gone.
    cluster = Cluster(tmp_path / "cluster", replicas=0).start()
    try:
        echoes = await start_echoes(redis_url=cluster.url)
        inbox = echoes.store.keys.inbox("b")
        await echoes.send("a", "key-000000000001", ["b"], "one")
        await echoes.send("a", "key-000000000002", ["b"], "two")
        assert len(await echoes.receive("b", "?limit=1")) == 1  # parked, tombstones: 4 keys
        source = cluster.primary_of(inbox.records)
        target = next(p for p in cluster.primaries() if p is not source)
        slot = source.client().cluster("keyslot", inbox.records)
        src_id = source.client().cluster("myid").decode()
        dst_id = target.client().cluster("myid").decode()
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        source.client().execute_command(
            "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys
        )

        message = {"idempotencyKey": "key-000000000003", "destination": ["b"], "body": BIG}
        response = await echoes.post("/send", "a", message | {"expectsAck": True})

        for node in cluster.primaries():  # the migration ends
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        await asyncio.sleep(0.5)
        got = [r["idempotencyKey"] for r in await echoes.receive("b", "?limit=100")]
        acked = [r["idempotencyKey"] for r in await echoes.receive("a") if r["type"] == "ack"]
        if response.status == 200:
            assert got == ["key-000000000002", "key-000000000003"]
        else:  # refused: then neither delivered nor acknowledged as received
            assert "key-000000000003" not in acked, (response.status, got, acked)
    finally:
        cluster.stop()


async def test_a_rerun_put_after_its_take_never_shares_the_parked_body(start_echoes, monkeypatch):
    # One pipeline: SET, put, take; dropped after all ran, then rerun. Without a dedup window
    # the rerun's put stored the copy again on the parked batch's body, which a resend then
    # deleted: the replay lost the record. The rerun is now a duplicate (its token's body is
    # there, used by the consumed copy).
    echoes = await start_echoes(dedup_window=0)
    await echoes.receive("warm-up")
    original = AbstractConnection.read_response
    failures = []

    async def drop_after_the_take(self, *args, **kwargs):
        reply = await original(self, *args, **kwargs)
        if not failures and isinstance(reply, list):  # the take's reply: every command ran
            failures.append(1)
            raise RedisConnectionError("connection lost")
        return reply

    monkeypatch.setattr(AbstractConnection, "read_response", drop_after_the_take)
    message = {"idempotencyKey": KEY, "destination": ["b"], "body": BIG}
    first = await echoes.post("/exchange?attempt=attempt-0000001", "b", message)
    monkeypatch.undo()
    assert failures and first.status == 200 and len(first.json) == 1
    await echoes.send("b", KEY, ["b"], "replaced")  # replaces the rerun's waiting copy
    replay = await echoes.post("/receive?attempt=attempt-0000001", "b")
    assert replay.body == first.body
