"""`ingestd logs`: read and follow the JSON-lines event file, filtered and pretty-printed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from ingestd.log import render_json

POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which events to show: by name (any of) and by aweme_id."""

    events: frozenset[str] = frozenset()
    aweme_id: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        """True when the event passes every given condition."""
        if self.events and event.get("event") not in self.events:
            return False
        return self.aweme_id is None or str(event.get("aweme_id")) == self.aweme_id


def parse_line(line: str) -> dict[str, Any] | None:
    """One event from one line, or None for a torn or foreign line."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _events_from(handle: IO[str], carry: str) -> tuple[list[dict[str, Any]], str]:
    data = carry + handle.read()
    *complete, rest = data.split("\n")
    return [e for e in map(parse_line, complete) if e is not None], rest


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


def _read_whole(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            events, rest = _events_from(handle, "")
    except FileNotFoundError:
        return []
    tail = parse_line(rest) if rest else None
    return events + ([tail] if tail is not None else [])


def iter_events(
    path: Path,
    follow: bool,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Events in the file, oldest first, rotated files included; with `follow`, keep waiting
    for more, and read every file rotated out between two polls, in order."""
    for older in reversed(_rotated(path)):
        yield from _read_whole(older)
    handle: IO[str] | None = None
    inode: int | None = None
    carry = ""
    try:
        while True:
            if handle is None:
                try:
                    handle = path.open(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    if not follow:
                        return
                else:
                    inode = os.fstat(handle.fileno()).st_ino
                    carry = ""
            if handle is not None:
                events, carry = _events_from(handle, carry)
                yield from events
            if not follow or stop():
                return
            if handle is not None and _inode(path) != inode:
                # Rotated: finish the old file, then every file rotated out after it (they
                # sit between it and the current name: name.k-1 ... name.1), then the new one.
                events, carry = _events_from(handle, carry)
                yield from events
                handle.close()
                handle = None
                rotated = _rotated(path)
                position = next((i for i, p in enumerate(rotated) if _inode(p) == inode), None)
                if position is not None:
                    for newer in reversed(rotated[:position]):
                        yield from _read_whole(newer)
                continue
            if handle is not None and _size(path) < handle.tell():  # truncated in place
                handle.seek(0)
                carry = ""
            sleep(POLL_SECONDS)
    finally:
        if handle is not None:
            handle.close()


def renderer(as_json: bool, colors: bool) -> Callable[[dict[str, Any]], str]:
    """How one event is printed: the JSON line itself, or structlog's console rendering."""
    if as_json:
        return render_json
    console = structlog.dev.ConsoleRenderer(colors=colors)

    def render(event: dict[str, Any]) -> str:
        return str(console(None, "", dict(event)))

    return render
