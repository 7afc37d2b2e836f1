"""One daemon per library: the lock (exit 4), one manifest per data dir, and a manifest that
belongs to another data dir (exit 2) or is missing (exit 1)."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

from ingestd.config import library_dir_name
from ingestd.store.manifest import _MIGRATIONS, Manifest
from support.daemon import Daemon
from support.extracts import origin_records
from support.origin import OriginServer

EXIT_FAILURE, EXIT_USAGE, EXIT_LOCKED = 1, 2, 4
READERS = (
    ("status",),
    ("status", "--json"),
    ("list",),
    ("retry", "--failed"),
    ("verify",),
    ("verify", "--repair"),
)


def _exited(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (
        f"{result.args[3:]} exited {result.returncode}, expected {code}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def _user_dirs(tmp_path: Path) -> dict[str, str]:
    """HOME and XDG folders of a throw-away user: never the real user's state dir."""
    home = tmp_path / "home"
    return {
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CONFIG_HOME": str(home / ".config"),
    }


def _file_events(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(e["event"], e["timestamp"]) for e in map(json.loads, lines)]


def test_a_second_run_on_the_same_library_exits_4_and_writes_nothing(
    daemon_factory: Any,
) -> None:
    first: Daemon = daemon_factory()
    first.start()
    shared_log = first.config["log_file"]
    # Same data dir, its own state dir: the data dir's lock refuses it.
    same_data: Daemon = daemon_factory(data_dir=str(first.data_dir), log_file=shared_log)
    refused = _exited(same_data.cli("run", timeout=30), EXIT_LOCKED)
    lock = first.data_dir / ".ingestd.lock"
    assert refused == (
        f"ingestd: another ingestd (pid {first.pid}) is running on {first.data_dir} (lock {lock})\n"
    )
    assert not (same_data.state_dir / "manifest.sqlite3").exists(), "locked out, yet it opened"
    # Same state dir, another data dir: the state dir's lock refuses it.
    same_state: Daemon = daemon_factory(state_dir=str(first.state_dir), log_file=shared_log)
    refused = _exited(same_state.cli("run", timeout=30), EXIT_LOCKED)
    assert f"(pid {first.pid})" in refused
    assert f"running on {first.state_dir} (lock {first.state_dir / 'ingestd.lock'})" in refused
    assert first.running

    first.terminate()
    assert lock.read_text() == f"{first.pid}\n"  # left behind, and harmless: see below
    # The shared log holds the first daemon's events and nothing else.
    assert _file_events(Path(shared_log)) == [(e["event"], e["timestamp"]) for e in first.events()]
    same_data.start()  # the kernel dropped the lock with its holder
    assert lock.read_text() == f"{same_data.pid}\n"
    same_data.terminate()


def test_two_data_dirs_without_a_state_dir_get_two_manifests(
    daemon_factory: Any, origin: OriginServer, prefix: str, tmp_path: Path
) -> None:
    env = _user_dirs(tmp_path)
    libraries = Path(env["XDG_STATE_HOME"]) / "ingestd" / "libraries"
    one: Daemon = daemon_factory(state_dir=None)
    two: Daemon = daemon_factory(state_dir=None)
    for daemon in (one, two):
        daemon.extra_env = env
    one.start()
    two.start()  # both at once: two libraries, two locks
    state_dirs = [Path(d.events("daemon_started")[0]["state_dir"]) for d in (one, two)]
    assert state_dirs == [libraries / library_dir_name(d.data_dir.resolve()) for d in (one, two)]
    assert all((s / "manifest.sqlite3").is_file() for s in state_dirs)

    records, _ = origin_records(origin, prefix, random.Random(prefix), 1, "one", 10_000, "ok")
    one.drop_atomic("extract_1.json", records)
    one.wait_for("download_completed")
    assert one.status_json()["items"]["done"] == 1
    assert sum(two.status_json()["items"].values()) == 0, "two sees one's items"
    assert str(state_dirs[1] / "manifest.sqlite3") in two.cli("status").stdout

    # A data dir that has no manifest says so, for every reader.
    nowhere = f"/nonexistent-{uuid.uuid4().hex}"
    manifest = libraries / library_dir_name(Path(nowhere)) / "manifest.sqlite3"
    for command in [*READERS, ("status", "--watch", "--count", "1", "--interval", "0.1")]:
        stderr = _exited(one.cli(*command, "--data-dir", nowhere), EXIT_FAILURE)
        assert stderr == f"ingestd: no manifest for {nowhere} (looked in {manifest})\n", command
    assert not Path(nowhere).exists() and not manifest.parent.exists()
    one.terminate()
    two.terminate()


