"""Where option values come from, and the checks that name the source of a bad one.

Precedence, highest first: the command line (``--name value`` or ``--name=value``), an
environment variable ``ECHOES_<NAME>``, a systemd credential (``$CREDENTIALS_DIRECTORY/<name>``,
for secrets: ``LoadCredential=redis_url:/etc/echoes/redis_url`` in the unit), the TOML file
named by ``--config`` (or ``ECHOES_CONFIG``), and the defaults of ``config.Settings``, which is
the one table of every option. A bad value stops start-up with one line that names the option
as it was written and where it came from (command line, variable, credential, file:line).

On SIGHUP (``Reloader``) the file is read again, and refused, the running configuration
staying, when it looks caught mid-write: it changed while it was read (size, time or
contents between two reads), it ends mid-line, or it drops an option the running file set
(an empty file drops them all) that nothing else sets: reloaded, that option would go back
to its default. To reset one, write its default value; to change the file, write a new
one beside it and rename it over (``mv``).
"""

import argparse
import dataclasses
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .client import cli
from .config import ENV_PREFIX, ConfigError, Settings, validate

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# Options that may come from a systemd credential: the ones that can hold a secret.
CREDENTIALS = ("redis_url",)
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


@dataclasses.dataclass(frozen=True)
class Value:
    """An option's raw value and where it came from (for error messages)."""

    raw: Any
    source: str
    spelled: str


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as ConfigError (one line, status 2, by the caller)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    """The one command line: ``echoes [serve] [options]`` runs the server, and the client
    commands of echoes.client.cli (``echoes send ...``) hang on the same parser."""
    top = _Parser(prog="echoes", description="echoes: a message inbox on Redis, and its clients.")
    top.add_argument("--version", action="version", version=f"echoes {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the server (what `echoes` alone does)",
        description="echoes: a Redis-backed message inbox with an HTTP JSON API.",
        epilog=(
            "Each option may also be set as ECHOES_<NAME> or in the --config TOML file."
            " Client commands: echoes send|receive|exchange|status|follow --help."
        ),
        argument_default=argparse.SUPPRESS,
    )
    _server_options(serve)
    cli.add_commands(commands)
    return top


def parse(args: Sequence[str]) -> argparse.Namespace:
    """The command line (without the program name); with no command, ``serve``."""
    if not args or args[0] not in ("serve", *cli.COMMANDS):
        args = ["serve", *args]
    return parser().parse_args(list(args))


