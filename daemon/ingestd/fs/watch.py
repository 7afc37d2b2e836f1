"""The raw/ folder watcher: the only code that imports watchfiles."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from watchfiles import Change, awatch

from ingestd.fs.files import is_extract_name

# Small step and debounce: a renamed-in extract must be seen within 300 ms, and a folder
# being written continuously still yields a batch at least every DEBOUNCE_MS.
STEP_MS = 30
DEBOUNCE_MS = 200
RUST_TIMEOUT_MS = 1000


class WatchError(Exception):
    """The watcher failed (folder removed, inotify limits...). The caller may start it again."""


def _extract_filter(change: Change, path: str) -> bool:
    return change != Change.deleted and is_extract_name(Path(path).name)


class ExtractWatcher:
    """Reports batches of changed `extract_*.json` paths in one folder (not recursive)."""

    def __init__(self, raw_dir: Path, on_paths: Callable[[list[Path]], None]) -> None:
        self._raw_dir = raw_dir
        self._on_paths = on_paths
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin watching. On return the OS-level watch is in place."""
        changes = awatch(
            self._raw_dir,
            watch_filter=_extract_filter,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=self._stop,
            rust_timeout=RUST_TIMEOUT_MS,
            recursive=False,
        )
        self._task = asyncio.create_task(self._pump(changes), name="watcher")
        # The generator sets up its inotify watch synchronously on its first step, before its
        # first await; yielding once lets that step run, so nothing created from here on is missed.
        await asyncio.sleep(0)
        if self._task.done():
            await self._task

    async def _pump(self, changes: AsyncIterator[set[tuple[Change, str]]]) -> None:
        try:
            async for batch in changes:
                self._on_paths(sorted({Path(p) for _, p in batch}))
        except (OSError, RuntimeError) as exc:  # watchfiles raises both for a vanished folder
            raise WatchError(str(exc)) from exc

    async def wait(self) -> None:
        """Wait until the watcher stops; raises WatchError if it failed."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """Stop watching and wait for the watcher thread to notice (bounded by RUST_TIMEOUT_MS)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WatchError):
                await self._task
