"""`ingestd verify` on libraries built by hand around a real manifest: the cases a daemon does
not make on its own (symlinks, copies instead of links, unsafe recorded paths, FIFOs, a
missing media folder) and the progress bar on a real terminal. The daemon's own libraries are
in tests/e2e/test_verify.py."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from ingestd.fs.library import Changed, Identity, Library
from ingestd.ops.verify import Report, verify
from ingestd.policy.extract import Record
from ingestd.store.manifest import Completion, Manifest


class Lib:
    """A data dir, a state dir and a manifest whose items are made done by hand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.media = self.data / "media_assets"
        self.state = root / "state"
        self.media.mkdir(parents=True)
        self.manifest = Manifest.open(self.state / "manifest.sqlite3")
        self.manifest.bind_data_dir(self.data)
        self.bodies: dict[str, bytes] = {}

    def add(self, aweme_id: str, *topics: str, size: int = 4096, link: bool = True) -> bytes:
        """A done item published in its first topic's folder and linked into the others."""
        body = b"\x00\x00\x00\x18ftyp" + hashlib.sha256(aweme_id.encode()).digest() * (size // 32)
        body = body[:size]
        records = [Record(aweme_id, f"https://h/{aweme_id}", t, "{}") for t in topics]
        self.manifest.merge(records, "e.json", 1.0)
        main = self.media / topics[0] / f"{aweme_id}.mp4"
        for topic in topics:
            folder = self.media / topic
            folder.mkdir(exist_ok=True)
            target = folder / f"{aweme_id}.mp4"
            if topic == topics[0]:
                target.write_bytes(body)
            elif link:
                os.link(main, target)
            else:
                target.write_bytes(body)  # a copy, as where links are impossible
        sha = hashlib.sha256(body).hexdigest()
        path = f"{topics[0]}/{aweme_id}.mp4"
        self.manifest.complete_many([Completion(aweme_id, size, sha, path, topics, 2.0)])
        self.bodies[aweme_id] = body
        return body

    def verify(self, repair: bool = False) -> Report:
        with Library(self.media) as library:
            return verify(self.manifest, library, repair=repair, jobs=2)

    def cli(self, *args: str, **kwargs: object) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ingestd",
            "verify",
            "--data-dir",
            str(self.data),
            "--state-dir",
            str(self.state),
            *args,
        ]


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Lib]:
    made = Lib(tmp_path / "lib")
    yield made
    made.manifest.close()


def problems(report: Report) -> set[tuple[str, str | None, str]]:
    return {(f.problem.value, f.aweme_id, f.path) for f in report.findings}


def test_a_copy_with_the_right_content_is_fine_a_wrong_one_is_relinked(lib: Lib) -> None:
    lib.add("1", "a", "b", link=False)
    lib.add("2", "a", "b", link=False)
    copy = lib.media / "b" / "2.mp4"
    data = bytearray(copy.read_bytes())
    data[100] ^= 1
    copy.write_bytes(bytes(data))

    report = lib.verify()
    assert problems(report) == {("corrupt", "2", "b/2.mp4")}
    assert report.files == 4 and report.bytes_hashed == 4 * 4096  # each copy read once
    assert report.exit_code == 1

    repaired = lib.verify(repair=True)
    assert repaired.relinked == ["b/2.mp4"] and repaired.requeued == []
    assert repaired.exit_code == 0
    assert os.path.samefile(lib.media / "a" / "2.mp4", copy)
    assert copy.read_bytes() == lib.bodies["2"]
    assert lib.verify().findings == []
    assert lib.manifest.item("2")["state"] == "done"  # type: ignore[index]


def test_the_main_file_comes_back_from_a_good_link_without_a_download(lib: Lib) -> None:
    lib.add("1", "a", "b", "c")
    (lib.media / "a" / "1.mp4").unlink()
    (lib.media / "c" / "1.mp4").unlink()
    report = lib.verify(repair=True)
    assert problems(report) == {("missing", "1", "a/1.mp4"), ("missing", "1", "c/1.mp4")}
    assert sorted(report.relinked) == ["a/1.mp4", "c/1.mp4"] and report.requeued == []
    inodes = {(lib.media / t / "1.mp4").stat().st_ino for t in "abc"}
    assert len(inodes) == 1


