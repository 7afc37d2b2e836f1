"""`ingestd logs`: read and follow the JSON-lines event file, filtered and pretty-printed.

The file and its rotated copies (`name.1` newest ... `name.N` oldest) are read as bytes, a
line at a time. History is read only as asked: all of it; from a time on (each file bisected
on its events' timestamps, not read whole); or the last N matching events (read backwards
from the end, a block at a time). Following goes on from where the history stopped: by
itself that is the end of the file, as `tail -f` does.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ingestd.events import LEVELS
from ingestd.log import render_json
from ingestd.ops.render import console_line

POLL_SECONDS = 0.2
BLOCK = 64 * 1024  # bytes read at a time backwards (-n) and while bisecting (--since)
READ_AHEAD = 1024 * 1024  # bytes read at a time forwards
PROBE = 4096  # bytes read at a time to find one line while bisecting (an event is ~300 bytes)
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
Event = dict[str, Any]


def _rank(level: object) -> int:
    # A level this version does not know is shown whatever the minimum.
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which events to show: by name (any of), by aweme_id, from a level up, from a time on."""

    events: frozenset[str] = frozenset()
    aweme_id: str | None = None
    level: str | None = None  # the lowest level shown (LEVELS)
    since: str | None = None  # a timestamp as events carry it (see timestamp_text)

    def matches(self, event: Event) -> bool:
        """True when the event passes every given condition."""
        if self.events and event.get("event") not in self.events:
            return False
        if self.aweme_id is not None and str(event.get("aweme_id")) != self.aweme_id:
            return False
        if self.level is not None and _rank(event.get("level")) < _rank(self.level):
            return False
        return self.since is None or not _older(event, self.since)


def _older(event: Event, since: str) -> bool:
    # Timestamps are fixed-width UTC text (2026-11-27T01:11:53.004211Z): they sort as text.
    stamp = event.get("timestamp")
    return isinstance(stamp, str) and stamp < since


def timestamp_text(epoch: float) -> str:
    """An epoch time in the events' own timestamp format (log.py): UTC, microseconds, `Z`."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_since(text: str, now: float) -> str:
    """`--since`: a duration back from `now` (`90s`, `10m`, `2h`, `1d`, `1w`) or an ISO 8601
    time (a time without an offset is local time). Returns timestamp_text of it; ValueError
    says what is accepted."""
    duration = _DURATION.fullmatch(text)
    if duration:
        seconds = float(duration.group(1)) * _UNIT_SECONDS[duration.group(2).lower()]
        return timestamp_text(now - seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a duration such as 10m, 2h or 1d, or an ISO 8601 time, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as a person types it
    return timestamp_text(moment.timestamp())


def parse_line(line: str | bytes) -> Event | None:
    """One event from one line, or None for a torn or foreign line."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _events(lines: Iterable[bytes], wanted: LogFilter) -> Iterator[Event]:
    for line in lines:
        event = parse_line(line)
        if event is not None and wanted.matches(event):
            yield event


def _rotated(path: Path) -> list[Path]:
    """Rotated files, newest first: name.1, name.2, ..."""
    found = []
    n = 1
    while (candidate := path.with_name(f"{path.name}.{n}")).exists():
        found.append(candidate)
        n += 1
    return found


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open(path: Path) -> IO[bytes] | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None


def lines_backward(handle: IO[bytes], end: int) -> Iterator[bytes]:
    """The lines before offset `end` (which starts a line), last first, reading BLOCK bytes at
    a time from the end: the last lines of a large file cost a block or two, not the file."""
    position, rest = end, b""
    while position > 0:
        size = min(BLOCK, position)
        position -= size
        handle.seek(position)
        lines = (handle.read(size) + rest).split(b"\n")
        rest = lines[0]  # the end of a line that starts in an earlier block
        yield from (line for line in reversed(lines[1:]) if line)
    if rest:
        yield rest


