"""The library lock: exclusive, names its holder, dropped by the kernel when the holder dies."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ingestd.fs.lock import FileLock, LockError, LockHeld

HOLDER = """
import sys
from pathlib import Path
from ingestd.fs.lock import FileLock

lock = FileLock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()  # hold it until killed or stdin closes
"""


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "data" / ".ingestd.lock"
    first = FileLock.acquire(path)  # creates the folder
    assert path.read_text() == f"{os.getpid()}\n"
    # Another open file description of the same file: flock treats it as another holder.
    with pytest.raises(LockHeld) as refused:
        FileLock.acquire(path)
    assert refused.value.holder == os.getpid()
    assert str(refused.value) == (
        f"another ingestd (pid {os.getpid()}) is running on {path.parent} (lock {path})"
    )
    assert path.read_text() == f"{os.getpid()}\n", "the loser must not truncate the pid"
    first.release()
    first.release()  # idempotent
    assert not first.held
    with FileLock.acquire(path) as again:
        assert again.held
    assert not again.held


def test_a_lock_held_by_another_process_is_dropped_when_it_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "ingestd.lock"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"  # bounded by the test timeout
        with pytest.raises(LockHeld) as refused:
            FileLock.acquire(path)
        assert refused.value.holder == child.pid
        assert f"pid {child.pid}" in str(refused.value)
        child.send_signal(signal.SIGKILL)  # no chance to clean up
        child.wait(10)
        with FileLock.acquire(path):
            assert path.read_text() == f"{os.getpid()}\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_an_unknown_holder_is_said_so(tmp_path: Path) -> None:
    path = tmp_path / "ingestd.lock"
    with FileLock.acquire(path):
        path.write_text("")  # as if the holder had not written its pid yet
        with pytest.raises(LockHeld, match=r"\(pid unknown\)") as refused:
            FileLock.acquire(path)
        assert refused.value.holder is None


def test_os_errors_become_lock_errors(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "ingestd.lock"
    link.symlink_to(target)
    with pytest.raises(LockError, match="cannot open the lock file") as raised:
        FileLock.acquire(link)  # a planted symlink is not followed
    assert not isinstance(raised.value, LockHeld)
    assert target.read_text() == "keep me"
    (tmp_path / "file").write_text("")
    with pytest.raises(LockError):
        FileLock.acquire(tmp_path / "file" / "ingestd.lock")  # its folder is a file
