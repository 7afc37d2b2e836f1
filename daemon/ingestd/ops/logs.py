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


def _read_lines(handle: IO[str], carry: str) -> tuple[list[str], str]:
    data = carry + handle.read()
    *complete, rest = data.split("\n")
    return complete, rest


def iter_events(
    path: Path,
    follow: bool,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Events in the file; with `follow`, keep waiting for more, across rotations."""
    handle: IO[str] | None = None
    inode = -1
    carry = ""
    try:
        while True:
            if handle is None:
                try:
                    handle = path.open(encoding="utf-8", errors="replace")
                    inode = os.fstat(handle.fileno()).st_ino
                    carry = ""
                except FileNotFoundError:
                    if not follow:
                        return
            if handle is not None:
                lines, carry = _read_lines(handle, carry)
                for line in lines:
                    event = parse_line(line)
                    if event is not None:
                        yield event
            if not follow or stop():
                return
            try:
                current = path.stat()
                rotated = current.st_ino != inode or (
                    handle is not None and current.st_size < handle.tell()
                )
            except FileNotFoundError:
                rotated = True
            if rotated and handle is not None:
                lines, carry = _read_lines(handle, carry)  # drain the old file first
                for line in lines:
                    event = parse_line(line)
                    if event is not None:
                        yield event
                handle.close()
                handle = None
                continue
            sleep(POLL_SECONDS)
    finally:
        if handle is not None:
            handle.close()


def renderer(as_json: bool, colors: bool) -> Callable[[dict[str, Any]], str]:
    """How one event is printed: the JSON line itself, or structlog's console rendering."""
    if as_json:
        return lambda event: json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    console = structlog.dev.ConsoleRenderer(colors=colors)

    def render(event: dict[str, Any]) -> str:
        return str(console(None, "", dict(event)))

    return render
