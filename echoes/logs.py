"""Logging to stderr (journald keeps it), as text or as one JSON object per line.

Under systemd (JOURNAL_STREAM names stderr) each line starts with its syslog priority,
``<3>`` to ``<7>``, which journald turns into the entry's priority, and carries no time of its
own (journald stamps every entry). JSON lines carry an RFC 3339 time in UTC to the
millisecond. With several worker processes every line names its process id.
"""

import datetime
import json
import logging
import os
import re
import sys
from typing import Any

# Attributes every LogRecord has; anything else on a record was passed as extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Syslog priorities of Python's levels, as journald reads them from a "<N>" prefix.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_PLAIN = re.compile(r"[A-Za-z0-9_./:+-]+")


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
    journald = to_journald()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(journald))
    else:
        handler.setFormatter(TextFormatter(journald, with_pid))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
