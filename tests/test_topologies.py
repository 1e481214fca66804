"""echoes on a real Redis Cluster (3 primaries, 1 replica each) and a Sentinel-managed master.

Both are started from the same redis-server binary on loopback (bench/topologies.py), once
for this module. Failovers under load, with accounting, are tests/test_failover.py.
"""

import asyncio
import json
import logging
import random
import re
import subprocess
import sys

import pytest
import tornado.httpclient
from conftest import (
    ROOT,
    eventually,
    needs,
    needs_redis_7,
    post_async,
    skip_unless_redis_7,
    spec_example,
)
from fakes import FakeRedis

from bench.topologies import Cluster, Sentinels, redis_cli
from echoes.store import records, scripts
from echoes.store.keys import Keys

WOKEN_WITHIN = 5.0
pytestmark = needs("redis-cli")  # it makes the Cluster (Debian's redis-tools; CI installs it)
# Redis 6.2 reads `--replicaof "HOST PORT"`, as bench.topologies starts a replica, as one word.
REPLICAOF = "a replica started with --replicaof 'HOST PORT'"


def shard_channels(wake):
    """Skip --wake=publish on a Cluster where redis-server is older than 7 (no SPUBLISH)."""
    if wake == "publish":
        skip_unless_redis_7("shard channels: SPUBLISH, SSUBSCRIBE")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    skip_unless_redis_7(REPLICAOF)
    started = Sentinels(tmp_path_factory.mktemp("sentinel")).start()
    yield started
    started.stop()


@pytest.fixture(params=["cluster", "sentinels"])
def topology(request):
    return request.getfixturevalue(request.param)


def one_name_per_primary(cluster, prefix, tag="n"):
    """A name whose inbox lives on each primary, in the primaries' order."""
    keys, names = Keys(prefix), {}
    for i in range(1000):
        name = f"{tag}{i}"
        names.setdefault(cluster.primary_of(keys.inbox(name).records).port, name)
        if len(names) == len(cluster.primaries()):
            return [names[p.port] for p in cluster.primaries()]
    raise AssertionError("no name for some primary")


async def post(url, path, sender, body=None):
    """A POST to a spawned echoes; status and decoded JSON."""
    return await post_async(url + path, sender, body)


async def test_the_spec_example_runs_unchanged(start_echoes, topology):
    await spec_example(await start_echoes(redis_url=topology.url))


async def test_a_lying_sentinel_listed_first_is_outvoted_by_the_real_ones(
    start_echoes, sentinels, settings
):
    # Issue 23: one lying sentinel listed first was enough for echoes to send the master's
    # password, and every message, to a server of its choice.
    evil = await FakeRedis(lambda command: None).start()

    def lie(command):  # SENTINEL MASTER(S) name the attacker's server; no replicas
        fields = {"name": "echoes", "ip": "127.0.0.1", "port": str(evil.port), "flags": "master"}
        fields |= {"num-other-sentinels": "2", "quorum": "2"}
        if command[0].upper() != b"SENTINEL":
            return None
        return {b"MASTER": fields, b"MASTERS": [fields]}.get(command[1].upper(), [])

    liar = await FakeRedis(lie).start()
    try:
        url = sentinels.url.replace("://", f"://{liar.address},", 1)
        echoes = await start_echoes(redis_url=url)
        await spec_example(echoes)
        assert sentinels.current_master().client().keys(settings.key_prefix + "*")
        assert evil.connections == 0
    finally:
        await liar.close()
        await evil.close()


async def test_inboxes_spread_over_every_primary_and_come_back(start_echoes, cluster, settings):
    echoes = await start_echoes(redis_url=cluster.url)
    names = [f"user{i}" for i in range(60)]
    body = {"idempotencyKey": "key-000000000001", "destination": names, "body": "hi"}
    assert (await echoes.post("/send", "olivia", body)).json == {"sent": 60, "duplicates": 0}
    for primary in cluster.primaries():  # every primary holds some of the inboxes
        assert primary.client().keys(settings.key_prefix + "*"), primary.port
    for name in names:
        assert [r["body"] for r in await echoes.receive(name)] == ["hi"]
    for primary in cluster.primaries():  # nothing queued any more (parked batches remain)
        assert primary.client().keys(settings.key_prefix + "*:m") == []


