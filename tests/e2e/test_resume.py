"""Interrupted downloads (SIGKILL, SIGTERM) resume with Range after a restart and end intact."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from typing import Any

import pytest

from ingestd.store.manifest import Manifest
from support.daemon import Daemon, by_id
from support.extracts import Item, make_record, new_id
from support.origin import OriginServer

BOTH_HTTP2_CLIENTS = True  # every test here runs on ours and on httpx's HTTP/2 (h2)

TOPIC = "slow motion"
# Large enough that a daemon which batches writes still has bytes on disk part way through.
SIZE = 3 * 1024 * 1024
CHUNK = 64 * 1024
DELAY = 0.06  # 48 chunks * 0.06 s: each file takes >= 2.9 s from scratch
MIN_PART = 1  # any byte on disk


def _slow_items(
    origin: OriginServer, prefix: str, n: int
) -> tuple[list[dict[str, Any]], list[Item]]:
    rng = random.Random(prefix)
    records, items = [], []
    for _ in range(n):
        aweme_id = new_id(rng)
        name = f"{prefix}-{aweme_id}"
        url = origin.url(name, "slow", SIZE, chunk=CHUNK, delay=DELAY)
        records.append(make_record(aweme_id, url, TOPIC, SIZE))
        items.append(Item(aweme_id, name, SIZE, TOPIC))
    return records, items


def _part(daemon: Daemon, item: Item) -> Any:
    final = daemon.media_path(item.topic, item.aweme_id)
    return final.with_name(final.name + ".part")


def _listing(daemon: Daemon) -> list[tuple[str, int]]:
    return [
        (str(p.relative_to(daemon.data_dir)), p.stat().st_size)
        for p in sorted(daemon.data_dir.rglob("*"))
        if p.is_file()
    ]


def _interrupt_midway(daemon: Daemon, items: list[Item]) -> dict[str, int]:
    """Wait until every item has a partial file with data on disk (SIGKILL keeps only what was
    written); return their sizes."""
    daemon.wait_for_count("download_started", len(items), timeout=15)

    def parts_have_data() -> bool:
        return all(
            _part(daemon, i).exists() and _part(daemon, i).stat().st_size >= MIN_PART for i in items
        )

    daemon.wait_until(
        parts_have_data,
        f"every .part holds >= {MIN_PART} bytes",
        timeout=15,
        detail=lambda: f"files under data/: {_listing(daemon)}",
    )
    return {i.aweme_id: _part(daemon, i).stat().st_size for i in items}


def _durable(daemon: Daemon, items: list[Item]) -> dict[str, int]:
    """The durable offset the manifest records for each item's .part."""
    manifest = Manifest.open(daemon.state_dir / "manifest.sqlite3", readonly=True)
    try:
        rows = {i.aweme_id: manifest.item(i.aweme_id) for i in items}
    finally:
        manifest.close()
    return {k: int(r["durable_bytes"]) if r else 0 for k, r in rows.items()}


def _interrupt_with_durable_bytes(daemon: Daemon, items: list[Item]) -> dict[str, int]:
    """Wait until every item has a checkpoint (fsynced bytes, recorded); return the offsets."""
    _interrupt_midway(daemon, items)
    daemon.wait_until(
        lambda: min(_durable(daemon, items).values()) >= CHUNK,
        "every .part has a durable checkpoint",
        timeout=15,
        detail=lambda: f"durable offsets: {_durable(daemon, items)}",
    )
    return _durable(daemon, items)


def _assert_resumed_and_intact(
    daemon: Daemon, origin: OriginServer, items: list[Item], restarted_at: float
) -> None:
    daemon.wait_for_count("download_completed", len(items), timeout=40)
    daemon.wait_until(lambda: not daemon.part_files(), "no .part file is left", timeout=10)
    for item in items:
        path = daemon.media_path(item.topic, item.aweme_id)
        assert path.read_bytes() == item.content(), f"{item.aweme_id}: resumed file is corrupt"
    after = [r for i in items for r in origin.requests_for(i.name) if r.time >= restarted_at]
    ranged = [r for r in after if r.range]
    assert ranged, (
        f"no request after the restart carried Range: {[(r.name, r.headers) for r in after]}"
    )
    for r in ranged:
        assert r.range.startswith("bytes=") and r.range != "bytes=0-", r.range
        assert r.status == 206, f"{r.name}: Range {r.range} If-Range {r.if_range} -> {r.status}"
    completed = by_id(daemon.events("download_completed"))
    assert any(e[0].get("resumed") is True for e in completed.values()), completed
    assert daemon.log_lines_containing("signature=") == []


