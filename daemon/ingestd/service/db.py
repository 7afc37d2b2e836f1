"""Runs manifest calls on one dedicated thread, so SQLite never blocks the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, ParamSpec, TypeVar

from ingestd.store.manifest import Manifest

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


class Db:
    """Async facade over Manifest: `await db.run(Manifest.method, args...)`."""

    def __init__(self, executor: ThreadPoolExecutor, manifest: Manifest) -> None:
        self._executor = executor
        self.manifest = manifest

    @classmethod
    async def open(cls, path: Path) -> Db:
        """Open the manifest on a fresh single worker thread (SQLite objects stay on it)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")
        loop = asyncio.get_running_loop()
        try:
            manifest = await loop.run_in_executor(executor, Manifest.open, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, manifest)

    def run(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Call `method(*args)` on the manifest thread; await the result. `method` is a bound
        Manifest method. A future, not a coroutine: one hop less per call, and a caller that
        is cancelled may still shield it and take its result."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(method, *args, **kwargs))

    async def close(self) -> None:
        """Close the manifest and stop the thread."""
        await self.run(self.manifest.close)
        self._executor.shutdown(wait=True)


class GroupCommit(Generic[T, R]):
    """Group commit: calls that arrive while a batch is being written go together into the next
    one, in one transaction. No timer: a lone call is written at once, and the busier the
    manifest thread, the bigger the batches."""

    def __init__(self, db: Db, write_many: Callable[[list[T]], list[R]]) -> None:
        self._db = db
        self._write_many = write_many
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

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

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self._db.run(self._write_many, [item for item, _ in batch])
            except Exception as exc:  # the whole transaction failed: so did every call in it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
