"""extract_completed: once every item an extract brought is final, say so, exactly once.

The manifest counts, per merged extract, its items still outstanding (triggers, in the same
transaction as each change of state, whatever path makes it). Here the daemon looks, after each
merge and every second, for extracts that reached zero and were not reported yet: a small
indexed read on the manifest thread. Each is logged, then marked reported. A stop between the two
(a crash in that instant) reports it again on the next start rather than never.

Ordering: an extract_completed follows the events of the outcomes it counts. Writers of such
outcomes (the pool's done, failed and expired, the ingestor's merge) take a ticket from
EventOrder before their write goes to the manifest and give it back once their event is logged;
a check notes the last ticket taken before it reads, and logs only when every ticket up to that
one is back. A write the check saw committed was sent to the manifest thread before the read,
so its ticket is among those. (A merge child writes on its own connection, but what it writes
completes nothing before the merge is recorded, under the ingestor's ticket: it only adds items,
or moves final ones between final states.) Download workers, in processes of their own, take
their own tickets; the check then asks each of them (service.workers.Workers.sync) to say when
its events up to its last ticket are logged, on the channel those events travel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ingestd.log import Logger
from ingestd.service.db import Db
from ingestd.store.base import ManifestError, SettledExtract

CHECK_PERIOD = 1.0  # seconds between looks when nothing kicks
ORDER_WAIT = 10.0  # at most this long for outcome events still being written before a report
RETRY_DELAY = 5.0  # after the manifest refused a look or a mark


class EventOrder:
    """Tickets for outcome writes whose events an extract_completed must come after."""

    def __init__(self) -> None:
        self._last = 0
        self._out: dict[int, None] = {}  # tickets not back yet, oldest first
        self._back = asyncio.Event()

    def take(self) -> int:
        """A ticket for a write about to go to the manifest; give it back once logged."""
        self._last += 1
        self._out[self._last] = None
        return self._last

    def give_back(self, ticket: int) -> None:
        """The write's event is logged (or the write will never be: failed, cancelled)."""
        if self._out.pop(ticket, 0) is None:
            self._back.set()

    @property
    def last(self) -> int:
        """The last ticket taken."""
        return self._last

    async def through(self, ticket: int, timeout: float) -> bool:
        """Wait until every ticket up to `ticket` is back; False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while self._out and next(iter(self._out)) <= ticket:
            self._back.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._back.wait()
        return True


class ExtractCompletions:
    """Reports extracts whose items are all final (extract_completed)."""

    def __init__(
        self,
        db: Db,
        log: Logger,
        raw_dir: Path,
        order: EventOrder,
        barrier: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`barrier`: awaited, like `order`, before a report: outcomes written by other
        processes (download workers) have their events logged once it returns."""
        self._db = db
        self._barrier = barrier
        self._log = log
        self._raw_dir = raw_dir
        self._order = order
        self._kick = asyncio.Event()
        self._unmarked: list[int] = []  # reported, not yet marked in the manifest

    def kick(self) -> None:
        """An extract was merged: it may be complete already."""
        self._kick.set()

    async def run(self) -> None:
        """Look now, then after each kick and every CHECK_PERIOD, until cancelled."""
        while True:
            self._kick.clear()
            try:
                await self.check()
            except ManifestError as exc:
                self._db.outage.failed(self._log, exc, RETRY_DELAY)
                await asyncio.sleep(RETRY_DELAY)
                continue
            self._db.outage.answered(self._log)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_PERIOD):
                    await self._kick.wait()

    async def check(self) -> int:
        """Report what completed since the last look; returns how many."""
        await self._mark()  # what an earlier look reported but could not mark
        ticket = self._order.last
        settled = await self._db.run(self._db.manifest.settled_extracts)
        if not settled:
            return 0
        await self._order.through(ticket, ORDER_WAIT)
        if self._barrier is not None:
            await self._barrier()
        now = self._db.manifest.clock()
        for extract in settled:
            self._report(extract, now)
        self._unmarked.extend(extract.id for extract in settled)
        await self._mark()
        return len(settled)

    async def _mark(self) -> None:
        if self._unmarked:
            ids = list(self._unmarked)
            # Shielded: a stop that comes now still marks them (the write runs before the
            # manifest closes), so they are not reported again after the restart.
            await asyncio.shield(
                self._db.run(self._db.manifest.close_extracts, ids, self._db.manifest.clock())
            )
            del self._unmarked[: len(ids)]

    def _report(self, extract: SettledExtract, now: float) -> None:
        self._log.info(
            "extract_completed",
            path=str(self._raw_dir / extract.path),
            sha256=extract.sha256,
            items=extract.items,
            done=extract.done,
            expired=extract.expired,
            failed=extract.failed,
            bytes=extract.bytes,
            duration_s=round(max(now - extract.merged_at, 0.0), 3),
        )
