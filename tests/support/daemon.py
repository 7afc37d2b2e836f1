"""Run ingestd as a real subprocess and watch its JSON-lines log.

``Daemon`` owns one test's directories and config file; ``start()`` may be called again after the
process stopped (restart scenarios), and each run keeps its own event list while ``all_stdout``
keeps every line of every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

DEFAULT_TIMEOUT = 20.0
TERMINAL = ("download_completed", "download_failed", "download_expired")

BASE_CONFIG: dict[str, Any] = {
    "concurrency": 4,
    "timeout": 2.0,
    "max_attempts": 3,
    "backoff_base": 0.2,
    "backoff_max": 2.0,
    "max_file_bytes": 8 * 1024 * 1024,
    "min_free_bytes": 0,
    "allowed_hosts": ["localhost"],
    "http2": True,
    "settle_seconds": 1.0,
    "log_format": "json",
}


class DaemonError(AssertionError):
    """A wait, exit or status check on the daemon failed; carries the log tail."""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, values: Mapping[str, Any]) -> None:
    lines = [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def event_time(event: Event) -> float:
    """The event's own ``timestamp`` as epoch seconds (accepts epoch numbers or ISO 8601)."""
    ts = event["timestamp"]
    if isinstance(ts, int | float):
        return float(ts)
    text = str(ts).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text).timestamp()  # naive means the daemon's local time


def topic_dir(topic: str) -> str:
    return topic.replace(" ", "_")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


WORKERS_GONE_S = 10.0  # how long a worker may outlive its killed main process


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait for process `pid` (not a child of ours) to end, on its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} still runs after {timeout} s"
    finally:
        os.close(fd)


