"""Logging to stderr (journald keeps it), as text or as one JSON object per line.

Under systemd (JOURNAL_STREAM names stderr) each line starts with its syslog priority,
``<3>`` to ``<7>``, which journald turns into the entry's priority, and carries no time of its
own (journald stamps every entry). JSON lines carry an RFC 3339 time in UTC to the
millisecond. With several worker processes every line names its process id.

The access lines, one per request, skip the logging machinery where they can (``access``):
each is rendered as the formatter would render it and written with others in one write,
within ACCESS_FLUSH_SECONDS, and before any other line (which keeps the stream in order), at
shutdown and at exit.
"""

import asyncio
import atexit
import contextlib
import datetime
import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record was passed as extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Syslog priorities of Python's levels, as journald reads them from a "<N>" prefix.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_PLAIN = re.compile(r"[A-Za-z0-9_./:+-]+")
ACCESS = "echoes.access"
# The access lines wait at most this long, or for this many of them, to be written together:
# one write per line cost about 15% of /exchange's throughput (BENCHMARKS.md).
ACCESS_FLUSH_SECONDS = 0.1
ACCESS_BATCH_LINES = 256


def rfc3339(created: float) -> str:
    """A record's time as RFC 3339, UTC, to the millisecond: 2026-11-28T14:42:25.123Z."""
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def priority(level: int) -> int:
    """The syslog priority of a Python log level."""
    return PRIORITY.get(level, 2 if level > logging.ERROR else 7)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger[pid]: message``, or ``<N>logger[pid]: message`` for journald."""

    def __init__(self, journald: bool = False, with_pid: bool = False):
        pid = "[%(process)d]" if with_pid else ""
        time = "" if journald else "%(asctime)s %(levelname)s "
        super().__init__(f"{time}%(name)s{pid}: %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"<{priority(record.levelno)}>{text}" if self.journald else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message and any extra fields."""

    def __init__(self, journald: bool = False):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        line = json.dumps(entry, default=str)
        return f"<{priority(record.levelno)}>{line}" if self.journald else line


class Handler(logging.StreamHandler):
    """The stream handler ``configure`` installs: writes the access lines waiting before any
    other line, so that the stream stays in the order things happened."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self.access: AccessLines | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.access:
            self.access.flush()
        super().emit(record)


class AccessLines:
    """The access lines of ``handler``'s stream, rendered as its formatter renders a record
    of logger ACCESS with the fields as extras, without making the record; written in batches.
    """

    def __init__(self, handler: Handler, fmt: str, journald: bool, with_pid: bool):
        self.handler, self.stream = handler, handler.stream
        self.json, self.journald, self.with_pid = fmt == "json", journald, with_pid
        self.lines: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self._second = (-1, "")  # the last whole second rendered, and its text
        self.forked()

    def forked(self) -> None:
        """Start afresh in this process (also after a fork: the parent writes its own lines)."""
        self.pid = os.getpid()
        self.name = f"{ACCESS}[{self.pid}]" if self.with_pid else ACCESS
        self.lines, self.timer = [], None

    def write(self, level: int, fields: dict[str, Any]) -> None:
        """Add the line of ``fields``; write the batch when it is full, or soon."""
        self.lines.append(self.render(level, fields, time.time()))
        if len(self.lines) >= ACCESS_BATCH_LINES:
            self.flush()
        elif self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no event loop to flush later
                return
            self.timer = loop.call_later(ACCESS_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write the lines waiting, in one write."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lines:
            return
        text, self.lines = "".join(self.lines), []
        with contextlib.suppress(OSError, ValueError):  # stderr gone: nowhere left to say so
            self.stream.write(text)
            self.stream.flush()

    def render(self, level: int, fields: dict[str, Any], now: float) -> str:
        """The line (with its newline) of ``fields`` logged at ``level`` at ``now``."""
        message = logfmt(fields)
        if self.json:
            entry: dict[str, Any] = {"time": rfc3339(now)}
            entry["level"] = logging.getLevelName(level).lower()
            entry |= {"logger": ACCESS, "pid": self.pid, "message": message} | fields
            line = json.dumps(entry, default=str)
        elif self.journald:
            line = f"{self.name}: {message}"
        else:
            line = f"{self.asctime(now)} {logging.getLevelName(level)} {self.name}: {message}"
        return f"<{priority(level)}>{line}\n" if self.journald else line + "\n"

    def asctime(self, now: float) -> str:
        """``now`` as logging.Formatter's default asctime: local time, then ,milliseconds."""
        second = int(now)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        return f"{self._second[1]},{int((now - second) * 1000):03d}"


_lines: AccessLines | None = None  # configure()'s, for the handler it installed
_access_log = logging.getLogger(ACCESS)


def access(level: int, fields: dict[str, Any]) -> None:
    """Log one access line of ``fields`` (logfmt as the message, and as extras).

    While the root logger's one handler is the one configure() installed, the line skips
    the logging machinery (AccessLines); otherwise (tests capturing records, an embedding
    program's handlers) it is an ordinary record of logger ACCESS.
    """
    handlers = logging.root.handlers
    if _lines is not None and len(handlers) == 1 and handlers[0] is _lines.handler:
        _lines.write(level, fields)
    else:
        _access_log.log(level, "%s", logfmt(fields), extra=fields)


def flush() -> None:
    """Write the access lines still waiting (at shutdown; at exit too, by atexit)."""
    if _lines is not None:
        _lines.flush()


def _forked() -> None:
    if _lines is not None:
        _lines.forked()


atexit.register(flush)
os.register_at_fork(after_in_child=_forked)


def logfmt(fields: dict[str, Any]) -> str:
    """``key=value ...``, quoting every value that is not a plain token (a client's From or
    query string cannot forge other fields: ``from="v status=200"`` stays one field)."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not isinstance(value, int | float) and not _PLAIN.fullmatch(text):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def to_journald(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether stderr is the journal stream systemd gave this process (JOURNAL_STREAM)."""
    stream = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in stream.split(":"))
        status = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def configure(level: str, fmt: str, with_pid: bool = False) -> None:
    """Send every log record at ``level`` or above to stderr, as text or JSON."""
    global _lines
    flush()  # a reload: what the old configuration holds goes out first
    journald = to_journald()
    handler = Handler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(journald))
    else:
        handler.setFormatter(TextFormatter(journald, with_pid))
    handler.access = _lines = AccessLines(handler, fmt, journald, with_pid)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
