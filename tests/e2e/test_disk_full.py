"""A full disk: transfers fail as local_io_error without using up attempts, nothing broken is
published, the daemon stays up, and every file arrives intact once there is room again.

A small tmpfs is mounted over the daemon's data folder (the manifest and the log file live
elsewhere), so this needs root, as CI has.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.daemon import Daemon
from support.extracts import Item, make_record, new_id
from support.origin import OriginServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs: root only")

SIZE = 1024 * 1024 + 4096  # over 1 MiB: a .part worth resuming, so resume is exercised too
TOPIC = "full disk"


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _items(origin: OriginServer, prefix: str, n: int) -> tuple[list[dict[str, Any]], list[Item]]:
    rng = random.Random(prefix)
    records, items = [], []
    for _ in range(n):
        aweme_id = new_id(rng)
        name = f"{prefix}-{aweme_id}"
        records.append(make_record(aweme_id, origin.url(name, size=SIZE), TOPIC, SIZE))
        items.append(Item(aweme_id, name, SIZE, TOPIC))
    return records, items


def _published_are_whole(daemon: Daemon, items: list[Item]) -> int:
    whole = 0
    for item in items:
        path = daemon.media_path(item.topic, item.aweme_id)
        if path.exists():
            assert path.read_bytes() == item.content(), f"{path} published broken"
            whole += 1
    return whole


@pytest.mark.also_workers
def test_a_full_disk_pauses_downloads_costs_no_attempts_and_everything_lands_after(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, items = _items(origin, prefix, 6)
    # Two attempts only: if a full disk used attempts up, items would end `failed`.
    daemon: Daemon = daemon_factory(
        concurrency=2, max_attempts=2, backoff_base=0.1, backoff_max=0.3, min_free_bytes=0
    )
    with small_disk(daemon.data_dir, "3m"):  # room for two of the six files, and a bit
        daemon.raw_dir.mkdir(parents=True, exist_ok=True)
        daemon.start()
        try:
            daemon.drop_atomic("extract_20261127T010000.json", records)
            paused = daemon.wait_for("downloads_paused", timeout=30)
            assert paused["reason"] == "disk_full", paused
            assert "No space left" in paused["detail"] and str(daemon.media_dir) in paused["detail"]
            # While paused: no request to any CDN, no attempt spent, nothing logged per item;
            # once the transfers the fault had not reached yet (another worker's) have ended.
            quiet = [len(origin.requests()), daemon.event_count(), time.monotonic()]

            def quiet_for_a_second() -> bool:
                now = [len(origin.requests()), daemon.event_count()]
                if now != quiet[:2]:
                    quiet[:] = [*now, time.monotonic()]
                return time.monotonic() - quiet[2] >= 1.0

            daemon.wait_until(quiet_for_a_second, "a quiet pause", timeout=10)
            requests_at_pause, since = len(origin.requests()), daemon.event_count()
            time_paused = time.monotonic()
            while time.monotonic() - time_paused < 3:  # a pause that lasts: still nothing
                assert len(origin.requests()) == requests_at_pause
                assert daemon.events("download_retry_scheduled") == []
                time.sleep(0.2)
            assert daemon.running
            assert daemon.events("download_failed") == []
            assert _published_are_whole(daemon, items) <= 2
            subprocess.run(
                ["mount", "-o", "remount,size=64m", "tmpfs", str(daemon.data_dir)], check=True
            )
            resumed = daemon.wait_for("downloads_resumed", since=since, timeout=90)
            assert resumed["reason"] == "disk_full"
            daemon.wait_for_count("download_completed", len(items), timeout=40)
            assert _published_are_whole(daemon, items) == len(items)
            assert daemon.part_files() == []
            assert daemon.events("download_failed") == []
            assert all(e["attempt"] == 1 for e in daemon.events("download_completed"))
            status = daemon.status_json()["items"]
            assert (status["done"], status["failed"]) == (len(items), 0), status
            assert len(daemon.events("downloads_paused")) == 1
        finally:
            daemon.terminate()


def test_low_space_pauses_new_transfers_and_room_resumes_them(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, items = _items(origin, prefix, 3)
    daemon: Daemon = daemon_factory(concurrency=2, min_free_bytes=8 * 1024 * 1024)
    with small_disk(daemon.data_dir, "4m"):  # always under min_free_bytes
        daemon.raw_dir.mkdir(parents=True, exist_ok=True)
        daemon.start()
        try:
            daemon.drop_atomic("extract_20261127T020000.json", records)
            paused = daemon.wait_for("downloads_paused", timeout=15)
            assert paused["reason"] == "low_disk_space" and paused["free_bytes"] < 8 * 2**20
            since = daemon.event_count()
            daemon.wait_for("extract_merged", timeout=15)
            assert daemon.events("download_started") == []
            subprocess.run(
                ["mount", "-o", "remount,size=64m", "tmpfs", str(daemon.data_dir)], check=True
            )
            daemon.wait_for("downloads_resumed", since=since, timeout=15)
            daemon.wait_for_count("download_completed", len(items), timeout=30)
            assert _published_are_whole(daemon, items) == len(items)
        finally:
            daemon.terminate()


@pytest.mark.also_workers
def test_a_read_only_media_folder_pauses_downloads_until_it_is_writable(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, items = _items(origin, prefix, 6)
    daemon: Daemon = daemon_factory(concurrency=2, max_attempts=2, min_free_bytes=0)
    daemon.media_dir.mkdir(parents=True, exist_ok=True)
    with small_disk(daemon.media_dir, "64m"):
        # Read-only while no file is open for writing (a busy filesystem cannot be remounted).
        subprocess.run(["mount", "-o", "remount,ro", str(daemon.media_dir)], check=True)
        daemon.start()
        try:
            daemon.drop_atomic("extract_20261201T030000.json", records)
            paused = daemon.wait_for("downloads_paused", timeout=30)
            assert paused["reason"] == "read_only", paused
            assert str(daemon.media_dir) in paused["detail"]
            names = {i.name for i in items}

            def requests() -> int:
                return sum(r.name in names for r in origin.requests())

            at_pause, since = requests(), daemon.event_count()
            assert at_pause <= 2  # the transfers that found out
            quiet_from = time.monotonic()
            while time.monotonic() - quiet_from < 3:
                assert requests() == at_pause, "a request went out while paused"
                assert daemon.event_count() == since, daemon.tail(5)
                time.sleep(0.2)
            subprocess.run(["mount", "-o", "remount,rw", str(daemon.media_dir)], check=True)
            resumed = daemon.wait_for("downloads_resumed", since=since, timeout=90)
            assert resumed["reason"] == "read_only"
            daemon.wait_for_count("download_completed", len(items), timeout=40)
            assert _published_are_whole(daemon, items) == len(items)
            assert daemon.events("download_failed") == []
            assert daemon.events("download_retry_scheduled") == []
            assert {e["attempt"] for e in daemon.events("download_completed")} == {1}
        finally:
            daemon.terminate()
