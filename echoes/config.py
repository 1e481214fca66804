"""Every option echoes has: its default, unit, bounds and help text, in one table.

Options come from, in rising precedence: the defaults below, a tornado.options config file
(``--config=PATH``), environment variables ``ECHOES_<NAME>``, and the command line
(``--name=value``). ``Settings`` is the one object the rest of the program reads them from.
"""

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import tornado.options

from .keys import WAKE_MODES

ENV_PREFIX = "ECHOES_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
REDIS_SCHEMES = ("redis", "rediss", "unix")
EMBEDDED = "embedded"
# prometheus_client's multiprocess mode (--processes): set before its first import.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Lua's unpack() in a script handles a few thousand values; a batch stays well under that.
MAX_BATCH_CEILING = 5000


def option(default: Any, help: str, lo: float | None = None, hi: float | None = None) -> Any:
    """A Settings field with its help text and inclusive bounds."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi})


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
        "redis://127.0.0.1:6379/0",
        "Redis to use: redis://, rediss:// or unix:// URL, or 'embedded' to run a private "
        "redis-server in --data-dir",
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
    max_inbox_records: int = option(
        10000,
        "most records one inbox holds; a send to a full inbox is answered 429 (0: no cap)",
        0,
    )
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
    redis_timeout: float = option(
        5.0, "seconds a request waits on Redis before it answers 503", 0.01, 300
    )
    redis_max_connections: int = option(
        64, "size of the Redis connection pool; requests queue for a free connection", 1
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
    )
    recheck_interval: float = option(
        5.0, "seconds between checks of every waited-on inbox, whatever notifications say", 0.1
    )
    log_level: str = option("info", "one of: " + ", ".join(LOG_LEVELS))
    log_format: str = option("text", "log lines as 'text' or 'json' (one object per line)")

    @property
    def redis_display(self) -> str:
        """The Redis address as it may be shown to clients and logs: no password."""
        return display_url(self.redis_url)


class ConfigError(Exception):
    """A configuration value that echoes cannot start with."""


def display_url(url: str) -> str:
    """Return ``url`` with any user name and password removed."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _parser() -> tornado.options.OptionParser:
    parser = tornado.options.OptionParser()
    parser.define(
        "config",
        type=str,
        help="path of a config file (Python syntax, name = value)",
        group="echoes",
    )
    for f in dataclasses.fields(Settings):
        lo, hi = f.metadata["lo"], f.metadata["hi"]
        bounds = "" if lo is None else f" [{lo}..{hi if hi is not None else ''}]"
        parser.define(
            f.name,
            default=f.default,
            type=f.type if isinstance(f.type, type) else None,
            help=f.metadata["help"] + bounds,
            group="echoes",
        )
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build Settings from argv (argv[0] is the program) and the environment."""
    parser = _parser()
    extra = _parse_args(parser, argv, "command line")
    if extra:
        raise ConfigError(f"unexpected argument: {extra[0]!r}")
    path = parser.config or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        _parse_file(parser, path)
    env = [
        f"--{name}={environ[ENV_PREFIX + name.upper()]}"
        for name in parser.as_dict()
        if ENV_PREFIX + name.upper() in environ and name != "config"
    ]
    _parse_args(parser, [argv[0], *env], "environment")
    _parse_args(parser, argv, "command line")
    values = {f.name: parser[f.name] for f in dataclasses.fields(Settings)}
    return validate(Settings(**values))


def _parse_args(
    parser: tornado.options.OptionParser, args: Sequence[str], source: str
) -> list[str]:
    """Parse one argument at a time, so an error names the argument it is about."""
    for i, arg in enumerate(args[1:], 1):
        try:
            extra = parser.parse_command_line([args[0], arg], final=False)
        except (tornado.options.Error, ValueError) as e:
            raise ConfigError(f"{arg} ({source}): {e}") from None
        if extra:
            return list(args[i:])
    return []


def _parse_file(parser: tornado.options.OptionParser, path: str) -> None:
    """Apply a config file (Python, like tornado.options'), refusing names that are no option."""
    try:
        source = Path(path).read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e}") from None
    namespace: dict[str, Any] = {"__file__": str(Path(path).resolve())}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:  # the file is Python: any error in it is a configuration error
        raise ConfigError(f"config file {path}: {type(e).__name__}: {e}") from None
    known = parser.as_dict()
    for name, value in namespace.items():
        if name.startswith("__"):
            continue
        if name not in known or name == "config":
            raise ConfigError(f"config file {path}: {name!r} is not an option")
        if isinstance(value, str):
            _parse_args(parser, ["echoes", f"--{name}={value}"], f"config file {path}")
            continue
        try:
            setattr(parser, name, value)
        except tornado.options.Error as e:
            raise ConfigError(f"config file {path}: {e}") from None


def validate(settings: Settings) -> Settings:
    """Check bounds and formats; raise ConfigError naming the first bad option."""
    for f in dataclasses.fields(Settings):
        value, lo, hi = getattr(settings, f.name), f.metadata["lo"], f.metadata["hi"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"--{f.name}={value} is out of range {lo}..{hi or ''}")
    if settings.wake not in WAKE_MODES:
        raise ConfigError(f"--wake must be one of {', '.join(WAKE_MODES)}")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(f"--log_format must be one of {', '.join(LOG_FORMATS)}")
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log_level must be one of {', '.join(LOG_LEVELS)}")
    if any(c in settings.key_prefix for c in "{}"):
        raise ConfigError("--key_prefix may not contain '{' or '}' (they mark hash tags)")
    if settings.redis_url != EMBEDDED and urlsplit(settings.redis_url).scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"--redis_url must start with {', '.join(s + '://' for s in REDIS_SCHEMES)}"
            f" or be '{EMBEDDED}'"
        )
    return settings


def load_or_exit(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """load(), printing one line and exiting with status 2 on a bad configuration."""
    try:
        return load(argv, environ)
    except ConfigError as e:
        print(f"echoes: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table() -> str:
    """The option table of the README, made from Settings (a test keeps the README in step)."""
    rows = ["| option | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f"`{f.default}`" if f.default != "" else "(empty)"
        env = f"`{ENV_PREFIX}{f.name.upper()}`"
        flag = f.name.replace("_", "-")
        rows.append(f"| `--{flag}` | {env} | {default} | {f.metadata['help']} |")
    return "\n".join(rows)
