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


def test_the_file_rotates_by_its_size_and_an_outside_truncation_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"x" * 900 + b"\n")  # an existing file counts from its size
    file = log._RotatingFile(path, max_bytes=1000, backups=2)
    try:
        file.write(b"a" * 50 + b"\n")
        assert not path.with_name("events.jsonl.1").exists()
        file.write(b"b" * 60 + b"\n")  # past 1000 bytes: rotated
        assert path.with_name("events.jsonl.1").stat().st_size == 1013
        assert path.stat().st_size == 0
        file.write(b"c" * 500 + b"\n")
        path.write_bytes(b"")  # logrotate's copytruncate, behind our back
        file.write(b"d" * 499 + b"\n")  # counted 1001 bytes, but the file holds 500
        assert not path.with_name("events.jsonl.2").exists()
        assert path.read_bytes().endswith(b"d" * 499 + b"\n")
        file.write(b"e" * 600 + b"\n")  # now truly past the limit
        assert path.with_name("events.jsonl.2").exists() and path.stat().st_size == 0
    finally:
        file.close()


def test_events_reach_a_real_stdout_descriptor_whole(tmp_path: Path) -> None:
    # The daemon writes JSON lines straight to fd 1 (one write each); a child process shows it.
    import subprocess
    import sys

    code = (
        "from ingestd import log\n"
        "log.configure('json', None)\n"
        "for i in range(200): log.get_logger().info('probe', n=i, text='é' * 50)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=60
    ).stdout
    lines = out.decode().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(200))
