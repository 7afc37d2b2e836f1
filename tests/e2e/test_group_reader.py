"""A member of the service's group, with read access only, can run `ingestd status` and `list`,
whether the daemon is running (its -wal/-shm exist) or stopped (they are gone)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ingestd.policy.extract import Record
from ingestd.store.manifest import Manifest

SYSTEM_PYTHON = Path("/usr/bin/python3")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not os.environ.get("CI")
    or shutil.which("useradd") is None
    or not SYSTEM_PYTHON.exists(),
    reason="creates a throw-away system user: runs as root in CI only",
)


def _as_reader(user: str, state: Path, command: str) -> subprocess.CompletedProcess[str]:
    site = next(p for p in sys.path if p.endswith("site-packages"))
    line = (
        f"PYTHONPATH={ROOT / 'daemon'}:{site} {SYSTEM_PYTHON} -m ingestd {command}"
        f" --state-dir {state} --data-dir {state.parent / 'data'}"
    )
    return subprocess.run(
        ["su", user, "-s", "/bin/sh", "-c", line], capture_output=True, text=True, timeout=60
    )


def test_group_members_read_the_manifest() -> None:
    user = group = f"ingt{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "-M", "-g", group, "-s", "/bin/sh", user], check=True)
    tmp_path = Path(f"/tmp/ingestd-{user}")  # pytest's own tmp folders are root-only
    tmp_path.mkdir()
    try:
        base = tmp_path / "srv"
        state = base / "state"
        state.mkdir(parents=True)
        old = os.umask(0o027)
        try:
            manifest = Manifest.open(state / "manifest.sqlite3")
            manifest.merge([Record("1", "https://h/v", "t", "{}")], "e.json", time.time())
            for path in [tmp_path, base, state, *state.iterdir()]:
                shutil.chown(path, group=group)
            tmp_path.chmod(0o750)
            running = _as_reader(user, state, "status --json")
            listed = _as_reader(user, state, "list --json")
            manifest.close()  # the daemon stopped: -wal and -shm are removed
        finally:
            os.umask(old)
        assert not (state / "manifest.sqlite3-wal").exists()
        stopped = _as_reader(user, state, "status --json")
        for result in (running, listed, stopped):
            assert result.returncode == 0, result.stderr
        assert '"pending": 1' in running.stdout and '"pending": 1' in stopped.stdout
        assert '"aweme_id": "1"' in listed.stdout
        denied = _as_reader(user, state, "retry --failed")  # read access only
        assert denied.returncode == 1 and "Traceback" not in denied.stderr, denied.stderr
        state.chmod(0o700)
        refused = _as_reader(user, state, "status --json")
        assert refused.returncode == 1 and "Permission denied" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
        subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", group], check=False)
