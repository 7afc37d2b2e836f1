"""`workers = N`: the daemon downloads in N worker processes that coordinate through the
manifest. Against the real HTTPS HTTP/2 origin: every item done exactly once by one of the
workers, a worker killed mid-download started again without losing or repeating work, a
SIGTERM that hands every claim back, and the same on PostgreSQL.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from support.daemon import Daemon, Event, by_id
from support.extracts import make_record, new_id
from support.origin import OriginServer, RequestRecord
from support.postgres import PostgresCluster

SIZE = 16 * 1024
SLOW_SIZE = 512 * 1024
SLOW = {"chunk": 32 * 1024, "delay": 0.1}  # 16 chunks: about 1.6 s a file
OUTAGE_AFTER_ERROR_S = 4.0  # a database outage goes on this long after it is first logged


def _each_completed_once(daemon: Daemon, names: dict[str, str]) -> dict[str, list[Event]]:
    """The download_completed events by id: exactly one for each of `names`' ids."""
    completed = by_id(daemon.events("download_completed"))
    assert sorted(completed) == sorted(names)
    assert all(len(events) == 1 for events in completed.values())
    return completed


def _records(
    origin: OriginServer, prefix: str, n: int, size: int = SIZE, mode: str = "ok", **params: Any
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """`n` records served by `origin`; returns them and {aweme_id: origin name}."""
    rng = random.Random(prefix)
    records, names = [], {}
    for _ in range(n):
        aweme_id = new_id(rng)
        name = f"{prefix}-{aweme_id}"
        url = origin.url(name, mode, size, **params)
        records.append(make_record(aweme_id, url, "workers", size))
        names[aweme_id] = name
    return records, names


def _full_gets(origin: OriginServer, name: str, size: int) -> list[RequestRecord]:
    """The requests for `name` answered with the whole body."""
    return [
        r
        for r in origin.requests_for(name)
        if r.status == 200 and r.finished and r.bytes_sent == size
    ]


def _running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _scrape(address: str) -> dict[str, float]:
    """The samples of the Prometheus endpoint at `address`, by series."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        lines = response.read().decode("utf-8").splitlines()
    return {
        series: float(value)
        for series, value in (line.rsplit(" ", 1) for line in lines if not line.startswith("#"))
    }


def _rows(daemon: Daemon) -> list[tuple[str, str, int, str | None]]:
    """(aweme_id, state, attempts, owner) of every item, read after the daemon stopped."""
    with sqlite3.connect(daemon.state_dir / "manifest.sqlite3") as db:
        return db.execute("SELECT aweme_id, state, attempts, owner FROM items").fetchall()


def test_two_workers_share_the_queue_each_item_once(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, names = _records(origin, prefix, 200)
    daemon: Daemon = daemon_factory(concurrency=8, workers=2, metrics_address="127.0.0.1:0")
    daemon.start()
    started = daemon.wait_for_count("worker_started", 2)
    assert sorted(e["worker"] for e in started) == [1, 2]
    assert {e["concurrency"] for e in started} == {4}
    assert len({e["pid"] for e in started} | {daemon.pid}) == 3
    daemon.drop_atomic("extract_20261201T090000.json", records)
    daemon.wait_for("extract_completed", timeout=60)
    completed = _each_completed_once(daemon, names)
    assert {e[0]["worker"] for e in completed.values()} == {1, 2}, "both workers downloaded"
    for aweme_id, name in names.items():
        path = daemon.media_path("workers", aweme_id)
        assert path.read_bytes() == origin.content(name, SIZE)
        assert len(origin.requests_for(name)) == 1, f"{name} was requested more than once"
    metrics = _scrape(daemon.wait_for("metrics_serving")["address"])  # the node's, in main
    assert metrics['ingestd_downloads_total{outcome="completed",reason=""}'] == 200
    assert metrics["ingestd_downloaded_bytes_total"] == 200 * SIZE
    daemon.terminate()
    live = json.loads((daemon.state_dir / "live.json").read_text(encoding="utf-8"))
    assert (live["state"], live["completed"], live["received"]) == ("stopped", 200, 200 * SIZE)

    lines = daemon.log_file.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]  # one JSON object a line, none torn
    assert all(isinstance(e, dict) and "event" in e for e in events)
    in_file = [e for e in events if e["event"] == "download_completed"]
    assert sorted(e["aweme_id"] for e in in_file) == sorted(names)
    assert {e["worker"] for e in in_file} == {1, 2}
    order = [e["event"] for e in events]
    last_download = max(i for i, name in enumerate(order) if name == "download_completed")
    assert order.index("extract_completed") > last_download, "completed before its items"
    exited = [e for e in events if e["event"] == "worker_exited"]
    assert sorted((e["worker"], e["exit_code"], e["restart_in_s"]) for e in exited) == [
        (1, 0, None),
        (2, 0, None),
    ]
    assert all(state == "done" and owner is None for _, state, _, owner in _rows(daemon))
    assert not daemon.log_lines_containing("Traceback")


def test_a_worker_killed_mid_download_is_started_again_and_its_items_finish(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, names = _records(origin, prefix, 6, SLOW_SIZE, "slow", **SLOW)
    daemon: Daemon = daemon_factory(concurrency=4, workers=2, timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261201T100000.json", records)
    first = daemon.wait_for("download_started", lambda e: e.get("worker") == 1)
    victim = next(e for e in daemon.events("worker_started") if e["worker"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)

    exited = daemon.wait_for("worker_exited")
    assert (exited["worker"], exited["pid"], exited["signal"]) == (1, victim["pid"], "SIGKILL")
    assert exited["exit_code"] is None and 0 < exited["restart_in_s"] <= 1.0
    daemon.wait_for("worker_started", lambda e: e["worker"] == 1 and e["pid"] != victim["pid"])
    recovered = daemon.wait_for("items_recovered", lambda e: e.get("worker") == 1)
    assert recovered["count"] >= 1  # its successor let go of its claims
    daemon.wait_for("extract_completed", timeout=60)
    completed = by_id(daemon.events("download_completed"))
    assert sorted(completed) == sorted(names)
    for aweme_id, name in names.items():
        assert daemon.media_path("workers", aweme_id).read_bytes() == origin.content(
            name, SLOW_SIZE
        )
        # One whole body per item: the interrupted ones resume with a range, or start over
        # from nothing; none is downloaded whole twice.
        assert len(_full_gets(origin, name, SLOW_SIZE)) <= 1, name
    assert str(first["aweme_id"]) in completed
    daemon.terminate()
    assert all(state == "done" for _, state, _, _ in _rows(daemon))


def test_sigterm_stops_the_workers_and_hands_every_claim_back(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, _ = _records(origin, prefix, 12, SLOW_SIZE, "slow", **SLOW)
    daemon: Daemon = daemon_factory(concurrency=4, workers=2, timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261201T110000.json", records)
    daemon.wait_for_count("download_started", 4)
    daemon.wait_until(
        lambda: len([p for p in daemon.part_files() if p.stat().st_size > 0]) >= 2,
        "transfers have bytes on disk",
    )
    node = daemon.events("daemon_started")[0]["node"]
    assert set(daemon.status_json()["nodes"]) <= {f"{node}/1", f"{node}/2"}
    seconds = daemon.terminate(timeout=10.0)
    assert seconds < 9.0, f"the stop took {seconds:.1f} s"
    exited = daemon.events("worker_exited")
    assert sorted((e["worker"], e["exit_code"]) for e in exited) == [(1, 0), (2, 0)]
    rows = _rows(daemon)
    assert {state for _, state, _, _ in rows} <= {"pending", "done"}, rows
    assert all(owner is None for *_, owner in rows), "a claim was left"
    assert all(attempts == 0 for _, state, attempts, _ in rows if state == "pending"), rows
    assert daemon.part_files(), "the .part files stay for the resume"
    assert not daemon.log_lines_containing("Traceback")


def test_workers_drain_the_queue_on_postgresql(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    records, names = _records(origin, prefix, 60)
    daemon: Daemon = daemon_factory(concurrency=4, workers=2, manifest_url=postgres_url)
    daemon.start()
    daemon.drop_atomic("extract_20261201T120000.json", records)
    daemon.wait_for("extract_completed", timeout=60)
    _each_completed_once(daemon, names)
    status = daemon.status_json()
    assert status["items"]["done"] == 60 and status["nodes"] == {}
    daemon.terminate()


def test_a_database_outage_is_told_once_by_the_node_not_by_each_worker(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    # The main process and both workers each meet the outage; the node logs it once, and its
    # end once.
    records, names = _records(origin, prefix, 12, SLOW_SIZE, "slow", **SLOW)
    with PostgresCluster() as cluster:  # of this test's own: it is stopped
        daemon: Daemon = daemon_factory(
            concurrency=4, workers=2, manifest_url=cluster.new_database()
        )
        daemon.start()
        daemon.drop_atomic("extract_20261201T120000.json", records)
        daemon.wait_for_count("download_started", 4, timeout=30)
        cluster.halt()
        daemon.wait_for("manifest_error", timeout=30)
        time.sleep(OUTAGE_AFTER_ERROR_S)  # for every process to meet it
        cluster.resume()
        daemon.wait_for("extract_completed", timeout=90)
        _each_completed_once(daemon, names)
        daemon.wait_for("manifest_recovered", timeout=30)
        time.sleep(1.0)  # a late duplicate would come now
        assert len(daemon.events("manifest_error")) == 1, daemon.events("manifest_error")
        assert len(daemon.events("manifest_recovered")) == 1, daemon.events("manifest_recovered")
        daemon.terminate()


def test_a_reload_reaches_the_workers_and_workers_need_a_restart(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, names = _records(origin, prefix, 4)
    daemon: Daemon = daemon_factory(concurrency=2, workers=2)
    daemon.start()
    daemon.update_config(workers=3)
    daemon.send_signal(signal.SIGHUP)
    refused = daemon.wait_for("config_reload_failed")
    assert (refused["reason"], refused["keys"]) == ("restart_required", ["workers"])
    daemon.update_config(workers=2, allowed_hosts=["cdn.example.com"])
    daemon.send_signal(signal.SIGHUP)
    assert daemon.wait_for("config_reloaded")["changed"] == ["allowed_hosts"]
    daemon.drop_atomic("extract_20261201T130000.json", records)
    failed = daemon.wait_for_count("download_failed", 4)
    assert {(e["reason"], "host_not_allowed" in e["detail"]) for e in failed} == {
        ("unsafe_url", True)
    }
    assert {e["worker"] for e in failed} <= {1, 2}
    assert not any(origin.requests_for(name) for name in names.values())
    daemon.terminate()


def _lock_manifest_midway(
    daemon_factory: Any, origin: OriginServer, prefix: str, hold_s: float
) -> tuple[Daemon, dict[str, str]]:
    """Two workers on 40 slow files; once 4 are done another writer holds the manifest's write
    lock for `hold_s`. Returns when the extract has completed."""
    records, names = _records(origin, prefix, 40, 256 * 1024, "slow", chunk=32 * 1024, delay=0.05)
    daemon: Daemon = daemon_factory(concurrency=8, workers=2, timeout=5.0)
    daemon.start()
    daemon.drop_atomic("extract_20261201T140000.json", records)
    daemon.wait_for_count("download_completed", 4)
    with sqlite3.connect(daemon.state_dir / "manifest.sqlite3", isolation_level=None) as db:
        db.execute("BEGIN IMMEDIATE")
        time.sleep(hold_s)  # the test's subject: how long every process finds it locked
        db.execute("COMMIT")
    daemon.wait_for("extract_completed", timeout=60)
    _each_completed_once(daemon, names)
    return daemon, names


def test_a_busy_manifest_makes_the_workers_wait_not_fail(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    daemon, _ = _lock_manifest_midway(daemon_factory, origin, prefix, 2.0)  # within busy_timeout
    for name in ("download_failed", "download_retry_scheduled", "manifest_error"):
        assert daemon.events(name) == [], name
    daemon.terminate()


def test_a_manifest_locked_past_its_busy_timeout_fails_nothing(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    # Past it (5 s), by far: a write that starts in the first 7 s of the hold is refused.
    daemon, _ = _lock_manifest_midway(daemon_factory, origin, prefix, 12.0)
    assert daemon.events("download_failed") == []
    # The published files wait for their `done`, told once a refusal by each worker, not per item.
    refused = collections.Counter(
        e.get("worker") for e in daemon.events("download_bookkeeping_failed")
    )
    assert refused and set(refused) <= {1, 2} and max(refused.values()) == 1, refused
    assert daemon.status_json()["items"]["active"] == 0
    daemon.terminate()


def test_the_main_process_links_done_videos_into_new_topics(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, names = _records(origin, prefix, 3)
    daemon: Daemon = daemon_factory(concurrency=2, workers=2)
    daemon.start()
    daemon.drop_atomic("extract_20261201T150000.json", records)
    daemon.wait_for("extract_completed")
    again = [{**record, "query_context": "more workers"} for record in records]
    daemon.drop_atomic("extract_20261201T160000.json", again)
    linked = daemon.wait_for_count("video_linked", 3)
    assert all("worker" not in e for e in linked)  # made by the main process
    for aweme_id in names:
        first = daemon.media_path("workers", aweme_id)
        assert daemon.media_path("more workers", aweme_id).samefile(first)
    assert len(daemon.events("download_completed")) == 3  # nothing downloaded again
    daemon.terminate()


def test_workers_stop_by_themselves_when_the_main_process_dies(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    records, _ = _records(origin, prefix, 8, SLOW_SIZE, "slow", **SLOW)
    daemon: Daemon = daemon_factory(concurrency=4, workers=2, timeout=5.0)
    daemon.start()
    pids = [e["pid"] for e in daemon.wait_for_count("worker_started", 2)]
    daemon.drop_atomic("extract_20261201T170000.json", records)
    daemon.wait_for_count("download_started", 4)
    daemon.kill()
    deadline = time.monotonic() + 10.0
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the process table, bounded
    assert not any(map(_running, pids)), "a worker outlived its main process"
    rows = _rows(daemon)
    assert all(owner is None for *_, owner in rows), "the orphans handed their claims back"
    assert {state for _, state, _, _ in rows} <= {"pending", "done"}, rows
