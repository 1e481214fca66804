"""The follower's state file: the attempt token of the batch in flight, kept across its own
restarts (see protocol.Follower), private to its owner and held by one follower at a time."""

import fcntl
import os
import tempfile
from pathlib import Path


class StateInUse(Exception):
    """Another follower holds the state file: two would hand out one batch twice."""


class State:
    """The follower's state file: the attempt token of the batch in flight, if any.

    Only its owner can read it (0600: the token is what another user would need to take
    the batch); it is written to a fresh temporary file (mkstemp: O_EXCL, O_NOFOLLOW, so a
    planted file or link there is never written through) renamed over it; and ``lock``
    holds ``FILE.lock`` (flock) while one follower uses it.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold FILE.lock until ``unlock``; StateInUse if another process holds it."""
        if not self.path or self._lock is not None:
            return
        path = self.path.with_name(self.path.name + ".lock")
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            fd = os.open(path, flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
                os.close(fd)
                by = f" (process {holder})" if holder.isdigit() else ""
                raise StateInUse(f"{self.path} is used by another follower{by}") from None
            if _same_file(fd, path):
                break
            os.close(fd)  # its holder removed it as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd

    def unlock(self) -> None:
        """Remove FILE.lock and release it (removed first: a follower that opened it
        meanwhile finds it is not the file at that path any more, and takes the next)."""
        if self._lock is not None and self.path:
            self.path.with_name(self.path.name + ".lock").unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    def load(self) -> str | None:
        if self.path and self.path.exists():
            return self.path.read_text().strip() or None
        return None

    def save(self, token: str) -> None:
        if not self.path:
            return
        prefix, directory = self.path.name + ".", self.path.parent
        fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(token + "\n")
            os.replace(temporary, self.path)  # atomic: never a half-written token
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
