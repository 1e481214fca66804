"""What echoes trusts of the servers around it: sentinels, Cluster nodes, the Redis URL.

Sentinels and Cluster nodes that lie are small RESP servers written here (tests/fakes.py);
the master they should name is a real redis-server on loopback. Each case is one of issue 23.
"""

import asyncio
import json
import types

import pytest
import redis
from conftest import http_get, http_post, until
from fakes import Error, FakeRedis, Raw, Simple

from bench.services import free_port
from bench.topologies import free_port_pair
from echoes import options
from echoes.embedded import RedisServer
from echoes.store import replies, scripts
from echoes.store.failures import Unavailable
from echoes.store.slots import MAX_REDIRECTS
from echoes.topology import display

MASTER = "echoes"
PASSWORD = "pw-of-the-master"
MESSAGE = {"idempotencyKey": "key-000000000001", "destination": ["maurice"], "body": "hi"}


@pytest.fixture
def master(tmp_path):
    """A real redis-server on a TCP port of loopback, with a password; its port and client."""
    port = free_port_pair()
    server = RedisServer(tmp_path / "master", port=str(port))
    server.start()
    redis.Redis(unix_socket_path=str(server.socket)).config_set("requirepass", PASSWORD)
    client = redis.Redis(port=port, password=PASSWORD)
    yield types.SimpleNamespace(port=port, client=lambda: client)
    client.close()
    server.stop()


def master_fields(port, flags="master"):
    return {
        "name": MASTER,
        "ip": "127.0.0.1",
        "port": str(port),
        "flags": flags,
        "num-slaves": "0",
        "num-other-sentinels": "2",
        "quorum": "2",
    }


def replica_fields(port, master_port):
    return {
        "ip": "127.0.0.1",
        "port": str(port),
        "flags": "slave",
        "master-link-status": "ok",
        "master-host": "127.0.0.1",
        "master-port": str(master_port),
    }


def sentinel(names_port, replicas=(), reply=None):
    """A sentinel naming the master at ``names_port`` (with ``replicas`` linked), or giving
    ``reply`` to every SENTINEL command."""

    def answer(command):
        if command[0].upper() != b"SENTINEL":
            return None
        if reply is not None:
            return reply
        what = command[1].upper()
        if what == b"MASTER":
            return master_fields(names_port)
        if what == b"MASTERS":  # what redis-py's own discovery asks
            return [master_fields(names_port)]
        if what in (b"REPLICAS", b"SLAVES"):
            return [replica_fields(p, names_port) for p in replicas]
        return Error("ERR unknown subcommand")

    return FakeRedis(answer)


def attacker():
    """A server that records everything and answers like an empty Redis master: each script
    call stores (1), every setting is as echoes wants it."""

    def answer(command):
        name = command[0].upper()
        if name == b"ROLE":
            return [b"master", 0, []]
        if name == b"CONFIG":
            wanted = {"notify-keyspace-events": "KEA", "maxmemory-policy": "noeviction"}
            return wanted | {"appendonly": "yes", "save": ""}
        if name == b"FUNCTION":
            return b"echoes"
        if name in (b"FCALL", b"EVALSHA"):
            return 1
        return None

    return FakeRedis(answer)


def sentinel_url(*sentinels, query=""):
    hosts = ",".join(s.address for s in sentinels)
    return f"redis+sentinel://:{PASSWORD}@{hosts}/{MASTER}{query}"


async def started(*fakes):
    return [await fake.start() for fake in fakes]


async def health(echoes):
    return await echoes.request("GET", "/health")


