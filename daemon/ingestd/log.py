"""Structured logging: one JSON object per line on stdout (console on a TTY) and in a file.

The file is rotated by size (`<name>.1` ... `<name>.N`) and reopened on every configure(), so
an external logrotate works too (SIGHUP reloads the config, which reopens the file).

A download worker process (service.worker) writes neither: configure_forward() hands each of
its events, complete with level and timestamp, to a function that sends it to the main
process, which writes it with emit_encoded() beside its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec
import structlog
from structlog.typing import EventDict, WrappedLogger

from ingestd.config import LogFormat

if TYPE_CHECKING:
    from ingestd.ops.terminal import EventConsole

Logger = structlog.typing.FilteringBoundLogger
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 5


_ENCODER = msgspec.json.Encoder(enc_hook=str)  # ~10x faster than json.dumps per event


def render_json(event: EventDict) -> str:
    """The one JSON rendering used everywhere (stdout, file, `ingestd logs --json`)."""
    return encode_event(event).decode("utf-8")


def encode_event(event: EventDict) -> bytes:
    """An event as one line of JSON (UTF-8, no newline)."""
    try:
        return _ENCODER.encode(event)
    except (TypeError, ValueError, msgspec.EncodeError):
        # A lone surrogate (from a file name, say) is not UTF-8: escape it instead.
        text = json.dumps(event, default=str, ensure_ascii=True, separators=(",", ":"))
        return text.encode("ascii")


def _write_all(fd: int, data: bytes) -> None:
    """One write(2) a line, as a rule: no Python buffer to flush, no position to ask for."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _RotatingFile:
    """Append-only JSON-lines file, rotated when it passes `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, line: bytes) -> None:
        _write_all(self._fd, line)
        self._size += len(line)
        if self._max_bytes and self._size >= self._max_bytes:
            # Counted, not asked per line; the file's own size decides (logrotate's
            # copytruncate may have emptied it under us).
            self._size = os.fstat(self._fd).st_size
            if self._size >= self._max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        os.close(self._fd)
        for n in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self._backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _raw_fd(stream: TextIO) -> int | None:
    """The descriptor to write JSON lines to directly, or None to go through `stream` (one
    replaced by a test harness, say)."""
    if stream is not sys.__stdout__:
        return None
    try:
        stream.flush()
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


class _Sink:
    """Writes each event to stdout (JSON or console) and to the file (JSON). Thread safe."""

    def __init__(self, stream: TextIO, console: bool, file: _RotatingFile | None) -> None:
        self._stream = stream
        self._console = _event_console(stream) if console else None
        self._out = None if console else _raw_fd(stream)
        self._file = file
        self._lock = threading.Lock()

    def emit(self, event: EventDict) -> None:
        self._write(encode_event(event) + b"\n", [event])

    def emit_encoded(self, events: list[bytes]) -> None:
        # The console alone needs the events themselves: JSON lines are written as they came.
        decoded = [] if self._console is None else [json.loads(e) for e in events]
        self._write(b"".join(e + b"\n" for e in events), decoded)

    def _write(self, line: bytes, events: list[EventDict]) -> None:
        """Write `line` (one or more events, as JSON lines); `events`: the same, for the
        console."""
        with self._lock:
            try:
                if self._out is not None:
                    _write_all(self._out, line)
                elif self._console is not None:
                    for event in events:
                        self._console.write(event)
                else:
                    self._stream.write(line.decode())
                    self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone (closed pipe): keep running, the file may still work
            if self._file is not None:
                # A full disk must not stop the daemon; stdout still has the event.
                with contextlib.suppress(OSError, ValueError):
                    self._file.write(line)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class _Forward:
    """A worker process's sink: every event goes to `forward` (which sends it on)."""

    def __init__(self, forward: Callable[[EventDict], None]) -> None:
        self._forward = forward

    def emit(self, event: EventDict) -> None:
        self._forward(event)

    def emit_encoded(self, events: list[bytes]) -> None:
        for event in events:
            self._forward(json.loads(event))

    def close(self) -> None:
        pass


_sink: _Sink | _Forward | None = None
_sink_lock = threading.Lock()
_console: EventConsole | None = None  # one per process: a reload must not draw a second line


def _event_console(stream: TextIO) -> EventConsole:
    global _console
    from ingestd.ops.terminal import EventConsole  # rich is loaded only for a console

    if _console is None or _console.stream is not stream:
        if _console is not None:
            _console.close()
        _console = EventConsole(stream)
    return _console


def summary_enabled() -> bool:
    """Whether events go to a terminal that shows a live summary line under them."""
    return _console is not None and _console.tty


def set_summary(text: str | None) -> None:
    """Show `text` as the live line under the events on a terminal (None takes it down)."""
    if _console is not None:
        _console.set_summary(text)


class _SinkLogger:
    """The end of the structlog chain. Looks the sink up per event, so a reconfigure applies to
    loggers that were bound before it."""

    def _emit(self, event: EventDict) -> None:
        sink = _sink
        if sink is not None:
            sink.emit(event)

    debug = info = warning = error = critical = msg = _emit


class _Timestamp:
    """`timestamp`: UTC ISO 8601 with microseconds, e.g. 2026-11-27T01:11:53.004211Z.

    structlog's TimeStamper builds a timezone-aware datetime per event, and drops the fraction
    when it happens to be zero; this formats the second once and always has six digits."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second: tuple[int, str] = (-1, "")  # replaced whole: threads share it

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        now = self._clock()
        second = int(now)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        event["timestamp"] = f"{cached[1]}.{int((now - second) * 1e6):06d}Z"
        return event


def _finish(_: WrappedLogger, __: str, event: EventDict) -> Any:
    return (event,), {}


def configure(
    log_format: LogFormat = "json",
    log_file: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
) -> None:
    """Set up logging for the process; calling it again swaps the sinks (and reopens the file)."""
    stream = sys.stdout
    console = log_format == "console" or (log_format == "auto" and stream.isatty())
    file = _RotatingFile(log_file, max_bytes, backups) if log_file is not None else None
    _install(_Sink(stream, console, file))


def configure_forward(forward: Callable[[EventDict], None]) -> None:
    """Set up logging for a worker process: each event (level and timestamp included) goes to
    `forward`, called from whichever thread logs it; nothing is written here."""
    _install(_Forward(forward))


def emit_encoded(events: list[bytes]) -> None:
    """Write events that encode_event made already, in another process (a worker's), in one
    write each to stdout and to the file."""
    sink = _sink
    if sink is not None:
        sink.emit_encoded(events)


def _install(sink: _Sink | _Forward) -> None:
    global _sink
    with _sink_lock:
        old, _sink = _sink, sink
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _Timestamp(),
            structlog.processors.format_exc_info,
            _finish,
        ],
        logger_factory=lambda *_: _SinkLogger(),
        wrapper_class=structlog.make_filtering_bound_logger(20),  # info and above
        cache_logger_on_first_use=False,
    )
    if old is not None:
        old.close()


def get_logger() -> Logger:
    """The process logger. Events are snake_case names; fields are keyword arguments."""
    return structlog.get_logger()  # type: ignore[no-any-return]


def shutdown() -> None:
    """Flush and close the log file."""
    with _sink_lock:
        if _sink is not None:
            _sink.close()
    if _console is not None:
        _console.close()
