"""The sample extracts become a deduplicated on-disk library (happy path and startup scan)."""

from __future__ import annotations

import hashlib
import os
import random
import time
from typing import Any

import pytest

from support.daemon import Daemon, by_id, extract_counts, sha256_file, topic_dir
from support.extracts import (
    SAMPLE_FIRST,
    SAMPLE_SECOND,
    Item,
    load_sample,
    localize,
    make_record,
    new_id,
    samples_dir,
)
from support.origin import OriginServer

BOTH_HTTP2_CLIENTS = True  # every test here runs on ours and on httpx's HTTP/2 (h2)

pytestmark = pytest.mark.skipif(samples_dir() is None, reason="shared sample extracts not found")

SAMPLE_MIDDLE = "extract_20261126T120000.json"


def _expected_files(daemon: Daemon, items: list[Item]) -> dict[Any, Item]:
    return {daemon.media_path(item.topic, item.aweme_id): item for item in items}


def _wait_for_library(daemon: Daemon, items: list[Item]) -> None:
    expected = _expected_files(daemon, items)

    def missing() -> list[str]:
        return [str(p.relative_to(daemon.media_dir)) for p in expected if not p.is_file()]

    daemon.wait_until(
        lambda: not missing() and not daemon.part_files(),
        "every topic folder holds its files and no .part is left",
        timeout=10,
        detail=lambda: f"missing: {missing()}; .part: {daemon.part_files()}",
    )


def _assert_library(daemon: Daemon, items: list[Item]) -> None:
    """Every (topic, id) file is present and byte-identical; repeated ids share one inode."""
    expected = _expected_files(daemon, items)
    missing = [str(p) for p in expected if not p.is_file()]
    assert not missing, f"missing library files: {missing}\n{daemon.tail()}"
    for path, item in expected.items():
        data = path.read_bytes()
        assert data == item.content(), f"{path} differs from the origin's bytes ({len(data)} B)"
    assert daemon.part_files() == [], f".part files left: {daemon.part_files()}"

    inodes: dict[str, set[int]] = {}
    for path, item in expected.items():
        inodes.setdefault(item.aweme_id, set()).add(path.stat().st_ino)
    for aweme_id, seen in inodes.items():
        assert len(seen) == 1, f"{aweme_id}: copies in several topics are not one hard-linked file"
    topics_per_id: dict[str, set[str]] = {}
    for item in items:
        topics_per_id.setdefault(item.aweme_id, set()).add(item.topic)
    for aweme_id, topics in topics_per_id.items():
        if len(topics) > 1:
            nlink = daemon.media_path(next(iter(topics)), aweme_id).stat().st_nlink
            assert nlink >= len(topics), f"{aweme_id}: st_nlink={nlink} for {len(topics)} topics"


def _assert_log_shape(daemon: Daemon) -> None:
    bad = [e for e in daemon.events() if not {"event", "level", "timestamp"} <= e.keys()]
    assert not bad, f"stdout lines that are not JSON events with event/level/timestamp: {bad[:5]}"
    leaks = daemon.log_lines_containing("signature=")
    assert not leaks, f"log lines leak the signed query string: {leaks[:3]}"


