"""The download pool: drains due items from the manifest through at most `concurrency` transfers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ingestd.config import Config
from ingestd.fs.files import PartFile, ensure_dir, free_bytes, link_into
from ingestd.log import Logger
from ingestd.metrics import Metrics
from ingestd.net.fetch import Chunk, Fetcher, FetchFailed
from ingestd.policy.merge import State
from ingestd.policy.naming import relative_video_path, topic_folder
from ingestd.policy.retry import (
    Action,
    Failure,
    Reason,
    RetryPolicy,
    classify_status,
    decide,
    parse_retry_after,
)
from ingestd.policy.transfer import (
    SNIFF_BYTES,
    content_range_start,
    looks_like_mp4,
    resume_headers,
    strong_validator,
)
from ingestd.policy.urls import check_url, is_expired, redact
from ingestd.service.db import Db, GroupCommit
from ingestd.store.manifest import Completion, Item, ManifestError

RESUME_MIN_BYTES = 1024 * 1024  # smaller files restart from zero: not worth a manifest write
WRITE_BATCH = 1024 * 1024  # bytes gathered before one write+hash in a worker thread
# A slow transfer still reaches the disk often, so a kill loses little of what arrived.
FLUSH_SECONDS = 0.25
IDLE_RECHECK = 5.0  # seconds between looks at the queue and the free space when idle
SPACE_RECHECK = 0.5  # at most this often a statvfs, however many transfers finish
RELINK_BATCH = 100


@dataclass(frozen=True, slots=True)
class Published:
    """A finished transfer: where the file is and what it holds."""

    path: PurePosixPath
    size: int
    sha256: str
    resumed: bool
    links: int = 0


@dataclass
class PoolStats:
    """Counters for progress reports."""

    completed: int = 0
    failed: int = 0
    expired: int = 0
    retried: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)


class DownloadPool:
    """Claims due items in small batches and downloads them, never holding more than it runs."""

    def __init__(
        self,
        config: Config,
        db: Db,
        fetcher: Fetcher,
        log: Logger,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._media_dir = config.media_dir  # a new Path per access otherwise, several per file
        self._db = db
        self._fetcher = fetcher
        self._log = log
        self._metrics = metrics
        self._clock = clock
        self._jitter = jitter
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Claimed ahead, in one transaction per batch, so a finishing transfer is replaced
        # without a manifest round trip. Released, like running ones, on shutdown.
        self._ready: collections.deque[Item] = collections.deque()
        self._completions = GroupCommit(db, db.manifest.complete_many)
        self._space_checked_at = -SPACE_RECHECK
        self._wake = asyncio.Event()
        self._paused = False
        self._relink_due = False
        self.stats = PoolStats()

    @property
    def in_flight(self) -> int:
        """Transfers running now."""
        return len(self._tasks)

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config from the next claim and the next decision on."""
        self._config = config
        self._media_dir = config.media_dir
        self._space_checked_at = -SPACE_RECHECK  # min_free_bytes may have changed
        self.wake()

    def wake(self) -> None:
        """Work may be due: look at the queue now."""
        self._wake.set()

    def merged(self) -> None:
        """An extract was merged: new items may be due, done items may need links."""
        self._relink_due = True
        self._wake.set()

    async def run(self) -> None:
        """Feed the pool until cancelled; a manifest error pauses feeding, never ends it."""
        while True:
            try:
                await self._feed()
            except ManifestError as exc:
                self._log.error("manifest_error", error=str(exc), retry_in_s=IDLE_RECHECK)
                await self._wait(IDLE_RECHECK)

    async def _feed(self) -> None:
        while True:
            self._wake.clear()
            if self._relink_due:
                self._relink_due = False
                await self.relink()
            if not await self._space_ok():
                if self._ready:  # paused: what was claimed ahead goes back to the queue
                    ids = [item.aweme_id for item in self._ready]
                    self._ready.clear()
                    await self._db.run(self._db.manifest.release, ids, self._clock())
                await self._wait(IDLE_RECHECK)
                continue
            concurrency = self._config.concurrency
            free = concurrency - len(self._tasks)
            claimed: list[Item] = []
            if free > len(self._ready):
                # Enough for the free slots and for the next `concurrency` to finish.
                want = free + concurrency - len(self._ready)
                claimed = await self._db.run(self._db.manifest.claim_due, self._clock(), want)
                self._ready.extend(claimed)
            while self._ready and len(self._tasks) < concurrency:
                item = self._ready.popleft()
                task = asyncio.create_task(self._download(item), name=f"dl-{item.aweme_id}")
                self._tasks[item.aweme_id] = task
                task.add_done_callback(functools.partial(self._forget, item.aweme_id))
            if claimed and len(self._tasks) < concurrency:
                continue  # there may be more due right now
            timeout = IDLE_RECHECK
            if len(self._tasks) < self._config.concurrency:
                due = await self._db.run(self._db.manifest.next_due)
                if due is not None:
                    timeout = min(max(due - self._clock(), 0.01), IDLE_RECHECK)
            await self._wait(timeout)

    def _forget(self, aweme_id: str, _: asyncio.Task[None]) -> None:
        self._tasks.pop(aweme_id, None)

    async def _wait(self, timeout: float) -> None:
        waiter = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait(
                [waiter, *self._tasks.values()],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()

    async def _space_ok(self) -> bool:
        now = time.monotonic()
        if now - self._space_checked_at < SPACE_RECHECK:
            return not self._paused
        self._space_checked_at = now
        try:
            free = await asyncio.to_thread(free_bytes, self._config.data_dir)
        except OSError as exc:
            self._log.warning("disk_check_failed", error=str(exc))
            return True
        low = free < self._config.min_free_bytes
        if low and not self._paused:
            self._log.warning(
                "downloads_paused",
                reason="low_disk_space",
                free_bytes=free,
                min_free_bytes=self._config.min_free_bytes,
            )
        elif not low and self._paused:
            self._log.info("downloads_resumed", free_bytes=free)
        self._paused = low
        return not low

    async def shutdown(self) -> None:
        """Cancel transfers (their .part files stay) and hand their items back to the queue."""
        tasks = list(self._tasks.values())
        ids = [*self._tasks, *(item.aweme_id for item in self._ready)]
        self._ready.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if ids:
            await self._db.run(self._db.manifest.release, ids, self._clock())

    # --- one transfer ----------------------------------------------------------------------

    async def _download(self, item: Item) -> None:
        log = self._log.bind(aweme_id=item.aweme_id)
        started = time.monotonic()
        try:
            outcome = await self._attempt(item, log)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one attempt, never the daemon
            log.exception("download_crashed", error=repr(exc))
            outcome = Failure(Reason.INTERNAL, detail=repr(exc)[:200])
        duration = round(time.monotonic() - started, 3)
        try:
            if isinstance(outcome, Published):
                await self._completed(item, outcome, duration, log)
            else:
                await self._failed(item, outcome, duration, log)
        except Exception as exc:
            log.exception("download_bookkeeping_failed", error=repr(exc))

    async def _completed(self, item: Item, done: Published, duration: float, log: Logger) -> None:
        linked = done.links
        stale = await self._completions.submit(
            Completion(
                item.aweme_id, done.size, done.sha256, str(done.path), item.topics, self._clock()
            )
        )
        if stale:  # topics merged in while it downloaded
            self.merged()
        self.stats.completed += 1
        self.stats.bytes += done.size
        self._metrics.attempt("completed", duration, done.size)
        log.info(
            "download_completed",
            bytes=done.size,
            sha256=done.sha256,
            path=f"{self._media_dir}/{done.path}",
            attempt=item.attempts,
            duration_s=duration,
            resumed=done.resumed,
            links=linked,
            mbps=round(done.size / max(duration, 1e-6) / 1e6, 2),
        )

    async def _failed(self, item: Item, failure: Failure, duration: float, log: Logger) -> None:
        policy = RetryPolicy(
            self._config.max_attempts, self._config.backoff_base, self._config.backoff_max
        )
        decision = decide(failure, item.attempts, policy, self._jitter())
        now = self._clock()
        target = {
            Action.RETRY: State.PENDING,
            Action.EXPIRED: State.EXPIRED,
            Action.FAILED: State.FAILED,
        }[decision.action]
        state = await self._db.run(
            self._db.manifest.finish_failed,
            item.aweme_id,
            item.url,
            target,
            decision.reason.value,
            failure.status,
            now + decision.delay,
            not decision.count_attempt,
            now,
        )
        fields = {
            "reason": decision.reason.value,
            "status": failure.status,
            "detail": failure.detail or None,
            "duration_s": duration,
        }
        self._metrics.attempt(decision.action.value if state is target else "superseded", duration)
        if state is not target:
            log.info("download_superseded", attempt=item.attempts, **fields)
            self.wake()
        elif decision.action is Action.RETRY:
            self.stats.retried += 1
            log.warning(
                "download_retry_scheduled",
                attempt=item.attempts,
                delay_s=round(decision.delay, 3),
                **fields,
            )
        elif decision.action is Action.EXPIRED:
            self.stats.expired += 1
            log.warning("download_expired", attempts=item.attempts, **fields)
        else:
            self.stats.failed += 1
            log.error("download_failed", attempts=item.attempts, **fields)

    async def _attempt(self, item: Item, log: Logger) -> Published | Failure:
        config = self._config
        if is_expired(item.url, self._clock()):
            return Failure(Reason.URL_EXPIRED)
        verdict = check_url(item.url, config.allowed_hosts)
        if not verdict.allowed:
            return Failure(Reason.UNSAFE_URL, detail=verdict.reason)
        relative = relative_video_path(item.topics[0] if item.topics else None, item.aweme_id)
        media = self._media_dir
        final = media / relative
        try:
            if item.validator is None:  # nothing to resume: no thread hop to open it now
                part = PartFile.fresh_in(media, relative)
            else:
                part = await asyncio.to_thread(PartFile.open_in, media, relative)
        except OSError as exc:
            return Failure(Reason.LOCAL_IO, detail=f"{exc.strerror or exc}")
        try:
            return await self._transfer(item, part, final, relative, log)
        except FetchFailed as exc:
            return Failure(exc.reason, exc.status, detail=exc.detail)
        except OSError as exc:
            return Failure(Reason.LOCAL_IO, detail=f"{exc.strerror or exc}")
        finally:
            if not part.closed:
                await asyncio.to_thread(part.close)

    async def _transfer(
        self, item: Item, part: PartFile, final: Path, relative: PurePosixPath, log: Logger
    ) -> Published | Failure:
        config = self._config
        headers = resume_headers(part.size, item.validator)
        offset = part.size if headers else 0
        if part.size and not offset:
            await asyncio.to_thread(part.truncate)
        log.info(
            "download_started",
            url=redact(item.url),
            topic=relative.parts[0],
            attempt=item.attempts,
            resume_from=offset,
        )
        async with self._fetcher.get(item.url, headers) as response:
            reason = classify_status(response.status)
            if reason is not None:
                retry_after = parse_retry_after(response.header("retry-after"), self._clock())
                return Failure(reason, response.status, retry_after)
            if response.status == 206:
                if not offset or content_range_start(response.header("content-range")) != offset:
                    await asyncio.to_thread(part.truncate)
                    return Failure(Reason.RANGE_MISMATCH, 206, detail="content-range")
                await asyncio.to_thread(part.hash_existing)
            elif response.status == 200:
                if offset:
                    await asyncio.to_thread(part.truncate)
                    offset = 0
            else:
                return Failure(Reason.HTTP_ERROR, response.status)
            declared = response.content_length
            if declared is not None and offset + declared > config.max_file_bytes:
                await asyncio.to_thread(part.discard)
                return Failure(Reason.TOO_LARGE, response.status, detail=f"declared {declared}")
            validator = strong_validator(response.header("etag"), response.header("last-modified"))
            worth_resuming = declared is None or declared > RESUME_MIN_BYTES
            if validator != item.validator and worth_resuming:
                await self._db.run(self._db.manifest.set_validator, item.aweme_id, validator)
            received = await self._receive(response.batches(), part, offset)
            if isinstance(received, Failure):
                return received
            size, tail = received
            if declared is not None and size != declared:
                await asyncio.to_thread(part.write, tail)  # kept for the resume
                return Failure(Reason.TRUNCATED, response.status, detail=f"{size}/{declared}")
        sha256, links = await asyncio.to_thread(
            self._finish_file, part, tail, final, relative, item.topics
        )
        return Published(relative, part.size, sha256, resumed=offset > 0, links=links)

    def _finish_file(
        self,
        part: PartFile,
        tail: list[Chunk],
        final: Path,
        relative: PurePosixPath,
        topics: tuple[str | None, ...],
    ) -> tuple[str, int]:
        """Last bytes, fsync, atomic rename, folder fsync, hard links: one worker-thread hop."""
        part.write(tail)
        sha256 = part.publish(final)
        return sha256, self._link_topics(relative, topics) if len(topics) > 1 else 0

    async def _receive(
        self, batches: AsyncIterator[Sequence[Chunk]], part: PartFile, offset: int
    ) -> tuple[int, list[Chunk]] | Failure:
        """Stream the body into the part file; returns bytes received and the last chunks, not
        yet written (the caller writes them with the publish, in one hop), or a Failure."""
        limit = self._config.max_file_bytes
        pending: list[Chunk] = []
        pending_size = 0
        received = 0
        checked = offset > 0
        last_flush = time.monotonic()

        async def flush() -> None:
            nonlocal pending, pending_size, last_flush
            last_flush = time.monotonic()
            if pending:
                data, pending, pending_size = pending, [], 0
                await asyncio.to_thread(part.write, data)

        try:
            async for batch in batches:
                size = sum(len(chunk) for chunk in batch)
                received += size
                if offset + received > limit:
                    await asyncio.to_thread(part.discard)
                    return Failure(Reason.TOO_LARGE, detail=f"more than {limit} bytes")
                pending += batch
                pending_size += size
                if not checked and pending_size >= SNIFF_BYTES:
                    if not looks_like_mp4(b"".join(pending)[:SNIFF_BYTES]):
                        await asyncio.to_thread(part.discard)
                        return Failure(Reason.NOT_VIDEO, detail="no ftyp box")
                    checked = True
                if checked and (
                    pending_size >= WRITE_BATCH or time.monotonic() - last_flush >= FLUSH_SECONDS
                ):
                    await flush()
        except FetchFailed:
            if checked:
                await flush()  # keep what arrived, for the resume
            raise
        if not checked:
            await asyncio.to_thread(part.discard)
            return Failure(Reason.NOT_VIDEO, detail=f"only {received} bytes")
        return received, pending

    # --- further topics -----------------------------------------------------------------------

    def _link_topics(self, relative: PurePosixPath, topics: tuple[str | None, ...]) -> int:
        """Hard-link a published file into every further topic folder. Blocking."""
        source = self._media_dir / relative
        made = 0
        for topic in topics:
            folder = topic_folder(topic)
            if folder == relative.parent.name:
                continue
            directory = ensure_dir(self._media_dir, Path(folder))
            if link_into(source, directory / relative.name):
                made += 1
        return made

    async def relink(self) -> None:
        """Give done items that gained topics their extra hard links."""
        while True:
            batch = await self._db.run(self._db.manifest.pending_relinks, RELINK_BATCH)
            for relink in batch:
                try:
                    made = await asyncio.to_thread(
                        self._link_topics, PurePosixPath(relink.path), relink.topics
                    )
                except OSError as exc:
                    self._log.error("link_failed", aweme_id=relink.aweme_id, error=str(exc))
                    with contextlib.suppress(Exception):
                        await self._db.run(self._db.manifest.clear_relink, relink.aweme_id)
                    continue
                await self._db.run(self._db.manifest.clear_relink, relink.aweme_id)
                if made:
                    self._log.info("video_linked", aweme_id=relink.aweme_id, links=made)
            if len(batch) < RELINK_BATCH:
                return
