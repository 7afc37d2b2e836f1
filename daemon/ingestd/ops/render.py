"""Events for a person: one short line each, as the console and `ingestd logs` print them.

The JSON event keeps every field; this shows a few well-chosen ones per event, sizes and
durations made human, and nothing that is None or empty. Pure: event in, text out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingestd.ops.live import human_bytes, human_duration, human_rate

MAX_LINE = 160  # characters; the longest values are shortened to fit
MAX_VALUE = 72  # no single value takes more than this
_LIST_ITEMS = 5  # a list shows this many, then "+N"

# What each event shows, in order; an event not listed shows all its fields.
FIELDS: Mapping[str, tuple[str, ...]] = {
    "daemon_started": ("version", "pid", "data_dir", "concurrency", "http2_client"),
    "daemon_ready": ("items", "raw_dir"),
    "daemon_stopping": ("signal",),
    "daemon_stopped": ("exit_code",),
    "download_started": ("aweme_id", "topic", "attempt", "resume_from"),
    "download_completed": (
        "aweme_id",
        "bytes",
        "duration_s",
        "mbps",
        "attempt",
        "resumed",
        "links",
        "path",
    ),
    "download_retry_scheduled": ("aweme_id", "reason", "status", "attempt", "delay_s", "detail"),
    "download_failed": ("aweme_id", "reason", "status", "attempts", "detail"),
    "download_expired": ("aweme_id", "reason", "status", "expired_at", "attempts"),
    "extract_merged": ("path", "records", "new", "updated", "unusable", "duration_s"),
    "extract_completed": ("path", "items", "done", "expired", "failed", "bytes", "duration_s"),
    "extract_expired_items": ("path", "count", "earliest_expiry", "latest_expiry"),
    "progress": ("in_flight", "rate_bytes_per_s", "completed", "retried", "failed", "items"),
    "host_unavailable": ("host", "reason", "retry_in_s", "detail"),
    "host_recovered": ("host", "reason", "down_s"),
    "downloads_paused": ("reason", "detail", "free_bytes", "in_flight", "retry_in_s"),
    "downloads_resumed": ("reason", "paused_s"),
}
_HIDDEN = frozenset({"event", "level", "timestamp"})
# Shown only when they say something: a first attempt, a fresh start, no links.
_QUIET_WHEN = {"attempt": 1, "resume_from": 0, "resumed": False, "links": 0}
_BYTES = frozenset({"bytes", "bytes_done", "resume_from", "free_bytes", "min_free_bytes"})
_LABELS = {"mbps": "rate", "rate_bytes_per_s": "rate", "duration_s": "took"}


def _value(key: str, value: Any) -> str:
    if key in _BYTES and isinstance(value, int):
        return human_bytes(value)
    if key == "mbps" and isinstance(value, (int, float)):
        return f"{value:.2f} MB/s"
    if key == "rate_bytes_per_s" and isinstance(value, (int, float)):
        return human_rate(value)
    if key.endswith("_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return human_duration(value)
    if isinstance(value, Mapping):
        return " ".join(f"{k}:{v}" for k, v in value.items() if v)
    if isinstance(value, (list, tuple)):
        shown = ",".join(str(v) for v in value[:_LIST_ITEMS])
        return shown + (f",+{len(value) - _LIST_ITEMS}" if len(value) > _LIST_ITEMS else "")
    return str(value)


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    keep = max(limit - 1, 1)
    if "/" in text:  # a path: its end says more than its start
        return "…" + text[-keep:]
    return text[:keep] + "…"


def fields_of(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (label, text) pairs an event shows, in order."""
    name = str(event.get("event", ""))
    keys = FIELDS.get(name) or tuple(k for k in event if k not in _HIDDEN)
    shown = []
    for key in keys:
        value = event.get(key)
        if value is None or value == "" or value == [] or value == {}:
            continue
        if key in _QUIET_WHEN and value == _QUIET_WHEN[key]:
            continue
        text = _value(key, value)
        if text:  # counts that are all zero say nothing either
            shown.append((_LABELS.get(key, key), _shorten(text, MAX_VALUE)))
    return shown


def _clock(timestamp: Any) -> str:
    text = str(timestamp or "")
    return text[11:19] if len(text) >= 19 else text  # 2026-12-02T05:01:02.123456Z -> 05:01:02


def console_parts(event: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(time, level tag, event name, fields) of one line; the tag is empty for info."""
    level = str(event.get("level", "info"))
    tag = "" if level in ("info", "debug") else level.upper()
    pairs = fields_of(event)
    body = " ".join(text if label == "aweme_id" else f"{label}={text}" for label, text in pairs)
    head = f"{_clock(event.get('timestamp'))} {tag + ' ' if tag else ''}{event.get('event', '')}"
    room = MAX_LINE - len(head) - 1
    if len(body) > room:
        body = body[: max(room - 1, 0)] + "…"
    return _clock(event.get("timestamp")), tag, str(event.get("event", "")), body


def console_line(event: Mapping[str, Any]) -> str:
    """The plain text line (no colours) of one event."""
    clock, tag, name, body = console_parts(event)
    return " ".join(part for part in (clock, tag, name, body) if part)


LEVEL_STYLES: Mapping[str, str] = {
    "debug": "dim",
    "info": "green",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold white on red",
}
