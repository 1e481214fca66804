"""Every option echoes has: its default, unit, bounds, choices and help text, in one table.

Where values come from (command line, environment, credentials, a TOML file) is options.py.
``Settings`` is the one object the rest of the program reads them from.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import topology

ENV_PREFIX = "ECHOES_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
WAKE_MODES = ("keyspace", "publish")
EMBEDDED = "embedded"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# prometheus_client's multiprocess mode (--processes): set before its first import.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Lua's unpack() in a script handles a few thousand values; a batch stays well under that.
MAX_BATCH_CEILING = 5000


def option(
    default: Any,
    help: str,
    lo: float | None = None,
    hi: float | None = None,
    choices: Sequence[str] = (),
) -> Any:
    """A Settings field with its help text, inclusive bounds and (case-insensitive) choices."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """The running configuration; each field is an option of the same name."""

    address: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "TCP port to listen on", 0, 65535)
    processes: int = option(
        1,
        "worker processes sharing the port (0: one per CPU), each with its own Redis clients",
        0,
        512,
    )
    redis_url: str = option(
        DEFAULT_REDIS_URL,
        "Redis to use: a redis://, rediss:// or unix:// URL, redis+sentinel://HOST:PORT[,...]"
        "/MASTER for a master Sentinel names, redis+cluster://HOST:PORT[,...] for a Cluster,"
        " or 'embedded' to run a private redis-server in --data-dir",
    )
    data_dir: str = option(
        "echoes-data", "directory of the embedded Redis (socket, append-only file)"
    )
    key_prefix: str = option("echoes:", "prefix of every Redis key and channel echoes uses")
    message_ttl: int = option(
        604800, "seconds a record (message or ack) waits before it expires", 1
    )
    attempt_ttl: int = option(
        300, "seconds a consumed batch stays retrievable under its ?attempt= token", 1, 86400
    )
    dedup_window: int = option(
        300,
        "seconds a consumed copy is remembered: a resend of it (same origin and idempotencyKey)"
        " within them is answered as stored and not delivered again; acks likewise (0: off)",
        0,
        86400,
    )
    max_inbox_records: int = option(
        10000,
        "most records one inbox holds; a send to a full inbox is answered 429 (0: no cap)",
        0,
    )
    max_inbox_bytes: int = option(
        67108864,
        "most bytes of records one inbox holds, as stored; a send past it is answered 429"
        " (0: no cap)",
        0,
    )
    max_sender_bytes: int = option(
        268435456,
        "most bytes of live records one sender (From) holds in Redis, as stored, over every"
        " inbox and every echoes process; a send past it is answered 429 (0: no cap)",
        0,
    )
    sender_rate: float = option(
        500.0,
        "requests a second one sender (From) may make, sustained, over every echoes process;"
        " past it (and its burst), 429 with Retry-After (0: no limit)",
        0,
    )
    sender_burst: int = option(1000, "requests one sender may make at once above --sender-rate", 1)
    max_batch: int = option(
        1000, "most records one /receive or /exchange response carries", 1, MAX_BATCH_CEILING
    )
    max_batch_bytes: int = option(
        8388608,
        "most bytes of records one response carries (at least one record is sent)",
        1,
        268435456,
    )
    max_body_size: int = option(1048576, "largest request body accepted, in bytes", 1)
    max_request_bytes: int = option(
        16777216,
        "most bytes one request may store: its record's size times its destinations; a larger"
        " send is answered 413 and stores nothing",
        1,
    )
    max_destinations: int = option(1000, "most destinations one message may name", 1)
    max_from_length: int = option(256, "longest From header (a name), in UTF-8 bytes", 1, 8192)
    max_bytes_in_flight: int = option(
        134217728,
        "most bytes of requests one process holds at once: their bodies, and what they would"
        " store in Redis; a request waits for room before its body is read, and is answered"
        " 503 with Retry-After after --redis-timeout (0: no bound)",
        0,
    )
    max_caller_bytes_in_flight: int = option(
        33554432,
        "most of --max-bytes-in-flight one caller (From) holds in one process (a request"
        " alone is always let in); past it the caller's requests wait, then are answered 429"
        " (0: no bound)",
        0,
    )
    redis_timeout: float = option(
        5.0, "seconds a request waits on Redis before it answers 503", 0.01, 300
    )
    redis_max_connections: int = option(
        64,
        "most connections to each Redis server; requests of the same moment share one, and"
        " queue for a free one past this",
        1,
    )
    redis_wait_replicas: int = option(
        0,
        "replicas that must have a send, a take or an ack before it is answered (WAIT, within"
        " --redis-timeout, else 503); 0: replication is asynchronous",
        0,
        16,
    )
    cors_origins: str = option(
        "",
        "origins (scheme://host[:port], comma-separated) whose pages may call the API from a"
        " browser; '*' allows any page; '' (default): none but the server's own. A POST whose"
        " Origin is neither is refused with 403",
    )
    body_timeout: float = option(30.0, "seconds a client has to send its request body", 0.1)
    write_timeout: float = option(
        60.0,
        "seconds a client has to read an answer; one that reads slower is disconnected and"
        " the answer's memory freed (its records stay retrievable under its attempt token)",
        0.1,
    )
    idle_connection_timeout: float = option(
        65.0, "seconds an idle keep-alive connection stays open", 0.1
    )
    max_wait: float = option(
        50.0, "longest ?wait= served, in seconds; longer ones are served this long", 0, 3600
    )
    max_waiters: int = option(
        10000, "most waiting requests one process holds; beyond it, 503 with Retry-After", 0
    )
    max_waiters_per_caller: int = option(
        100,
        "most waiting requests of one caller (From) in one process; beyond it, 429 with"
        " Retry-After",
        1,
    )
    wake: str = option(
        "keyspace",
        "how waiting requests learn of new records: 'keyspace' (Redis keyspace notifications) or"
        " 'publish' (echoes publishes; for managed Redis and Redis Cluster)",
        choices=WAKE_MODES,
    )
    recheck_interval: float = option(
        5.0, "seconds between checks of every waited-on inbox, whatever notifications say", 0.1
    )
    log_level: str = option("info", "one of: " + ", ".join(LOG_LEVELS), choices=LOG_LEVELS)
    log_format: str = option(
        "text", "log lines as 'text' or 'json' (one object per line)", choices=LOG_FORMATS
    )

    @property
    def redis_display(self) -> str:
        """The Redis address as it may be shown to clients and logs: no password."""
        return topology.display(self.redis_url)


class ConfigError(Exception):
    """A configuration value that echoes cannot start with."""


def validate(settings: Settings) -> Settings:
    """Check what one option's type and bounds cannot say; raise ConfigError naming it."""
    if any(c in settings.key_prefix for c in "{}"):
        raise ConfigError("--key-prefix may not contain '{' or '}' (they mark hash tags)")
    if settings.redis_url != EMBEDDED:
        try:
            topology.parse(settings.redis_url)
        except topology.BadURL as e:
            raise ConfigError(f"--redis-url {e} (or be '{EMBEDDED}')") from None
    return settings


def markdown_table() -> str:
    """The option table of docs/configuration.md, made from Settings (a test keeps it in step)."""
    rows = ["| option | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f"`{f.default}`" if f.default != "" else "(empty)"
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        flag = f.name.replace("_", "-")
        rows.append(f"| `--{flag}` | {env} | {default} | {f.metadata['help']} |")
    return "\n".join(rows)
