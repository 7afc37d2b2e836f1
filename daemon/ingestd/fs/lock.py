"""An exclusive lock on a file, held for the life of the process: one daemon per library.

`flock` locks belong to the open file description, so the kernel drops them when the holder
exits, however it exits (SIGKILL, power cut): a lock file left behind is never stale. The file
is never removed (unlinking a lock file races with another process opening it). The holder
writes its pid into it, so a process that finds it locked can say who holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

_PID_BYTES = 32


class LockError(Exception):
    """The lock file cannot be created, opened or locked."""


class LockHeld(LockError):
    """Another process holds the lock."""

    def __init__(self, path: Path, holder: int | None) -> None:
        self.path = path
        self.holder = holder  # None when it has not written its pid yet (or wrote garbage)
        pid = "unknown" if holder is None else str(holder)
        super().__init__(f"another ingestd (pid {pid}) is running on {path.parent} (lock {path})")


class FileLock:
    """An exclusive `flock` on `path`, held until `release()` (or the end of the process)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> FileLock:
        """Lock `path` (creating it and its folder) or raise LockHeld / LockError at once."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # No O_TRUNC: the holder's pid must survive a loser's open. Python's fds are
            # close-on-exec, so a spawned child never inherits (and never prolongs) the lock.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise LockError(f"cannot open the lock file {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(path, holder) from exc
            raise LockError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise LockError(f"cannot write to the lock file {path}: {exc.strerror}") from exc
        return cls(path, fd)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (closing the file drops it). Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
