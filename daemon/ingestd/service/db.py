"""Runs manifest calls on one dedicated thread, so SQLite never blocks the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from ingestd.store.manifest import Manifest

P = ParamSpec("P")
T = TypeVar("T")


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

    async def run(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call `method(*args)` on the manifest thread. `method` is a bound Manifest method."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(method, *args, **kwargs)
        )

    async def close(self) -> None:
        """Close the manifest and stop the thread."""
        await self.run(self.manifest.close)
        self._executor.shutdown(wait=True)
