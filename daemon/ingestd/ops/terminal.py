"""Everything drawn on a terminal, with rich: event lines under `run` with their live summary
line, and the `status --watch` view (verify draws its own progress bar, in ops/verify.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live as RichLive
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ingestd.ops.live import (
    DaemonState,
    Live,
    eta_seconds,
    human_bytes,
    human_duration,
    human_rate,
    outstanding,
    work_fraction,
)
from ingestd.ops.render import LEVEL_STYLES, console_line, console_parts
from ingestd.store.base import ItemSummary

PLAIN_WIDTH = 160  # columns of a frame written to a pipe or file
SUMMARY_REFRESH = 2.0  # redraws a second of run's summary line
_STATE_STYLES = {
    "running": "bold green",
    "paused": "bold yellow",
    "stopped": "bold red",
    "not_responding": "bold red",
    "unknown": "dim",
}


def styled(event: Mapping[str, Any]) -> Text:
    """One event line, coloured by its level."""
    clock, tag, name, body = console_parts(event)
    style = LEVEL_STYLES.get(str(event.get("level", "info")), "")
    text = Text(clock, style="dim")
    if tag:
        text.append(f" {tag}", style=style)
    text.append(f" {name}", style=style if tag else "cyan")
    if body:
        text.append(f" {body}")
    return text


_ANSI = Console(force_terminal=True, highlight=False, width=1_000, color_system="standard")


def ansi_line(event: Mapping[str, Any]) -> str:
    """One event line with its colours as ANSI codes (for `ingestd logs` on a terminal)."""
    with _ANSI.capture() as captured:
        _ANSI.print(styled(event), end="")
    return captured.get()


class EventConsole:
    """Event lines for a person. On a terminal they scroll above one summary line that the
    daemon keeps current (`set_summary`), as aria2c does; elsewhere they are plain lines."""

    def __init__(self, stream: TextIO) -> None:
        self.tty = stream.isatty()
        self._console = Console(file=stream, highlight=False, soft_wrap=True)
        self.stream = stream
        self._summary: str | None = None
        self._live: RichLive | None = None
        self._lock = threading.Lock()

    def write(self, event: Mapping[str, Any]) -> None:
        """Print one event (thread safe: rich's console serializes its writes)."""
        if self.tty:
            self._console.print(styled(event), overflow="ellipsis", no_wrap=True, crop=True)
        else:
            self.stream.write(console_line(event) + "\n")
            self.stream.flush()

    def set_summary(self, text: str | None) -> None:
        """Show (or, with None, take down) the live line under the events. Terminal only."""
        if not self.tty:
            return
        with self._lock:
            self._summary = text
            if text is not None and self._live is None:
                self._live = RichLive(
                    get_renderable=self._render,
                    console=self._console,
                    refresh_per_second=SUMMARY_REFRESH,
                    transient=True,
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
                self._live.start()
            elif text is None and self._live is not None:
                live, self._live = self._live, None
                live.stop()

    def _render(self) -> RenderableType:
        return Text(self._summary or "", style="bold", no_wrap=True, overflow="ellipsis")

    def close(self) -> None:
        """Take the live line down, leaving the terminal as it was."""
        self.set_summary(None)


# --- status --watch ------------------------------------------------------------------------


def watch_view(
    *,
    items: Mapping[str, int],
    bytes_done: int,
    live: Live | None,
    state: tuple[DaemonState, str],
    rate: float | None,
    failures: Sequence[ItemSummary],
    where: str,
    now: float | None = None,
) -> RenderableType:
    """One frame of `ingestd status --watch`."""
    transfers = live.transfers if live is not None and state[0] in ("running", "paused") else ()
    done = items.get("done", 0)
    total = done + outstanding(items)
    fraction = work_fraction(items)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    head = Text.assemble(
        ("ingestd ", "bold"),
        (state[0].replace("_", " "), _STATE_STYLES[state[0]]),
        f"  {state[1]}  " if state[1] else "  ",
        (f"{where}  {stamp}", "dim"),
    )
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=1.0, completed=fraction, width=40),
        Text(f"{fraction * 100:5.1f}%  {done}/{total} done", style="bold"),
    )
    eta = eta_seconds(items, bytes_done, transfers, rate) if state[0] == "running" else None
    line = Text(
        f"{human_rate(rate if state[0] == 'running' else None)}   ETA {human_duration(eta)}"
        f"   in flight {len(transfers)}   pending {items.get('pending', 0)}"
        f"   expired {items.get('expired', 0)}   failed {items.get('failed', 0)}"
        f"   downloaded {human_bytes(bytes_done)}"
    )
    parts: list[RenderableType] = [head, bar, line]
    if transfers:
        table = Table(box=None, padding=(0, 1), title="in flight", title_justify="left")
        for column, justify in (("aweme_id", "left"), ("topic", "left"), ("bytes", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        table.add_column("%", justify="right")
        table.add_column("for", justify="right")
        for t in sorted(transfers, key=lambda t: -t.seconds)[:12]:
            have = t.offset + t.received
            size = f"{human_bytes(have)} / {human_bytes(t.total)}" if t.total else human_bytes(have)
            percent = f"{have / t.total * 100:.0f}%" if t.total else "-"
            table.add_row(t.aweme_id, t.topic, size, percent, human_duration(t.seconds))
        if len(transfers) > 12:
            table.caption = f"and {len(transfers) - 12} more"
        parts.append(table)
    if failures:
        table = Table(box=None, padding=(0, 1), title="recent failures", title_justify="left")
        for column in ("aweme_id", "reason", "status", "attempts", "topic"):
            table.add_column(column)
        for item in failures:
            table.add_row(
                item.aweme_id,
                item.reason or "-",
                str(item.status or "-"),
                str(item.attempts),
                item.topics[0] if item.topics else "-",
            )
        parts.append(table)
    return Group(*parts)


def watch_console(stream: TextIO) -> Console:
    """The console `status --watch` draws on: live on a terminal, plain frames elsewhere
    (as wide as a log line may be, not the 80 columns rich assumes off a terminal)."""
    console = _WatchConsole(file=stream, highlight=False)
    if not console.is_terminal:
        console = _WatchConsole(file=stream, highlight=False, width=PLAIN_WIDTH)
    return console


class _WatchConsole(Console):
    """rich exits with status 1 when its reader goes away; `status --watch | head` is a normal
    way to end the view, so the caller gets the BrokenPipeError and ends with 0."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def run_live(console: Console) -> RichLive:
    """A live display that redraws in place (the caller updates and stops it)."""
    return RichLive(console=console, auto_refresh=False, transient=False)
