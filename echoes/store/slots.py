"""Commands sent each to the server of its key's slot, one pipeline per server, at once.

On one Redis every command goes to it. On a Cluster, the commands of a request (a send to
many destinations, the acks of a receive) are grouped by the primary of their slot, and
each group is one pipeline to its primary, all sent together. What a Cluster or Sentinel
answers while it changes is tried again until it passes or the caller's deadline does:
MOVED (learn the new owner, send there), ASK (send that one command to the named node after
ASKING), TRYAGAIN and CLUSTERDOWN (a slot migrating, an election), READONLY and refused
connections (a primary that failed over). Every command echoes sends is safe to run twice.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import AskError, MovedError

from .pipeline import Command
from .servers import Server, Servers

log = logging.getLogger("echoes.redis")
Send = Callable[[Server, list[Command], bool], Awaitable[list[Any]]]


async def plain(server: Server, commands: list[Command], writes: bool) -> list[Any]:
    """Send ``commands`` on ``server``'s pipeline."""
    return await server.pipeline.run(commands, writes)


async def run(
    servers: Servers,
    commands: Sequence[tuple[str, Command]],
    writes: bool = False,
    send: Send = plain,
) -> list[Any]:
    """Run each ``(key, command)`` on the server of ``key``; the replies in order, an
    error reply as an exception. ``writes``: they change data (see Pipeline.run)."""
    if servers.kind == "single":  # the common case, on the hot path: nothing to route
        return await send(servers.one, [command for _, command in commands], writes)
    await servers.ready()
    replies: list[Any] = [None] * len(commands)
    pending = list(range(len(commands)))
    redirected: dict[int, Server] = {}  # ASK: this command, once, to that node
    while True:
        groups: dict[str, tuple[Server, list[int]]] = {}
        for i in pending:
            server = redirected.get(i) or servers.for_key(commands[i][0])
            groups.setdefault(server.name, (server, []))[1].append(i)
        asking = set(redirected)
        redirected.clear()
        outcomes = await _each(send, groups, commands, asking, writes)
        again, trouble = [], None
        for (_, idx), outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not servers.transient(outcome):
                    raise outcome
                again += idx
                trouble = outcome
                continue
            for i, reply in zip(idx, outcome, strict=True):
                if isinstance(reply, Exception) and servers.transient(reply):
                    again.append(i)
                    trouble = reply
                    if isinstance(reply, AskError) and not isinstance(reply, MovedError):
                        redirected[i] = servers.at(reply.host, reply.port)
                else:
                    replies[i] = reply
        if not again:
            return replies
        assert trouble is not None
        log.debug("%d commands again after %s: %s", len(again), type(trouble).__name__, trouble)
        await servers.recover(trouble)
        pending = again


async def _each(
    send: Send,
    groups: dict[str, tuple[Server, list[int]]],
    commands: Sequence[tuple[str, Command]],
    asking: set[int],
    writes: bool,
) -> list[Any]:
    """Each group's replies (or the exception that ended it), the groups sent at once."""
    sends = [
        _send(send, server, [commands[i][1] for i in idx], idx, asking, writes)
        for server, idx in groups.values()
    ]
    if len(sends) == 1:  # no task to make for one server
        try:
            return [await sends[0]]
        except Exception as e:
            return [e]
    return await asyncio.gather(*sends, return_exceptions=True)


async def _send(
    send: Send,
    server: Server,
    commands: list[Command],
    indexes: list[int],
    asking: set[int],
    writes: bool,
) -> list[Any]:
    """``commands`` on ``server``, each that was redirected by ASK after an ASKING."""
    if not asking.intersection(indexes):
        return await send(server, commands, writes)
    framed: list[Command] = []
    for i, command in zip(indexes, commands, strict=True):
        if i in asking:
            framed.append(("ASKING",))
        framed.append(command)
    replies = await send(server, framed, writes)
    kept, position = [], 0
    for i in indexes:
        position += i in asking  # skip ASKING's OK
        kept.append(replies[position])
        position += 1
    return kept