class Daemon:
    """One ingestd instance (config + dirs), startable several times."""

    def __init__(self, root: Path, **config: Any) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.state_dir = self.root / "state"
        self.raw_dir = self.data_dir / "raw"
        self.media_dir = self.data_dir / "media_assets"
        self.config_path = self.root / "ingestd.toml"
        self.log_file = self.root / "events.jsonl"
        self.extra_env: dict[str, str] = {}  # e.g. NOTIFY_SOCKET for the service tests
        self.launcher: list[str] = []  # a command that execs the daemon (the sandbox test)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "state_dir": str(self.state_dir),
            "log_file": str(self.root / "events.jsonl"),
            **BASE_CONFIG,
            **config,
        }
        write_toml(self.config_path, self.config)

        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.all_stdout: list[str] = []  # every stdout line of every run
        self.stderr_lines: list[str] = []  # every stderr line of every run
        self._events: list[Event] = []  # parsed events of the current run
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._started_at = 0.0

    # ------------------------------------------------------------------ process

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ingestd", *args, "--config", str(self.config_path)]

    def env(self) -> dict[str, str]:
        # The test harness's own settings (INGESTD_TEST_*) are not config: the daemon would
        # refuse them as unknown keys.
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_TEST_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(self.extra_env)
        return env

    def start(self, wait_ready: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Event | None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("daemon already running")
        with self._cond:
            self._events = []
        self.runs += 1
        self._started_at = time.time()
        self.proc = subprocess.Popen(
            [*self.launcher, *self.command("run")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.root,
            env=self.env(),
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True),
        ]
        for thread in self._readers:
            thread.start()
        if not wait_ready:
            return None
        self.wait_for("daemon_started", timeout=timeout)
        return self.wait_for("daemon_ready", timeout=timeout)

    def _read_stdout(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            received = time.time()
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                parsed = {"event": "<non-json>", "raw": line}
            parsed["_recv"] = received
            parsed["_run"] = self.runs
            with self._cond:
                self.all_stdout.append(line)
                self._events.append(parsed)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            with self._cond:
                self.stderr_lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _output_finished(self) -> bool:
        return (
            self.proc is not None
            and self.proc.poll() is not None
            and not any(t.is_alive() for t in self._readers)
        )

    def _join_readers(self, timeout: float = 5.0) -> None:
        for thread in self._readers:
            thread.join(timeout)

    def terminate(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> float:
        """Send SIGTERM (or ``sig``), assert exit 0 within ``timeout``; return seconds taken."""
        assert self.proc is not None, "daemon was never started"
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self._join_readers()
            raise DaemonError(
                f"daemon did not exit within {timeout}s of {signal.Signals(sig).name}\n"
                + self.tail()
            ) from None
        elapsed = time.monotonic() - started
        self._join_readers()
        if code != 0:
            raise DaemonError(
                f"daemon exited {code} after {signal.Signals(sig).name}, expected 0\n" + self.tail()
            )
        return elapsed

    def send_signal(self, sig: int) -> None:
        """Deliver ``sig`` (e.g. SIGHUP) to the running daemon without waiting for anything."""
        assert self.proc is not None and self.proc.poll() is None, "daemon is not running"
        self.proc.send_signal(sig)

    def update_config(self, **changes: Any) -> None:
        """Rewrite the config file with ``changes`` applied (a value of None drops the key)."""
        self.config.update(changes)
        write_toml(self.config_path, self.config)

    def kill(self, *, whole_node: bool = False) -> None:
        """SIGKILL: no chance to clean up. Returns once its worker processes (`workers`) are
        gone too: they stop by themselves when the main process dies (handing back their
        claims), unless `whole_node`, where they are killed first, as when the host dies."""
        assert self.proc is not None
        if whole_node:
            for event in self.events("worker_started"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(event["pid"]), signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(10)
        self._join_readers()
        for event in self.events("worker_started"):
            _wait_gone(int(event["pid"]), WORKERS_GONE_S)

    def cleanup(self) -> None:
        """Fixture teardown: stop whatever still runs, without asserting anything."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._join_readers()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    # ------------------------------------------------------------------- events

    def events(self, name: str | None = None, predicate: Predicate | None = None) -> list[Event]:
        """Events of the current run, optionally filtered by name and predicate."""
        with self._cond:
            snapshot = list(self._events)
        return [
            e
            for e in snapshot
            if (name is None or e.get("event") == name) and (predicate is None or predicate(e))
        ]

    def wait_for(
        self,
        event: str,
        predicate: Predicate | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        since: int = 0,
    ) -> Event:
        """First event named ``event`` (matching ``predicate``) at index >= ``since``, this run."""
        return self.wait_for_count(event, 1, predicate, timeout, since)[0]

    def wait_for_count(
        self,
        event: str,
        count: int,
        predicate: Predicate | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        since: int = 0,
    ) -> list[Event]:
        """Block until ``count`` matching events have appeared; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    e
                    for e in self._events[since:]
                    if e.get("event") == event and (predicate is None or predicate(e))
                ]
                if len(found) >= count:
                    return found[:count]
                if self._output_finished():
                    raise DaemonError(
                        f"daemon exited (code {self.proc.returncode if self.proc else None}) "
                        f"while waiting for {count} x {event!r} (saw {len(found)})\n" + self.tail()
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DaemonError(
                        f"timed out after {timeout}s waiting for {count} x {event!r} "
                        f"(saw {len(found)})\n" + self.tail()
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_until(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout: float = DEFAULT_TIMEOUT,
        detail: Callable[[], object] | None = None,
    ) -> None:
        """Poll a filesystem/origin condition, bounded; fails with ``detail()`` and the log tail."""
        deadline = time.monotonic() + timeout
        while not condition():
            finished = self._output_finished()
            if finished or time.monotonic() > deadline:
                if condition():
                    return
                why = "daemon exited" if finished else f"timed out after {timeout}s"
                extra = f"\n{detail()}" if detail is not None else ""
                raise DaemonError(f"{why} waiting until {what}{extra}\n" + self.tail())
            time.sleep(0.05)

    def event_count(self) -> int:
        with self._cond:
            return len(self._events)

    def tail(self, lines: int = 40) -> str:
        with self._cond:
            out = self.all_stdout[-lines:]
            err = self.stderr_lines[-lines:]
        return (
            f"--- ingestd stdout (last {len(out)} lines) ---\n"
            + "\n".join(out)
            + f"\n--- ingestd stderr (last {len(err)} lines) ---\n"
            + "\n".join(err)
        )

    def log_lines_containing(self, needle: str) -> list[str]:
        with self._cond:
            return [line for line in self.all_stdout + self.stderr_lines if needle in line]

    # ------------------------------------------------------------------- status

    def status_json(self, timeout: float = 30.0) -> dict[str, Any]:
        result = subprocess.run(
            self.command("status", "--json"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.root,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise DaemonError(
                f"status --json exited {result.returncode}\nstdout: {result.stdout!r}\n"
                f"stderr: {result.stderr.decode(errors='replace')}"
            )
        try:
            parsed = json.loads(result.stdout)
        except ValueError as exc:
            raise DaemonError(f"status --json printed non-JSON: {result.stdout!r}") from exc
        assert isinstance(parsed, dict), parsed
        return parsed

    def cli(
        self, *args: str, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ingestd <args> --config <this config>`` to completion (bounded), text output."""
        return subprocess.run(
            self.command(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.root,
            env={**self.env(), **(env or {})},
            timeout=timeout,
            check=False,
        )

    # ------------------------------------------------------------- extract drops

    @staticmethod
    def _payload(payload: Any) -> bytes:
        if isinstance(payload, bytes):
            return payload
        if isinstance(payload, str):
            return payload.encode("utf-8")
        return json.dumps(payload, ensure_ascii=False, indent=1).encode("utf-8")

    def drop_atomic(self, name: str, payload: Any) -> float:
        """Write ``raw/.<name>.tmp``, rename it to ``raw/<name>``; return time.time() of rename."""
        data = self._payload(payload)
        tmp = self.raw_dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        renamed_at = time.time()
        os.rename(tmp, self.raw_dir / name)
        return renamed_at

    def drop_slow(self, name: str, payload: Any, chunks: int = 6, pause: float = 0.3) -> float:
        """Write ``raw/<name>`` in place, in ``chunks`` pieces with flushes and pauses between them.

        Returns time.time() when the last byte was written and the file closed."""
        data = self._payload(payload)
        step = max(1, -(-len(data) // chunks))
        with open(self.raw_dir / name, "wb") as fh:
            for i in range(0, len(data), step):
                if i:
                    time.sleep(pause)
                fh.write(data[i : i + step])
                fh.flush()
                os.fsync(fh.fileno())
        return time.time()

    def write_raw(self, name: str, payload: Any) -> Path:
        path = self.raw_dir / name
        path.write_bytes(self._payload(payload))
        return path

    # -------------------------------------------------------------------- media

    def media_path(self, topic: str, aweme_id: str) -> Path:
        return self.media_dir / topic_dir(topic) / f"{aweme_id}.mp4"

    def part_files(self) -> list[Path]:
        if not self.media_dir.exists():
            return []
        return sorted(self.media_dir.rglob("*.part"))


def extract_counts(extracts: Mapping[str, Any]) -> tuple[int, int]:
    """(merged, rejected) from status --json's ``extracts`` (other keys are tolerated)."""
    return extracts["merged"], extracts["rejected"]


def by_id(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Group events by their ``aweme_id`` (as a string)."""
    out: dict[str, list[Event]] = {}
    for e in events:
        if "aweme_id" in e:
            out.setdefault(str(e["aweme_id"]), []).append(e)
    return out
