"""Commands for one Redis server from every request in this process, written to it together.

Each request hands its commands to ``Pipeline.run``; whatever the requests of one turn of the
event loop asked for goes out as one write on one connection, and the replies are read back
in order and handed to each request. Under load that is one round trip for many requests:
Redis reads and writes its socket once for all of them, and echoes pays for one write.
A request's commands stay together and in order.

The pipeline keeps its own connections (made by the client's pool, so with its address,
credentials, TLS and, under Sentinel, its master discovery) and takes a free one without
waiting on a lock: with ten thousand requests arriving at once, every turn of the event loop
is long, and a batch that needs fewer turns to get its answer is answered sooner.

Error replies are returned, not raised. A dropped connection is retried once on a fresh one,
which is why every command echoes sends must be safe to run twice (lua/*.lua say how each
is). A batch is bounded by its own deadline, not by its requests': a request that gives up
(its own timeout) leaves the batch running for the others, and the connection in a known
state.
"""

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]
Waiting = tuple[Sequence[Command], "asyncio.Future[list[Any]]"]


class Pipeline:
    """The commands for one Redis server, batched per event-loop turn, on at most
    ``connections`` connections of its own."""

    def __init__(self, pool: aioredis.ConnectionPool, timeout: float, connections: int = 64):
        self.pool = pool
        self.timeout = timeout
        self._free: list[AbstractConnection] = []
        self._slots = asyncio.Semaphore(connections)
        self._waiting: list[Waiting] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` with whatever else this turn sends; their replies, in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((commands, future))
        return await future

    def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Waiting]) -> None:
        commands = [command for commands, _ in batch for command in commands]
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    replies = await self._exchange(commands)
            except TimeoutError:
                raise RedisTimeoutError(f"no answer from Redis within {self.timeout} s") from None
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        start = 0
        for asked, future in batch:
            if not future.done():  # its request gave up
                future.set_result(replies[start : start + len(asked)])
            start += len(asked)

    async def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        """Write every command at once on one connection, then read every reply.

        What redis-py's Pipeline does, without its per-command bookkeeping, which cost about
        a third of echoes' CPU per request (BENCHMARKS.md). A dropped connection is retried
        once on a fresh one (echoes' own rerun, not redis-py's).
        """
        async with self._slots:
            for attempt in (1, 2):
                conn = self._free.pop() if self._free else self.pool.make_connection()
                try:
                    await conn.send_packed_command(conn.pack_commands(commands))
                    replies = [await _reply(conn) for _ in commands]
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    await conn.disconnect()
                    if attempt == 2:
                        raise
                    await self._forget_free()  # dropped too, most likely (Redis restarted)
                    continue
                except BaseException:  # cancelled mid-exchange: the connection's state is unknown
                    await conn.disconnect()
                    raise
                self._free.append(conn)
                return replies
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Let batches in flight finish (each is bounded by the timeout), then disconnect."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._forget_free()

    async def _forget_free(self) -> None:
        free, self._free = self._free, []
        for conn in free:
            await conn.disconnect()


async def _reply(conn: AbstractConnection) -> Any:
    """One reply; an error reply is returned, not raised, so the others are still read."""
    try:
        return await conn.read_response()
    except ResponseError as e:
        return e
