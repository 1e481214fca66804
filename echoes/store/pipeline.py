"""Commands for one Redis server from every request in this process, written to it together.

Each request hands its commands to ``Pipeline.run``; whatever the requests of one turn of the
event loop asked for goes out as one write on one connection, and the replies are read back
in order and handed to each request as soon as its own are in. Under load that is one round
trip for many requests: Redis reads and writes its socket once for all of them, and echoes
pays for one write.
A request's commands stay together and in order. A batch that reaches BATCH_REQUESTS
requests is written at once, in the turn that filled it: Redis works on it while echoes reads
the turn's other requests, instead of every request of a busy turn waiting for all of the
turn's calls to be run.

The pipeline keeps its own connections (made like its client's: with its address,
credentials, TLS and, under Sentinel, its master discovery) and takes a free one without
waiting on a lock: with ten thousand requests arriving at once, every turn of the event loop
is long, and a batch that needs fewer turns to get its answer is answered sooner.

With ``replicas`` (--redis-wait-replicas), a batch that holds writes ends with a WAIT: its
writes are answered only once that many replicas have them, and a request whose writes they
did not confirm in time gets NotReplicated instead of its replies.

A large request (LARGE_BATCH bytes or more, one sender's copies of a big message to many
inboxes) goes alone, at once, on a connection of its own, and is written command by command:
the batch of small requests of the same turn is not written behind it, Redis serves the
other connections between its commands, and echoes never holds it packed whole.

With ``trouble``, a batch that is slow (SLOW_SECONDS without its replies) or fails tells it,
at once: on a Cluster or under Sentinel that is the sign of a primary cut off or failed over,
and the topology is read again then (servers.py) rather than after the request's deadline.
A batch that timed out also drops the idle connections: they lead to the same server and
are most likely as stuck (a partition); a new one asks Sentinel for the master again.

Error replies are returned, not raised. A dropped connection is retried once on a fresh one,
which is why every command echoes sends must be safe to run twice (lua/*.lua say how each
is). A batch is bounded by its own deadline, not by its requests': a request that gives up
(its own timeout) leaves the batch running for the others, and the connection in a known
state.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]


@dataclass(slots=True)
class Waiting:
    commands: Sequence[Command]
    future: "asyncio.Future[list[Any]]"
    replicated: bool


class NotReplicated(RedisError):
    """The replicas did not confirm a request's writes within the time allowed (WAIT);
    ``replies`` are what Redis answered to the commands themselves."""

    def __init__(self, message: str, replies: list[Any]):
        super().__init__(message)
        self.replies = replies


# The share of a batch's deadline a WAIT may take; the rest is for writing and reading.
WAIT_SHARE = 0.8
# Bytes of arguments past which a request's commands go alone (Store decides: it knows them).
LARGE_BATCH = 256 << 10
# Requests past which a batch is written at once rather than at the end of its turn. Under
# load one turn of the event loop reads dozens of requests; their script calls, batched
# whole, kept echoes idle while Redis ran them (BENCHMARKS.md, "A batch written as it
# fills"), and smaller batches cost more writes and reads of their own.
BATCH_REQUESTS = 8
# A batch without its replies for this long (or half its deadline) is reported as trouble.
SLOW_SECONDS = 1.0


class Pipeline:
    """The commands for one Redis server, batched per event-loop turn, on at most
    ``connections`` connections of its own, made by ``make_connection``."""

    def __init__(
        self,
        make_connection: Callable[[], AbstractConnection],
        timeout: float,
        connections: int = 64,
        replicas: int = 0,
        trouble: Callable[[], None] | None = None,
    ):
        self.make_connection = make_connection
        self.timeout = timeout
        self.replicas = replicas
        self.trouble = trouble  # told of a slow or failed batch
        self._free: list[AbstractConnection] = []
        self._slots = asyncio.Semaphore(connections)
        self._waiting: list[Waiting] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(
        self, commands: Sequence[Command], writes: bool = False, alone: bool = False
    ) -> list[Any]:
        """Send ``commands`` with whatever else this turn sends; their replies, in order.

        ``writes``: they store or take records, so replicas must have them (``replicas``).
        ``alone``: they are large; sent at once on a connection of their own, one by one.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if alone:
            await self._send([Waiting(commands, future, writes and self.replicas > 0)], True)
            return future.result()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append(Waiting(commands, future, writes and self.replicas > 0))
        if len(self._waiting) >= BATCH_REQUESTS:
            self._flush()
        return await future

    def _flush(self) -> None:
        if not self._waiting:  # written already, when it filled
            return
        batch, self._waiting = self._waiting, []
        written = self._write_now(batch)
        task = asyncio.create_task(self._send(batch, written=written))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        if written is not None:
            # A task cancelled before its first step (a shutdown) never reads the replies nor
            # closes the connection it was handed: its stream is closed here then.
            stream = written._writer
            if stream is not None:
                task.add_done_callback(lambda done: stream.close() if done.cancelled() else None)

    def _write_now(self, batch: list[Waiting]) -> AbstractConnection | None:
        """``batch`` written now, without waiting for a task's turn, on an idle connection
        that is ready for it; that connection, or None (then ``_send`` writes it).

        redis-py's connections write only from a coroutine (``send_packed_command``), which
        would run in a later turn; this writes to the connection's stream writer, as that
        method does, and the replies are read as for any batch (its task holds one of the
        ``connections`` from its first turn on). Not with a WAIT to append
        (--redis-wait-replicas): those batches go as before.
        """
        if self.replicas or not self._free or self._slots.locked():
            return None
        conn = self._free[-1]
        writer = getattr(conn, "_writer", None)  # fakeredis's connections have their own
        if not (conn.is_connected and isinstance(writer, asyncio.StreamWriter)):
            return None
        try:
            packed = pack(_commands(batch))
        except Exception:  # an argument hiredis cannot pack: _send fails the batch with it
            return None
        if writer.is_closing():
            return None
        self._free.pop()
        writer.write(packed)
        return conn

    async def _send(
        self,
        batch: list[Waiting],
        one_by_one: bool = False,
        written: AbstractConnection | None = None,
    ) -> None:
        commands = _commands(batch)
        replicated = any(waiting.replicated for waiting in batch)
        if replicated:
            ms = int(self.timeout * WAIT_SHARE * 1000)
            commands.append(("WAIT", self.replicas, ms))
        slow = self._watch()
        # Without a WAIT to come, each request is answered as soon as its own replies are in:
        # a small request is not held behind a large reply later in the batch.
        early = {} if replicated else _last_replies(batch)
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    replies = await self._exchange(commands, one_by_one, early, written)
            except TimeoutError:
                await self._forget_free()
                raise RedisTimeoutError(f"no answer from Redis within {self.timeout} s") from None
        except Exception as error:
            self._tell_trouble()
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        finally:
            if slow:
                slow.cancel()
        confirmed = replies.pop() if replicated else 0
        start = 0
        for waiting in batch:
            future, count = waiting.future, len(waiting.commands)
            if future.done():  # answered early, or its request gave up
                pass
            elif waiting.replicated and not _enough(confirmed, self.replicas):
                message = f"{confirmed} of {self.replicas} replicas confirmed the writes"
                future.set_exception(NotReplicated(message, replies[start : start + count]))
            else:
                future.set_result(replies[start : start + count])
            start += count

    def _watch(self) -> asyncio.TimerHandle | None:
        """Tell ``trouble`` if the batch about to go takes longer than SLOW_SECONDS."""
        if self.trouble is None:
            return None
        slow = min(SLOW_SECONDS, self.timeout / 2)
        return asyncio.get_running_loop().call_later(slow, self._tell_trouble)

    def _tell_trouble(self) -> None:
        if self.trouble is not None:
            self.trouble()

    async def _exchange(
        self,
        commands: Sequence[Command],
        one_by_one: bool = False,
        early: dict[int, Waiting] | None = None,
        written: AbstractConnection | None = None,
    ) -> list[Any]:
        """Write every command at once on one connection (or ``one_by_one``, each packed
        only when the one before is written; or ``written`` to already), then read every
        reply; a request of ``early`` (by the index of its last command) is answered once
        its last reply is read.

        What redis-py's Pipeline does, without its per-command bookkeeping (dropping it gave
        12% more /exchange per second: BENCHMARKS.md, "Earlier rounds"). A dropped connection
        is retried once on a fresh one (echoes' own rerun, not redis-py's).
        """
        async with self._slots:
            for attempt in (1, 2):
                # The first attempt may find its commands written already (_write_now).
                conn = written if written is not None else self._connection()
                sent, written = written is not None, None
                try:
                    if not conn.is_connected:
                        sent = False  # dropped since: write it again on the new connection
                        await conn.connect()  # Sentinel's connections ask for the master here
                    if not sent and one_by_one:
                        for command in commands:
                            await conn.send_packed_command(hiredis.pack_command(command))
                    elif not sent:
                        await conn.send_packed_command(pack(commands))
                    replies = []
                    for i in range(len(commands)):
                        replies.append(await _reply(conn))
                        waiting = early.get(i) if early else None
                        if waiting is not None and not waiting.future.done():
                            waiting.future.set_result(replies[i + 1 - len(waiting.commands) :])
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

    def _connection(self) -> AbstractConnection:
        return self._free.pop() if self._free else self.make_connection()

    async def close(self) -> None:
        """Let batches in flight finish (each is bounded by the timeout), then disconnect."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._forget_free()

    async def _forget_free(self) -> None:
        free, self._free = self._free, []
        for conn in free:
            await conn.disconnect()


def _commands(batch: list[Waiting]) -> list[Command]:
    """The commands of every request of ``batch``, in order."""
    return [command for waiting in batch for command in waiting.commands]


def _last_replies(batch: list[Waiting]) -> dict[int, Waiting]:
    """Each request of ``batch`` by the index of its last command in the batch."""
    ends, at = {}, -1
    for waiting in batch:
        at += len(waiting.commands)
        if waiting.commands:
            ends[at] = waiting
    return ends


def _enough(confirmed: Any, wanted: int) -> bool:
    return isinstance(confirmed, int) and confirmed >= wanted


def pack(commands: Sequence[Command]) -> bytes:
    """``commands`` in the Redis protocol, by hiredis's packer (C; redis-py's asyncio
    connections pack in Python: 42 us against 6 us for the four script calls of an /exchange).
    Arguments are str (sent as UTF-8, as redis-py does), bytes or int."""
    return b"".join([hiredis.pack_command(command) for command in commands])


async def _reply(conn: AbstractConnection) -> Any:
    """One reply; an error reply is returned, not raised, so the others are still read."""
    try:
        return await conn.read_response()
    except ResponseError as e:
        return e
