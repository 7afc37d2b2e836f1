"""Blocking file work for `ingestd verify`, confined to media_assets.

Everything goes through directory file descriptors: media_assets is opened once (as configured,
like the daemon does), each topic folder below it with O_NOFOLLOW, and each file relative to its
folder with O_NOFOLLOW. So no symlink below media_assets is ever followed, and no path is ever
resolved outside it. Files are opened O_NONBLOCK (a FIFO cannot hang a read) and checked to be
regular before a byte is read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

READ_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Errors that mean "no regular file there": absent, a symlink (O_NOFOLLOW), a folder that is
# not one (a file or a symlink in its place).
_ABSENT = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR})
_NO_LINK = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP})


class Changed(OSError):
    """A file changed since it was checked: a repair leaves it alone."""

    def __init__(self, path: PurePosixPath) -> None:
        super().__init__(errno.ESTALE, "changed since it was checked", str(path))


@dataclass(frozen=True, slots=True)
class Identity:
    """One version of one file: a repair only touches the version it checked."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        """The identity of a stat result."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class Opened:
    """A regular file opened for reading (`fd`), or why there is none: `absent` (nothing, a
    symlink, or not a regular file) or an error reading it (`error`)."""

    fd: int | None
    identity: Identity | None = None
    absent: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """Something found under media_assets: `folder` is None at the top level."""

    folder: str | None
    name: str
    kind: str  # "file", "symlink", "dir", "other", or "unlistable" (a folder not readable)
    detail: str | None = None

    @property
    def path(self) -> str:
        """Relative to media_assets."""
        return self.name if self.folder is None else f"{self.folder}/{self.name}"


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink (not followed)"
    if exc.errno == errno.ENOTDIR:
        return "not a folder"
    return exc.strerror or str(exc)


