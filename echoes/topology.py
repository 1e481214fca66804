"""Where Redis is, from --redis-url: one server, a master that Sentinel names, or a Cluster.

    redis://[user:password@]host:port/db, rediss://..., unix://[user:password@]/path.sock?db=N
        one Redis server, as redis-py reads these URLs (``?username=`` and ``?password=``
        too)
    redis+sentinel://[user:password@]host:port[,host:port...]/master_name[/db]
        the sentinels to ask for the current master of ``master_name`` (rediss+sentinel://:
        TLS to the master); the user and password are the master's. The sentinels' own, if
        they require one: ``?sentinel_username=NAME&sentinel_password=PASSWORD``
    redis+cluster://[user:password@]host:port[,host:port...]
        any reachable nodes of a Redis Cluster; the others are discovered (rediss+cluster://:
        TLS to every node)

In the Sentinel and Cluster URLs the master's or nodes' user and password may be given as
``?username=`` and ``?password=`` instead of before the ``@``. A user name or password is
percent-decoded, as in redis-py's own URLs.

Wherever a URL is shown (logs, /health, 503 details, /metrics labels), it goes through
``display``, which keeps the address and drops every credential.
"""

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode

SINGLE = ("redis", "rediss", "unix")
SENTINEL = ("redis+sentinel", "rediss+sentinel")
CLUSTER = ("redis+cluster", "rediss+cluster")
SCHEMES = SINGLE + SENTINEL + CLUSTER
# The query parameters a Sentinel or Cluster URL may carry.
PARAMETERS = {
    "sentinel": ("username", "password", "sentinel_username", "sentinel_password"),
    "cluster": ("username", "password"),
}
# The only query parameter display() shows: the database is part of where the data is.
SHOWN = ("db",)


class BadURL(ValueError):
    """A --redis-url echoes cannot use; the message says what is wrong (never a password)."""


@dataclass(frozen=True)
class Topology:
    """A parsed --redis-url (its repr shows no credential)."""

    kind: str  # "single", "sentinel" or "cluster"
    url: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()  # the sentinels, or the cluster's known nodes
    master: str = ""  # Sentinel's name of the master
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def parse(url: str) -> Topology:
    """The topology ``url`` names; BadURL with the reason if it names none."""
    scheme, _, rest = url.partition("://") if "://" in url else ("", "", "")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise BadURL(f"must start with {', '.join(s + '://' for s in SCHEMES)}")
    if scheme in SINGLE:
        _readable(url)
        return Topology("single", url, tls=scheme == "rediss")
    kind = "sentinel" if scheme in SENTINEL else "cluster"
    userinfo, hostlist, path, query = _split(rest)
    username, password = _credentials(userinfo)
    given = _parameters(query, kind)
    if given.get("password") is not None and password is not None:
        raise BadURL("gives the password twice (before the @ and as ?password=)")
    username = username if username is not None else given.get("username")
    password = password if password is not None else given.get("password")
    hosts = tuple(_host(h) for h in hostlist.split(","))
    parts = [p for p in path.split("/") if p]
    tls = scheme.startswith("rediss")
    if kind == "cluster":
        if parts:
            raise BadURL("names no database in a redis+cluster:// URL (a Cluster has only db 0)")
        return Topology("cluster", url, hosts, username=username, password=password, tls=tls)
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise BadURL("ends with /MASTER_NAME or /MASTER_NAME/DB in a redis+sentinel:// URL")
    db = int(parts[1]) if len(parts) == 2 else 0
    return Topology(
        "sentinel",
        url,
        hosts,
        unquote(parts[0]),
        db,
        username,
        password,
        tls,
        given.get("sentinel_username"),
        given.get("sentinel_password"),
    )


def _readable(url: str) -> None:
    """BadURL if redis-py cannot read ``url``; its own message is not shown: it may quote
    a piece of the password (a ``/`` in it makes redis-py read the rest as a port)."""
    from redis.connection import parse_url  # here: the client commands never need redis-py

    try:
        parse_url(url)
    except ValueError:
        raise BadURL(
            f"{display(url)} cannot be read by redis-py: percent-encode any / ? # @ or :"
            " in a user name or password (%2F %3F %23 %40 %3A), and check the port and db"
        ) from None


def display(url: str) -> str:
    """``url`` as it may be shown to clients and logs: its address, without any user name
    or password, wherever in the URL they are (before the ``@``, in the query)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    before, _, query = rest.partition("#")[0].partition("?")
    address = before.rpartition("@")[2]  # credentials end at the last @ before the query
    shown = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k in SHOWN]
    return f"{scheme}://{address}" + (f"?{urlencode(shown)}" if shown else "")


def _split(rest: str) -> tuple[str, str, str, str]:
    """The user info, host list, path and query of what follows ``scheme://``.

    The user info ends at the last ``@`` before the query, so a password may hold a ``/``.
    """
    before, _, query = rest.partition("#")[0].partition("?")
    userinfo, _, tail = before.rpartition("@")
    hostlist, slash, path = tail.partition("/")
    return userinfo, hostlist, slash + path, query


def _parameters(query: str, kind: str) -> dict[str, str]:
    allowed = PARAMETERS[kind]
    given = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise BadURL(
            f"has query parameters a redis+{kind}:// URL does not take: {', '.join(unknown)}"
            f" (it takes {', '.join(allowed)})"
        )
    return given


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host(text: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon or not host or not port.isdigit():
        raise BadURL(f"lists {text!r}, which is not HOST:PORT")
    return host.strip("[]"), int(port)
