"""Long-poll receive (?wait=): waking, racing, disconnecting, failing over, shutting down.

Bounds here are functional ("woken long before the safety sweep would have run"), never
benchmarks: recheck_interval is set far above them wherever a test is about notifications.
"""

import asyncio
import gc
import logging
import signal
import socket
import time

import pytest
import redis.asyncio as aioredis
from conftest import KEY, eventually, http_post, until, waiters_on, waiting

from echoes.embedded import RedisServer
from echoes.http.inbox import InboxHandler
from echoes.server import Queue
from echoes.store.keys import Keys, name_in
from echoes.wake.subscriptions import Subscriptions
from echoes.wake.waiters import Full, Waiters

SLOW_SWEEP = {"recheck_interval": 60.0}
WOKEN_WITHIN = 5.0


async def bodies(task, timeout=WOKEN_WITHIN):
    response = await asyncio.wait_for(task, timeout)
    assert response.status == 200, response.body
    return [r["body"] for r in response.json]


# --- the registry and parsing, without Redis ------------------------------------------------


async def test_registry_wakes_only_the_named_inbox_and_forgets_unregistered_waiters():
    waiters = Waiters(limit=3)
    a, b = waiters.register("a"), waiters.register("b")
    assert waiters.wake("a") == 1 and await a.wait(1) is True
    assert await b.wait(0.01) is False
    waiters.unregister(a)
    waiters.unregister(a)
    assert waiters.wake("a") == 0 and len(waiters) == 1 and waiters.names() == ["b"]


async def test_registry_refuses_past_its_limit_and_close_wakes_everyone():
    waiters = Waiters(limit=2)
    first, second = waiters.register("a"), waiters.register("a")
    with pytest.raises(Full):
        waiters.register("b")
    waiters.close()
    assert waiters.closing and await first.wait(1) and await second.wait(1)


async def test_a_waiter_is_covered_once_its_inbox_is_subscribed_or_not_past_its_timeout():
    subscriptions = Subscriptions(lambda name: name)
    subscriptions.want("a")
    patient, hasty = subscriptions.covered("a", 5), subscriptions.covered("a", 0.01)
    assert await hasty is False and not patient.done()  # its own timeout, not the other's
    subscriptions.confirmed("a")
    assert await patient is True and await subscriptions.covered("a", 0) is True
    subscriptions.want("b")
    assert await subscriptions.covered("b", 0.01) is False
    assert "b" not in subscriptions._covering  # a wait that timed out is not kept


def test_channels_name_their_inbox():
    keys = Keys("p:")
    inbox = keys.inbox("jo:sé {*}")
    assert name_in(b"__keyspace@3__:" + inbox.records.encode()) == "jo:sé {*}"
    assert name_in(inbox.channel.encode()) == "jo:sé {*}"
    assert keys.wake_channel("jo:sé {*}", "keyspace", 3) == "__keyspace@3__:" + inbox.records
    assert keys.wake_channel("jo:sé {*}", "publish", 0) == inbox.channel
    for wake in ("keyspace", "publish"):
        assert name_in(keys.wake_channel("李", wake, 0).encode()) == "李"


# --- on fakeredis: the handler's logic ------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["?wait=-1", "?wait=x", "?wait=1e3", "?wait=nan", "?wait=1&wait=2"]
)
async def test_bad_wait_is_400(fake_echoes, query):
    response = await fake_echoes.post("/receive" + query, "b")
    assert response.status == 400 and "wait" in response.json["details"][0]


async def test_fake_redis_wait_is_woken_by_a_send(fake_echoes):
    task = await waiting(fake_echoes, "b")
    await fake_echoes.send("a", KEY, ["b"], "hello")
    assert await bodies(task) == ["hello"]


async def test_waiting_records_are_answered_at_once(fake_echoes):
    await fake_echoes.send("a", KEY, ["b"], "ready")
    started = time.monotonic()
    assert [r["body"] for r in await fake_echoes.receive("b", "?wait=30")] == ["ready"]
    assert time.monotonic() - started < WOKEN_WITHIN


async def test_a_waiting_request_keeps_its_state_in_slots_and_lists(fake_echoes):
    task = await waiting(fake_echoes, "b")
    [handler] = [o for o in gc.get_objects() if isinstance(o, InboxHandler) and o.waiter]
    # No dict of its own (APIHandler says why): every attribute Tornado sets has a slot.
    assert vars(handler) == {}
    stream = handler.request.connection.stream
    assert type(stream._write_futures) is Queue and type(stream._write_buffer._buffers) is Queue
    await fake_echoes.send("a", KEY, ["b"], "done")
    assert await bodies(task) == ["done"]
    assert vars(handler) == {}  # nor once it answered


