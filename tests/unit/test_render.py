"""The console rendering of events: short, human, no None."""

from __future__ import annotations

from ingestd.ops.render import MAX_LINE, console_line

TS = "2026-12-02T05:01:02.123456Z"


def test_common_events_are_short_human_and_without_none() -> None:
    long_path = "/srv/ingestd/media_assets/" + "x" * 150 + "/7440385334138198933.mp4"
    events = [
        {
            "event": "download_completed",
            "level": "info",
            "timestamp": TS,
            "aweme_id": "7440385334138198933",
            "bytes": 2_500_000,
            "sha256": "ab" * 32,
            "path": long_path,
            "attempt": 1,
            "duration_s": 0.412,
            "resumed": False,
            "links": 0,
            "mbps": 6.07,
        },
        {
            "event": "download_retry_scheduled",
            "level": "warning",
            "timestamp": TS,
            "aweme_id": "7440385334138198933",
            "attempt": 2,
            "reason": "timeout",
            "status": None,
            "delay_s": 12.5,
            "detail": "StreamTimedOut " * 30,
            "duration_s": 2.0,
        },
        {
            "event": "download_started",
            "level": "info",
            "timestamp": TS,
            "aweme_id": "1",
            "url": "https://cdn/x.mp4",
            "topic": "cats",
            "attempt": 1,
            "resume_from": 0,
        },
        {
            "event": "progress",
            "level": "info",
            "timestamp": TS,
            "items": {"done": 3, "pending": 0},
            "bytes_done": 10,
            "in_flight": 2,
            "rate_bytes_per_s": 1_234_567,
            "completed": 3,
            "retried": 0,
            "failed": 0,
            "expired": 0,
        },
    ]
    lines = [console_line(e) for e in events]
    for line in lines:
        assert len(line) <= MAX_LINE and "None" not in line, line
    done, retry, started, progress = lines
    assert done.startswith("05:01:02 download_completed 7440385334138198933 bytes=2.4 MiB")
    assert "took=0.4 s rate=6.07 MB/s path=…" in done and "sha256" not in done
    assert "attempt" not in done and "resumed" not in done and "links" not in done
    assert retry.startswith("05:01:02 WARNING download_retry_scheduled 7440385334138198933")
    assert "reason=timeout attempt=2 delay_s=12 s" in retry and "status" not in retry
    assert started == "05:01:02 download_started 1 topic=cats"
    assert "rate=1.23 MB/s" in progress and "items=done:3" in progress


def test_counts_that_are_all_zero_are_left_out() -> None:
    event = {"event": "daemon_ready", "level": "info", "timestamp": TS, "raw_dir": "/r"}
    assert console_line({**event, "items": {"pending": 0, "done": 0}}) == (
        "05:01:02 daemon_ready raw_dir=/r"
    )


def test_an_unknown_event_shows_its_fields_but_not_its_envelope() -> None:
    line = console_line(
        {"event": "new_thing", "level": "error", "timestamp": TS, "a": 1, "b": None}
    )
    assert line == "05:01:02 ERROR new_thing a=1"
