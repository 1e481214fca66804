"""Asking Redis Sentinel where the master is, without taking any one sentinel's word for it.

redis-py's Sentinel takes the first sentinel that names a master: one lying sentinel listed
first is enough to get echoes' Redis password and every message sent to a server of its
choice. Here every configured sentinel is asked at once (``SENTINEL MASTER`` and ``SENTINEL
REPLICAS`` in one round trip each), and a master is used only when more than half of the
sentinels that answer name the same one, flagged master and not down. Before a connection
to it carries anything else, the master itself is asked (``ROLE``) whether it is a master,
and, when the sentinels know replicas linked to it, whether at least one of them replicates
from it; a server that says otherwise is not used (NotMaster). An echoes user whose ACL
forbids ROLE skips that check (logged once).

Every reply is read for its shape: a sentinel that answers something else than a master's
fields counts as one that named no master. Sentinels that require a password get
``sentinel_username`` / ``sentinel_password`` from --redis-url (topology.py); a sentinel or
master that refuses the credentials is named as such (an AuthenticationError), in the log
and in /health, and is not retried.
"""

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("echoes.redis")
Address = tuple[str, int]
# A sentinel's flags that make its word on a master or replica void.
DOWN = frozenset({"s_down", "o_down", "disconnected"})


class NoMaster(MasterNotFoundError):
    """The sentinels named no master echoes may use; the message says what each said."""


class SentinelsDisagree(NoMaster):
    """No master was named by more than half of the sentinels that answered."""


class SentinelAuthenticationError(NoMaster):
    """Sentinels refused echoes' credentials (sentinel_password in --redis-url)."""


class NotMaster(RedisConnectionError):
    """The server the sentinels named does not say it is that master (ROLE)."""


@dataclass(frozen=True)
class Answer:
    """What one sentinel said: the master it names (None: none), and that master's replicas
    that it sees linked to it; or why it said nothing usable."""

    sentinel: str
    master: Address | None = None
    replicas: frozenset[Address] = frozenset()
    trouble: str = ""
    answered: bool = True  # False: unreachable, timed out or refused the credentials
    refused: bool = False  # the credentials


