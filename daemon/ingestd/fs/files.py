"""Blocking filesystem work: safe extract reads, part files, atomic publish, hard links.

Everything here blocks; the service layer calls it from worker threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from ingestd.policy.naming import part_name
from ingestd.policy.settle import FileSignature

READ_CHUNK = 1024 * 1024


class _Naming:
    # A class, not @contextmanager: entered several times per file, on worker threads that
    # hold the GIL for it (a generator-based one costs several times as much).
    __slots__ = ("_path",)

    def __init__(self, path: str | PurePath) -> None:
        self._path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, OSError) and error_path(exc) is None:
            exc.filename = os.fspath(self._path)  # and it is raised on


def naming(path: str | PurePath) -> _Naming:
    """OSErrors raised inside name `path` when the call that failed named none (the calls on a
    descriptor: write, fsync, ftruncate, pread...), so every local error says where it was."""
    return _Naming(path)


def error_path(exc: OSError) -> str | None:
    """The path an OSError names, or None (a call on a descriptor may name the descriptor)."""
    name = exc.filename
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None


def describe_os_error(exc: OSError, path: str | PurePath | None = None) -> str:
    """`<what went wrong>: <path>`, or `<what>: <from> -> <to>` for a rename or a link, for
    logs; `path` stands in when the error names none."""
    what = exc.strerror or str(exc)
    where = error_path(exc) or (None if path is None else os.fspath(path))
    text = what if where is None else f"{what}: {where}"
    if isinstance(exc.filename2, (str, bytes, os.PathLike)):
        text += f" -> {os.fsdecode(exc.filename2)}"
    return text


class ExtractReadError(Exception):
    """An extract could not be read: `skip` means it is not an extract at all (FIFO, symlink...)."""

    def __init__(self, message: str, *, skip: bool, too_large: bool = False) -> None:
        super().__init__(message)
        self.skip = skip
        self.too_large = too_large


@dataclass(frozen=True, slots=True)
class ExtractBytes:
    """An extract's content, with its digest and the signature of the version read."""

    data: bytes
    sha256: str
    signature: FileSignature


def signature_of(st: os.stat_result) -> FileSignature:
    """The cheap identity of one version of a file."""
    return FileSignature(st.st_size, st.st_mtime_ns, st.st_ino)


def lstat_regular(path: Path) -> FileSignature | None:
    """The signature of `path` if it is a regular file (not following symlinks), else None."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return signature_of(st) if stat.S_ISREG(st.st_mode) else None


def read_extract(
    path: Path, max_bytes: int, keep_bytes: int | None = None, *, digest: bool = True
) -> ExtractBytes:
    """Read a whole extract without following symlinks or blocking on FIFOs.

    A file larger than `keep_bytes` is only hashed: its `data` is empty (it is parsed elsewhere).
    With `digest=False` nothing is hashed and `sha256` is empty (the caller hashes `data`).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        skip = exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO, errno.EISDIR)
        raise ExtractReadError(f"open failed: {exc.strerror}", skip=skip) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ExtractReadError("not a regular file", skip=True)
        hasher = hashlib.sha256()
        if st.st_size > max_bytes:
            raise ExtractReadError(
                f"{st.st_size} bytes > cap {max_bytes}", skip=False, too_large=True
            )
        keep = keep_bytes is None or st.st_size <= keep_bytes
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, READ_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise ExtractReadError(f"grew past cap {max_bytes}", skip=False, too_large=True)
            if digest:
                hasher.update(chunk)
            if keep:
                chunks.append(chunk)
        signature = FileSignature(total, st.st_mtime_ns, st.st_ino)
        data = b"".join(chunks)
        return ExtractBytes(data, hasher.hexdigest() if digest else "", signature)
    except OSError as exc:
        raise ExtractReadError(f"read failed: {exc.strerror}", skip=False) from exc
    finally:
        os.close(fd)


def list_extracts(raw_dir: Path) -> list[Path]:
    """Candidate extracts in `raw_dir`, oldest name first."""
    try:
        names = os.listdir(raw_dir)
    except OSError:
        return []
    return [raw_dir / n for n in sorted(names) if is_extract_name(n)]


def is_extract_name(name: str) -> bool:
    """Only `extract_*.json`, never hidden or temporary files."""
    return name.startswith("extract_") and name.endswith(".json") and "/" not in name


def free_bytes(path: Path) -> int:
    """Free bytes available to this process on the filesystem holding `path`."""
    return shutil.disk_usage(path).free


