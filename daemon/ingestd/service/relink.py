"""Further topics of done videos: the links a merge (or a completion whose links failed) leaves
due, made in finite passes. One process of a node makes them: the download pool's own feed
loop when the daemon downloads in its own process, else the main process (service.workers),
which is where merges happen. Two processes linking one file at once would race on its
temporary link name (fs.files.link_into).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable
from pathlib import PurePosixPath

from ingestd.config import Config
from ingestd.fs.files import describe_os_error
from ingestd.log import Logger
from ingestd.policy.retry import backoff_delay
from ingestd.service.db import Db
from ingestd.service.publish import Publisher
from ingestd.store.base import ManifestError

RELINK_BATCH = 100
RELINK_PARKED_MAX = 1000  # items whose links keep failing, remembered to skip them a while
RETRY_DELAY = 5.0  # seconds before a pass the manifest refused is tried again


class Relinker:
    """Gives done items that gained topics their extra links."""

    def __init__(
        self,
        config: Config,
        db: Db,
        publisher: Publisher,
        log: Logger,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._db = db
        self._publisher = publisher
        self._log = log
        self._jitter = jitter
        self._due = False
        self._at = 0.0  # monotonic: when the next pass may run
        self.parked: dict[str, tuple[int, float]] = {}  # id: (failures, retry at)
        self._kick = asyncio.Event()

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config (write_info_json, backoff) from the next pass on."""
        self._config = config

    def merged(self) -> None:
        """An extract was merged (or a completion left links to make): a pass is due now;
        items parked after failed links are skipped anyway."""
        self._due = True
        self._at = 0.0
        self._kick.set()

    async def run_due(self) -> None:
        """Run a pass if one is due; one the manifest refused is due again RETRY_DELAY later
        (and its error raised)."""
        if not self._due or time.monotonic() < self._at:
            return
        self._due = False  # a merge during the pass sets it again
        try:
            await self.relink()
        except BaseException:
            self._due = True
            self._at = time.monotonic() + RETRY_DELAY
            raise

    async def run(self) -> None:
        """Make due links until cancelled: after each merge, and when parked items are due."""
        while True:
            self._kick.clear()
            try:
                await self.run_due()
            except ManifestError as exc:
                self._db.outage.failed(self._log, exc, RETRY_DELAY)
            timeout = max(self._at - time.monotonic(), 0.0) if self._due else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._kick.wait()

    async def relink(self) -> None:
        """Give done items that gained topics their extra links, in one finite pass. An item
        whose links fail is parked with its own backoff and the others go on; its file is
        never downloaded again for it."""
        now = time.monotonic()
        parked = self.parked
        # Due again: tried in this pass, their failures kept, so that another failure waits
        # longer; waiting still: skipped.
        due = {i for i, (_, at) in parked.items() if at <= now}
        waiting = tuple(i for i in parked if i not in due)
        after = ""
        while True:
            batch = await self._db.run(
                self._db.manifest.pending_relinks,
                RELINK_BATCH,
                waiting,
                after,
                node=self._config.manifest_node,  # the files this node holds
            )
            for relink in batch:
                due.discard(relink.aweme_id)
                try:
                    made = await asyncio.to_thread(
                        functools.partial(
                            self._publisher.link_topics,
                            PurePosixPath(relink.path),
                            relink.topics,
                            info=self._config.write_info_json,
                        )
                    )
                except OSError as exc:
                    self._park(relink.aweme_id, exc, relink.path)
                    continue
                await self._db.run(self._db.manifest.clear_relink, relink.aweme_id, relink.topics)
                parked.pop(relink.aweme_id, None)
                if made:
                    self._log.info("video_linked", aweme_id=relink.aweme_id, links=made)
            if len(batch) < RELINK_BATCH:
                break
            after = batch[-1].aweme_id
        for aweme_id in due:  # not left to link any more (relinked elsewhere, requeued)
            del parked[aweme_id]
        if parked:  # come back when the first parked item is due
            self._due = True
            self._at = min(at for _, at in parked.values())

    def _park(self, aweme_id: str, exc: OSError, path: str) -> None:
        failures = self.parked.get(aweme_id, (0, 0.0))[0] + 1
        config = self._config
        delay = backoff_delay(failures, config.backoff_base, config.backoff_max, self._jitter())
        if len(self.parked) >= RELINK_PARKED_MAX:  # forget the one due soonest
            soonest = min(self.parked, key=lambda i: self.parked[i][1])
            del self.parked[soonest]
        self.parked[aweme_id] = (failures, time.monotonic() + delay)
        self._log.error(
            "link_failed",
            aweme_id=aweme_id,
            error=describe_os_error(exc, self._publisher.media_dir / path),
            failures=failures,
            retry_in_s=round(delay, 3),
        )