async def test_waiters_take_a_few_at_a_time_and_every_one_is_answered(fake_echoes):
    fake_echoes.echoes.waiters.taking = asyncio.Semaphore(2)
    names = [f"w{i}" for i in range(8)]
    tasks = [asyncio.create_task(fake_echoes.post("/receive?wait=30", n)) for n in names]
    await eventually(lambda: len(fake_echoes.echoes.waiters) == len(names))
    await fake_echoes.send("a", KEY, names, "all")
    for task in tasks:
        assert await bodies(task) == ["all"]


async def test_an_empty_wait_answers_empty_at_its_deadline(fake_echoes):
    started = time.monotonic()
    response = await fake_echoes.post("/receive?wait=0.3", "b")
    assert response.status == 200 and response.json == []
    assert time.monotonic() - started >= 0.3


async def test_wait_is_capped_at_max_wait(start_echoes):
    import fakeredis

    echoes = await start_echoes(client=fakeredis.FakeAsyncRedis(), max_wait=0.2)
    started = time.monotonic()
    assert await echoes.receive("b", "?wait=45") == []
    assert time.monotonic() - started < 30


async def test_max_waiters_answers_503_with_retry_after(start_echoes):
    import fakeredis

    echoes = await start_echoes(client=fakeredis.FakeAsyncRedis(), max_waiters=1)
    task = await waiting(echoes, "a")
    response = await echoes.post("/receive?wait=30", "b")
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert "already waiting" in response.json["details"][0]
    await echoes.send("x", KEY, ["a"], 1)
    assert await bodies(task) == [1]


# --- on a real redis-server ----------------------------------------------------------------


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_a_send_wakes_the_waiter(start_echoes, wake):
    echoes = await start_echoes(wake=wake, **SLOW_SWEEP)
    task = await waiting(echoes, "b")
    await echoes.send("a", KEY, ["b"], "hello", ack=True)
    assert await bodies(task) == ["hello"]
    assert [r["type"] for r in await echoes.receive("a")] == ["ack"]


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_an_ack_the_take_queues_wakes_its_waiting_sender(start_echoes, wake):
    # On one Redis the take queues the ack itself, announcing it on the sender's channel
    # (the caller's own, with the sender's name): the sender's long poll wakes.
    echoes = await start_echoes(wake=wake, **SLOW_SWEEP)
    await echoes.send("a", KEY, ["b"], "hello", ack=True)
    task = await waiting(echoes, "a")
    assert [r["body"] for r in await echoes.receive("b")] == ["hello"]
    response = await asyncio.wait_for(task, WOKEN_WITHIN)
    assert [r["type"] for r in response.json] == ["ack"]


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_a_send_to_two_waiters_wakes_both(start_echoes, wake):
    # On one Redis the two puts are one exchange.lua call, which announces on each channel
    # (once the process knows "a" far from its quotas: its first request counts it first).
    echoes = await start_echoes(wake=wake, **SLOW_SWEEP)
    await echoes.send("a", "key-000000000000", ["d"], "first")
    b, c = await waiting(echoes, "b"), await waiting(echoes, "c")
    await echoes.send("a", KEY, ["b", "c"], "hello")
    assert await bodies(b) == ["hello"]
    assert await bodies(c) == ["hello"]


async def test_exchange_sends_first_then_waits(start_echoes):
    echoes = await start_echoes(**SLOW_SWEEP)
    message = {"idempotencyKey": KEY, "destination": ["b"], "body": "from a"}
    task = await waiting(echoes, "a", path="/exchange", body=message)
    got: list = []  # the waiter registers before its send reaches Redis: poll for the send

    async def delivered() -> bool:
        got.extend(r["body"] for r in await echoes.receive("b"))
        return bool(got)

    await eventually(delivered)
    assert got == ["from a"]
    await echoes.send("b", KEY, ["a"], "reply")
    assert await bodies(task) == ["reply"]


async def test_two_waiters_two_records_one_each(start_echoes):
    echoes = await start_echoes(**SLOW_SWEEP)
    first = await waiting(echoes, "b")
    second = await waiting(echoes, "b")
    await echoes.send("a", "key-000000000001", ["b"], 1)
    done, pending = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    [winner] = done
    assert await bodies(winner) == [1]
    await asyncio.sleep(0.2)
    assert not pending.pop().done()  # the loser keeps waiting, it does not answer [] early
    await echoes.send("a", "key-000000000002", ["b"], 2)
    loser = second if winner is first else first
    assert await bodies(loser) == [2]