def test_sample_extracts_become_deduplicated_library(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    first, items1 = localize(load_sample(SAMPLE_FIRST), origin, prefix)
    second, items2 = localize(load_sample(SAMPLE_SECOND), origin, prefix)
    unique: dict[str, Item] = {}
    for item in items1 + items2:
        unique.setdefault(item.aweme_id, item)
    repeated = {i.aweme_id for i in items2} & {i.aweme_id for i in items1}
    assert len(unique) == 40
    assert len(repeated) == 6

    daemon = daemon_factory()
    daemon.start()
    started = daemon.events("daemon_started")[0]
    assert started["pid"] == daemon.pid
    assert os.path.samefile(started["data_dir"], daemon.data_dir)
    assert os.path.samefile(started["state_dir"], daemon.state_dir)
    assert started["version"]
    daemon.drop_atomic(SAMPLE_FIRST, first)
    merged1 = daemon.wait_for("extract_merged", lambda e: e["path"].endswith(SAMPLE_FIRST))
    daemon.drop_atomic(SAMPLE_SECOND, second)
    merged2 = daemon.wait_for("extract_merged", lambda e: e["path"].endswith(SAMPLE_SECOND))
    raw_digests = {p.name: sha256_file(p) for p in daemon.raw_dir.glob("extract_*.json")}

    assert merged1["sha256"] == raw_digests[SAMPLE_FIRST]
    assert (merged1["records"], merged1["new"], merged1["updated"], merged1["unusable"]) == (
        24,
        24,
        0,
        0,
    ), merged1
    assert (merged2["records"], merged2["new"], merged2["updated"], merged2["unusable"]) == (
        22,
        16,
        6,
        0,
    ), merged2

    daemon.wait_for_count("download_completed", len(unique), timeout=60)
    _wait_for_library(daemon, items1 + items2)
    _assert_library(daemon, items1 + items2)

    completed = by_id(daemon.events("download_completed"))
    assert set(completed) == set(unique), "download_completed ids differ from the extracts' ids"
    for aweme_id, events in completed.items():
        item = unique[aweme_id]
        assert len(events) == 1, f"{aweme_id} downloaded {len(events)} times (should be linked)"
        event = events[0]
        assert event["bytes"] == item.size
        assert event["sha256"] == hashlib.sha256(item.content()).hexdigest()
        assert os.path.samefile(event["path"], daemon.media_path(item.topic, aweme_id))
    for event in daemon.events("download_started"):
        assert "?" not in event["url"], f"download_started.url carries a query: {event['url']}"
        assert event["url"].startswith(f"{origin.base}/v/"), event["url"]

    for item in unique.values():
        reqs = origin.requests_for(item.name)
        assert reqs, f"no request reached the origin for {item.aweme_id}"
        assert {r.http_version for r in reqs} == {"2"}, f"{item.aweme_id} not fetched over HTTP/2"

    status = daemon.status_json()
    assert status["items"] == {"pending": 0, "active": 0, "done": 40, "expired": 0, "failed": 0}
    assert extract_counts(status["extracts"]) == (2, 0)
    assert status["bytes_done"] == sum(i.size for i in unique.values())

    # The extracts are read, never moved or rewritten.
    assert {p.name: sha256_file(p) for p in daemon.raw_dir.glob("extract_*.json")} == raw_digests
    _assert_log_shape(daemon)

    elapsed = daemon.terminate()
    assert elapsed < 10
    assert daemon.events("daemon_stopped"), daemon.tail()
    assert daemon.status_json()["items"]["done"] == 40  # works with the daemon stopped too


def test_startup_scan_merges_existing_extracts_oldest_first(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    first, items1 = localize(load_sample(SAMPLE_FIRST), origin, prefix)
    second, items2 = localize(load_sample(SAMPLE_SECOND), origin, prefix)
    rng = random.Random(prefix)
    middle = []
    items_mid = []
    for _ in range(3):
        aweme_id = new_id(rng)
        name = f"{prefix}-{aweme_id}"
        middle.append(make_record(aweme_id, origin.url(name, size=40_000), "late night", 40_000))
        items_mid.append(Item(aweme_id, name, 40_000, "late night"))

    daemon = daemon_factory()
    # Written newest first, so neither creation order nor directory order is the right order;
    # mtimes agree with the names.
    now = time.time()
    for offset, (name, payload) in enumerate(
        [(SAMPLE_SECOND, second), (SAMPLE_MIDDLE, middle), (SAMPLE_FIRST, first)]
    ):
        path = daemon.write_raw(name, payload)
        os.utime(path, (now - 60 * (offset + 1), now - 60 * (offset + 1)))

    daemon.start()
    merged = daemon.events("extract_merged")
    names = [os.path.basename(e["path"]) for e in merged]
    assert names == [SAMPLE_FIRST, SAMPLE_MIDDLE, SAMPLE_SECOND], (
        f"startup scan should merge every existing extract, oldest name first, before "
        f"daemon_ready; merged before ready: {names}\n{daemon.tail()}"
    )
    events = daemon.events()
    ready_at = next(i for i, e in enumerate(events) if e["event"] == "daemon_ready")
    assert all(events.index(e) < ready_at for e in merged)
    assert merged[1]["new"] == 3

    all_items = items1 + items_mid + items2
    unique = {i.aweme_id for i in all_items}
    daemon.wait_for_count("download_completed", len(unique), timeout=60)
    _wait_for_library(daemon, all_items)
    _assert_library(daemon, all_items)
    assert topic_dir("late night") == "late_night"
    assert (daemon.media_dir / "late_night").is_dir()

    status = daemon.status_json()
    assert extract_counts(status["extracts"]) == (3, 0)
    assert status["items"]["done"] == len(unique)
    daemon.terminate()


def test_video_found_again_under_new_topic_is_hard_linked(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    """The repeat arrives after its first download finished: link it, do not fetch it again."""
    first, items1 = localize(load_sample(SAMPLE_FIRST), origin, prefix)
    second, items2 = localize(load_sample(SAMPLE_SECOND), origin, prefix)
    repeated = {i.aweme_id for i in items2} & {i.aweme_id for i in items1}

    daemon = daemon_factory()
    daemon.start()
    daemon.drop_atomic(SAMPLE_FIRST, first)
    daemon.wait_for_count("download_completed", len(items1), timeout=40)
    before = {i.name: origin.request_count(i.name) for i in items1}
    daemon.drop_atomic(SAMPLE_SECOND, second)
    merged = daemon.wait_for("extract_merged", lambda e: e["path"].endswith(SAMPLE_SECOND))
    assert merged["updated"] == len(repeated), merged
    daemon.wait_for_count("download_completed", len(items1) + len(items2) - len(repeated))
    _wait_for_library(daemon, items1 + items2)
    _assert_library(daemon, items1 + items2)
    for item in items1:
        if item.aweme_id in repeated:
            refetched = origin.request_count(item.name) - before[item.name]
            assert refetched == 0, f"{item.aweme_id} fetched again instead of linked"
    daemon.terminate()
