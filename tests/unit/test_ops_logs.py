"""`ingestd logs` reading: the last N events from the end, --since by bisection, levels, and
following from the end of the file, as tail -f does."""

from __future__ import annotations

import io
import itertools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingestd.ops import logs
from ingestd.ops.logs import LogFilter, lines_backward, offset_since, parse_since, read_events

T0 = 1_790_000_000.0


def event(n: int, name: str = "download_completed", level: str = "info") -> dict[str, Any]:
    return {
        "event": name,
        "level": level,
        "timestamp": logs.timestamp_text(T0 + n),
        "aweme_id": str(n),
    }


def write(path: Path, numbers: range, every_failed: int = 10) -> None:
    with path.open("a") as handle:
        for n in numbers:
            failed = n % every_failed == 0
            e = event(n, "download_failed", "error") if failed else event(n)
            handle.write(json.dumps(e) + "\n")


class CountingFile(io.BytesIO):
    """A file that counts the bytes read from it."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def numbers(events: Any) -> list[int]:
    return [int(e["aweme_id"]) for e in events]


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    write(path, range(100_000))  # about 10 MB
    return path


def test_the_last_lines_are_read_from_the_end_not_the_whole_file(big: Path) -> None:
    data = big.read_bytes()
    handle = CountingFile(data)
    last = [json.loads(line) for line in itertools.islice(lines_backward(handle, len(data)), 5)]
    assert numbers(reversed(last)) == list(range(99_995, 100_000))
    assert handle.read_bytes <= 2 * logs.BLOCK, f"read {handle.read_bytes} of {len(data)} bytes"


def test_since_is_found_by_bisecting_not_by_reading_the_file(big: Path) -> None:
    data = big.read_bytes()
    handle = CountingFile(data)
    since = logs.timestamp_text(T0 + 99_000)
    offset = offset_since(handle, len(data), since)
    assert handle.read_bytes <= 2 * logs.BLOCK, f"read {handle.read_bytes} of {len(data)} bytes"
    first = json.loads(data[offset:].split(b"\n", 1)[0])
    assert int(first["aweme_id"]) <= 99_000 and offset > len(data) * 0.9
    shown = numbers(read_events(big, LogFilter(since=since)))
    assert shown == list(range(99_000, 100_000))


def test_the_last_n_matching_events_span_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path.with_name("events.jsonl.2"), range(0, 100))
    write(path.with_name("events.jsonl.1"), range(100, 200))
    write(path, range(200, 215))
    failed = LogFilter(events=frozenset({"download_failed"}))
    assert numbers(read_events(path, failed, last=4)) == [180, 190, 200, 210]
    assert numbers(read_events(path, LogFilter(), last=3)) == [212, 213, 214]
    assert numbers(read_events(path, failed, last=100)) == list(range(0, 215, 10))
    since = LogFilter(since=logs.timestamp_text(T0 + 150), events=failed.events)
    assert numbers(read_events(path, since, last=100)) == [150, 160, 170, 180, 190, 200, 210]
    assert numbers(read_events(path, since)) == [150, 160, 170, 180, 190, 200, 210]


def test_level_is_a_minimum(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path, range(30))
    with path.open("a") as handle:
        handle.write(json.dumps(event(30, "daemon_failed", "critical")) + "\n")
        handle.write(json.dumps(event(31, "watch_failed", "warning")) + "\n")
    assert numbers(read_events(path, LogFilter(level="error"))) == [0, 10, 20, 30]
    assert numbers(read_events(path, LogFilter(level="warning"), last=2)) == [30, 31]
    assert len(list(read_events(path, LogFilter(level="debug")))) == 32


def test_follow_starts_at_the_end_unless_history_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path, range(50))
    polls, written = 0, 50

    def append_then_stop() -> bool:
        nonlocal polls, written
        polls += 1
        if polls == 1:  # three new events once the reader has started
            write(path, range(written, written + 3))
            written += 3
        return polls > 2

    def follow(**history: Any) -> list[int]:
        nonlocal polls
        polls = 0
        shown = read_events(
            path, follow=True, stop=append_then_stop, sleep=lambda _: None, **history
        )
        return numbers(shown)

    assert follow(history=False) == [50, 51, 52], "only what was written after the start"
    assert follow(history=False, last=2) == [51, 52, 53, 54, 55], "the last 2, then new ones"
    assert follow(history=True) == list(range(59)), "all of it, then new ones"


def test_a_line_being_written_is_left_whole_to_the_follower(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write(path, range(3))
    line = json.dumps(event(3)).encode() + b"\n"
    with path.open("ab") as handle:
        handle.write(line[:10])  # torn: the rest comes after the reader started
    polls = 0

    def finish_then_stop() -> bool:
        nonlocal polls
        polls += 1
        if polls == 1:
            with path.open("ab") as handle:
                handle.write(line[10:])
        return polls > 1

    shown = read_events(path, last=1, follow=True, stop=finish_then_stop, sleep=lambda _: None)
    assert numbers(shown) == [2, 3]


@pytest.mark.parametrize(
    ("text", "seconds_back"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1.5h", 5400)],
)
def test_since_takes_durations(text: str, seconds_back: float) -> None:
    now = time.time()
    assert parse_since(text, now) == logs.timestamp_text(now - seconds_back)


def test_since_takes_iso_times() -> None:
    assert parse_since("2026-11-27T10:00:00Z", 0) == "2026-11-27T10:00:00.000000Z"
    assert parse_since("2026-11-27T10:00:00+01:00", 0) == "2026-11-27T09:00:00.000000Z"
    local = datetime(2026, 11, 27, 10, 0).astimezone().astimezone(UTC)
    assert parse_since("2026-11-27T10:00", 0) == local.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with pytest.raises(ValueError, match="10m, 2h or 1d"):
        parse_since("yesterday", 0)