def _server_options(p: argparse.ArgumentParser) -> None:
    """Every Settings field as --name-with-dashes (underscores work too)."""
    p.add_argument("--version", action="version", version=f"echoes {__version__}")
    p.add_argument("--config", metavar="FILE", help="a TOML file of options (name = value)")
    for name, f in FIELDS.items():
        flags = [f"--{name.replace('_', '-')}"] + (["--" + name] if "_" in name else [])
        lo, hi = f.metadata["lo"], f.metadata["hi"]
        bounds = "" if lo is None else f" [{lo}..{hi if hi is not None else ''}]"
        p.add_argument(
            *flags,
            dest=name,
            metavar=name.upper(),
            help=f"{f.metadata['help']}{bounds} (default: {f.default!r})",
        )


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from the command line (argv[0] is the program), environment, credentials, file."""
    return _load(argv, environ)[0]


def _load(
    argv: Sequence[str], environ: Mapping[str, str], reloading: bool = False
) -> tuple[Settings, set[str], set[str]]:
    """load(), the names of every option given, and of those the file gives (and nothing
    above it): a reload reads the file whole or not at all."""
    spelled = _spellings(argv[1:])
    args = vars(parse(argv[1:]))
    if args.pop("command") != "serve":
        raise ConfigError("not the server's command line")
    path = args.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    from_file: dict[str, Value] = _from_file(path, reloading) if path else {}
    values = from_file | _from_credentials(environ.get(CREDENTIALS_ENV))
    for name in FIELDS:
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            values[name] = Value(environ[variable], variable, variable)
    for name, raw in args.items():
        values[name] = Value(raw, "command line", spelled.get(name, "--" + name))
    settings = Settings(**{name: convert(name, value) for name, value in values.items()})
    by_file = {name for name, value in from_file.items() if values[name] is value}
    return validate(settings), set(values), by_file


class Reloader:
    """The configuration at start-up, then again at each call (SIGHUP), refusing a file
    caught mid-write (see the top of this module)."""

    def __init__(self, argv: Sequence[str], environ: Mapping[str, str]):
        self.argv, self.environ = argv, environ
        self._by_file: set[str] = set()  # the options the running file sets

    def load_or_exit(self) -> Settings:
        """The configuration to start with; one line and status 2 if it is bad."""
        try:
            settings, _, self._by_file = _load(self.argv, self.environ)
        except ConfigError as e:
            print(f"echoes: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        return settings

    def __call__(self) -> Settings:
        """The configuration now; ConfigError (the running one stays) if it is bad."""
        settings, given, by_file = _load(self.argv, self.environ, reloading=True)
        dropped = sorted(self._by_file - given)
        if dropped:
            default = "its default" if len(dropped) == 1 else "their defaults"
            raise ConfigError(
                f"the file no longer sets {', '.join(dropped)}, which would go back to"
                f" {default}: to reset an option, write its default value; to change the"
                " file, write the new one beside it and rename it over (mv)"
            )
        self._by_file = by_file
        return settings


def load_or_exit(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """load(), printing one line and exiting with status 2 on a bad configuration."""
    try:
        return load(argv, environ)
    except ConfigError as e:
        print(f"echoes: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def convert(name: str, value: Value) -> Any:
    """``value`` as the type of option ``name``, or ConfigError naming option and source."""
    kind, raw = FIELDS[name].type, value.raw
    where = f"{value.spelled}: {raw!r} ({value.source})"
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ConfigError(f"{where} is not a whole number")
        if isinstance(raw, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            raise ConfigError(f"{where} is not a whole number")
        whole = int(raw)
        _check_bounds(name, whole, where)
        return whole
    if kind is float:
        try:
            if isinstance(raw, bool):
                raise ValueError
            number = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} is not a number of seconds") from None
        _check_bounds(name, number, where)
        return number
    if not isinstance(raw, str):
        raise ConfigError(f"{where} is not a string (quote it)")
    choices = FIELDS[name].metadata.get("choices")
    if choices:
        if raw.lower() not in choices:
            raise ConfigError(f"{where} is not one of: {', '.join(choices)}")
        return raw.lower()
    return raw


def _check_bounds(name: str, number: float, where: str) -> None:
    lo, hi = FIELDS[name].metadata["lo"], FIELDS[name].metadata["hi"]
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ConfigError(f"{where} is out of range {lo}..{'' if hi is None else hi}")


def _spellings(args: Sequence[str]) -> dict[str, str]:
    """How each option was written on the command line (--max-wait or --max_wait)."""
    found = {}
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            found[flag[2:].replace("-", "_")] = flag
    return found


def _from_file(path: str, reloading: bool = False) -> dict[str, Value]:
    """The options of a TOML file, each with its file:line (a reload: read whole)."""
    try:
        text = _read_whole(path) if reloading else Path(path).read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 ({e})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    lines = text.splitlines()
    values = {}
    for key, raw in document.items():
        line = _line_of(key, lines)
        name = key.replace("-", "_")
        if name not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise ConfigError(f"{path}:{line}: {key!r} is not an option (options: {known})")
        values[name] = Value(raw, f"{path}:{line}", key)
    return values


def _read_whole(path: str) -> str:
    """The file's text, if it holds still while read: ConfigError if it changed between two
    reads (its size, time or bytes) or ends mid-line, as a file being written in place does."""
    before = os.stat(path)
    first = Path(path).read_bytes()
    second = Path(path).read_bytes()
    after = os.stat(path)
    still = (before.st_ino, before.st_size, before.st_mtime_ns) == (
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
    )
    if not still or first != second or len(first) != after.st_size:
        raise ConfigError(
            f"{path} changed while it was read: write the new file beside it and rename it"
            " over (mv), then reload"
        )
    if first and not first.endswith(b"\n"):
        raise ConfigError(
            f"{path} ends mid-line (no newline at its end), as a file cut while written"
            " does: if it is whole, end it with a newline"
        )
    return first.decode("utf-8")


def _line_of(key: str, lines: list[str]) -> int:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*[=.\[]")
    for number, text in enumerate(lines, 1):
        if pattern.match(text) or text.strip() == f"[{key}]":
            return number
    return 0


def _from_credentials(directory: str | None) -> dict[str, Value]:
    """Options passed as systemd credentials: files named after the option."""
    if not directory:
        return {}
    values = {}
    for name in CREDENTIALS:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            raw = Path(path).read_text("utf-8").strip()
            values[name] = Value(raw, f"credential {name}", name)
    return values