async def test_a_disconnected_waiter_is_forgotten_and_consumes_nothing(start_echoes):
    echoes = await start_echoes(**SLOW_SWEEP)
    port = int(echoes.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /receive?wait=30 HTTP/1.1\r\nHost: x\r\nFrom: b\r\nContent-Length: 0\r\n\r\n"
        )
        await eventually(lambda: len(echoes.echoes.waiters) == 1)
    await eventually(lambda: len(echoes.echoes.waiters) == 0)
    await echoes.send("a", KEY, ["b"], "kept")
    assert [r["body"] for r in await echoes.receive("b")] == ["kept"]


async def test_a_wait_outlasts_the_idle_connection_timeout(start_echoes):
    echoes = await start_echoes(idle_connection_timeout=0.2, body_timeout=0.2, **SLOW_SWEEP)
    task = await waiting(echoes, "b")
    await asyncio.sleep(0.6)
    await echoes.send("a", KEY, ["b"], "late")
    assert await bodies(task) == ["late"]


async def test_a_waiter_on_one_process_is_woken_by_a_send_on_another(spawn_echoes, settings):
    common = [f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}"]
    common.append("--recheck-interval=60")
    waiter, sender = spawn_echoes(*common), spawn_echoes(*common)
    loop = asyncio.get_running_loop()
    task = loop.run_in_executor(None, http_post, waiter.url + "/receive?wait=30", "b", None)
    await eventually(lambda: waiters_on(waiter.url) == 1)  # registered, in another process
    assert not task.done()
    body = {"idempotencyKey": KEY, "destination": ["b"], "body": "across"}
    assert http_post(sender.url + "/send", "a", body) == (200, {"sent": 1, "duplicates": 0})
    status, records = await asyncio.wait_for(task, WOKEN_WITHIN)
    assert status == 200 and [r["body"] for r in records] == ["across"]


async def test_redis_restarted_during_a_wait(start_echoes, own_redis):
    # A restart loses CONFIG SET: start without notifications, so echoes must turn them on
    # again after it reconnects, or this waiter would only be found by the (slow) sweep.
    own_redis.options["notify-keyspace-events"] = ""
    own_redis.stop()
    own_redis.start()
    echoes = await start_echoes(redis_url=own_redis.url, **SLOW_SWEEP)
    assert echoes.echoes.listener.state.notifications
    task = await waiting(echoes, "b")
    own_redis.stop()
    own_redis.start()
    state, registry = echoes.echoes.listener.state, echoes.echoes.metrics.registry
    await eventually(
        lambda: registry.get_sample_value("echoes_listener_reconnects_total") and state.connected
    )
    await echoes.send("a", KEY, ["b"], "after restart")
    assert await bodies(task) == ["after restart"]


async def test_a_stray_publish_on_an_inbox_channel_is_ignored(start_echoes):
    echoes = await start_echoes(wake="publish", **SLOW_SWEEP)
    prefix = echoes.settings.key_prefix
    await echoes.redis.publish(f"{prefix}{{not base64!}}:w", "1")
    await echoes.redis.publish(f"{prefix}{{_w}}:w", "1")  # base64 of invalid UTF-8
    task = await waiting(echoes, "b")
    await echoes.send("a", KEY, ["b"], "still listening")
    assert await bodies(task) == ["still listening"]
    assert echoes.echoes.metrics.registry.get_sample_value("echoes_listener_reconnects_total") == 0


async def test_the_subscription_killed_repeatedly_sleeps_past_no_record(start_echoes):
    echoes = await start_echoes(**SLOW_SWEEP)
    for i in range(3):
        task = await waiting(echoes, "b")
        await echoes.redis.client_kill_filter(_type="pubsub")
        await echoes.send("a", f"key-{i:012d}", ["b"], i)
        assert await bodies(task) == [i]


