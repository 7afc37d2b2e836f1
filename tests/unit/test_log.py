"""The JSON rendering of events: one line, fields in order, anything printable, never broken."""

import datetime
import json
import re
from pathlib import Path

from ingestd import log
from ingestd.log import render_json


def test_events_render_as_one_compact_utf8_line_in_field_order() -> None:
    event = {
        "event": "download_completed",
        "aweme_id": "7312345678901234567",
        "topic": "café 東京",  # kept as text, not escaped
        "bytes": 65536,
        "duration_s": 0.012,
        "resumed": False,
        "detail": None,
        "path": Path("/media/a.mp4"),  # not JSON: rendered as its text
        "topics": ("a", "b"),
    }
    line = render_json(event)
    assert "\n" not in line and " " not in line.replace("café 東京", "")
    assert "café 東京" in line
    decoded = json.loads(line)
    assert list(decoded) == list(event)
    assert decoded["path"] == "/media/a.mp4" and decoded["topics"] == ["a", "b"]
    assert decoded["detail"] is None and decoded["duration_s"] == 0.012


def test_text_that_is_not_utf8_is_escaped_not_lost() -> None:
    # A lone surrogate (os.fsdecode of a non-UTF-8 file name) cannot be written as UTF-8.
    line = render_json({"event": "extract_rejected", "file": "bad\udcffname.json"})
    line.encode("utf-8")  # writable
    assert json.loads(line)["file"] == "bad\udcffname.json"


def test_timestamps_are_utc_iso_with_microseconds() -> None:
    stamp = log._Timestamp(iter([1_795_000_000.0, 1_795_000_000.5, 1_795_000_001.25]).__next__)
    stamps = [stamp(None, "info", {})["timestamp"] for _ in range(3)]
    assert stamps == [
        "2026-11-18T11:06:40.000000Z",  # a zero fraction still has six digits
        "2026-11-18T11:06:40.500000Z",
        "2026-11-18T11:06:41.250000Z",
    ]
    parsed = datetime.datetime.fromisoformat(stamps[2].replace("Z", "+00:00"))
    assert parsed.timestamp() == 1_795_000_001.25


def test_every_event_has_level_and_timestamp(tmp_path: Path) -> None:
    log.configure("json", tmp_path / "events.jsonl")
    try:
        log.get_logger().bind(aweme_id="1").warning("probe", n=1)
    finally:
        log.shutdown()
    (line,) = (tmp_path / "events.jsonl").read_text().splitlines()
    event = json.loads(line)
    assert event["level"] == "warning" and event["event"] == "probe" and event["aweme_id"] == "1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
