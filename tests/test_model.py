"""Model-based test: random interleavings of send, receive and exchange, step by step beside a
plain in-memory model of the spec, against a real echoes process on a real Redis.

The model: each inbox is an ordered map of record id -> record; a send puts one copy per
distinct destination, replacing (and moving to the back) a waiting copy with the same
(origin, key); a receive takes the oldest live records, up to its limit, and queues an ack
in the origin's inbox for each message that asked for one; every record expires after the
TTL. Time is the one thing the model cannot control, so it is made coarse: the TTL is short,
"time passes" sleeps past it, and every other step is far quicker than it.
"""

import http.client
import itertools
import json
import time
from collections import OrderedDict
from typing import Any

import hypothesis.strategies as st
from conftest import without_times
from hypothesis import settings as hypothesis_settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

TTL = 1
MAX_EXAMPLES = int(__import__("os").environ.get("MODEL_EXAMPLES", "30"))
USERS = ["ana", "bo", "李", "x:{y}"]
KEYS = [f"key-00000000000{i}" for i in range(4)]
_runs = itertools.count()
# What a send or an exchange is made of; a receive's limit (none: everything).
MESSAGE = {
    "sender": st.sampled_from(USERS),
    "key": st.sampled_from(KEYS),
    "dests": st.lists(st.sampled_from(USERS), min_size=1, max_size=3),
    "body": st.integers(0, 99),
    "ack": st.booleans(),
}
LIMIT = st.none() | st.integers(1, 3)


class Inboxes(RuleBasedStateMachine):
    """The system and the model, side by side."""

    port = 0

    @initialize()
    def start(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.run = next(_runs)
        self.model: dict[str, OrderedDict[tuple[str, str, str], dict[str, Any]]] = {}
        self.epoch = 0  # records are born in an epoch; "time passes" ends it
        # (inbox, record id) of every copy consumed: the dedup window (300 s) outlasts a run.
        self.consumed: set[tuple[str, tuple[str, str, str]]] = set()
        self.slept = False

    def name(self, user: str) -> str:
        return f"{user}#{self.run}"  # every run has inboxes of its own

    def post(self, path: str, sender: str, body: Any = None) -> tuple[int, Any, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"From": sender.encode().decode("latin-1"), "Content-Length": str(len(data))}
        self.conn.request("POST", path, data, headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read()), response.headers

    # --- the model -------------------------------------------------------------------------

    def put(self, inbox: str, rid: tuple[str, str, str], record: dict[str, Any]) -> bool:
        """Store ``record``; False for a copy consumed within the dedup window (not stored)."""
        if (inbox, rid) in self.consumed:
            return False
        box = self.model.setdefault(inbox, OrderedDict())
        box.pop(rid, None)
        box[rid] = record | {"epoch": self.epoch}
        return True

    def model_send(
        self, sender: str, key: str, dests: list[str], body: int, ack: bool
    ) -> dict[str, int]:
        copies = list(dict.fromkeys(dests))
        duplicates = 0
        for d in copies:
            msg = {"type": "msg", "idempotencyKey": key, "origin": sender, "body": body}
            duplicates += not self.put(d, ("m", key, sender), msg | {"expectsAck": ack})
        return {"sent": len(copies), "duplicates": duplicates}

    def model_receive(self, reader: str, limit: int | None) -> tuple[list[dict[str, Any]], int]:
        box = self.model.get(reader, OrderedDict())
        for rid in [r for r, rec in box.items() if rec["epoch"] != self.epoch]:
            del box[rid]  # expired
        rids = list(box)[: limit or len(box)]
        self.consumed.update((reader, rid) for rid in rids)
        taken = [box.pop(rid) for rid in rids]
        left = len(box)  # counted when the batch is taken: before its own acks are queued
        for record in taken:
            if record["type"] == "msg" and record["expectsAck"]:
                ack = {
                    "type": "ack",
                    "idempotencyKey": record["idempotencyKey"],
                    "destination": reader,
                }
                self.put(record["origin"], ("a", record["idempotencyKey"], reader), ack)
        return [{k: v for k, v in r.items() if k != "epoch"} for r in taken], left

    # --- the steps -------------------------------------------------------------------------

    def message(self, sender: str, key: str, dests: list[str], body: int, ack: bool):  # type: ignore[no-untyped-def]
        """This run's names for sender and destinations, and the send body."""
        sender, dests = self.name(sender), [self.name(d) for d in dests]
        return (
            sender,
            dests,
            {"idempotencyKey": key, "destination": dests, "body": body, "expectsAck": ack},
        )

    @rule(**MESSAGE)
    def send(self, sender: str, key: str, dests: list[str], body: int, ack: bool) -> None:
        sender, dests, message = self.message(sender, key, dests, body, ack)
        status, answer, _ = self.post("/send", sender, message)
        assert status == 200 and answer == self.model_send(sender, key, dests, body, ack)

    @rule(reader=st.sampled_from(USERS), limit=LIMIT)
    def receive(self, reader: str, limit: int | None) -> None:
        self.check_receive("/receive", self.name(reader), limit)

    @rule(**MESSAGE, limit=LIMIT)
    def exchange(self, sender, key, dests, body, ack, limit) -> None:  # type: ignore[no-untyped-def]
        sender, dests, message = self.message(sender, key, dests, body, ack)
        self.model_send(sender, key, dests, body, ack)
        self.check_receive("/exchange", sender, limit, message)

    @precondition(lambda self: not self.slept and any(self.model.values()))
    @rule()
    def time_passes(self) -> None:
        time.sleep(TTL + 0.3)
        self.epoch += 1
        self.slept = True

    def check_receive(self, path: str, reader: str, limit: int | None, body: Any = None) -> None:
        query = f"?limit={limit}" if limit else ""
        status, records, headers = self.post(path + query, reader, body)
        expected, left = self.model_receive(reader, limit)
        assert status == 200
        assert without_times(records) == expected
        assert int(headers["Echoes-Remaining"]) == left

    def teardown(self) -> None:
        if hasattr(self, "conn"):  # drain: nothing is left that the model does not expect
            for user in USERS:
                self.check_receive("/receive", self.name(user), None)
            self.conn.close()


def test_echoes_behaves_like_the_model(spawn_echoes, settings):
    echoes = spawn_echoes(
        f"--redis-url={settings.redis_url}",
        f"--key-prefix={settings.key_prefix}",
        f"--message-ttl={TTL}",
        "--log-level=warning",
    )
    Inboxes.port = echoes.port
    Inboxes.TestCase.settings = hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        stateful_step_count=25,
        deadline=None,
        derandomize=True,
        database=None,
    )
    Inboxes.TestCase().runTest()
