"""Commands sent each to the server of its key's slot, one pipeline per server, at once.

On one Redis every command goes to it. On a Cluster, the commands of a request (a send to
many destinations, the acks of a receive) are grouped by the primary of their slot, and
each group is one pipeline to its primary, all sent together. What a Cluster or Sentinel
answers while it changes is tried again until it passes or the caller's deadline does:
MOVED (learn the new owner, send there), ASK (send that one command to the named node after
ASKING), TRYAGAIN and CLUSTERDOWN (a slot migrating, an election), READONLY and refused
connections (a primary that failed over). Every command echoes sends is safe to run twice.

A slot migration redirects a command once or twice; nodes that redirect to each other would
do it forever (28,426 round trips for one send in 5 s, before this bound). So each command
may be redirected MAX_REDIRECTS times, each redirection after the first waits a little
longer (REDIRECT_BACKOFF, doubling), and then the request gives up: Redirected, a 503 with
Retry-After, and a log line naming the nodes that redirected it.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisClusterException

from .pipeline import Command
from .servers import Server, Servers

log = logging.getLogger("echoes.redis")
Send = Callable[[Server, list[Command], bool], Awaitable[list[Any]]]
MAX_REDIRECTS = 5
REDIRECT_BACKOFF = 0.01  # seconds before a command's second redirection is followed


class Redirected(RedisClusterException):
    """Cluster nodes redirected one command more than MAX_REDIRECTS times."""


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
    hops: dict[int, list[str]] = {}  # each redirected command's nodes, in order
    while True:
        groups: dict[str, tuple[Server, list[int]]] = {}
        for i in pending:
            server = redirected.get(i) or servers.for_key(commands[i][0])
            groups.setdefault(server.name, (server, []))[1].append(i)
        asking = set(redirected)
        redirected.clear()
        outcomes = await _each(send, groups, commands, asking, writes)
        again, trouble = [], None
        for (server, idx), outcome in zip(groups.values(), outcomes, strict=True):
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
                    if isinstance(reply, AskError):  # MOVED too (a subclass)
                        _hop(hops.setdefault(i, [server.name]), reply, commands[i][0])
                    if isinstance(reply, AskError) and not isinstance(reply, MovedError):
                        redirected[i] = servers.at(reply.host, reply.port)
                else:
                    replies[i] = reply
        if not again:
            return replies
        assert trouble is not None
        log.debug("%d commands again after %s: %s", len(again), type(trouble).__name__, trouble)
        await asyncio.sleep(_backoff(hops, again))
        await servers.recover(trouble)
        pending = again


def _hop(nodes: list[str], redirect: AskError, key: str) -> None:
    """Count one more redirection of a command; Redirected past MAX_REDIRECTS."""
    nodes.append(f"{redirect.host}:{redirect.port}")
    if len(nodes) <= MAX_REDIRECTS + 1:
        return
    path = " -> ".join(nodes)
    log.warning(
        "a command for slot %d was redirected %d times (%s): giving up, answered 503;"
        " the Cluster's nodes disagree on who serves it",
        key_slot(key.encode()),
        MAX_REDIRECTS + 1,
        path,
    )
    raise Redirected(f"slot {key_slot(key.encode())} redirected {MAX_REDIRECTS + 1} times: {path}")


def _backoff(hops: dict[int, list[str]], again: list[int]) -> float:
    """Seconds to wait before following the redirections of ``again``: none for a first
    one, then REDIRECT_BACKOFF doubling with each more."""
    most = max((len(hops.get(i, ())) - 1 for i in again), default=0)
    return 0.0 if most <= 1 else REDIRECT_BACKOFF * 2 ** (most - 2)


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
