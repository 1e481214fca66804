"""Logging to stderr (journald keeps it), as text or as one JSON object per line.

Under systemd (JOURNAL_STREAM names stderr) each line starts with its syslog priority,
``<3>`` to ``<7>``, which journald turns into the entry's priority, and carries no time of its
own (journald stamps every entry). JSON lines carry an RFC 3339 time in UTC to the
millisecond. With several worker processes every line names its process id.

The access lines, one per request, skip the logging machinery where they can (``access``):
each is rendered as the formatter would render it and written with others in one write,
within ACCESS_FLUSH_SECONDS, and before any other line (which keeps the stream in order), at
shutdown and at exit. Every line of ``configure``'s handler is written by a thread of its
own (``Writer``): a write to a file on a disk busy with another process's fsyncs, or to a
journald that lags, blocks for milliseconds, which held up every request on the event loop.
"""

import asyncio
import atexit
import contextlib
import datetime
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record was passed as extra=.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Syslog priorities of Python's levels, as journald reads them from a "<N>" prefix.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_PLAIN = re.compile(r"[A-Za-z0-9_./:+-]+")
ACCESS = "echoes.access"
# The access lines wait at most this long, or for this many of them, to be written together.
ACCESS_FLUSH_SECONDS = 0.1
ACCESS_BATCH_LINES = 256
# How long a shutdown waits for the writer thread to write what it was handed.
DRAIN_SECONDS = 2.0


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


class Writer:
    """Writes text to a stream from a thread of its own, in the order it was handed over;
    ``drain`` waits until all of it is written, and writes directly from then on (exit)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.direct = False
        self.forked()

    def forked(self) -> None:
        """No thread yet in this process (after a fork: the parent's did not come along)."""
        self.queue: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def write(self, text: str) -> None:
        if self.direct:
            self._write(text)
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="echoes-log", daemon=True)
            self.thread.start()
        self.queue.put(text)

    def drain(self, timeout: float = DRAIN_SECONDS, final: bool = False) -> None:
        """Return once what was handed over is written (or after ``timeout`` s)."""
        if self.thread is not None:
            done = threading.Event()
            self.queue.put(done)
            done.wait(timeout)
        self.direct = self.direct or final

    def close(self) -> None:
        """Write what was handed over, end the thread, and write directly from then on."""
        self.drain(final=True)
        if self.thread is not None:
            self.queue.put(None)
            self.thread = None

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
            else:
                self._write(item)

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # stderr gone: nowhere left to say so
            self.stream.write(text)
            self.stream.flush()


class Handler(logging.StreamHandler):
    """The stream handler ``configure`` installs: its lines are written by a Writer, the
    access lines waiting first, so that the stream stays in the order things happened."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self.writer = Writer(stream)
        self.access: AccessLines | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if self.access:
            self.access.flush()
        self.writer.write(text)

    def drain(self, final: bool = False) -> None:
        """Write the access lines waiting and wait until every line handed over is written."""
        if self.access:
            self.access.flush()
        self.writer.drain(final=final)


class AccessLines:
    """The access lines of ``handler``'s stream, rendered as its formatter renders a record
    of logger ACCESS with the fields as extras, without making the record; written in batches.
    """

    def __init__(self, handler: Handler, fmt: str, journald: bool, with_pid: bool):
        self.handler = handler
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
        """Hand the lines waiting to the handler's writer, as one write."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lines:
            text, self.lines = "".join(self.lines), []
            self.handler.writer.write(text)

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


def flush(final: bool = False) -> None:
    """Write the access lines still waiting, and wait for every line to be written (at
    shutdown; at exit too, by atexit, after which lines are written as they come)."""
    if _lines is not None:
        _lines.handler.drain(final)


def _forked() -> None:
    if _lines is not None:
        _lines.forked()
        _lines.handler.writer.forked()


def _before_fork() -> None:
    # The writer thread idle (not inside the stream's lock) when the child is made, and
    # nothing handed over twice.
    if _lines is not None:
        _lines.handler.writer.drain()


atexit.register(flush, final=True)
os.register_at_fork(before=_before_fork, after_in_child=_forked)


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
    if _lines is not None:  # a reload: what the old configuration holds goes out first
        _lines.flush()
        _lines.handler.writer.close()
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