async def test_concurrent_receivers_on_two_processes_get_each_record_once(
    spawn_echoes, topology, settings
):
    args = (f"--redis-url={topology.url}", f"--key-prefix={settings.key_prefix}")
    urls = [spawn_echoes(*args).url, spawn_echoes(*args).url]
    readers = [f"reader{i}" for i in range(6)]
    sent = set()
    for n in range(50):
        destination = random.sample(readers, 3)
        body = {"idempotencyKey": f"key-{n:012d}", "destination": destination, "body": n}
        status, _ = await post(random.choice(urls), "/send", "olivia", body)
        assert status == 200
        sent |= {(reader, n) for reader in destination}
    got = []

    async def receive(url, reader):
        while True:
            status, records = await post(url, "/receive?limit=3", reader)
            assert status == 200
            if not records:
                return
            got.extend((reader, r["body"]) for r in records)

    await asyncio.gather(*(receive(url, reader) for url in urls for reader in readers * 2))
    assert sorted(got) == sorted(sent)  # every record, none twice


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_a_send_through_one_process_wakes_waiters_on_another_on_every_shard(
    spawn_echoes, cluster, settings, wake
):
    shard_channels(wake)
    args = (
        f"--redis-url={cluster.url}",
        f"--key-prefix={settings.key_prefix}",
        f"--wake={wake}",
        "--recheck-interval=60",  # no sweep to fall back on: only notifications wake
    )
    waiter, sender = spawn_echoes(*args).url, spawn_echoes(*args).url
    names = one_name_per_primary(cluster, settings.key_prefix)
    tasks = [asyncio.create_task(post(waiter, "/receive?wait=30", name)) for name in names]

    async def all_waiting():
        http = tornado.httpclient.AsyncHTTPClient()
        return json.loads((await http.fetch(waiter + "/health")).body)["waiters"] == len(names)

    await eventually(all_waiting)
    for name in names:
        body = {"idempotencyKey": "key-000000000001", "destination": [name], "body": name}
        assert (await post(sender, "/send", "olivia", body))[0] == 200
    for name, task in zip(names, tasks, strict=True):
        status, records = await asyncio.wait_for(task, WOKEN_WITHIN)
        assert status == 200 and [r["body"] for r in records] == [name]


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_each_inbox_is_subscribed_on_its_own_primary_only(
    start_echoes, cluster, settings, wake
):
    shard_channels(wake)
    echoes = await start_echoes(redis_url=cluster.url, wake=wake, recheck_interval=60)
    echoes.echoes.listener.route.linger = 0.2
    names = one_name_per_primary(cluster, settings.key_prefix)
    tasks = [asyncio.create_task(echoes.post("/receive?wait=30", n)) for n in names]
    await eventually(lambda: len(echoes.echoes.waiters) == len(names))
    keys = echoes.store.keys

    def subscribed(primary):
        client = primary.client()
        if wake == "publish":
            return set(client.execute_command("PUBSUB", "SHARDCHANNELS"))
        return set(client.pubsub_channels())

    async def each_on_its_own():
        return all(
            subscribed(primary) == {keys.wake_channel(name, wake, 0).encode()}
            for primary, name in zip(cluster.primaries(), names, strict=True)
        )

    await eventually(each_on_its_own)
    await echoes.send("a", "key-000000000001", names, "hi")
    for task in tasks:
        assert [r["body"] for r in (await asyncio.wait_for(task, WOKEN_WITHIN)).json] == ["hi"]

    async def none_left():
        return all(not subscribed(primary) for primary in cluster.primaries())

    await eventually(none_left)