class Library:
    """media_assets, opened once; every path is relative to it (`<folder>/<name>`)."""

    def __init__(self, media_dir: Path) -> None:
        self.media_dir = media_dir
        try:
            self._fd: int | None = os.open(media_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._fd = None  # no video published yet: every done item's file is missing

    def close(self) -> None:
        """Close media_assets."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _root(self) -> int:
        if self._fd is None:
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(self.media_dir))
        return self._fd

    def _folder(self, name: str, *, create: bool = False) -> int:
        """A topic folder's fd, never through a symlink; `create` makes it first if absent."""
        if create and self._fd is None:
            self.media_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.media_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        root = self._root()
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o775, dir_fd=root)
        return os.open(name, _DIR_FLAGS, dir_fd=root)

    def _why_not_folder(self, name: str, exc: OSError) -> str:
        # O_DIRECTORY|O_NOFOLLOW on a symlink fails ENOTDIR on Linux, as for a file: tell them
        # apart for the report.
        if exc.errno != errno.ENOENT and self._fd is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.stat(name, dir_fd=self._fd, follow_symlinks=False).st_mode):
                    return "a symlink (not followed)"
        return _describe(exc)

    # --- reading --------------------------------------------------------------------------

    def open(self, path: PurePosixPath) -> Opened:
        """Open a file for reading if it is a regular file (the caller closes `fd`)."""
        try:
            folder = self._folder(path.parent.name)
        except OSError as exc:
            if exc.errno in _ABSENT:
                why = self._why_not_folder(path.parent.name, exc)
                return Opened(None, absent=f"folder {path.parent.name}: {why}")
            return Opened(None, error=_describe(exc))
        try:
            fd = os.open(path.name, _FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return Opened(None, absent=_describe(exc))
            return Opened(None, error=_describe(exc))
        finally:
            os.close(folder)
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            return Opened(None, error=_describe(exc))
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return Opened(None, absent="not a regular file")
        return Opened(fd, Identity.of(st))

    def lstat(self, path: PurePosixPath) -> os.stat_result | None:
        """The file itself (a symlink is not followed), or None when it is gone."""
        try:
            folder = self._folder(path.parent.name)
        except OSError:
            return None
        try:
            return os.stat(path.name, dir_fd=folder, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(folder)

    def entries(self) -> Iterator[Entry]:
        """Everything under media_assets, one level of topic folders, symlinks not followed and
        folders inside topic folders not entered."""
        if self._fd is None:
            return
        with os.scandir(self._fd) as top:
            names = sorted((e.name, _kind(e)) for e in top)
        for name, kind in names:
            if kind != "dir":
                yield Entry(None, name, kind)
                continue
            try:
                folder = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
            except OSError as exc:
                if exc.errno in _ABSENT:  # gone, or replaced by a symlink meanwhile
                    continue
                yield Entry(None, name, "unlistable", _describe(exc))
                continue
            try:
                with os.scandir(folder) as inside:
                    found = sorted((e.name, _kind(e)) for e in inside)
            except OSError as exc:
                yield Entry(None, name, "unlistable", _describe(exc))
                continue
            finally:
                os.close(folder)
            for child, child_kind in found:
                yield Entry(name, child, child_kind)

    # --- repairing ------------------------------------------------------------------------

    def remove(self, path: PurePosixPath, identity: Identity, *, same_size: bool = True) -> None:
        """Delete `path` if it is still the file checked (with `same_size`, also unchanged in
        size and mtime); already gone is fine. Raises Changed when it is another file."""
        folder = self._folder(path.parent.name)
        try:
            try:
                st = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                return
            now = Identity.of(st)
            if (now.dev, now.ino) != (identity.dev, identity.ino) or (
                same_size and now != identity
            ):
                raise Changed(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name, dir_fd=folder)
            os.fsync(folder)
        finally:
            os.close(folder)

    def link(self, source: PurePosixPath, identity: Identity, target: PurePosixPath) -> None:
        """Make `target` a hard link to `source` (a copy where links are impossible), replacing
        atomically what is there, if it is a regular file; `source` must still be the version
        checked. The folder of `target` is made if missing. Raises OSError."""
        src_dir = self._folder(source.parent.name)
        try:
            st = os.stat(source.name, dir_fd=src_dir, follow_symlinks=False)
            if Identity.of(st) != identity:
                raise Changed(source)
            dst_dir = self._folder(target.parent.name, create=True)
            try:
                self._link_into(src_dir, source.name, dst_dir, target.name)
            finally:
                os.close(dst_dir)
        finally:
            os.close(src_dir)

    @staticmethod
    def _link_into(src_dir: int, source: str, dst_dir: int, target: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            there = os.stat(target, dir_fd=dst_dir, follow_symlinks=False)
            if not stat.S_ISREG(there.st_mode):
                raise OSError(errno.EEXIST, "not a regular file, left alone", target)
        temp = f".{target}.verify-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dst_dir)
        try:
            try:
                os.link(source, temp, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                _copy(src_dir, source, dst_dir, temp)
            os.rename(temp, target, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dst_dir)
            raise
        os.fsync(dst_dir)


def _kind(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_symlink():
            return "symlink"
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        if entry.is_file(follow_symlinks=False):
            return "file"
    except OSError:
        pass
    return "other"


def _copy(src_dir: int, source: str, dst_dir: int, target: str) -> None:
    src = os.open(source, _FILE_FLAGS, dir_fd=src_dir)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(target, flags, 0o644, dir_fd=dst_dir)
        try:
            while chunk := os.read(src, READ_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def sha256_fd(fd: int, advance: Callable[[int], None] | None = None) -> str:
    """SHA-256 of an open file from its start, read 1 MiB at a time into one buffer (reads and
    hashing release the GIL, so files hashed in several threads overlap); `advance` is told
    every chunk's length."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while n := os.preadv(fd, [buffer], offset):
        digest.update(view[:n])
        offset += n
        if advance is not None:
            advance(n)
    return digest.hexdigest()
