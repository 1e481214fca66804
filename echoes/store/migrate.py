"""``python -m echoes.store.migrate [--option value ...]``: move the records of echoes 0.1's
first store design into this one, before (or right after) this version starts serving.

Run it with the server's own options (the same config file, environment or credential: it
reads them as the server does). It scans for the first design's inboxes (``<prefix>{*}:r``
hashes, keys.py), rewrites each live record in the new form with the lifetime it had left, in
arrival order, and deletes the old keys; expired records are dropped. Batches parked for a
retry by the old design need nothing: a take replays them as they are. It is safe to run
again, and while echoes serves (it deletes only the records it moved), and it prints what it
moved. Old echoes processes still running keep writing the old
layout, invisible to the new ones until migrated: run it once more after the last has stopped.
"""

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from .. import options
from ..config import Settings
from . import records
from .failures import classified
from .inboxes import Store
from .keys import Keys, name_in
from .scripts import Call
from .servers import Server, connect


async def migrate(store: Store, keys: Keys) -> tuple[int, int]:
    """Move every first-design inbox; (records moved, inboxes moved)."""
    moved = inboxes = 0
    for server in store.servers.all():
        async for name in _legacy_inboxes(server, keys):
            moved += await _move(store, server, keys, name)
            inboxes += 1
    return moved, inboxes


async def _legacy_inboxes(server: Server, keys: Keys) -> AsyncIterator[str]:
    async for key in server.client.scan_iter(match=f"{keys.prefix}{{*}}:r", count=500):
        yield name_in(key)


async def _move(store: Store, server: Server, keys: Keys, name: str) -> int:
    """Rewrite one inbox's live records in arrival order, then delete its old keys."""
    queue, held = keys.legacy(name)
    client: Any = server.client  # replies are bytes: redis-py's types cannot say so
    ids: list[bytes] = await classified(client.zrange(queue, 0, -1))
    values: list[bytes | None] = await classified(client.hmget(held, ids)) if ids else []
    now_ms = int(time.time() * 1000)
    calls: list[Call] = []
    for value in values:
        if value is None:
            continue
        expires, flag, json_record = value.split(b":", 2)
        left = int(expires) - now_ms
        if left > 0:
            calls += _restored(store, name, json.loads(json_record), flag == b"1", left)
    results = await classified(store.scripts.run(store.servers, calls)) if calls else []
    results = store.results_of(calls, results)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise failed[0]
    if ids:  # only what was moved: a record an old process adds meanwhile waits for a rerun
        await classified(client.zrem(queue, *ids))
        await classified(client.hdel(held, *ids, "#n"))
    return len(results)


def _restored(
    store: Store, name: str, record: dict[str, Any], wants_ack: bool, ttl_ms: int
) -> list[Call]:
    """The put of one first-design record (its JSON as a receive returned it), as it was."""
    key = record["idempotencyKey"]
    if record["type"] == "ack":
        stored = records.ack(key, record["destination"], record["receivedAt"])
        return store.restore(name, stored, records.ack_id(record["destination"], key), ttl_ms)
    stored = records.msg(record["origin"], key, record["body"], wants_ack, record["sentAt"])
    return store.restore(name, stored, records.msg_id(record["origin"], key), ttl_ms)


async def run(settings: Settings) -> None:
    """Migrate the Redis ``settings`` names, and say what was moved."""
    keys = Keys(settings.key_prefix)
    store = Store(connect(settings), keys, settings)
    try:
        await store.servers.ready()
        moved, inboxes = await migrate(store, keys)
    finally:
        await store.close()
    print(f"echoes: moved {moved} records of {inboxes} inboxes to this version's layout")


if __name__ == "__main__":
    asyncio.run(run(options.load_or_exit(sys.argv, os.environ)))
