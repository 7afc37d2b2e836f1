"""The download pool: scheduling, host health and pauses. It claims due items from the manifest
and runs at most `concurrency` transfers (service.transfer), at most `per_host_concurrency` on one
host, none on a host cooling down (policy.hosts), and none at all while the media folder cannot
take files (a read-only or full filesystem, a quota, a permission): such failures are not the
items', so they spend no attempts and are logged once, not once per item.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import functools
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ingestd.config import Config
from ingestd.fs.files import free_bytes
from ingestd.log import Logger
from ingestd.metrics import Metrics
from ingestd.net.fetch import Fetcher
from ingestd.policy.hosts import HostHealth
from ingestd.policy.merge import State
from ingestd.policy.retry import (
    HOST_FAULTS,
    TRANSPORT,
    Action,
    Failure,
    Reason,
    RetryPolicy,
    backoff_delay,
    decide,
)
from ingestd.service.db import Db, GroupCommit
from ingestd.service.publish import Publisher
from ingestd.service.transfer import Published, Transfers
from ingestd.store.manifest import Completion, Item, ManifestError

IDLE_RECHECK = 5.0  # seconds between looks at the queue and the free space when idle
SPACE_RECHECK = 0.5  # at most this often a statvfs, however many transfers finish
PAUSE_RECHECK_MAX = 60.0  # cap on the backoff between checks of a paused media folder
RELINK_BATCH = 100
BOOKKEEPING_RETRY_MAX = 30.0  # cap on the backoff while the manifest refuses an outcome
PROBE_BYTES = 64 * 1024  # written (and removed) to prove the media folder takes files again
# Local faults that stop every download until they clear, by the name the log gives them.
PAUSE_REASONS = {
    errno.EROFS: "read_only",
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "quota_exceeded",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
}


@dataclass
class PoolStats:
    """Counters for progress reports."""

    completed: int = 0
    failed: int = 0
    expired: int = 0
    retried: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Pause:
    """Why downloads stopped, and when the condition is looked at again."""

    reason: str
    detail: str
    probe_dir: Path
    since: float
    checks: int = 0
    next_check: float = 0.0


def host_of(url: str) -> str:
    """The origin a URL's requests go to, `host:port` (the key of host health)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return ""
    return f"{(parts.hostname or '').lower()}:{port}"


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
        self._db = db
        self._log = log
        self._metrics = metrics
        self._clock = clock
        self._jitter = jitter
        self._publisher = Publisher(config.media_dir)
        self._transfers = Transfers(config, db, fetcher, self._publisher, clock)
        self._hosts = HostHealth(config.backoff_base, config.host_backoff_max, config.host_slots)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Claimed ahead, in one transaction per batch, so a finishing transfer is replaced
        # without a manifest round trip. Released, like running ones, on shutdown.
        self._ready: collections.deque[tuple[Item, bool]] = collections.deque()  # (item, held)
        self._completions = GroupCommit(db, db.manifest.complete_many)
        self._space_checked_at = -SPACE_RECHECK
        self._wake = asyncio.Event()
        self._pause: _Pause | None = None
        self._relink_due = False
        self._relink_failures = 0
        self._relink_at = 0.0
        self.stats = PoolStats()

    @property
    def in_flight(self) -> int:
        """Transfers running now."""
        return len(self._tasks)

    @property
    def paused(self) -> str | None:
        """Why downloads are paused, or None."""
        return None if self._pause is None else self._pause.reason

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config from the next claim and the next decision on."""
        self._config = config
        self._transfers.reconfigure(config)
        self._hosts.reconfigure(config.backoff_base, config.host_backoff_max, config.host_slots)
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
            if self._relink_due and time.monotonic() >= self._relink_at:
                self._relink_due = False
                await self.relink()
            if not await self._local_ok():
                await self._hand_back([item.aweme_id for item, _ in self._ready], 0.0)
                self._ready.clear()
                pause = self._pause
                recheck = IDLE_RECHECK if pause is None else pause.next_check - time.monotonic()
                await self._wait(max(recheck, 0.01))
                continue
            concurrency = self._config.concurrency
            free = concurrency - len(self._tasks)
            claimed = False
            if free > len(self._ready):
                # Enough for the free slots (started at once), and held for the next
                # `concurrency` to finish: a finishing transfer is replaced without a claim.
                start = free - len(self._ready)
                started, held = await self._db.run(
                    self._db.manifest.claim, self._clock(), start, concurrency
                )
                self._ready.extend([(item, False) for item in started])
                self._ready.extend([(item, True) for item in held])
                claimed = bool(started or held)
            await self._start_ready()
            if claimed and len(self._tasks) < concurrency:
                continue  # there may be more due right now
            timeout = IDLE_RECHECK
            if len(self._tasks) < self._config.concurrency:
                due = await self._db.run(self._db.manifest.next_due)
                if due is not None:
                    timeout = min(max(due - self._clock(), 0.01), IDLE_RECHECK)
            await self._wait(timeout)

    async def _start_ready(self) -> None:
        """Start what the slots allow; items whose host is cooling down or full go back to the
        queue, due when the host may take them, with no attempt counted."""
        deferred: dict[float, list[str]] = collections.defaultdict(list)
        admitted: list[tuple[Item, bool]] = []
        now = self._clock()
        while self._ready and len(self._tasks) + len(admitted) < self._config.concurrency:
            item, held = self._ready.popleft()
            later = self._hosts.admit(host_of(item.url), now)
            if later is None:
                admitted.append((item, held))
            else:
                deferred[later].append(item.aweme_id)
        holding = [item.aweme_id for item, held in admitted if held]
        started = await self._db.run(self._db.manifest.start_held, holding, now) if holding else []
        attempts = iter(started)
        for item, held in admitted:
            if held:
                attempt = next(attempts)
                if attempt is None:  # handed back meanwhile
                    self._hosts.finished(host_of(item.url), now, host_fault=False, cancelled=True)
                    continue
                item = dataclasses.replace(item, attempts=attempt)
            task = asyncio.create_task(self._download(item), name=f"dl-{item.aweme_id}")
            self._tasks[item.aweme_id] = task
            task.add_done_callback(functools.partial(self._forget, item.aweme_id))
        for due, ids in deferred.items():
            await self._hand_back(ids, due)

    async def _hand_back(self, ids: list[str], due: float) -> None:
        if ids:
            await self._db.run(self._db.manifest.release, ids, self._clock(), due)

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

    async def shutdown(self) -> None:
        """Cancel transfers (their .part files stay) and hand their items back to the queue."""
        ids = [*self._tasks, *(item.aweme_id for item, _ in self._ready)]
        self._ready.clear()
        await self._cancel_transfers()
        if ids:
            await self._hand_back(ids, 0.0)

    async def _cancel_transfers(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # --- local faults: pause and resume --------------------------------------------------

    async def _local_ok(self) -> bool:
        """False while downloads are paused; looks at the condition at most every so often."""
        pause = self._pause
        now = time.monotonic()
        if pause is not None:
            if now < pause.next_check:
                return False
            problem = await asyncio.to_thread(self._check_local, pause.probe_dir, probe=True)
            if problem is not None:
                pause.checks += 1
                delay = backoff_delay(pause.checks, 1.0, PAUSE_RECHECK_MAX, self._jitter())
                pause.next_check = time.monotonic() + delay
                return False
            self._pause = None
            self._space_checked_at = now
            self._log.info(
                "downloads_resumed",
                reason=pause.reason,
                paused_s=round(now - pause.since, 3),
                checks=pause.checks + 1,
            )
            return True
        if now - self._space_checked_at < SPACE_RECHECK:
            return True
        self._space_checked_at = now
        problem = await asyncio.to_thread(self._check_local, self._config.media_dir, probe=False)
        if problem is not None:  # under min_free_bytes: what runs may finish, nothing starts
            await self._pause_downloads(*problem, self._config.media_dir, cancel=False)
            return False
        return True

    def _check_local(self, folder: Path, *, probe: bool) -> tuple[str, str, int | None] | None:
        """Blocking: (reason, detail, free bytes) when `folder` cannot take files now, else
        None. With `probe`, a small file is written, fsynced and removed there to prove it."""
        try:
            free: int | None = free_bytes(self._config.data_dir)
        except OSError as exc:
            self._log.warning("disk_check_failed", error=str(exc))
            free = None
        floor = self._config.min_free_bytes
        if free is not None and free < floor:
            return "low_disk_space", f"{free} bytes free, min_free_bytes {floor}", free
        if not probe:
            return None
        path = folder / f".ingestd-probe-{os.getpid()}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(path)
        except OSError as exc:
            reason = PAUSE_REASONS.get(exc.errno or 0, "local_io_error")
            return reason, f"{exc.strerror or exc}: {path}", free
        return None

    async def _pause_downloads(
        self,
        reason: str,
        detail: str,
        free: int | None,
        probe_dir: Path,
        *,
        cancel: bool = True,
    ) -> None:
        """Stop downloads: nothing is requested until the fault clears, and every item claimed
        goes back to the queue with its attempt. With `cancel`, running transfers are stopped
        too (their parts stay)."""
        if self._pause is not None:
            return
        now = time.monotonic()
        self._pause = _Pause(reason, detail, probe_dir, now, next_check=now + 1.0)
        self._log.warning(
            "downloads_paused",
            reason=reason,
            detail=detail,
            free_bytes=free,
            min_free_bytes=self._config.min_free_bytes,
            in_flight=len(self._tasks),
            retry_in_s=1.0,
        )
        current = asyncio.current_task()
        running = {i: t for i, t in self._tasks.items() if t is not current and cancel}
        for task in running.values():
            task.cancel()
        if running:
            await asyncio.wait(running.values(), timeout=5.0)
        ids = [*running, *(item.aweme_id for item, _ in self._ready)]
        self._ready.clear()
        await self._hand_back(ids, 0.0)
        self.wake()

    # --- one transfer ----------------------------------------------------------------------

    async def _download(self, item: Item) -> None:
        log = self._log.bind(aweme_id=item.aweme_id)
        host = host_of(item.url)
        started = time.monotonic()
        try:
            outcome = await self._transfers.attempt(item, log)
        except asyncio.CancelledError:
            self._hosts.finished(host, self._clock(), host_fault=False, cancelled=True)
            raise
        duration = round(time.monotonic() - started, 3)
        now = self._clock()
        failure = outcome if isinstance(outcome, Failure) else None
        if failure is not None and (
            failure.host_fault
            or failure.reason in HOST_FAULTS
            or (failure.reason in TRANSPORT and not self._hosts.served_since(host, now - duration))
        ):
            failure = outcome = dataclasses.replace(failure, host_fault=True)
        event = self._hosts.finished(
            host,
            now,
            host_fault=failure is not None and failure.host_fault,
            reason=failure.reason.value if failure is not None else "",
            retry_after=failure.retry_after if failure is not None else None,
            jitter=self._jitter(),
        )
        if event is not None:
            fields = {"host": event.host, "reason": event.reason}
            if event.event == "host_unavailable":
                detail = failure.detail if failure is not None else ""
                log.warning(event.event, retry_in_s=event.retry_in_s, detail=detail, **fields)
            else:
                self._log.info(event.event, down_s=event.down_s, **fields)
                self.wake()
        if isinstance(outcome, Published):
            await self._settle(log, self._completed, item, outcome, duration, log)
            return
        local = PAUSE_REASONS.get(outcome.errno or 0) if outcome.reason is Reason.LOCAL_IO else None
        if local is not None and self._pause is None:
            media = self._config.media_dir
            probe_dir = Path(outcome.path).parent if outcome.path else media
            if not probe_dir.is_relative_to(media):
                probe_dir = media
            await self._settle(log, self._hand_back, [item.aweme_id], 0.0)
            await self._pause_downloads(local, outcome.detail, None, probe_dir)
            return
        await self._settle(log, self._failed, item, outcome, duration, log, host)

    async def _settle(
        self, log: Logger, write: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        """Record an outcome, retrying with backoff while the manifest refuses it: an item is
        never left `active` by a manifest that failed for a while."""
        for tries in range(1, 1_000_000):
            try:
                await write(*args)
                return
            except ManifestError as exc:
                delay = backoff_delay(tries, 0.5, BOOKKEEPING_RETRY_MAX, self._jitter())
                if tries == 1:
                    log.error("download_bookkeeping_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)

    async def _completed(self, item: Item, done: Published, duration: float, log: Logger) -> None:
        stale = await self._completions.submit(
            Completion(
                item.aweme_id,
                done.size,
                done.sha256,
                str(done.path),
                done.linked_topics,
                self._clock(),
            )
        )
        if stale:  # topics merged in while it downloaded, or links left to make
            self.merged()
        self.stats.completed += 1
        self.stats.bytes += done.size
        self._metrics.attempt("completed", duration, done.size)
        log.info(
            "download_completed",
            bytes=done.size,
            sha256=done.sha256,
            path=f"{self._publisher.media_dir}/{done.path}",
            attempt=item.attempts,
            duration_s=duration,
            resumed=done.resumed,
            links=done.links,
            mbps=round(done.size / max(duration, 1e-6) / 1e6, 2),
        )

    async def _failed(
        self, item: Item, failure: Failure, duration: float, log: Logger, host: str
    ) -> None:
        config = self._config
        policy = RetryPolicy(config.max_attempts, config.backoff_base, config.backoff_max)
        decision = decide(failure, item.attempts, policy, self._jitter())
        now = self._clock()
        due = now + decision.delay
        host_down = failure.host_fault and self._hosts.cooling_until(host) > now
        if failure.host_fault:
            due = max(due, self._hosts.cooling_until(host))
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
            due,
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
            if not host_down:  # a cooling host is reported once, by host_unavailable
                log.warning(
                    "download_retry_scheduled",
                    attempt=item.attempts,
                    delay_s=round(due - now, 3),
                    **fields,
                )
        elif decision.action is Action.EXPIRED:
            self.stats.expired += 1
            log.warning("download_expired", attempts=item.attempts, **fields)
        else:
            self.stats.failed += 1
            log.error("download_failed", attempts=item.attempts, **fields)

    # --- further topics -----------------------------------------------------------------------

    async def relink(self) -> None:
        """Give done items that gained topics their extra links. A failure leaves the rest for
        a later pass, after a backoff; the file is never downloaded again for it."""
        while True:
            batch = await self._db.run(self._db.manifest.pending_relinks, RELINK_BATCH)
            cleared = 0
            for relink in batch:
                try:
                    made = await asyncio.to_thread(
                        self._publisher.link_topics, PurePosixPath(relink.path), relink.topics
                    )
                except OSError as exc:
                    self._relink_failures += 1
                    delay = backoff_delay(
                        self._relink_failures,
                        self._config.backoff_base,
                        self._config.backoff_max,
                        self._jitter(),
                    )
                    self._relink_at = time.monotonic() + delay
                    self._relink_due = True
                    self._log.error(
                        "link_failed",
                        aweme_id=relink.aweme_id,
                        error=f"{exc.strerror or exc}: {exc.filename or relink.path}",
                        retry_in_s=round(delay, 3),
                    )
                    return
                cleared += await self._db.run(
                    self._db.manifest.clear_relink, relink.aweme_id, relink.topics
                )
                if made:
                    self._log.info("video_linked", aweme_id=relink.aweme_id, links=made)
            self._relink_failures = 0
            if len(batch) < RELINK_BATCH or not cleared:
                return  # (topics that arrived meanwhile are linked by the next pass)