async def test_one_lying_sentinel_gets_neither_the_password_nor_a_message(start_echoes, master):
    # Issue 23: a fake sentinel listed first named an attacker's server, which got
    # HELLO 3 AUTH with the password and every message; the real master held 0 keys.
    evil = (await started(attacker()))[0]
    liar, honest, honest2 = await started(
        sentinel(evil.port), sentinel(master.port), sentinel(master.port)
    )
    try:
        url = sentinel_url(liar, honest)
        echoes = await start_echoes(redis_url=url, subscribed=False, redis_timeout=0.5)
        response = await echoes.post("/send", "olivia", MESSAGE)
        assert response.status == 503 and response.headers["Retry-After"]
        answer = await health(echoes)
        assert answer.status == 503 and "(SentinelsDisagree)" in answer.json["details"][0]
        # Three sentinels, one lying: the two that agree win; the liar's server is never
        # reached (not even for a PING), so it never sees the password.
        echoes = await start_echoes(redis_url=sentinel_url(liar, honest, honest2))
        assert (await echoes.post("/send", "olivia", MESSAGE)).status == 200
        assert master.client().keys("*")
        assert evil.connections == 0 and not evil.said(PASSWORD.encode())
    finally:
        for fake in (evil, liar, honest, honest2):
            await fake.close()


def needs_password(port, sentinel_password):
    """A sentinel that answers only a client that authenticated with ``sentinel_password``."""
    honest = sentinel(port)

    def answer(command):
        name = command[0].upper()
        if name == b"HELLO" and b"AUTH" in [c.upper() for c in command]:
            if command[-1] != sentinel_password.encode():
                return Error("WRONGPASS invalid username-password pair or user is disabled.")
            guarded.session["authenticated"] = True
            return None
        if name == b"HELLO":
            return Error("NOAUTH HELLO must be called with the client already authenticated")
        if name == b"SENTINEL" and not guarded.session.get("authenticated"):
            return Error("NOAUTH Authentication required.")
        return honest.answer(command)

    guarded = FakeRedis(answer)
    return guarded


async def test_sentinels_that_want_a_password_get_it_and_a_refusal_is_named(
    start_echoes, master, caplog
):
    # Issue 23: sentinels with requirepass could not be used (503 "TimeoutError", a log
    # saying "No master found" with no hint of authentication).
    guarded = await started(*(needs_password(master.port, "s3nt") for _ in range(3)))
    try:
        echoes = await start_echoes(redis_url=sentinel_url(*guarded), subscribed=False)
        response = await echoes.post("/send", "olivia", MESSAGE)
        assert response.status == 503
        assert "the sentinels of" in response.json["details"][0]
        assert "refused echoes' credentials (SentinelAuthenticationError)" in response.body.decode()
        answer = await health(echoes)
        assert "(SentinelAuthenticationError: " in answer.json["details"][0]
        assert "?sentinel_password=PASSWORD" in answer.json["details"][0]  # the fix
        assert "sentinel 127.0.0.1:" in caplog.text and "refused echoes' credentials" in caplog.text
        assert "the sentinels of echoes (Sentinel) refused" in caplog.text  # the listener's
        wrong = sentinel_url(*guarded, query="?sentinel_password=nope")
        echoes = await start_echoes(redis_url=wrong, subscribed=False)
        assert "(SentinelAuthenticationError: " in (await health(echoes)).json["details"][0]
        right = sentinel_url(*guarded, query="?sentinel_username=default&sentinel_password=s3nt")
        echoes = await start_echoes(redis_url=right)
        assert (await echoes.post("/send", "olivia", MESSAGE)).status == 200
        assert (await health(echoes)).status == 200
    finally:
        for fake in guarded:
            await fake.close()


async def test_the_masters_own_password_refused_is_named_at_once(start_echoes, master):
    honest = await started(*(sentinel(master.port) for _ in range(3)))
    try:
        url = sentinel_url(*honest).replace(PASSWORD, "wrong")
        echoes = await start_echoes(redis_url=url, subscribed=False, redis_timeout=30)
        response = await echoes.post("/send", "olivia", MESSAGE)  # not after 30 s
        assert response.status == 503 and "refused echoes' credentials" in response.body.decode()
    finally:
        for fake in honest:
            await fake.close()


SHAPES = [
    Simple("OK"),
    42,
    Raw(b"_\r\n"),  # null
    [b"ip"],
    [[b"ip", b"127.0.0.1"]],
    {"ip": "127.0.0.1"},
    {"ip": "127.0.0.1", "port": "99999", "flags": "master"},
    {"ip": "bad host", "port": "6379", "flags": "master"},
    {"ip": ["nested"], "port": "6379", "flags": "master"},
    Error("ERR No such master with that name"),
    Raw(b"*1\r\n$3\r\nfoo\r\n"),
]