def test_the_old_shared_manifest_is_adopted_by_the_first_run(
    daemon_factory: Any, tmp_path: Path
) -> None:
    env = _user_dirs(tmp_path)
    base = Path(env["XDG_STATE_HOME"]) / "ingestd"
    base.mkdir(parents=True)
    legacy = base / "manifest.sqlite3"
    conn = sqlite3.connect(legacy, isolation_level=None)  # schema 2, as earlier versions left it
    conn.executescript(_MIGRATIONS[1] + ";" + _MIGRATIONS[2] + "; PRAGMA user_version = 2;")
    conn.execute(
        "INSERT INTO items (aweme_id, url, topics, state, bytes, sources, record, created_at,"
        " updated_at) VALUES ('7', 'https://localhost/v', '[\"t\"]', 'done', 5, '[]', '{}', 1, 1)"
    )
    conn.close()
    one: Daemon = daemon_factory(state_dir=None)
    two: Daemon = daemon_factory(state_dir=None)
    for daemon in (one, two):
        daemon.extra_env = env
    assert one.status_json()["items"]["done"] == 1  # a reader accepts it before any run
    one.start()
    assert Path(one.events("daemon_started")[0]["state_dir"]) == base
    reader = Manifest.open(legacy, readonly=True)
    assert reader.recorded_data_dir() == str(one.data_dir.resolve())
    reader.close()
    # Now it is one's: another data dir gets its own state dir, and no manifest until it runs.
    stderr = _exited(two.cli("status"), EXIT_FAILURE)
    assert f"no manifest for {two.data_dir} (looked in {base / 'libraries'}/" in stderr
    two.start()
    assert Path(two.events("daemon_started")[0]["state_dir"]).parent == base / "libraries"
    assert one.status_json()["items"]["done"] == 1
    assert two.status_json()["items"]["done"] == 0
    one.terminate()
    two.terminate()


def test_a_manifest_of_another_data_dir_is_refused_with_2_until_rebound(
    daemon_factory: Any,
) -> None:
    first: Daemon = daemon_factory()
    first.start()
    manifest = first.state_dir / "manifest.sqlite3"
    other: Daemon = daemon_factory(state_dir=str(first.state_dir))
    # While first runs: run and rebind are locked out; readers are refused the wrong library.
    _exited(other.cli("run", timeout=30), EXIT_LOCKED)
    _exited(other.cli("rebind"), EXIT_LOCKED)
    _exited(other.cli("status"), EXIT_USAGE)
    first.terminate()

    for command in [("run",), *READERS]:
        stderr = _exited(other.cli(*command, timeout=30), EXIT_USAGE)
        assert stderr.startswith(
            f"ingestd: configuration error: the manifest {manifest} belongs to the data dir"
            f" {first.data_dir.resolve()}, not {other.data_dir.resolve()}."
        ), stderr
        assert "--state-dir" in stderr and "ingestd rebind" in stderr, stderr
    assert not other.log_file.exists(), "a refused run opened its log file"
    assert first.cli("status").returncode == 0

    # The library moved (say): rebind makes the manifest its own, and only its own.
    rebound = other.cli("rebind")
    assert rebound.returncode == 0, rebound.stderr
    assert rebound.stdout == (
        f"{manifest} now belongs to {other.data_dir.resolve()} (was {first.data_dir.resolve()})\n"
    )
    assert other.status_json()["items"] == first.events("daemon_ready")[0]["items"]
    _exited(first.cli("status"), EXIT_USAGE)
    other.start()
    other.terminate()
