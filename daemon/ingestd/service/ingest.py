"""The extract pipeline: changed paths in raw/ -> safe read -> parse -> merge into the manifest."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ingestd.config import Config
from ingestd.fs.files import ExtractReadError, list_extracts, lstat_regular, read_extract
from ingestd.log import Logger
from ingestd.policy.extract import ExtractError, RejectReason
from ingestd.policy.settle import FileSignature, SettleTracker
from ingestd.service.completion import EventOrder
from ingestd.service.db import Db
from ingestd.service.merger import IN_PROCESS_MAX_BYTES, ExtractChanged, Merged, Merger


class Ingestor:
    """Processes extracts one at a time, in name order, each version of each file once."""

    def __init__(
        self,
        config: Config,
        db: Db,
        log: Logger,
        on_merged: Callable[[], None],
        order: EventOrder | None = None,
    ) -> None:
        self._config = config
        # extract_merged (and its expired items) is logged before the extract can complete.
        self._order = order if order is not None else EventOrder()
        self._db = db
        self._merger = Merger(db, config.manifest_location, config.max_extract_bytes)
        self._log = log
        self._on_merged = on_merged
        self._dirty: set[Path] = set()
        self._kick = asyncio.Event()
        self._done: dict[Path, FileSignature] = {}
        self._settle = SettleTracker(config.settle_seconds)
        self._next_rescan = time.monotonic() + config.rescan_seconds

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config (settle period, caps, rescan period) from now on."""
        self._config = config
        self._merger.max_bytes = config.max_extract_bytes
        self._settle.settle_seconds = config.settle_seconds
        self._next_rescan = min(self._next_rescan, time.monotonic() + config.rescan_seconds)
        self._kick.set()

    def stop(self) -> None:
        """Stop any merge running in a child process (shutdown)."""
        self._merger.stop()

    def notify(self, paths: list[Path]) -> None:
        """The watcher saw these paths change."""
        self._dirty.update(paths)
        self._kick.set()

    async def scan(self) -> None:
        """Process every extract in raw/ now, oldest name first."""
        paths = await asyncio.to_thread(list_extracts, self._config.raw_dir)
        for path in paths:
            await self._guarded(path)

    async def run(self) -> None:
        """Process changed paths as they are reported; recheck unsettled files; rescan slowly."""
        while True:
            now = time.monotonic()
            deadline = self._next_rescan
            recheck = self._settle.next_recheck()
            if recheck is not None:
                deadline = min(deadline, recheck)
            if not self._dirty:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), timeout=max(deadline - now, 0.0))
            self._kick.clear()
            now = time.monotonic()
            batch = set(self._dirty)
            self._dirty.clear()
            batch.update(Path(p) for p in self._settle.due(now))
            if now >= self._next_rescan:
                # A safety net for events the OS dropped (inotify queue overflow).
                batch.update(await asyncio.to_thread(list_extracts, self._config.raw_dir))
                self._next_rescan = now + self._config.rescan_seconds
            for path in sorted(batch):
                await self._guarded(path)

    async def _guarded(self, path: Path) -> None:
        # One bad file or a passing manifest error (disk full) must not stop the pipeline;
        # the path is not marked done, so the next rescan tries it again.
        try:
            await self.process(path)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.error(
                "extract_failed",
                path=str(path),
                error=repr(exc)[:300],
                retry_in_s=self._config.rescan_seconds,
            )

    async def process(self, path: Path) -> None:
        """Handle one path: merge it, skip it, reject it, or wait for it to settle."""
        signature = await asyncio.to_thread(lstat_regular, path)
        if signature is None:  # gone, a symlink, a FIFO, a folder: not an extract
            self._settle.forget(str(path))
            self._done.pop(path, None)
            return
        if self._done.get(path) == signature:
            return
        try:
            content = await asyncio.to_thread(
                read_extract, path, self._config.max_extract_bytes, IN_PROCESS_MAX_BYTES
            )
        except ExtractReadError as exc:
            if exc.skip:
                return
            reason = RejectReason.TOO_LARGE if exc.too_large else RejectReason.UNREADABLE
            key = f"{reason.value}:{signature.size}:{signature.mtime_ns}"
            await self._reject(path, key, signature, reason, str(exc))
            return
        name = path.name
        signature = content.signature
        status = await self._db.run(self._db.manifest.extract_status, name, content.sha256)
        if status is not None:  # this exact version was handled before (e.g. before a restart)
            self._settle.forget(str(path))
            self._done[path] = signature
            return
        if await self._db.run(self._db.manifest.content_merged, content.sha256):
            await self._db.run(
                self._db.manifest.record_extract,
                name,
                content.sha256,
                signature.size,
                "duplicate",
                self._db.manifest.clock(),
            )
            self._done[path] = signature
            self._log.info(
                "extract_skipped",
                path=str(path),
                sha256=content.sha256,
                reason="duplicate_content",
            )
            return
        started = time.monotonic()
        try:
            merged = await self._merger.merge(path, content)
        except ExtractChanged:
            self.notify([path])
            return
        except ExtractError as exc:
            if exc.reason is RejectReason.INVALID_JSON:
                verdict = self._settle.unparsable(str(path), signature, time.monotonic())
                if not verdict.reject:
                    self._log.debug("extract_unsettled", path=str(path), detail=exc.detail)
                    return
            await self._reject(path, content.sha256, signature, exc.reason, exc.detail)
            return
        self._settle.forget(str(path))
        ticket = self._order.take()
        try:
            await self._db.run(
                self._db.manifest.record_extract,
                name,
                content.sha256,
                signature.size,
                "merged",
                self._db.manifest.clock(),
                None,
                (merged.total, merged.new, merged.updated, merged.unusable),
            )
            self._done[path] = signature
            self._log_merged(path, content.sha256, merged, time.monotonic() - started)
        finally:
            self._order.give_back(ticket)
        self._on_merged()

    def _log_merged(self, path: Path, sha256: str, merged: Merged, duration: float) -> None:
        expired = merged.expired
        self._log.info(
            "extract_merged",
            path=str(path),
            sha256=sha256,
            records=merged.total,
            new=merged.new,
            updated=merged.updated,
            unusable=merged.unusable,
            expired=expired.count,
            duration_s=round(duration, 3),
            parse_s=round(merged.parse_s, 3),
            write_s=round(merged.write_s, 3),
        )
        if expired.count:
            # One line for the lot: an extract of dead URLs is one problem, not 100,000.
            self._log.warning(
                "extract_expired_items",
                path=str(path),
                sha256=sha256,
                count=expired.count,
                earliest_expiry=_iso(expired.earliest),
                latest_expiry=_iso(expired.latest),
                aweme_ids=list(expired.aweme_ids),
            )

    async def _reject(
        self, path: Path, key: str, signature: FileSignature, reason: RejectReason, detail: str
    ) -> None:
        self._settle.forget(str(path))
        self._done[path] = signature
        if await self._db.run(self._db.manifest.extract_status, path.name, key) is None:
            await self._db.run(
                self._db.manifest.record_extract,
                path.name,
                key,
                signature.size,
                "rejected",
                self._db.manifest.clock(),
                reason.value,
            )
            self._log.warning(
                "extract_rejected", path=str(path), reason=reason.value, detail=detail[:200]
            )


def _iso(epoch: int | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (2026-11-26T09:00:00Z)."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(epoch)