@pytest.mark.parametrize("reply", SHAPES, ids=lambda r: type(r).__name__ + repr(r)[:20])
async def test_a_sentinel_reply_of_any_shape_is_a_503_never_a_500(
    start_echoes, master, reply, caplog
):
    # Issue 23: a sentinel reply of an unexpected shape was an AttributeError, a 500.
    odd = await started(*(sentinel(master.port, reply=reply) for _ in range(2)))
    try:
        url = sentinel_url(*odd)
        echoes = await start_echoes(redis_url=url, subscribed=False, redis_timeout=0.5)
        assert (await echoes.post("/send", "olivia", MESSAGE)).status == 503
        answer = await health(echoes)
        assert answer.status == 503 and "Redis at echoes (Sentinel)" in answer.json["details"][0]
        assert "Traceback" not in caplog.text
    finally:
        for fake in odd:
            await fake.close()


def claims(role):
    """A server that answers ROLE with ``role`` and records what else it is sent."""
    return FakeRedis(lambda c: role if c[0].upper() == b"ROLE" else None)


@pytest.mark.parametrize(
    "role",
    [
        [b"slave", b"127.0.0.1", 6379, b"connected", 100],  # a replica
        [b"master", 0, []],  # a master, but not the one the replicas follow
        Simple("OK"),
    ],
    ids=["replica", "no-replicas", "garbage"],
)
async def test_the_master_must_say_it_is_the_master_of_those_replicas(start_echoes, master, role):
    impostor = (await started(claims(role)))[0]
    honest = await started(*(sentinel(impostor.port, replicas=[master.port]) for _ in range(3)))
    try:
        url = sentinel_url(*honest)
        echoes = await start_echoes(redis_url=url, subscribed=False, redis_timeout=0.5)
        assert (await echoes.post("/send", "olivia", MESSAGE)).status == 503
        answer = await health(echoes)
        assert answer.status == 503 and "(NotMaster)" in answer.json["details"][0]
        sent = {c[0].upper() for c in impostor.commands}
        assert sent <= {b"HELLO", b"AUTH", b"ROLE", b"CLIENT"}, sent  # no FCALL, no data
    finally:
        for fake in (impostor, *honest):
            await fake.close()


