"""Batch events with the real daemon and a real HTTPS origin: extract_completed once per extract,
after the events of its items, across a restart; dead URLs summed up in one line per merge."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from support.daemon import Daemon, Event
from support.extracts import make_record, new_id
from support.origin import OriginServer

SIZE = 48 * 1024
FINAL = ("download_completed", "download_failed", "download_expired")


def _index(daemon: Daemon, event: Event) -> int:
    return next(i for i, e in enumerate(daemon.events()) if e is event)


def _completed(daemon: Daemon, name: str, timeout: float = 20) -> Event:
    return daemon.wait_for("extract_completed", lambda e: e["path"].endswith(name), timeout=timeout)


def test_an_extract_completes_once_after_the_last_event_of_its_items(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    ok = {new_id(rng): (f"{prefix}-ok{i}", SIZE + i) for i in range(3)}
    gone, dead = new_id(rng), new_id(rng)
    records = [make_record(i, origin.url(n, size=size), "batch") for i, (n, size) in ok.items()]
    records.append(make_record(gone, origin.url(f"{prefix}-gone", mode="404"), "batch"))
    expired_at = int(time.time()) - 120
    records.append(make_record(dead, origin.url(f"{prefix}-dead", expire=expired_at), "batch"))
    records.append({"aweme_id": "../not-an-item", "media": {"source_url": "https://h/v"}})
    daemon: Daemon = daemon_factory()
    daemon.start()
    daemon.drop_atomic("extract_20261201T090000.json", records)
    merged = daemon.wait_for("extract_merged")
    completed = _completed(daemon, "extract_20261201T090000.json")
    assert (completed["path"], completed["sha256"]) == (merged["path"], merged["sha256"])
    assert {k: completed[k] for k in ("items", "done", "expired", "failed", "bytes")} == {
        "items": 5,  # the unusable record is not an item
        "done": 3,
        "expired": 1,
        "failed": 1,
        "bytes": sum(size for _, size in ok.values()),
    }
    assert 0 <= completed["duration_s"] < 20
    finals = daemon.events(predicate=lambda e: e["event"] in FINAL)
    assert sorted(str(e["aweme_id"]) for e in finals) == sorted([*ok, gone])
    summary = daemon.wait_for("extract_expired_items")
    assert summary["aweme_ids"] == [dead] and summary["count"] == 1
    at = _index(daemon, completed)
    assert all(_index(daemon, e) < at for e in [merged, summary, *finals])
    time.sleep(2.5)  # two more looks of the daemon: nothing more to say
    assert len(daemon.events("extract_completed")) == 1
    daemon.terminate()
    daemon.start()  # and nothing after a restart either
    time.sleep(1.5)
    assert daemon.events("extract_completed") == []
    daemon.terminate()


def test_an_extract_of_done_duplicates_completes_at_its_merge(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    ids = [new_id(rng) for _ in range(2)]
    first = [make_record(i, origin.url(f"{prefix}-{i}", size=SIZE), "one") for i in ids]
    daemon: Daemon = daemon_factory()
    daemon.start()
    daemon.drop_atomic("extract_20261201T100000.json", first)
    _completed(daemon, "extract_20261201T100000.json")
    requests = len(origin.requests())
    again = [make_record(i, origin.url(f"{prefix}-{i}", size=SIZE), "two") for i in ids]
    daemon.drop_atomic("extract_20261201T110000.json", again)
    merged = daemon.wait_for("extract_merged", lambda e: e["path"].endswith("T110000.json"))
    completed = _completed(daemon, "extract_20261201T110000.json", timeout=5)
    assert (completed["items"], completed["done"], completed["bytes"]) == (2, 2, 2 * SIZE)
    assert completed["duration_s"] < 2.0, "it was complete at its merge"
    assert _index(daemon, merged) < _index(daemon, completed)
    assert len(origin.requests()) == requests, "nothing downloaded again"
    daemon.terminate()


def test_an_extract_left_unfinished_by_a_stop_completes_after_the_restart(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    quick, stuck = new_id(rng), new_id(rng)
    records = [
        make_record(quick, origin.url(f"{prefix}-quick", size=SIZE), "r"),
        # Its first answer stalls (the stop finds it in flight); the next one is whole.
        make_record(
            stuck,
            origin.url(f"{prefix}-stuck", "stall", SIZE, k=1, stall_after=16384, stall_s=30),
            "r",
        ),
    ]
    daemon: Daemon = daemon_factory(timeout=20.0, min_rate=0)
    daemon.start()
    daemon.drop_atomic("extract_20261201T120000.json", records)
    daemon.wait_for("download_completed", lambda e: str(e["aweme_id"]) == quick)
    daemon.wait_until(
        lambda: origin.request_count(f"{prefix}-stuck") == 1, "the stalled request is in flight"
    )
    time.sleep(1.2)  # a look of the daemon with the extract unfinished
    assert daemon.events("extract_completed") == []
    daemon.terminate()
    daemon.start()
    completed = _completed(daemon, "extract_20261201T120000.json")
    assert (completed["items"], completed["done"], completed["bytes"]) == (2, 2, 2 * SIZE)
    done = daemon.wait_for("download_completed", lambda e: str(e["aweme_id"]) == stuck)
    assert _index(daemon, done) < _index(daemon, completed)
    assert completed["duration_s"] >= 1.0  # from the merge, in the first run
    time.sleep(1.5)
    assert len(daemon.events("extract_completed")) == 1
    daemon.terminate()
    daemon.start()
    time.sleep(1.5)
    assert daemon.events("extract_completed") == []
    daemon.terminate()


def test_urls_dead_at_merge_are_one_line_not_one_per_item(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    now = int(time.time())
    records = [
        make_record(new_id(rng), origin.url(f"{prefix}-{i}", expire=now - 3600 + i), "dead")
        for i in range(1_000)
    ]
    ids = [str(r["aweme_id"]) for r in records]
    daemon: Daemon = daemon_factory()
    daemon.start()
    daemon.drop_atomic("extract_20261201T130000.json", records)
    merged = daemon.wait_for("extract_merged")
    assert (merged["new"], merged["expired"]) == (1_000, 1_000)
    daemon.wait_for("extract_expired_items")  # logged right after extract_merged
    (summary,) = daemon.events("extract_expired_items")
    assert summary["level"] == "warning" and summary["count"] == 1_000
    assert summary["path"] == merged["path"] and summary["sha256"] == merged["sha256"]
    assert summary["aweme_ids"] == ids[:10]
    assert summary["earliest_expiry"] == _iso(now - 3600)
    assert summary["latest_expiry"] == _iso(now - 3600 + 999)
    completed = _completed(daemon, "extract_20261201T130000.json", timeout=5)
    assert (completed["items"], completed["expired"], completed["done"]) == (1_000, 1_000, 0)
    assert daemon.status_json()["items"]["expired"] == 1_000
    assert not any(e["event"].startswith("download_") for e in daemon.events())
    assert origin.request_count(f"{prefix}-0") == 0
    lines = daemon.log_file.read_text().splitlines()
    assert sum(ids[500] in line for line in lines) == 0, "no line of its own for any of them"
    assert len(lines) < 20, lines[:30]
    daemon.terminate()


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def test_status_counts_and_the_event_agree_on_a_big_extract_merged_in_a_child(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    """Over 4 MiB: merged by a child process, which hands back what it found dead."""
    now = int(time.time())
    pad = "x" * 900
    records = [
        {
            "aweme_id": f"9{i:018d}",
            "desc": pad,
            "media": {"source_url": origin.url(f"{prefix}-{i}", expire=now - 60)},
            "query_context": "big",
        }
        for i in range(5_000)
    ]
    assert len(json.dumps(records)) > 4 * 1024 * 1024
    daemon: Daemon = daemon_factory()
    daemon.start()
    daemon.drop_atomic("extract_20261201T140000.json", records)
    merged = daemon.wait_for("extract_merged", timeout=60)
    assert merged["expired"] == 5_000
    summary = daemon.wait_for("extract_expired_items")
    assert summary["count"] == 5_000 and len(summary["aweme_ids"]) == 10
    completed = _completed(daemon, "extract_20261201T140000.json", timeout=10)
    assert (completed["items"], completed["expired"]) == (5_000, 5_000)
    daemon.terminate()