async def without_config(own_redis, notify: str) -> tuple[aioredis.Redis, str]:
    """An admin client, and the URL of a user that may do all but CONFIG; ``notify`` set."""
    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.config_set("notify-keyspace-events", notify)
    await admin.acl_setuser(
        "echoes",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    return admin, f"unix://echoes:pw@{own_redis.socket}"


async def test_without_config_rights_the_sweep_still_delivers(start_echoes, own_redis, caplog):
    admin, url = await without_config(own_redis, "")
    echoes = await start_echoes(redis_url=url, recheck_interval=0.3)
    assert echoes.echoes.listener.state.notifications is False
    task = await waiting(echoes, "b")
    await echoes.send("a", KEY, ["b"], "found by the sweep")
    assert await bodies(task) == ["found by the sweep"]
    # The test event did not arrive: one warning with what to set, and no ERROR.
    await eventually(lambda: "notifications do not arrive" in caplog.text)
    assert caplog.text.count("notifications do not arrive") == 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    await admin.aclose()


async def test_without_config_rights_a_test_event_shows_notifications_work(
    start_echoes, own_redis, caplog
):
    # Issue 12: under the ACL of conf/redis.conf every start logged an ERROR and /health said
    # "notifications": false although the flags were set in redis.conf and wake-ups worked.
    caplog.set_level(logging.INFO)
    admin, url = await without_config(own_redis, "Kh")
    echoes = await start_echoes(redis_url=url)
    await eventually(lambda: echoes.echoes.listener.state.notifications)
    assert (await echoes.request("GET", "/health")).json["notifications"] is True
    assert "checked with a test event" in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
    # The probe left no key behind.
    assert await admin.keys("*") == []
    await admin.aclose()


async def test_shutdown_answers_waiters_at_once_and_consumes_nothing(start_echoes):
    echoes = await start_echoes(**SLOW_SWEEP)
    task = await waiting(echoes, "b")
    started = time.monotonic()
    await echoes.echoes.stop()
    assert await bodies(task) == []
    assert time.monotonic() - started < WOKEN_WITHIN


def test_sigterm_with_a_waiter_exits_0_promptly(spawn_echoes, settings, tmp_path):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}", f"--key-prefix={settings.key_prefix}"
    )
    sock = socket.create_connection(("127.0.0.1", echoes.port))
    sock.sendall(
        b"POST /receive?wait=30 HTTP/1.1\r\nHost: x\r\nFrom: b\r\nContent-Length: 0\r\n\r\n"
    )
    until(lambda: waiters_on(echoes.url) == 1)
    started = time.monotonic()
    echoes.popen.send_signal(signal.SIGTERM)
    assert echoes.popen.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    sock.settimeout(5)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()


def test_embedded_redis_has_notifications_on(tmp_path):
    server = RedisServer(tmp_path / "r")
    assert server.options["notify-keyspace-events"] == "Kh"


# --- per-inbox subscriptions (issue 9) ------------------------------------------------------


async def channels(redis_url) -> set[bytes]:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        assert await admin.pubsub_numpat() == 0  # never a pattern subscription
        return set(await admin.pubsub_channels())
    finally:
        await admin.aclose()


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_subscribed_to_exactly_the_waited_on_inboxes(start_echoes, own_redis, wake):
    echoes = await start_echoes(redis_url=own_redis.url, wake=wake, **SLOW_SWEEP)
    echoes.echoes.listener.route.linger = 0.2
    assert await channels(own_redis.url) == set()  # nothing waits: no subscription at all
    keys, db = echoes.store.keys, 0
    tasks = [await waiting(echoes, name) for name in ("b", "b", "李")]
    expected = {keys.wake_channel(n, wake, db).encode() for n in ("b", "李")}
    assert await channels(own_redis.url) == expected  # one per waited-on inbox
    await echoes.send("a", KEY, ["b", "李"], "hi")
    assert await bodies(tasks[2]) == ["hi"]
    done, [other] = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
    assert await bodies(done.pop()) == ["hi"]  # one of b's two waiters got it
    await echoes.send("a", "key-000000000002", ["b"], "two")
    assert await bodies(other) == ["two"]

    async def none_left():
        return await channels(own_redis.url) == set()

    await eventually(none_left)  # gone once the waiters left (after the linger)


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_a_send_racing_the_first_waiters_subscription_is_never_missed(start_echoes, wake):
    echoes = await start_echoes(wake=wake, **SLOW_SWEEP)  # no sweep to fall back on
    started = time.monotonic()
    for i in range(30):
        name = f"racer{i}"
        task = asyncio.create_task(echoes.post("/receive?wait=30", name))
        await asyncio.sleep(0)  # the request is on its way, its subscription maybe not
        await echoes.send("a", f"key-{i:012d}", [name], i)
        assert await bodies(task) == [i]
    assert time.monotonic() - started < 20  # woken by notifications, never by a timeout


@pytest.mark.parametrize("wake", ["keyspace", "publish"])
async def test_subscriptions_come_back_after_redis_restarts(start_echoes, own_redis, wake):
    echoes = await start_echoes(redis_url=own_redis.url, wake=wake, **SLOW_SWEEP)
    task = await waiting(echoes, "b")
    own_redis.stop()
    own_redis.start()
    expected = {echoes.store.keys.wake_channel("b", wake, 0).encode()}

    async def restored():
        return await channels(own_redis.url) == expected

    await eventually(restored, timeout=15)
    await echoes.send("a", KEY, ["b"], "after the restart")
    assert await bodies(task) == ["after the restart"]