# Every credential below holds "secret"; none may be shown anywhere.
SECRET_URLS = [
    "redis://127.0.0.1:{port}/0?username=u-secret&password=pw-secret",
    "redis://u-secret:pw-secret@127.0.0.1:{port}/0",
    "unix://u-secret:pw-secret@/nowhere/redis.sock?db=0&password=pw2-secret",
    "redis+sentinel://u-secret:pw-secret@127.0.0.1:{port}/echoes"
    "?sentinel_username=s-secret&sentinel_password=spw-secret",
    "redis+sentinel://127.0.0.1:{port}/echoes/0?username=u-secret&password=pw-secret",
    "redis+cluster://127.0.0.1:{port}?username=u-secret&password=pw-secret",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_credential_of_the_redis_url_is_shown_anywhere(spawn_echoes, url):
    # Issue 23: ?password= appeared in every 503's details, in /health, in a /metrics label
    # and three times in the log (the user:pw@ form was already redacted).
    url = url.format(port=free_port())  # nothing listens there: Redis is unavailable
    process = spawn_echoes(f"--redis-url={url}", "--log-level=debug", "--redis-timeout=0.3")
    shown = [
        http_post(process.url + "/send", "olivia", MESSAGE),
        http_post(process.url + "/receive?wait=0.1", "olivia"),
        http_get(process.url + "/health"),
        http_get(process.url + "/metrics"),
    ]
    assert [status for status, _ in shown] == [503, 503, 503, 200]
    # The wake-up listener's reconnections are logged too (at debug after the first).
    until(lambda: process.log.read_text().count(" echoes.listener") >= 2)
    text = json.dumps([str(body) for _, body in shown]) + process.log.read_text()
    assert display(url) in text  # the address is shown...
    assert "secret" not in text  # ...and no user name or password, wherever it was


def test_a_url_redis_py_cannot_read_stops_start_up_without_showing_it(capsys):
    # redis-py's own message quoted a piece of the password ("Port could not be cast to
    # integer value as 'pw'"), in a traceback.
    with pytest.raises(SystemExit) as exit:
        options.load_or_exit(["echoes", "--redis-url=redis://u:pw/secret@h:1/0"], {})
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1, err
    assert "percent-encode" in err and "redis://h:1/0" in err
    assert "pw" not in err and "secret" not in err


def test_display_drops_every_credential_and_keeps_the_address():
    cases = {
        "redis://h:1/0?username=u&password=p": "redis://h:1/0",
        "redis://u:p@h:1/0": "redis://h:1/0",
        "redis://u:p/q@h:1/0": "redis://h:1/0",
        "redis://:p%40@h:1/0?db=3&ssl_password=x#frag": "redis://h:1/0?db=3",
        "unix://u:p@/run/r.sock?db=2&password=p": "unix:///run/r.sock?db=2",
        "redis+sentinel://u:p@a:1,b:2/echoes/1?sentinel_password=s": (
            "redis+sentinel://a:1,b:2/echoes/1"
        ),
        "rediss+cluster://a:1,b:2?password=p": "rediss+cluster://a:1,b:2",
        "embedded": "embedded",
    }
    for url, shown in cases.items():
        assert display(url) == shown, url


def cluster_node(peer=None, reply=None):
    """A Cluster node that says it serves every slot; to each script call it answers MOVED
    (or ASK) to ``peer()``, or ``reply``."""

    def answer(command):
        name = command[0].upper()
        if name == b"CLUSTER" and command[1].upper() == b"SLOTS":
            return [[0, 16383, [b"127.0.0.1", node.port, b"a" * 40]]]
        if name == b"COMMAND":
            return []
        if name == b"CONFIG":
            return {"notify-keyspace-events": "KEA"}
        if name == b"FUNCTION":
            return b"echoes"
        if name in (b"FCALL", b"EVALSHA"):
            if reply is not None:
                return reply
            kind = "ASK" if len(node.commands) % 2 else "MOVED"
            return Error(f"{kind} 1 {peer().address}")
        if name in (b"ASKING", b"EXISTS"):
            return Simple("OK") if name == b"ASKING" else 0
        return None

    node = FakeRedis(answer)
    return node


async def test_nodes_that_redirect_to_each_other_give_up_after_a_few_round_trips(
    start_echoes, caplog
):
    # Issue 23: two nodes answering MOVED/ASK to each other made one /send do 28,426 round
    # trips in 5 s (2.9 s of CPU); 10 concurrent sends took 10 s and 175k round trips.
    a = cluster_node(lambda: b)
    b = cluster_node(lambda: a)
    await started(a, b)
    try:
        url = f"redis+cluster://{a.address}"
        echoes = await start_echoes(redis_url=url, subscribed=False, redis_timeout=30)
        sends = [echoes.post("/send", "olivia", MESSAGE) for _ in range(10)]
        answers = await asyncio.gather(*sends)  # not after the 30 s deadline
        assert {r.status for r in answers} == {503}
        assert all(r.headers["Retry-After"] for r in answers)
        assert all("(Redirected)" in r.json["details"][0] for r in answers)
        calls = [c[1].split(b"_")[1] for node in (a, b) for c in node.commands if c[0] == b"FCALL"]
        each = {script.decode(): calls.count(script) for script in set(calls)}
        print(f"10 sends between two nodes redirecting each other: {len(calls)} calls {each}")
        for script in set(calls):  # each send's put, and its sender's quota
            assert calls.count(script) <= 10 * (MAX_REDIRECTS + 1), (script, calls)
        assert a.address in caplog.text and b.address in caplog.text
        assert "redirected 6 times" in caplog.text
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    "reply",
    [
        *(Simple("OK"), 7, -1, b"1", [], None),
        *([b"[]", 0], [b"not json", 0, 0], [b"2", -1, 0], [b"2", 1, 0, b"not a record"]),
        [b"1", b"not a batch", 1, 0],
    ],
    ids=repr,
)
async def test_a_script_reply_of_the_wrong_shape_is_a_503_never_a_success(
    start_echoes, reply, caplog
):
    # Issue 23: a script reply of the wrong shape was answered 200 {"sent": 0}.
    node = cluster_node(reply=Raw(b"_\r\n") if reply is None else reply)
    await node.start()
    try:
        url = f"redis+cluster://{node.address}"
        echoes = await start_echoes(redis_url=url, subscribed=False)
        for path in ("/send", "/exchange", "/receive"):
            body = None if path == "/receive" else MESSAGE
            response = await echoes.post(path, "olivia", body)
            assert response.status == 503, (path, response.body)
            assert "(BadReply)" in response.json["details"][0]
        assert "which echoes' " in caplog.text and "Traceback" not in caplog.text
    finally:
        await node.close()


