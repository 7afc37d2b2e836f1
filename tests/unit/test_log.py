"""The JSON rendering of events: one line, fields in order, anything printable, never broken."""

import json
from pathlib import Path

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
