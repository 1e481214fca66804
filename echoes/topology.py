"""Where Redis is, from --redis-url: one server, a master that Sentinel names, or a Cluster.

    redis://[user:password@]host:port/db, rediss://..., unix://[user:password@]/path.sock?db=N
        one Redis server, as redis-py reads these URLs
    redis+sentinel://[user:password@]host:port[,host:port...]/master_name[/db]
        the sentinels to ask for the current master of ``master_name`` (rediss+sentinel://:
        TLS to the master); the user and password are the master's
    redis+cluster://[user:password@]host:port[,host:port...]
        any reachable nodes of a Redis Cluster; the others are discovered (rediss+cluster://:
        TLS to every node)

A user name or password in the URL is percent-decoded, as in redis-py's own URLs.
"""

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SINGLE = ("redis", "rediss", "unix")
SENTINEL = ("redis+sentinel", "rediss+sentinel")
CLUSTER = ("redis+cluster", "rediss+cluster")
SCHEMES = SINGLE + SENTINEL + CLUSTER


class BadURL(ValueError):
    """A --redis-url echoes cannot use; the message says what is wrong."""


@dataclass(frozen=True)
class Topology:
    """A parsed --redis-url."""

    kind: str  # "single", "sentinel" or "cluster"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()  # the sentinels, or the cluster's known nodes
    master: str = ""  # Sentinel's name of the master
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse(url: str) -> Topology:
    """The topology ``url`` names; BadURL with the reason if it names none."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise BadURL(f"must start with {', '.join(s + '://' for s in SCHEMES)}")
    if scheme in SINGLE:
        return Topology("single", url, tls=scheme == "rediss")
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    hosts = tuple(_host(h) for h in hostlist.split(","))
    path = [p for p in parts.path.split("/") if p]
    tls = scheme.startswith("rediss")
    if scheme in CLUSTER:
        if path:
            raise BadURL("names no database in a redis+cluster:// URL (a Cluster has only db 0)")
        return Topology("cluster", url, hosts, username=username, password=password, tls=tls)
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadURL("ends with /MASTER_NAME or /MASTER_NAME/DB in a redis+sentinel:// URL")
    db = int(path[1]) if len(path) == 2 else 0
    master = unquote(path[0])
    return Topology("sentinel", url, hosts, master, db, username, password, tls)


def display(url: str) -> str:
    """``url`` as it may be shown to clients and logs: without its user name and password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = netloc.rpartition("@")[2]
    return f"{scheme}://{netloc}{slash}{tail}"


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