class VotingSentinel(Sentinel):
    """redis-py's Sentinel, whose master is the one most sentinels name (see the top)."""

    def __init__(self, hosts: list[Address], ask_seconds: float, **connection: Any):
        sentinel_options = {
            "username": connection.pop("sentinel_username", None),
            "password": connection.pop("sentinel_password", None),
            "socket_timeout": None,  # each question is bounded by ask_seconds instead
            "socket_connect_timeout": ask_seconds,
            "retry": Retry(NoBackoff(), 0),
        }
        super().__init__(hosts, sentinel_kwargs=sentinel_options, **connection)
        self.ask_seconds = ask_seconds
        self.replicas: dict[str, frozenset[Address]] = {}  # linked replicas, by master name
        self._said: dict[str, str] = {}  # each sentinel's last trouble, to log changes once
        self._role_refused = False

    async def discover_master(self, service_name: str) -> Address:
        """The master more than half of the answering sentinels name; NoMaster if none."""
        answers = await self._ask(service_name)
        self._log(answers)
        answered = [a for a in answers if a.answered]
        votes = Counter(a.master for a in answered if a.master)
        if votes:
            master, count = votes.most_common(1)[0]
            if count * 2 > len(answered):
                linked = [a.replicas for a in answered if a.master == master]
                self.replicas[service_name] = frozenset().union(*linked)
                return master
        raise _no_master(service_name, answers, answered, votes)

    async def _ask(self, name: str) -> list[Answer]:
        """Every sentinel's answer, asked at once; those that do not answer within
        ask_seconds count as unreachable. Stops early once more than half of all the
        sentinels agree: no later answer could outvote them."""
        tasks = {asyncio.ensure_future(_ask_one(s, name)): s for s in self.sentinels}
        answers: list[Answer] = []
        pending = set(tasks)
        deadline = asyncio.get_running_loop().time() + self.ask_seconds
        try:
            while pending and not _settled(answers, len(tasks)):
                left = deadline - asyncio.get_running_loop().time()
                done, pending = await asyncio.wait(
                    pending, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                answers += [task.result() for task in done]
        finally:
            for task in pending:
                task.cancel()
        late = [_name(tasks[t]) for t in pending]
        gone = f"no answer within {self.ask_seconds:.2g} s"
        return answers + [Answer(s, trouble=gone, answered=False) for s in late]

    def role_refused(self, error: Exception) -> None:
        """The master refused ROLE to echoes' user: say so once, and use it unchecked."""
        if not self._role_refused:
            self._role_refused = True
            log.warning(
                "Redis refuses ROLE to echoes' user (%s): the master the sentinels name is"
                " used without asking it whether it is one (conf/redis.conf gives +role)",
                error,
            )

    def _log(self, answers: list[Answer]) -> None:
        """Say each sentinel's trouble once, when it starts or changes."""
        for answer in answers:
            if self._said.get(answer.sentinel, "") == answer.trouble:
                continue
            self._said[answer.sentinel] = answer.trouble
            if answer.refused:
                log.error("sentinel %s refused echoes' credentials: %s", *_said(answer))
            elif answer.trouble:
                log.warning("sentinel %s: %s", *_said(answer))
            else:
                log.info("sentinel %s answers again", answer.sentinel)


def _said(answer: Answer) -> tuple[str, str]:
    return answer.sentinel, answer.trouble


def _settled(answers: list[Answer], sentinels: int) -> bool:
    votes = Counter(a.master for a in answers if a.master)
    return bool(votes) and votes.most_common(1)[0][1] * 2 > sentinels


def _no_master(
    name: str, answers: list[Answer], answered: list[Answer], votes: Counter[Address]
) -> NoMaster:
    said = "; ".join(f"{a.sentinel}: {a.trouble or _address(a.master)}" for a in answers)
    if votes:
        return SentinelsDisagree(
            f"no master of {name!r} is named by more than half of the {len(answered)}"
            f" sentinels that answered: {said}"
        )
    if any(a.refused for a in answers):
        return SentinelAuthenticationError(
            f"sentinels refused echoes' credentials for {name!r} (set sentinel_username and"
            f" sentinel_password in --redis-url): {said}"
        )
    return NoMaster(f"no sentinel names a master of {name!r}: {said}")


def _address(address: Address | None) -> str:
    return f"names {address[0]}:{address[1]}" if address else "names none"


def _name(sentinel: aioredis.Redis) -> str:
    kwargs = sentinel.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


async def _ask_one(sentinel: aioredis.Redis, name: str) -> Answer:
    """One sentinel's answer about master ``name``, whatever it replies."""
    who = _name(sentinel)
    try:
        async with sentinel.pipeline(transaction=False) as pipe:
            pipe.execute_command("SENTINEL", "MASTER", name)
            pipe.execute_command("SENTINEL", "REPLICAS", name)
            master, replicas = await pipe.execute(raise_on_error=False)
    except AuthenticationError as e:
        return Answer(who, trouble=str(e), answered=False, refused=True)
    except (RedisError, OSError) as e:
        return Answer(who, trouble=f"unreachable ({type(e).__name__}: {e})", answered=False)
    if isinstance(master, AuthenticationError):
        return Answer(who, trouble=str(master), answered=False, refused=True)
    if isinstance(master, Exception):
        return Answer(who, trouble=f"answered {master}")
    return _read(who, master, replicas)


def _read(who: str, master: Any, replicas: Any) -> Answer:
    """The Answer in ``master`` (SENTINEL MASTER's fields) and ``replicas`` (SENTINEL
    REPLICAS'), if they have the shapes Sentinel gives them."""
    fields = fields_of(master)
    if fields is None:
        return Answer(who, trouble=f"answered SENTINEL MASTER with {_shape(master)}")
    address = address_of(fields)
    if address is None:
        return Answer(who, trouble="answered SENTINEL MASTER without a usable ip and port")
    flags = set(fields.get("flags", "").split(","))
    if "master" not in flags or flags & DOWN:
        where = f"{address[0]}:{address[1]}"
        return Answer(who, trouble=f"says the master at {where} is {fields.get('flags')!r}")
    linked: set[Address] = set()
    for replica in replicas if isinstance(replicas, list) else []:
        seen = fields_of(replica)
        at = address_of(seen) if seen else None
        if not seen or at is None or set(seen.get("flags", "").split(",")) & DOWN:
            continue
        upstream = (seen.get("master-host"), seen.get("master-port"))
        if seen.get("master-link-status") == "ok" and upstream == (address[0], str(address[1])):
            linked.add(at)
    return Answer(who, address, frozenset(linked))


def fields_of(reply: Any) -> dict[str, str] | None:
    """A reply of field names and values (a RESP3 map, or RESP2's flat list) as text."""
    if isinstance(reply, dict):
        items = list(reply.items())
    elif isinstance(reply, list) and len(reply) % 2 == 0:
        items = list(zip(reply[::2], reply[1::2], strict=True))
    else:
        return None
    fields = {}
    for key, value in items:
        if not isinstance(key, bytes | str) or not isinstance(value, bytes | str | int):
            return None
        fields[_text(key)] = _text(value)
    return fields


def address_of(fields: dict[str, str]) -> Address | None:
    """The ip and port of a sentinel's fields, if they are a host name and a port."""
    host, port = fields.get("ip", ""), fields.get("port", "")
    if not host or len(host) > 255 or not host.isprintable() or " " in host:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _text(value: bytes | str | int) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shape(reply: Any) -> str:
    text = repr(reply)
    return f"{type(reply).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


class _Verified:
    """A connection to the master that asks it, before anything else, whether it is one."""

    async def connect_to(self, address: Address) -> None:
        await super().connect_to(address)  # type: ignore[misc]
        conn: Any = self
        try:
            await conn.send_command("ROLE", check_health=False)
            role = await conn.read_response()
        except NoPermissionError as e:
            conn.connection_pool.sentinel_manager.role_refused(e)
            return
        pool = conn.connection_pool
        wanted = pool.sentinel_manager.replicas.get(pool.service_name, frozenset())
        trouble = role_trouble(role, wanted)
        if trouble:
            await conn.disconnect()
            raise NotMaster(f"{address[0]}:{address[1]}, named by the sentinels, {trouble}")


def role_trouble(role: Any, replicas: frozenset[Address]) -> str:
    """What is wrong with a ROLE reply for a master with ``replicas`` linked; '' if
    nothing."""
    if not isinstance(role, list) or not role or _text_or_none(role[0]) != "master":
        return f"is not a master (ROLE: {_shape(role)})"
    listed = set()
    for entry in role[2] if len(role) > 2 and isinstance(role[2], list) else []:
        if isinstance(entry, list) and len(entry) >= 2:
            host, port = _text_or_none(entry[0]), _text_or_none(entry[1])
            if host and port and port.isdigit():
                listed.add((host, int(port)))
    if replicas and not replicas & listed:
        known = ", ".join(f"{h}:{p}" for h, p in sorted(replicas))
        return f"is not the master its replicas ({known}) replicate from"
    return ""


def _text_or_none(value: Any) -> str | None:
    return _text(value) if isinstance(value, bytes | str | int) else None


class MasterConnection(_Verified, SentinelManagedConnection):
    """A connection to the master Sentinel names, checked with ROLE."""


class MasterSSLConnection(_Verified, SentinelManagedSSLConnection):
    """The same over TLS."""