@needs_redis_7("functions: add-node copies echoes' function library to the new primary")
async def test_a_shard_added_while_records_come_and_go_loses_and_repeats_nothing(
    start_echoes, tmp_path, settings, caplog
):
    # README, "Scale out": how to add a shard. Rebalancing moves keys slot by slot (MIGRATE):
    # meanwhile echoes meets ASK, TRYAGAIN and MOVED, and must neither lose nor repeat.
    caplog.set_level(logging.DEBUG, logger="echoes.redis")
    cluster = Cluster(tmp_path / "cluster").start()
    try:
        echoes = await start_echoes(redis_url=cluster.url)
        names = [f"user{i}" for i in range(40)]
        sent, got, stop = set(), [], asyncio.Event()

        async def traffic():
            n = 0
            while not stop.is_set() or n < 50:
                n += 1
                destination = random.sample(names, 2)
                body = {"idempotencyKey": f"key-{n:012d}", "destination": destination, "body": n}
                assert (await echoes.post("/send", "olivia", body)).status == 200
                sent.update((name, n) for name in destination)
                reader = random.choice(names)
                got.extend((reader, r["body"]) for r in await echoes.receive(reader))

        moving = asyncio.create_task(traffic())
        new = await asyncio.to_thread(cluster.add_shard)
        stop.set()
        await moving
        for name in names:
            got.extend((name, r["body"]) for r in await echoes.receive(name, "?limit=1000"))
        assert sorted(got) == sorted(sent)
        assert new in cluster.primaries() and new.client().keys(settings.key_prefix + "*")
        assert cluster.library_copied  # README: add-node copies echoes' function library
        # The traffic met the migration: commands were sent again after a redirection.
        assert re.search(r"commands again after (MovedError|AskError|TryAgainError)", caplog.text)
    finally:
        cluster.stop()


def echoes_user(conf):
    """The rules of the echoes user in ``conf`` (a file of conf/)."""
    [line] = [
        x for x in (ROOT / "conf" / conf).read_text().splitlines() if x.startswith("user echoes ")
    ]
    return line.split()[2:]


def cluster_acl(prefix):
    """The echoes user of conf/redis-cluster-node.conf, with this test's key prefix."""
    rules = echoes_user("redis-cluster-node.conf")
    return [{">CHANGE-ME": ">pw"}.get(r, r.replace("echoes:", prefix)) for r in rules]


def test_the_cluster_acl_is_the_single_redis_one_and_what_a_cluster_client_asks():
    single, clustered = echoes_user("redis.conf"), echoes_user("redis-cluster-node.conf")
    extra = set(clustered) - set(single)
    assert extra == {"+cluster|slots", "+cluster|info", "+command", "+asking"}
    assert set(single) <= set(clustered)


@needs_redis_7("functions, and the +fcall ACL of conf/redis-cluster-node.conf")
@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_echoes_works_on_a_cluster_under_the_documented_acl(
    start_echoes, cluster, settings, wake
):
    shard_channels(wake)
    for node in cluster.running():  # ACLs are per node
        node.client().execute_command("ACL", "SETUSER", "echoes", *cluster_acl(settings.key_prefix))
    # The admin loads the function library on every primary, as conf/redis-cluster-node.conf
    # says (the echoes user may not).
    library = subprocess.run(
        [sys.executable, "-m", scripts.__name__], capture_output=True, text=True, check=True
    ).stdout
    call = [redis_cli(), "--cluster", "call", cluster.nodes[0].address, "FUNCTION", "LOAD"]
    subprocess.run([*call, "REPLACE", library, "--cluster-only-masters"], check=True)
    url = cluster.url.replace("redis+cluster://", "redis+cluster://echoes:pw@")
    echoes = await start_echoes(redis_url=url, wake=wake, recheck_interval=60)
    await spec_example(echoes)
    names = one_name_per_primary(cluster, settings.key_prefix, tag="acl")
    tasks = [asyncio.create_task(echoes.post("/receive?wait=30", n)) for n in names]
    await eventually(lambda: len(echoes.echoes.waiters) == len(names))
    await echoes.send("a", "key-000000000009", names, "under the ACL")
    for task in tasks:
        response = await asyncio.wait_for(task, WOKEN_WITHIN)
        assert [r["body"] for r in response.json] == ["under the ACL"]
    # A big record, with its ack: its body SET and read in its inbox's slot (records.py), its
    # ack returned by the take from its stub and queued in the origin's slot.
    big = "x" * records.BIG_RECORD
    await echoes.send("a", "key-000000000010", names, big, ack=True)
    for name in names:
        assert [r["body"] for r in await echoes.receive(name)] == [big]
    acks = await echoes.receive("a")
    assert sorted(r["destination"] for r in acks) == sorted(names)
    assert (await echoes.request("GET", "/health")).status == 200