def fsync_dir(path: Path) -> None:
    """Make a rename or link in `path` durable."""
    with naming(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_dir(root: Path, relative: PurePath) -> Path:
    """Create `root/relative` (one level below root), refusing to traverse a symlink."""
    target = root / relative
    try:
        st = os.lstat(target)  # the common case, once per file: it is there already
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            target.mkdir(mode=0o775)
        st = target.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a real directory", str(target))
    return target


def write_file_atomic(target: Path, data: bytes) -> None:
    """Put `data` at `target` as the publish puts a video there: a temporary file in the same
    folder (a stale one removed, never followed), fsynced, renamed over `target`, the folder
    fsynced. A crash leaves the old file or the new one, never a part of it."""
    temp = target.with_name(f".{target.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    try:
        os.rename(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(target.parent)


class PartFile:
    """A `.part` file being filled: appends, hashes as it goes, publishes by atomic rename.

    Methods are serialized by a lock, so a write still running in a worker thread when its task
    is cancelled cannot race the close that follows.
    """

    def __init__(
        self, root: Path, relative: PurePath, *, fresh: bool = False, keep: int = 0
    ) -> None:
        self._path = part_name(f"{root}/{relative}")  # a str: a Path per file costs more than I/O
        self._root, self._relative = root, relative
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._unopened = fresh  # opened (and emptied) by the first call that needs it
        self.size = 0
        self.durable = 0  # bytes known to be on stable storage (fsynced)
        self._poisoned = False  # an fsync failed: see _fsync
        self._hash = hashlib.sha256()
        self._hashed = 0
        if not fresh:
            with naming(self._path):
                self._open(truncate=False)
                if self.size > keep:
                    os.ftruncate(self._require_fd(), keep)
                    self.size = keep
            self.durable = self.size

    @classmethod
    def open_in(cls, root: Path, relative: PurePath, durable: int) -> PartFile:
        """Open `root/relative` + `.part` for a resume, creating its folder first, cut back to
        the `durable` bytes a checkpoint recorded: past them a power cut may have left
        anything (a zero-filled tail, on many filesystems)."""
        return cls(root, relative, keep=durable)

    @classmethod
    def fresh_in(cls, root: Path, relative: PurePath) -> PartFile:
        """A `.part` that starts empty, with no I/O yet: its folder is made and the file opened
        (emptied if it exists) by the first method that needs it, in that method's thread hop."""
        return cls(root, relative, fresh=True)

    def _open(self, truncate: bool) -> int:
        ensure_dir(self._root, self._relative.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._path, flags | (os.O_TRUNC if truncate else 0), 0o644)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", self._path)
        self._fd, self.size = fd, st.st_size
        return fd

    @property
    def path(self) -> Path:
        """Where the `.part` is."""
        return Path(self._path)

    @property
    def closed(self) -> bool:
        """True when no file is open: published, discarded, closed, or not opened yet."""
        return self._fd is None

    def _require_fd(self) -> int:
        if self._unopened:
            self._unopened = False
            return self._open(truncate=True)
        if self._fd is None:
            raise OSError(errno.EBADF, "part file is closed")
        return self._fd

    def head(self, n: int) -> bytes:
        """The first `n` bytes already on disk."""
        with self._lock, naming(self._path):
            return os.pread(self._require_fd(), n, 0)

    def hash_existing(self) -> None:
        """Feed the bytes already on disk (a resumed download) into the digest."""
        with self._lock, naming(self._path):
            fd = self._require_fd()
            while self._hashed < self.size:
                chunk = os.pread(fd, min(READ_CHUNK, self.size - self._hashed), self._hashed)
                if not chunk:
                    raise OSError(errno.EIO, "part file shrank while hashing")
                self._hash.update(chunk)
                self._hashed += len(chunk)

    def truncate(self, size: int = 0) -> None:
        """Cut the file back to `size` bytes (start over, by default)."""
        with self._lock, naming(self._path):
            os.ftruncate(self._require_fd(), size)
            self.size = size
            self.durable = min(self.durable, size)
            if self._hashed > size:
                self._hash = hashlib.sha256()
                self._hashed = 0

    def sync(self) -> int:
        """fsync what was written; returns the durable size."""
        with self._lock, naming(self._path):
            if self._fd is not None:
                self._fsync(self._fd)
                self.durable = self.size
            return self.durable

    def _fsync(self, fd: int) -> None:
        # Linux reports a writeback error to one fsync only: a later one "succeeds" over the
        # lost pages. So after one failure nothing here is trusted again: no durable offset
        # moves, nothing is published; the next attempt cuts back to the last one recorded.
        if self._poisoned:
            raise OSError(errno.EIO, "an earlier fsync of this file failed", self._path)
        try:
            os.fsync(fd)
        except OSError:
            self._poisoned = True
            raise

    def write(self, chunks: Sequence[bytes | memoryview], *, sync: bool = False) -> None:
        """Append `chunks` and hash them; with `sync`, fsync them too (a checkpoint)."""
        # One join here (a worker thread) rather than one GIL round trip per chunk: hashing
        # releases the GIL for each buffer, and the event loop would make each one wait.
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        with self._lock, naming(self._path):
            fd = self._require_fd()
            view = memoryview(data)
            offset = self.size
            while view:
                written = os.pwrite(fd, view, offset)
                offset += written
                view = view[written:]
            if self._hashed == self.size:  # else hash_existing catches up first, at publish
                self._hash.update(data)
                self._hashed = offset
            self.size = offset
            if sync:
                self._fsync(fd)
                self.durable = offset

    def publish(self, final: Path) -> str:
        """fsync, rename to `final`, fsync the folder; return the sha256. Closes the file."""
        self.hash_existing()
        with self._lock:
            with naming(self._path):
                fd = self._require_fd()
                if self._hashed != self.size:
                    raise OSError(errno.EIO, "digest does not cover the whole file")
                self._fsync(fd)
                os.close(fd)
                self._fd = None
                os.rename(self._path, final)  # names both
            fsync_dir(final.parent)  # names the folder
            return self._hash.hexdigest()

    def close(self) -> None:
        """Close without publishing; the .part stays for a later resume."""
        with self._lock, naming(self._path):
            self._unopened = False
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        """Close and delete: the content is known to be useless."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


def link_into(source: Path, target: Path) -> bool:
    """Make `target` a hard link to `source` (atomically replacing anything else there).

    Falls back to a copy where hard links are impossible. Returns False if already linked.
    """
    try:
        if os.path.samefile(source, target):
            return False
    except FileNotFoundError:
        pass
    temp = target.with_name(f".{target.name}.link")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    try:
        os.link(source, temp)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP):
            raise
        shutil.copyfile(source, temp, follow_symlinks=False)
        with open(temp, "rb+") as handle, naming(temp):
            os.fsync(handle.fileno())
    os.rename(temp, target)
    fsync_dir(target.parent)
    return True