@pytest.mark.parametrize("origin", [b"A", b"_w", b"not base64!"])
async def test_an_ack_to_queue_with_a_bad_origin_is_a_503(start_echoes, origin, caplog):
    # On a Cluster a take returns the acks echoes queues; an origin that is no encoded name
    # (a length base64 cannot have, not UTF-8, another alphabet) was a 500.
    ack = b'a2026-12-02T00:00:00Zkey-000000000000\n"b"'
    node = cluster_node(reply=[b"2", 0, 0, 0, 0, origin, b"0123456789abcdef", ack])
    await node.start()
    try:
        url = f"redis+cluster://{node.address}"
        quotas = {"sender_rate": 0, "max_sender_bytes": 0}  # a plain take, no quota call
        echoes = await start_echoes(redis_url=url, subscribed=False, **quotas)
        response = await echoes.post("/receive", "olivia")
        assert response.status == 503 and "(BadReply)" in response.json["details"][0]
        assert "Traceback" not in caplog.text
    finally:
        await node.close()


async def test_a_user_refused_role_skips_that_check_and_says_so_once(start_echoes, master, caplog):
    master.client().acl_setuser("default", enabled=True, commands=["-role"], reset=False)
    honest = await started(*(sentinel(master.port) for _ in range(3)))
    try:
        echoes = await start_echoes(redis_url=sentinel_url(*honest))
        for n in range(3):
            body = MESSAGE | {"idempotencyKey": f"key-{n:012d}"}
            assert (await echoes.post("/send", "olivia", body)).status == 200
        assert caplog.text.count("refuses ROLE to echoes' user") == 1
        # What the process admitted by itself is reported while the sentinels still answer
        # (the fixture closes echoes after they are gone).
        await echoes.store.senders.flush()
    finally:
        for fake in honest:
            await fake.close()


def test_every_script_and_command_has_its_reply_shape_checked():
    assert set(replies.SHAPES) == set(scripts.NAMES) | set(scripts.COMMANDS)


@pytest.mark.parametrize(
    "reply",
    [[], [b"m", None], [b"not a record"], [b'a2026-12-02T00:00:00Zkey-000000000000\n"b"'], 7],
    ids=repr,
)
def test_bodies_of_the_wrong_shape_are_a_bad_reply(reply):
    # A big record's body is read with MGET (records.py): one message record per key, or
    # none; anything else would be rendered into a receive's answer.
    call = scripts.Call("mget", ("k1",), ())
    with pytest.raises(Unavailable) as refused:
        replies.check([call], [reply])
    assert refused.value.kind == "BadReply"
    body = b'm2026-12-02T00:00:00Zkey-000000000000\n"a"\n"hi"'
    replies.check([call], [[body]])
    replies.check([call], [[None]])


def test_a_stub_of_the_wrong_shape_is_a_bad_reply():
    take = scripts.Call("take", ("k",) * 5, ())
    stub = b'n2026-12-02T00:00:00Zkey-000000000000\n"a"\n#2000:abcDEF_-12'
    replies.check([take], [[b"2", 1, 0, 0, 0, stub]])
    with pytest.raises(Unavailable) as refused:
        replies.check([take], [[b"2", 1, 0, 0, 0, stub.replace(b"#2000:", b"2000:")]])
    assert refused.value.kind == "BadReply"