@pytest.mark.also_workers
def test_sigkill_mid_download_then_restart_resumes(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, items = _slow_items(origin, prefix, 3)
    daemon: Daemon = daemon_factory(concurrency=4, timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261126T170000.json", records)
    _interrupt_with_durable_bytes(daemon, items)
    sizes = {i.aweme_id: _part(daemon, i).stat().st_size for i in items}
    daemon.kill()
    assert daemon.proc is not None and daemon.proc.returncode == -9
    for item in items:
        assert not daemon.media_path(item.topic, item.aweme_id).exists()
        assert _part(daemon, item).stat().st_size >= sizes[item.aweme_id]

    restarted_at = time.time()
    daemon.start()
    _assert_resumed_and_intact(daemon, origin, items, restarted_at)
    assert daemon.status_json()["items"]["done"] == 3
    daemon.terminate()


@pytest.mark.builtin_only  # its subject is the claims, not HTTP
def test_a_crash_charges_the_running_item_not_those_claimed_ahead(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    daemon, _ = _one_running_one_claimed_ahead(daemon_factory, origin, prefix)
    daemon.kill()
    daemon.start()
    daemon.wait_for("daemon_ready", timeout=15)
    recovered = daemon.events("items_recovered")
    assert [e["count"] for e in recovered] == [1], recovered
    daemon.terminate()


@pytest.mark.also_workers
def test_power_loss_after_sigkill_never_publishes_bytes_that_were_not_durable(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    """A power cut keeps what was fsynced; past it a file may read back as zeros. Simulated:
    SIGKILL mid-transfer, then every .part's tail after its last checkpoint is zero-filled
    (its size kept, as ext4 leaves it). The restart must cut the tails and fetch them again."""
    records, items = _slow_items(origin, prefix, 3)
    daemon: Daemon = daemon_factory(concurrency=4, timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261127T170000.json", records)
    _interrupt_with_durable_bytes(daemon, items)
    daemon.kill()
    durable = _durable(daemon, items)
    zeroed = 0
    for item in items:
        part = _part(daemon, item)
        size = part.stat().st_size
        assert size >= durable[item.aweme_id]
        with part.open("r+b") as handle:  # the tail a power cut lost
            handle.seek(durable[item.aweme_id])
            handle.write(bytes(size - durable[item.aweme_id]))
        zeroed += size - durable[item.aweme_id]
        if size == durable[item.aweme_id]:  # nothing past the checkpoint: lose a page more
            with part.open("ab") as handle:
                handle.write(bytes(4096))
            zeroed += 4096

    restarted_at = time.time()
    daemon.start()
    _assert_resumed_and_intact(daemon, origin, items, restarted_at)
    ranged = [r for i in items for r in origin.requests_for(i.name) if r.time >= restarted_at]
    starts = {r.name: int(r.range.removeprefix("bytes=").rstrip("-")) for r in ranged if r.range}
    for item in items:  # each resumed exactly from its checkpoint, not from the part's size
        if item.name in starts:
            assert starts[item.name] == durable[item.aweme_id], (starts, durable)
    print(f"power loss: {zeroed} zeroed bytes past the checkpoints, all cut and fetched again")
    daemon.terminate()


@pytest.mark.also_workers
def test_sigterm_exits_promptly_and_restart_resumes(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, items = _slow_items(origin, prefix, 3)
    daemon: Daemon = daemon_factory(concurrency=4, timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261126T180000.json", records)
    _interrupt_midway(daemon, items)
    assert daemon.events("download_completed") == [], "downloads were not in flight"

    elapsed = daemon.terminate(timeout=10)
    print(f"SIGTERM with 3 downloads in flight: exit 0 after {elapsed:.2f}s")
    assert elapsed < 10
    assert daemon.events("daemon_stopped"), daemon.tail()
    for item in items:
        assert not daemon.media_path(item.topic, item.aweme_id).exists()
        assert _part(daemon, item).stat().st_size > 0, f"{item.aweme_id}: .part not kept"
    status = daemon.status_json()
    assert status["items"]["done"] == 0
    assert status["items"]["pending"] + status["items"]["active"] == 3, status

    restarted_at = time.time()
    daemon.start()
    _assert_resumed_and_intact(daemon, origin, items, restarted_at)
    daemon.terminate()


def _one_running_one_claimed_ahead(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> tuple[Daemon, list[Item]]:
    """Four slow items, one transfer at a time: one runs, and the pool has claimed one ahead."""
    records, items = _slow_items(origin, prefix, 4)
    daemon: Daemon = daemon_factory(concurrency=1, timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261126T190000.json", records)
    daemon.wait_for_count("download_started", 1, timeout=15)
    return daemon, items


@pytest.mark.builtin_only  # its subject is the claims, not HTTP
def test_a_clean_stop_hands_back_running_and_claimed_ahead_items(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    # A clean stop must hand the running item and the one claimed ahead back to the queue,
    # with the attempt that starting counted given back too.
    daemon, items = _one_running_one_claimed_ahead(daemon_factory, origin, prefix)
    status = daemon.status_json()["items"]  # `active` is what is in flight, nothing more
    assert (status["active"], status["pending"]) == (1, 3), status
    assert daemon.terminate(timeout=10) < 10
    manifest = Manifest.open(daemon.state_dir / "manifest.sqlite3", readonly=True)
    try:
        rows = [manifest.item(i.aweme_id) for i in items]
    finally:
        manifest.close()
    assert [(r["state"], r["attempts"]) for r in rows if r] == [("pending", 0)] * 4, rows


@pytest.mark.builtin_only  # its subject is the claims, not HTTP
def test_pausing_for_disk_space_hands_back_items_claimed_ahead(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    daemon, items = _one_running_one_claimed_ahead(daemon_factory, origin, prefix)
    since = daemon.event_count()
    daemon.update_config(min_free_bytes=2**60)  # no disk has that much: pause
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for("downloads_paused", since=since, timeout=10)
    # The running transfer goes on to the end; nothing else is started, nor left claimed.
    daemon.wait_for_count("download_completed", 1, timeout=20)
    daemon.wait_until(
        lambda: daemon.status_json()["items"]["active"] == 0,
        "no item claimed while paused",
        timeout=5,
        detail=daemon.status_json,
    )
    items = daemon.status_json()["items"]
    assert (items["active"], items["done"], items["pending"]) == (0, 1, 3), items
    assert len(daemon.events("download_started")) == 1
    daemon.terminate()


@pytest.mark.builtin_only  # its subject is the claims, not HTTP
def test_a_manifest_that_refuses_an_outcome_for_a_while_never_strands_the_item(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    aweme_id, name = new_id(random.Random(prefix)), f"{prefix}-locked"
    url = origin.url(name, "slow", 256 * 1024, chunk=CHUNK, delay=0.3)  # about 1.2 s
    daemon: Daemon = daemon_factory(timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261201T170000.json", [make_record(aweme_id, url, TOPIC)])
    daemon.wait_for("download_started", timeout=15)
    blocker = sqlite3.connect(daemon.state_dir / "manifest.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the manifest past busy_timeout
        failed = daemon.wait_for("download_bookkeeping_failed", timeout=20)
        # Logged once for the outcomes waiting, not once per item; its done goes in later.
        assert failed["aweme_ids"] == [aweme_id] and failed["items"] == 1, failed
        assert "locked" in failed["error"], failed
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    done = daemon.wait_for("download_completed", timeout=40)
    assert done["aweme_id"] == aweme_id
    daemon.wait_until(
        lambda: daemon.status_json()["items"]["done"] == 1, "the item is recorded done", timeout=10
    )
    assert daemon.status_json()["items"]["active"] == 0
    daemon.terminate()
