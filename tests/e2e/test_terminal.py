"""The terminal views, read off a real terminal: tmux runs them, capture-pane reads the screen.

`status --watch` follows a paced transfer at a known rate (its rate, the bar, the state while
running, paused and stopped); `run` on a terminal keeps one live summary line under the
events it prints, and takes it down when it stops.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.daemon import Daemon
from support.extracts import make_record, new_id
from support.raw_origin import RawOrigin, Reply

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(
    TMUX is None and not os.environ.get("CI"), reason="tmux is not installed"
)
ITEMS = 4
SIZE = 3_000_000
PER_TRANSFER = 200_000  # bytes a second each; four at once
TRUE_RATE = ITEMS * PER_TRANSFER
RATE_SIZE = 1_800_000  # 9 s a file at PER_TRANSFER: the rate is read at 6 s, then a pause
FAST_TRANSFER = 1_000_000  # 3 s a file of SIZE: long enough to see four in flight


class Terminal:
    """A tmux server of our own (its own socket) running one command in a 160x40 window."""

    def __init__(self, root: Path, command: list[str], env: dict[str, str]) -> None:
        assert TMUX is not None, "tmux is required in CI"
        self._socket = str(root / "tmux.sock")
        script = root / "term.sh"
        exports = "".join(
            f"export {k}={shlex.quote(v)}\n"
            for k, v in env.items()
            if k.isidentifier() and k not in ("COLUMNS", "LINES")
        )
        # COLUMNS and LINES (pytest's, via the tmux server's environment) would override the
        # window's real size.
        script.write_text(f"unset COLUMNS LINES\n{exports}exec {shlex.join(command)}\n")
        self._tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "40", f"sh {script}")
        self._tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        assert TMUX is not None
        result = subprocess.run(
            [TMUX, "-S", self._socket, *args], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def wait(self, predicate: Callable[[str], Any], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s; the screen:\n{screen}")
            time.sleep(0.2)

    def dead(self) -> bool:
        """The command has exited (the pane stays, to be read)."""
        return self._tmux("display", "-p", "-t", "t", "#{pane_dead}").strip() == "1"

    def wait_exit(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self.dead():
            assert time.monotonic() < deadline, f"still running after {timeout} s:\n{self.screen()}"
            time.sleep(0.2)
        return self.screen()

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def close(self) -> None:
        """Stop the command (a daemon takes tmux's SIGHUP for a reload), then tmux."""
        if not self.dead():
            pid = int(self._tmux("display", "-p", "-t", "t", "#{pane_pid}").strip())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not self.dead() and time.monotonic() < deadline:
                time.sleep(0.1)
        subprocess.run([TMUX or "tmux", "-S", self._socket, "kill-server"], timeout=10)


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def _records(
    origin: RawOrigin, prefix: str, count: int, pace: int | None, size: int = SIZE
) -> list[dict[str, Any]]:
    """Records of files of `size`, each served at `pace` bytes a second (None: full speed)."""
    records = []
    rng = __import__("random").Random(prefix)
    for i in range(count):
        name = f"{prefix}-{i}"
        if pace is not None:
            origin.script(name, [Reply(bytes_per_second=pace)])
        records.append(make_record(new_id(rng), origin.url(name, size), prefix, size))
    return records


def _daemon(tmp_path: Path, origin: RawOrigin, **config: Any) -> Daemon:
    """A daemon for the paced origin: files of SIZE, a stall timeout longer than a pacing gap."""
    return Daemon(
        tmp_path / "d",
        ca_bundle=origin.ca_pem_path,
        max_file_bytes=16 * 1024 * 1024,
        timeout=10.0,
        **config,
    )


def _rate(screen: str) -> float | None:
    match = re.search(r"(\d+\.\d\d) MB/s", screen)
    return None if match is None else float(match.group(1)) * 1e6


def test_status_watch_shows_the_true_rate_the_bar_and_the_state(
    tmp_path: Path, terminals: list[Terminal], ingestd_available: None
) -> None:
    with RawOrigin(tmp_path / "origin") as origin:
        daemon = _daemon(tmp_path, origin)
        try:
            daemon.start()
            watch = Terminal(
                tmp_path,
                daemon.command("status", "--watch", "--interval", "0.5"),
                {**daemon.env(), "TERM": "xterm-256color"},
            )
            terminals.append(watch)
            watch.wait(lambda s: "ingestd running" in s, 15, "running state")

            records = _records(origin, "r", ITEMS, PER_TRANSFER, RATE_SIZE)
            daemon.drop_atomic("extract_20261202T050000.json", records)
            daemon.wait_for_count("download_started", ITEMS, timeout=20)
            time.sleep(6.0)  # the subject: the rate the view shows after 5 s of paced transfer
            screen = watch.screen()
            shown = _rate(screen)
            assert shown is not None, screen
            assert abs(shown - TRUE_RATE) <= 0.25 * TRUE_RATE, (shown, TRUE_RATE, screen)
            assert "in flight 4" in screen and "0/4 done" in screen, screen
            assert re.search(r"ETA (\d+\.\d s|\d+ s)", screen), screen

            daemon.update_config(min_free_bytes=2**59)  # more than any disk: downloads pause
            daemon.send_signal(signal.SIGHUP)
            screen = watch.wait(lambda s: "ingestd paused" in s, 15, "paused state")
            assert "low_disk_space" in screen, screen

            daemon.update_config(min_free_bytes=0)
            daemon.send_signal(signal.SIGHUP)
            daemon.wait_for_count("download_completed", ITEMS, timeout=60)
            screen = watch.wait(lambda s: "100.0%  4/4 done" in s, 15, "a full bar")
            assert "ingestd running" in screen, screen

            daemon.terminate()
            watch.wait(lambda s: "ingestd stopped" in s, 15, "stopped state")
            watch.keys("C-c")
            screen = watch.wait_exit(10)
            assert "Traceback" not in screen and "KeyboardInterrupt" not in screen, screen
        finally:
            daemon.cleanup()


def test_run_on_a_terminal_keeps_one_summary_line_under_the_events(
    tmp_path: Path, terminals: list[Terminal], ingestd_available: None
) -> None:
    with RawOrigin(tmp_path / "origin") as origin:
        daemon = _daemon(tmp_path, origin, log_format="auto")
        try:
            run = Terminal(
                tmp_path, daemon.command("run"), {**daemon.env(), "TERM": "xterm-256color"}
            )
            terminals.append(run)
            run.wait(lambda s: "daemon_ready" in s, 20, "daemon_ready")
            records = _records(origin, "t", ITEMS, FAST_TRANSFER)
            daemon.drop_atomic("extract_20261202T050100.json", records)
            screen = run.wait(lambda s: "4 in flight" in s, 20, "the summary line")
            lines = [line for line in screen.splitlines() if line.strip()]
            assert re.match(r"\[4 in flight\]  done 0/4  \d+\.\d\d MB/s  ETA ", lines[-1]), lines
            assert sum("in flight]" in line for line in lines) == 1, screen
            started = [line for line in lines if "download_started" in line]
            assert len(started) == ITEMS, screen
            for line in lines:
                assert len(line) <= 160 and "None" not in line, line
            screen = run.wait(lambda s: s.count("download_completed") == ITEMS, 60, "completions")
            done = next(line for line in screen.splitlines() if "download_completed" in line)
            assert re.search(r"bytes=2\.9 MiB took=\S+ s rate=\d+\.\d\d MB/s", done), screen
            run.keys("C-c")
            screen = run.wait_exit(20)
            assert "daemon_stopped" in screen and "in flight]" not in screen, screen
        finally:
            daemon.cleanup()


def test_status_watch_into_a_pipe_that_closes_ends_quietly(
    tmp_path: Path, ingestd_available: None
) -> None:
    daemon = Daemon(tmp_path / "d")
    try:
        daemon.start()
        daemon.terminate()
        watch = subprocess.Popen(
            daemon.command("status", "--watch", "--interval", "0.1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=daemon.env(),
        )
        assert watch.stdout is not None
        first = watch.stdout.readline()  # `| head -n 1`: read a line, then go away
        watch.stdout.close()
        _, stderr = watch.communicate(timeout=15)
        assert b"ingestd stopped" in first
        assert watch.returncode == 0 and stderr == b"", stderr.decode()
    finally:
        daemon.cleanup()
