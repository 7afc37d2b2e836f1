"""PartFile on real files: opened as it is for a resume, or fresh and opened only when needed."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest

from ingestd.fs.files import PartFile, describe_os_error
from ingestd.service.publish import Publisher
from ingestd.service.transfer import _local_failure


def test_a_fresh_part_does_no_io_until_needed_then_starts_empty(tmp_path: Path) -> None:
    media = tmp_path / "media"
    part = PartFile.fresh_in(media, Path("topic/1.mp4"))
    assert not media.exists() and part.closed and part.size == 0  # nothing touched yet
    media.joinpath("topic").mkdir(parents=True)
    part.path.write_bytes(b"stale bytes of an earlier attempt")
    part.write([b"\x00\x00\x00\x18ftyp", memoryview(b"isom-body")])
    assert part.size == len(b"\x00\x00\x00\x18ftypisom-body")
    digest = part.publish(media / "topic" / "1.mp4")
    assert (media / "topic" / "1.mp4").read_bytes() == b"\x00\x00\x00\x18ftypisom-body"
    assert digest == hashlib.sha256(b"\x00\x00\x00\x18ftypisom-body").hexdigest()
    assert not part.path.exists() and part.closed


def test_a_fresh_part_that_is_never_needed_leaves_nothing(tmp_path: Path) -> None:
    part = PartFile.fresh_in(tmp_path / "media", Path("t/2.mp4"))
    part.close()
    assert not (tmp_path / "media").exists()
    with pytest.raises(OSError):
        part.write([b"late"])  # closed stays closed: no file appears afterwards
    assert not (tmp_path / "media").exists()


def test_discarding_a_fresh_part_removes_a_stale_one(tmp_path: Path) -> None:
    part = PartFile.fresh_in(tmp_path, Path("t/3.mp4"))
    (tmp_path / "t").mkdir()
    part.path.write_bytes(b"stale")
    part.discard()
    assert not part.path.exists()


def test_open_in_keeps_what_is_there_for_a_resume(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "4.mp4.part").write_bytes(b"first half|")
    part = PartFile.open_in(tmp_path, Path("t/4.mp4"), durable=100)
    assert part.size == len(b"first half|") and not part.closed
    part.hash_existing()
    part.write([b"second half"])
    part.publish(tmp_path / "t" / "4.mp4")
    assert (tmp_path / "t" / "4.mp4").read_bytes() == b"first half|second half"


def test_open_in_cuts_what_was_never_durable(tmp_path: Path) -> None:
    # After a power cut the tail past the last fsync may read back as zeros.
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "5.mp4.part").write_bytes(b"durable|" + bytes(8))
    part = PartFile.open_in(tmp_path, Path("t/5.mp4"), durable=len(b"durable|"))
    assert (part.size, part.durable) == (8, 8)
    part.write([b"rest"], sync=True)
    assert part.durable == 12
    part.publish(tmp_path / "t" / "5.mp4")  # hashes what it did not see written
    assert (tmp_path / "t" / "5.mp4").read_bytes() == b"durable|rest"


def test_truncate_to_a_point_keeps_the_digest_honest(tmp_path: Path) -> None:
    part = PartFile.fresh_in(tmp_path, Path("t/6.mp4"))
    part.write([b"good|bad"])
    part.sync()
    part.truncate(5)
    assert (part.size, part.durable) == (5, 5)
    part.write([b"fine"])
    digest = part.publish(tmp_path / "t" / "6.mp4")
    assert (tmp_path / "t" / "6.mp4").read_bytes() == b"good|fine"
    assert digest == hashlib.sha256(b"good|fine").hexdigest()


def test_after_a_failed_fsync_nothing_is_durable_or_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux reports a writeback error to one fsync only; the next one returns 0 over lost pages.
    part = PartFile.fresh_in(tmp_path, Path("t/7.mp4"))
    part.write([b"kept"], sync=True)
    assert part.durable == 4
    real_fsync, calls = os.fsync, []

    def fsync_fails_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_once)
    with pytest.raises(OSError):
        part.write([b"lost?"], sync=True)
    assert part.durable == 4
    with pytest.raises(OSError, match="earlier fsync"):
        part.sync()
    assert part.durable == 4
    with pytest.raises(OSError, match="earlier fsync"):
        part.publish(tmp_path / "t" / "7.mp4")
    assert not (tmp_path / "t" / "7.mp4").exists()
    part.close()


def _failing(*_: object, **__: object) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))  # as fd-level calls raise: no file name


@pytest.mark.parametrize("call", ["os.pwrite", "os.fsync", "os.ftruncate", "os.pread"])
def test_every_part_file_error_names_the_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    part = PartFile.fresh_in(tmp_path, Path("t/4.mp4"))
    part.write([b"\x00\x00\x00\x18ftypisom"])
    monkeypatch.setattr(call, _failing)
    operations = {
        "os.pwrite": lambda: part.write([b"more"]),
        "os.fsync": part.sync,
        "os.ftruncate": part.truncate,
        "os.pread": lambda: part.head(4),
    }
    with pytest.raises(OSError) as error:
        operations[call]()
    assert error.value.filename == str(part.path)
    assert describe_os_error(error.value) == f"Input/output error: {part.path}"


def test_a_failed_folder_fsync_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = PartFile.fresh_in(tmp_path, Path("t/5.mp4"))
    part.write([b"\x00\x00\x00\x18ftypisom"])
    real_fsync = os.fsync
    monkeypatch.setattr(
        "os.fsync",
        lambda fd: _failing() if os.path.isdir(f"/proc/self/fd/{fd}") else real_fsync(fd),
    )
    with pytest.raises(OSError) as error:
        part.publish(tmp_path / "t" / "5.mp4")  # renamed; the folder's fsync fails
    assert error.value.filename == str(tmp_path / "t")


def test_a_failed_rename_names_both_paths(tmp_path: Path) -> None:
    part = PartFile.fresh_in(tmp_path, Path("t/6.mp4"))
    part.write([b"\x00\x00\x00\x18ftypisom"])
    final = tmp_path / "gone" / "6.mp4"
    with pytest.raises(OSError) as error:
        part.publish(final)
    failure = _local_failure(error.value, part.path)
    assert failure.detail == f"No such file or directory: {part.path} -> {final}"
    assert failure.path == str(part.path)


def test_a_link_into_a_folder_that_is_a_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "7.mp4").write_bytes(b"video")
    (tmp_path / "b").write_bytes(b"a file where a topic folder should be")
    done = Publisher(tmp_path).link_topics(PurePosixPath("a/7.mp4"), ["a"])
    assert done == 0
    with pytest.raises(OSError) as error:
        Publisher(tmp_path).link_topics(PurePosixPath("a/7.mp4"), ["a", "b"])
    assert describe_os_error(error.value) == f"not a real directory: {tmp_path / 'b'}"
