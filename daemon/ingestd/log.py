"""Structured logging: one JSON object per line on stdout (console on a TTY), plus a file."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import IO, Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from ingestd.config import LogFormat

Logger = structlog.typing.FilteringBoundLogger


class _Sink:
    """Writes rendered lines to stdout and, as JSON, to an append-only file. Thread safe."""

    def __init__(self, stream: TextIO, console: bool, file: IO[str] | None) -> None:
        self._stream = stream
        self._console = structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console else None
        self._file = file
        self._lock = threading.Lock()

    def emit(self, event: EventDict) -> None:
        line = json.dumps(event, default=str, ensure_ascii=False, separators=(",", ":"))
        text = self._console(None, "", dict(event)) if self._console else line
        with self._lock:
            try:
                self._stream.write(str(text) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone (closed pipe): keep running, the file may still work
            if self._file is not None:
                try:
                    self._file.write(line + "\n")
                    self._file.flush()
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class _SinkLogger:
    """The structlog 'logger' at the end of the chain: hands the event dict to the sink."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def _emit(self, event: EventDict) -> None:
        self._sink.emit(event)

    debug = info = warning = error = critical = msg = _emit


def _finish(_: WrappedLogger, __: str, event: EventDict) -> Any:
    # Hand the dict itself to the sink; it renders once for each destination.
    return (event,), {}


_sink: _Sink | None = None


def configure(log_format: LogFormat = "json", log_file: Path | None = None) -> None:
    """Set up structlog for the process. Safe to call again (it replaces the sinks)."""
    global _sink
    stream = sys.stdout
    console = log_format == "console" or (log_format == "auto" and stream.isatty())
    file = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = log_file.open("a", encoding="utf-8")
    old, _sink = _sink, _Sink(stream, console, file)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _finish,
        ],
        logger_factory=lambda *_: _SinkLogger(_sink) if _sink else structlog.PrintLogger(),
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )
    if old is not None:
        old.close()


def get_logger() -> Logger:
    """The process logger. Events are snake_case names; fields are keyword arguments."""
    return structlog.get_logger()  # type: ignore[no-any-return]


def shutdown() -> None:
    """Flush and close the log file."""
    if _sink is not None:
        _sink.close()
