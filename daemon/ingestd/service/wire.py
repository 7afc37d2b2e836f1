"""The channel between the main process and a download worker (service.workers and
service.worker): one JSON object a line over a Unix socket pair, both ways, its kind in `t`.

From the main process: `config` (the config the worker runs with, its shares applied), `wake`
(an extract was merged: look at the queue now), `sync` (answer `synced` with the same `n` once
every outcome written so far is logged), `pause` (another worker paused the node's downloads:
its `reason` and `detail`), `host_down` (another worker found `host` down, for `retry_in_s`, for
`reason`), `host_up` (another worker has `host` back), `stop`.
From a worker: `log` (one event, in `e`, as log.encode_event wrote it, its `worker` field
included: the main process writes it as it came), `attempt` (a finished attempt, for the
metrics), `report` (its ops.live.Snapshot, every second), `links` (a completion left links to
make), `synced`, `fatal` (why it is about to exit).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ingestd.log import encode_event

MESSAGE_MAX = 8 * 1024 * 1024  # bytes; a longer line means the other end is broken
_LOG = b'{"t":"log","e":'


class ChannelError(Exception):
    """The other end sent something no message can be."""


def encode(kind: str, **fields: Any) -> bytes:
    """One message, newline included."""
    return encode_event({"t": kind, **fields}) + b"\n"


def log_line(event: bytes) -> bytes:
    """A `log` message around an event already encoded (log.encode_event)."""
    return _LOG + event + b"}\n"


def logged(line: bytes) -> bytes | None:
    """The encoded event of a `log` message, as it was sent (not decoded: the main process
    writes it as it is); None for another message."""
    return line[len(_LOG) : -1] if line.startswith(_LOG) and line.endswith(b"}") else None


def decode_event(event: bytes) -> dict[str, Any]:
    """The fields of an encoded event (as `logged` gives it); empty when it does not parse."""
    try:
        value = msgspec.json.decode(event)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def decode(line: bytes) -> dict[str, Any] | None:
    """A message read back; None when the line is not one."""
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError:
        try:  # what msgspec refuses and json takes: lone surrogate escapes
            value = json.loads(line)
        except ValueError:
            return None
    if not isinstance(value, dict) or not isinstance(value.get("t"), str):
        return None
    return value


class Lines:
    """Cuts a byte stream into lines, without their newlines."""

    def __init__(self, limit: int = MESSAGE_MAX) -> None:
        self._limit = limit
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes. Raises ChannelError when a line grows past the limit."""
        if b"\n" not in data:
            self._rest += data
            lines: list[bytes] = []
        else:
            lines = (self._rest + data).split(b"\n")
            self._rest = lines.pop()
        if len(self._rest) > self._limit:
            raise ChannelError(f"a line longer than {self._limit} bytes")
        return lines
