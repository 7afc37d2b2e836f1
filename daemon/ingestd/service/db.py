"""Runs manifest calls on one dedicated thread, so SQLite never blocks the event loop."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, ParamSpec, TypeVar

from ingestd.log import Logger
from ingestd.store.base import ManifestError, ManifestStore
from ingestd.store.open import open_manifest

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


class Outage:
    """A manifest outage, told once whoever meets it (the feeder, the relinker, the extract
    completions each retry on their own) and its end once, by the first that gets through.
    `gate`, given an event, says whether it is news for the node: with worker processes, which
    meet the same outage, the main process's tells go through the node's Conditions."""

    def __init__(self) -> None:
        self._since: float | None = None  # monotonic; when this process met the outage
        self.gate: Callable[[str], bool] = lambda event: True

    def failed(self, log: Logger, exc: ManifestError, retry_in_s: float) -> None:
        """A manifest call failed; logs `manifest_error` unless this outage was told."""
        if self._since is None:
            self._since = time.monotonic()
            if self.gate("manifest_error"):
                log.error("manifest_error", error=str(exc), retry_in_s=retry_in_s)

    def answered(self, log: Logger) -> None:
        """A manifest call worked; logs `manifest_recovered` if an outage was told."""
        if self._since is not None:
            down, self._since = time.monotonic() - self._since, None
            if self.gate("manifest_recovered"):
                log.info("manifest_recovered", down_s=round(down, 1))


class Db:
    """Async facade over a manifest store: `await db.run(db.manifest.method, args...)`."""

    def __init__(self, executor: ThreadPoolExecutor, manifest: ManifestStore) -> None:
        self._executor = executor
        self.manifest = manifest
        self.outage = Outage()

    @classmethod
    async def open(cls, location: str | Path) -> Db:
        """Open the manifest at `location` (a SQLite file or a PostgreSQL URL) on a fresh
        single worker thread (its connection stays on it)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")
        loop = asyncio.get_running_loop()
        try:
            manifest = await loop.run_in_executor(executor, open_manifest, location)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, manifest)

    def run(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Call `method(*args)` on the manifest thread; await the result. `method` is a bound
        ManifestStore method. A future, not a coroutine: one hop less per call, and a caller that
        is cancelled may still shield it and take its result."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(method, *args, **kwargs))

    async def watch_queue(self, on_change: Callable[[], None]) -> None:
        """Until cancelled, call `on_change` on the event loop whenever another process may
        have made items due (ManifestStore.watch_queue, on a thread of its own)."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def changed() -> None:
            try:
                loop.call_soon_threadsafe(on_change)
            except RuntimeError:  # the loop is closed: nothing left to wake
                stop.set()

        try:
            await asyncio.to_thread(self.manifest.watch_queue, changed, stop)
        finally:
            stop.set()  # the thread sees it within LISTEN_POLL

    async def close(self) -> None:
        """Close the manifest and stop the thread."""
        await self.run(self.manifest.close)
        self._executor.shutdown(wait=True)


class GroupCommit(Generic[T, R]):
    """Group commit: calls that arrive while a batch is being written go together into the next
    one, in one transaction. No timer: a lone call is written at once, and the busier the
    manifest thread, the bigger the batches.

    With `retry`, a batch the manifest refuses (ManifestError: locked, full, read-only) is
    written again after `retry(failures, error, items)` seconds, with whatever arrived
    meanwhile, until it goes in: its calls never fail. Without, each call of the batch fails
    with the error."""

    def __init__(
        self,
        db: Db,
        write_many: Callable[[list[T]], list[R]],
        *,
        retry: Callable[[int, Exception, list[T]], float] | None = None,
    ) -> None:
        self._db = db
        self._write_many = write_many
        self._retry = retry
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writing = 0  # calls in the batch being written
        self._writer: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Calls posted whose result is not in yet."""
        return len(self._queue) + self._writing

    async def submit(self, item: T) -> R:
        """Write `item` with whatever else is waiting; returns its own result."""
        return await asyncio.shield(self.post(item))  # a cancelled caller's item is written

    def post(self, item: T) -> asyncio.Future[R]:
        """Queue `item` for the next batch without waiting; the future has its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="group-commit")
        return future

    async def flush(self) -> None:
        """Wait until everything posted so far is written (or has failed)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    def close(self) -> None:
        """Stop writing (what is still queued stays unwritten)."""
        if self._writer is not None:
            self._writer.cancel()

    async def _drain(self) -> None:
        failures = 0
        while self._queue:
            batch, self._queue = self._queue, []
            self._writing = len(batch)
            try:
                results = await self._db.run(self._write_many, [item for item, _ in batch])
            except ManifestError as exc:
                self._writing = 0
                if self._retry is None:
                    self._fail(batch, exc)
                    continue
                failures += 1
                self._queue = batch + self._queue
                items = [item for item, _ in self._queue]
                await asyncio.sleep(self._retry(failures, exc, items))
                continue
            except BaseException as exc:
                self._writing = 0
                if not isinstance(exc, Exception):
                    raise  # cancelled (close): what is queued stays unwritten
                self._fail(batch, exc)  # the whole transaction failed: so did each call in it
                continue
            self._writing = 0
            failures = 0
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    @staticmethod
    def _fail(batch: list[tuple[T, asyncio.Future[R]]], exc: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