def lines_forward(handle: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    """The lines between offsets `start` and `end`; the last one even without its newline."""
    handle.seek(start)
    remaining, rest = end - start, b""
    while remaining > 0:
        block = handle.read(min(READ_AHEAD, remaining))
        if not block:
            break
        remaining -= len(block)
        *lines, rest = (rest + block).split(b"\n")
        yield from (line for line in lines if line)
    if rest:
        yield rest


def _line_after(handle: IO[bytes], offset: int, end: int) -> tuple[int, int, bytes]:
    """The first line that starts at or after `offset`: (start, stop, text), stop past its
    newline; (end, end, b"") when none starts before `end`."""
    start = offset
    if offset > 0:  # skip the rest of the line `offset` falls in
        handle.seek(offset - 1)
        while True:
            block = handle.read(PROBE)
            newline = block.find(b"\n")
            if newline >= 0:
                start += newline
                break
            if not block:
                return end, end, b""
            start += len(block)
    if start >= end:
        return end, end, b""
    handle.seek(start)
    line = b""
    while b"\n" not in line and len(line) < end - start:
        block = handle.read(PROBE)
        if not block:
            break
        line += block
    text = line.split(b"\n", 1)[0]
    return start, min(start + len(text) + 1, end), text


def offset_since(handle: IO[bytes], end: int, since: str) -> int:
    """A line start before which every event is older than `since`, found by bisecting the
    file on its events' timestamps (they are in order, as written); the events from there
    are filtered one by one anyway. A line without a timestamp counts as newer (read)."""
    low, high = 0, end  # the first line not older starts in [low, high]
    while high - low > BLOCK:
        start, stop, text = _line_after(handle, (low + high) // 2, end)
        if start >= high:  # one long line from the middle on: read from low
            break
        event = parse_line(text)
        if event is not None and _older(event, since):
            low = stop
        else:
            high = start
    return low


def _complete_end(handle: IO[bytes], size: int) -> int:
    """The offset past the last newline before `size`: where the last complete line ends (a
    line being written is left to the follower, whole)."""
    position = size
    while position > 0:
        step = min(BLOCK, position)
        handle.seek(position - step)
        newline = handle.read(step).rfind(b"\n")
        if newline >= 0:
            return position - step + newline + 1
        position -= step
    return 0


def _last(files: list[tuple[IO[bytes], int]], wanted: LogFilter, count: int) -> list[Event]:
    """The last `count` matching events of `files` (newest file first, each read backwards
    from the offset given); stops at the first event older than `wanted.since`."""
    found: list[Event] = []
    for handle, end in files:
        for line in lines_backward(handle, end):
            event = parse_line(line)
            if event is None:
                continue
            if wanted.since is not None and _older(event, wanted.since):
                return found[::-1]
            if wanted.matches(event):
                found.append(event)
                if len(found) >= count:
                    return found[::-1]
    return found[::-1]


def _whole(path: Path, wanted: LogFilter) -> Iterator[Event]:
    """A rotated file's matching events (from `wanted.since` on)."""
    handle = _open(path)
    if handle is None:
        return
    with handle:
        size = os.fstat(handle.fileno()).st_size
        start = offset_since(handle, size, wanted.since) if wanted.since else 0
        yield from _events(lines_forward(handle, start, size), wanted)


def read_events(
    path: Path,
    wanted: LogFilter = LogFilter(),
    *,
    last: int | None = None,
    history: bool = True,
    follow: bool = False,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Event]:
    """The events of the file and its rotated copies that match `wanted`, oldest first.

    History: with `last`, the last N matching events; else, with `history`, every matching
    event (from `wanted.since` on); else none. With `follow`, then every event written from
    there on, waiting for more, and reading every file rotated out between two polls, in order.
    """
    handle = _open(path)
    inode = os.fstat(handle.fileno()).st_ino if handle is not None else None
    end = _complete_end(handle, os.fstat(handle.fileno()).st_size) if handle is not None else 0
    # The rotated files older than the one open: any rotated out meanwhile are newer.
    rotated = _rotated(path)
    position = next((i for i, p in enumerate(rotated) if _inode(p) == inode), None)
    older = rotated if position is None else rotated[position + 1 :]
    try:
        if last is not None:
            opened = [_open(p) for p in older]
            try:
                files = [(handle, end)] if handle is not None else []
                files += [(h, os.fstat(h.fileno()).st_size) for h in opened if h is not None]
                yield from _last(files, wanted, last)
            finally:
                for h in opened:
                    if h is not None:
                        h.close()
        elif history:
            for older_file in reversed(older):
                yield from _whole(older_file, wanted)
            if handle is not None:
                start = offset_since(handle, end, wanted.since) if wanted.since else 0
                lines = lines_forward(handle, start, end)
                yield from _events(lines, wanted)
        if not follow:
            return
        if handle is not None:
            handle.seek(end)
        yield from _follow(path, wanted, handle, inode, stop, sleep)
    finally:
        if handle is not None:
            handle.close()


def _follow(
    path: Path,
    wanted: LogFilter,
    handle: IO[bytes] | None,
    inode: int | None,
    stop: Callable[[], bool],
    sleep: Callable[[float], None],
) -> Iterator[Event]:
    """Every event written from the handle's position on, until `stop()`; across rotations."""
    carry = b""
    try:
        while True:
            if handle is None:
                handle = _open(path)
                if handle is not None:
                    inode = os.fstat(handle.fileno()).st_ino
                    carry = b""
            if handle is not None:
                *lines, carry = (carry + handle.read()).split(b"\n")
                yield from _events(lines, wanted)
            if stop():
                return
            if handle is not None and _inode(path) != inode:
                # Rotated: finish the old file, then every file rotated out after it (they
                # sit between it and the current name: name.k-1 ... name.1), then the new one.
                *lines, carry = (carry + handle.read()).split(b"\n")
                yield from _events([*lines, carry], wanted)
                handle.close()
                handle = None
                rotated = _rotated(path)
                position = next((i for i, p in enumerate(rotated) if _inode(p) == inode), None)
                if position is not None:
                    for newer in reversed(rotated[:position]):
                        yield from _events(_all_lines(newer), wanted)
                continue
            if handle is not None and _size(path) < handle.tell():  # truncated in place
                handle.seek(0)
                carry = b""
            sleep(POLL_SECONDS)
    finally:
        if handle is not None:
            handle.close()


def _all_lines(path: Path) -> Iterator[bytes]:
    handle = _open(path)
    if handle is None:
        return
    with handle:
        yield from lines_forward(handle, 0, os.fstat(handle.fileno()).st_size)


def renderer(as_json: bool, colors: bool) -> Callable[[dict[str, Any]], str]:
    """How one event is printed: the JSON line itself, or the short line the console shows
    (coloured by level on a terminal)."""
    if as_json:
        return render_json
    if not colors:
        return console_line
    from ingestd.ops.terminal import ansi_line

    return ansi_line
