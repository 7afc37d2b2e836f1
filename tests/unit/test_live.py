"""The live view's arithmetic and document, with no clock, file or terminal."""

from __future__ import annotations

import json

import pytest

from ingestd.ops.live import (
    MAX_HOSTS_SHOWN,
    STALE_AFTER,
    InFlight,
    Live,
    RateMeter,
    daemon_state,
    eta_seconds,
    live_document,
    parse_live,
    read_live,
    summary_line,
    work_fraction,
    write_live,
)


def live(**kw: object) -> Live:
    base: dict[str, object] = {
        "pid": 42,
        "written_at": 1000.0,
        "clock": 50.0,
        "state": "running",
        "received": 0,
    }
    return Live(**{**base, **kw})  # type: ignore[arg-type]


def test_the_rate_counts_bytes_still_in_flight_over_a_window_and_restarts_with_a_new_daemon() -> (
    None
):
    meter = RateMeter(window=5.0)
    assert meter.rate() is None
    for second in range(11):  # 1.5 MB/s, arriving in transfers that have not completed
        meter.add(100.0 + second, 1_500_000 * second)
    assert meter.rate() == pytest.approx(1_500_000)
    meter.add(111.0, 1_500_000 * 10 + 6_000_000)  # a burst: smoothed over the window
    assert 1_500_000 < (meter.rate() or 0) < 3_000_000
    meter.add(111.0, 10**9)  # the same document read twice: ignored
    meter.add(5.0, 1000)  # a new daemon (its clock and counter went back): start over
    assert meter.rate() is None
    meter.add(6.0, 2000)
    assert meter.rate() == pytest.approx(1000)


def test_the_bar_covers_the_work_that_can_still_complete() -> None:
    assert work_fraction({"done": 2, "failed": 1, "expired": 97}) == 1.0
    assert work_fraction({"done": 1, "pending": 2, "active": 1, "failed": 5}) == 0.25
    assert work_fraction({}) == 1.0


def test_eta_sizes_outstanding_items_by_the_done_ones_net_of_what_arrived() -> None:
    items = {"done": 10, "pending": 3, "active": 1}
    flying = [InFlight("1", "t", 0, 500_000, 1_000_000, 2.0)]
    # 4 outstanding x 1 MB average, 0.5 MB of it arrived, at 0.5 MB/s: 7 s.
    assert eta_seconds(items, 10_000_000, flying, 500_000) == pytest.approx(7.0)
    assert eta_seconds(items, 10_000_000, flying, None) is None
    assert eta_seconds({"done": 3}, 1, [], None) == 0.0
    assert eta_seconds({"pending": 2}, 0, [], 1000.0) is None  # no size known yet
    assert eta_seconds({"pending": 2}, 0, [InFlight("1", "t", 0, 0, 4000, 0.1)], 1000.0) == 8.0


def test_the_daemon_state_running_paused_stopped_or_silent() -> None:
    assert daemon_state(None, 0.0, False)[0] == "unknown"
    assert daemon_state(live(), 1001.0, True) == ("running", "pid 42")
    paused = live(state="paused", pause_reason="low_disk_space", pause_detail="/srv")
    assert daemon_state(paused, 1001.0, True) == ("paused", "low_disk_space: /srv")
    assert daemon_state(live(), 1001.0, False)[0] == "stopped"  # killed: its pid is gone
    assert daemon_state(live(state="stopped"), 1001.0, True)[0] == "stopped"
    assert daemon_state(live(), 1000.0 + STALE_AFTER + 1, True)[0] == "not_responding"
    hosts = tuple(f"h{i}:443" for i in range(5))
    state = daemon_state(live(hosts_down=hosts, hosts_down_count=5), 1001.0, True)
    assert state == ("running", "hosts down: h0:443, h1:443, h2:443 and 2 more")


def test_the_document_round_trips_bounded_and_rejects_what_is_not_one(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "live.json"
    hosts = tuple(f"h{i}" for i in range(MAX_HOSTS_SHOWN + 5))
    snapshot = live(
        received=123,
        transfers=(InFlight("7", "cats", 10, 20, None, 1.5),),
        hosts_down=hosts,
        hosts_down_count=len(hosts),
    )
    write_live(path, snapshot)
    back = read_live(path)
    assert back is not None and back.transfers == snapshot.transfers
    assert back.hosts_down == hosts[:MAX_HOSTS_SHOWN] and back.hosts_down_count == len(hosts)
    assert parse_live(b"{") is None and parse_live(b"[]") is None
    assert parse_live(json.dumps({**live_document(snapshot), "version": 99}).encode()) is None
    assert parse_live(json.dumps({**live_document(snapshot), "pid": None, "x": 1}).encode()) is None
    path.write_bytes(b" " * (2 * 1024 * 1024))
    assert read_live(path) is None
    assert read_live(path.with_name("absent.json")) is None


def test_the_summary_line_of_run() -> None:
    flying = tuple(InFlight(str(i), "t", 0, 100, 1000, 1.0) for i in range(3))
    line = summary_line({"done": 1, "pending": 4, "failed": 2}, live(transfers=flying), 2e6, 1000)
    assert line.startswith("[3 in flight]  done 1/5  2.00 MB/s  ETA ") and "failed 2" in line
    paused = live(state="paused", pause_reason="read_only")
    assert summary_line({}, paused, None, 0).startswith("PAUSED (read_only)  [0 in flight]")