def test_symlinks_are_never_followed_nor_deleted(lib: Lib, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "3.mp4"
    lib.add("3", "evil")
    secret.write_bytes(lib.bodies["3"])  # the right bytes, but outside the library
    (lib.media / "evil" / "3.mp4").unlink()
    (lib.media / "evil").rmdir()
    os.symlink(outside, lib.media / "evil")  # a topic folder that is a symlink
    lib.add("4", "a")
    (lib.media / "a" / "4.mp4").unlink()
    os.symlink(secret, lib.media / "a" / "4.mp4")  # a file that is a symlink
    os.symlink(secret, lib.media / "top.mp4")
    before = secret.stat()

    report = lib.verify()
    assert problems(report) == {
        ("missing", "3", "evil/3.mp4"),
        ("missing", "4", "a/4.mp4"),
        ("stray", None, "evil"),
        ("stray", None, "a/4.mp4"),
        ("stray", None, "top.mp4"),
    }
    assert report.bytes_hashed == 0
    details = {f.path: f.detail for f in report.findings if f.problem.value == "missing"}
    assert details == {
        "evil/3.mp4": "folder evil: a symlink (not followed)",
        "a/4.mp4": ANY_SYMLINK,
    }

    repaired = lib.verify(repair=True)
    assert sorted(repaired.requeued) == ["3", "4"]
    assert repaired.removed == []
    assert (lib.media / "evil").is_symlink() and (lib.media / "a" / "4.mp4").is_symlink()
    assert (lib.media / "top.mp4").is_symlink()
    after = secret.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert secret.read_bytes() == lib.bodies["3"]


class _AnySymlink:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and "symlink" in other


ANY_SYMLINK = _AnySymlink()


def test_an_unsafe_recorded_path_is_never_opened(lib: Lib, tmp_path: Path) -> None:
    lib.add("5", "a")
    victim = lib.data / "5.mp4"  # where "../5.mp4" would lead
    victim.write_bytes(b"not to be touched")
    conn = sqlite3.connect(lib.state / "manifest.sqlite3")
    conn.execute("UPDATE items SET path = '../5.mp4' WHERE aweme_id = '5'")
    conn.commit()
    conn.close()
    report = lib.verify(repair=True)
    assert ("missing", "5", "../5.mp4") in problems(report)
    assert ("stray", "5", "a/5.mp4") in problems(report)  # not where the manifest says
    assert report.requeued == ["5"] and report.removed == []
    assert victim.read_bytes() == b"not to be touched"
    assert (lib.media / "a" / "5.mp4").exists()  # a stray: kept


def test_fifos_folders_and_daemon_temporaries_are_strays(lib: Lib) -> None:
    lib.add("6", "a")
    os.mkfifo(lib.media / "a" / "7.mp4")  # named like a video: opened O_NONBLOCK, never read
    os.mkfifo(lib.media / "a" / "6.mp4.part")
    (lib.media / "a" / "nested").mkdir()
    (lib.media / "a" / "nested" / "8.mp4").write_bytes(b"x")
    (lib.media / "a" / ".6.mp4.link").write_bytes(b"x")
    (lib.media / ".ingestd-probe-x1").write_bytes(b"x")
    started = time.monotonic()
    report = lib.verify(repair=True)
    assert time.monotonic() - started < 10
    assert problems(report) == {
        ("stray", None, "a/7.mp4"),
        ("stray", None, "a/6.mp4.part"),
        ("stray", None, "a/nested"),
        ("stray", None, "a/.6.mp4.link"),
        ("stray", None, ".ingestd-probe-x1"),
    }
    assert report.exit_code == 0  # strays only
    assert (lib.media / "a" / "nested" / "8.mp4").exists()


def test_no_media_folder_means_every_done_file_is_missing(lib: Lib) -> None:
    lib.add("9", "a", "b")
    for topic in "ab":
        (lib.media / topic / "9.mp4").unlink()
        (lib.media / topic).rmdir()
    lib.media.rmdir()
    report = lib.verify(repair=True)
    assert problems(report) == {("missing", "9", "a/9.mp4"), ("missing", "9", "b/9.mp4")}
    assert report.requeued == ["9"] and report.exit_code == 0
    assert not lib.media.exists()


def test_a_repair_leaves_a_file_that_changed_since_it_was_checked(lib: Lib) -> None:
    lib.add("10", "a")
    path = lib.media / "a" / "10.mp4"
    with Library(lib.media) as library:
        opened = library.open(PurePosixPath("a/10.mp4"))
        assert opened.fd is not None and opened.identity is not None
        os.close(opened.fd)
        checked: Identity = opened.identity
        path.write_bytes(lib.bodies["10"][:-1])  # rewritten since
        with pytest.raises(Changed):
            library.remove(PurePosixPath("a/10.mp4"), checked)
        assert path.exists()
        os.unlink(path)
        library.remove(PurePosixPath("a/10.mp4"), checked)  # already gone: fine


def test_cli_progress_bar_on_a_terminal_and_none_on_a_pipe(lib: Lib) -> None:
    for i in range(20):
        lib.add(str(100 + i), "a", "b", size=256 * 1024)
    (lib.media / "a" / "100.mp4").unlink()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}

    piped = subprocess.run(
        lib.cli("--json"), capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert piped.returncode == 1, piped.stderr
    assert piped.stderr == "", "nothing on stderr when it is not a terminal"
    doc = json.loads(piped.stdout)
    assert doc["counts"]["missing"] == 1 and doc["checked"]["items"] == 20

    human = subprocess.run(lib.cli(), capture_output=True, text=True, timeout=60, check=False)
    assert human.returncode == 1 and human.stderr == ""
    assert "\x1b[" not in human.stdout, "no control codes when stdout is not a terminal"
    lines = [line for line in human.stdout.splitlines() if "a/100.mp4" in line]
    assert len(lines) == 1 and lines[0].startswith("missing "), human.stdout
    assert "expected 262144 B" in lines[0]

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        lib.cli("--json"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=30)
    os.close(primary)
    assert proc.returncode == 1
    assert json.loads(out)["counts"]["missing"] == 1, "stdout stays plain JSON"
    assert b"hashing" in seen or b"scanning" in seen, seen[-500:]
    assert b"Traceback" not in seen
