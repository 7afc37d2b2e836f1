"""The download pool: scheduling, host health and pauses. It claims due items from the manifest
and runs at most `concurrency` transfers (service.transfer), at most `per_host_concurrency` on one
host, none on a host cooling down (policy.hosts), and none at all while the media folder cannot
take files (a read-only or full filesystem, a quota, a permission): such failures are not the
items', so they spend no attempts and are logged once, not once per item.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingestd.config import Config
from ingestd.fs.files import describe_os_error, free_bytes
from ingestd.log import Logger
from ingestd.metrics import Attempts
from ingestd.net.fetch import Fetcher
from ingestd.ops.live import InFlight, Snapshot
from ingestd.policy.hosts import PROBE_WAIT, Hinted, HostHealth
from ingestd.policy.lease import at_risk, lost, renewal_interval
from ingestd.policy.merge import State
from ingestd.policy.retry import (
    HOST_FAULTS,
    NO_CONTACT,
    TRANSPORT,
    Action,
    Failure,
    Reason,
    RetryPolicy,
    backoff_delay,
    decide,
)
from ingestd.policy.urls import expired_at, origin_of
from ingestd.service.completion import EventOrder
from ingestd.service.db import Db, GroupCommit
from ingestd.service.meter import Meter
from ingestd.service.publish import Publisher
from ingestd.service.relink import Relinker
from ingestd.service.transfer import Published, Transfers
from ingestd.store.base import Completion, Item, ManifestError

IDLE_RECHECK = 5.0  # seconds between looks at the queue and the free space when idle
SPACE_RECHECK = 0.5  # at most this often a statvfs, however many transfers finish
PAUSE_RECHECK_MAX = 60.0  # cap on the backoff between checks of a paused media folder
# A pause that starts this soon after the last one ended goes on with its backoff.
PAUSE_MEMORY = 600.0
READY_ROUNDS = 4  # claimed items kept in memory, in rounds of `concurrency`
# Of a round, the share claimed ahead (held) when other nodes or workers claim from the same
# manifest, rounded down: at the end of a queue, what one pool holds waits for its slots while
# the others may idle (nodes.py, 3 nodes of 8 slots: 2.80x one node with a whole round held; a
# worker of 2 slots holding one left the other worker idle on a 3-item queue).
SHARED_HOLD_SHARE = 0.25
MARK_LAG = 1.0  # seconds a started held item may still read `pending` in status
BOOKKEEPING_RETRY_MAX = 30.0  # cap on the backoff while the manifest refuses an outcome
# Published files whose `done` may wait for the manifest before finished transfers wait too.
UNRECORDED_MAX = 64
BOOKKEEPING_IDS_LOGGED = 10  # ids named by one download_bookkeeping_failed
CLAIM_IDS_LOGGED = 10  # ids named by one claims_lost, claims_at_risk or claims_reclaimed
STOP_WAIT = 3.0  # seconds stopped transfers get to checkpoint and hand their item back
# A connection lost under one transfer while its host served others is that item's fault,
# unless the host turns out to be going down: judged after this long.
TRANSPORT_GRACE = 1.0
PROBE_BYTES = 1024 * 1024  # one write batch, written (and removed) to prove a folder takes files
# Local faults that stop every download until they clear, by the name the log gives them.
LOW_SPACE = "low_disk_space"  # under min_free_bytes: running transfers finish, none starts
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


# Claimed ahead: the item, whether it is held (not yet marked started), its origin.
_Entry = tuple[Item, bool, str]


class _Slot:
    """A transfer's slot on its host, `taken` until given back (with a verdict or without)."""

    __slots__ = ("host", "taken")

    def __init__(self, host: str) -> None:
        self.host = host
        self.taken = True


@dataclass
class _Pause:
    """Why downloads stopped, and when the condition is looked at again."""

    reason: str
    detail: str
    probe_dir: Path
    since: float
    checks: int = 0
    next_check: float = 0.0


def hold_ahead(concurrency: int, *, shared: bool) -> int:
    """Items a claim takes ahead of the free slots: a whole round when the manifest is this
    pool's alone (a finishing transfer is replaced without a manifest round trip), a share of
    one when others claim from it too (none for a pool of fewer than 4 slots)."""
    return int(concurrency * SHARED_HOLD_SHARE) if shared else concurrency


class DownloadPool:
    """Claims due items in small batches and downloads them, never holding more than it runs."""

    def __init__(
        self,
        config: Config,
        db: Db,
        fetcher: Fetcher,
        log: Logger,
        metrics: Attempts,
        *,
        clock: Callable[[], float] | None = None,
        jitter: Callable[[], float] = random.random,
        order: EventOrder | None = None,
        owner: str | None = None,
        on_links_due: Callable[[], None] | None = None,
    ) -> None:
        """`clock`: the manifest's (the default), for every time written into it and every
        decision taken against one. `on_links_due`: told when a completion leaves links to
        make, instead of making them here (a worker process's pool: its main process makes
        them, see service.relink)."""
        self._config = config
        # Whose claims these are (the node's name; a worker's later): every claim and outcome
        # carries it, and the manifest refuses outcomes of claims another owner has taken.
        self._owner = config.node_name if owner is None else owner
        self._db = db
        self._log = log
        # Each outcome's event is logged before an extract_completed that counts it.
        self._order = order if order is not None else EventOrder()
        self._metrics = metrics
        self._clock = clock = clock or db.manifest.clock
        self._jitter = jitter
        self._publisher = Publisher(config.media_dir)
        self._transfers = Transfers(config, db, fetcher, self._publisher, clock, self._owner)
        self._hosts = HostHealth(config.backoff_base, config.host_backoff_max, config.host_slots)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Claimed ahead, in one transaction per batch, so a finishing transfer is replaced
        # without a manifest round trip. Released, like running ones, on shutdown.
        self._ready: collections.deque[_Entry] = collections.deque()
        # A published file frees its slot at once; its `done` is written in the next group
        # commit, retried while the manifest refuses it (see _bookkeeping_retry).
        self._completions = GroupCommit(
            db, db.manifest.complete_many, retry=self._bookkeeping_retry
        )
        # Held items whose transfer began, written active with the next claim (or within
        # MARK_LAG): not one manifest write per file.
        self._unmarked: list[str] = []
        self._unmarked_since = 0.0
        # This owner's claims, running, claimed ahead, or published and not yet written done:
        # id -> the lease end last written. Renewed by keep_claims.
        self._leases: dict[str, float] = {}
        self._recording: set[str] = set()  # published, `done` not written yet
        self._renewal_failed_at: float | None = None
        self._space_checked_at = -SPACE_RECHECK
        self._wake = asyncio.Event()
        self._pause: _Pause | None = None
        self._last_pause: tuple[float, int] = (-PAUSE_MEMORY, 0)  # (ended at, checks)
        self._relinker = Relinker(config, db, self._publisher, log, jitter)
        self._relink_parked = self._relinker.parked  # the same dict, for the tests that clear it
        self._links_due = self.merged if on_links_due is None else on_links_due
        self._probes: dict[Path, asyncio.Future[tuple[str, str, int | None] | None]] = {}
        self._deferred: dict[str, float] = {}  # origin: the cooldown end its items were moved to
        self._hinted = Hinted()
        self.stats = PoolStats()

    @property
    def in_flight(self) -> int:
        """Transfers running now."""
        return len(self._tasks)

    @property
    def paused(self) -> str | None:
        """Why downloads are paused, or None."""
        return None if self._pause is None else self._pause.reason

    def pause_info(self) -> tuple[str, str, float] | None:
        """Why downloads are paused, the path or detail, and for how many seconds."""
        pause = self._pause
        if pause is None:
            return None
        return pause.reason, pause.detail, time.monotonic() - pause.since

    @property
    def meter(self) -> Meter:
        """The transfers in flight and the bytes received."""
        return self._transfers.meter

    def hosts_down(self) -> list[str]:
        """Hosts reported unavailable now."""
        return self._hosts.down()

    def snapshot(self) -> Snapshot:
        """The pool's downloads now: transfers in flight, bytes, counters, pause, hosts down."""
        now, stats = time.monotonic(), self.stats
        transfers = tuple(
            InFlight(t.aweme_id, t.topic, t.offset, t.received, t.total, round(now - t.started, 1))
            for t in self.meter.transfers.values()
        )
        return Snapshot(
            in_flight=self.in_flight,
            received=self.meter.received(),
            completed=stats.completed,
            retried=stats.retried,
            failed=stats.failed,
            expired=stats.expired,
            bytes=stats.bytes,
            transfers=transfers,
            pause=self.pause_info(),
            hosts_down=tuple(self.hosts_down()),
        )

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config from the next claim and the next decision on."""
        self._config = config
        self._transfers.reconfigure(config)
        self._hosts.reconfigure(config.backoff_base, config.host_backoff_max, config.host_slots)
        self._space_checked_at = -SPACE_RECHECK  # min_free_bytes may have changed
        self._hinted.clear()  # allowed_hosts may have changed: a host still failing is told again
        self._relinker.reconfigure(config)
        self.wake()

    def wake(self) -> None:
        """Work may be due: look at the queue now."""
        self._wake.set()

    def merged(self) -> None:
        """An extract was merged: new items may be due, done items may need links."""
        self._relinker.merged()
        self._wake.set()

    async def run(self) -> None:
        """Feed the pool until cancelled; a manifest error pauses feeding, never ends it."""
        while True:
            try:
                await self._feed()
            except ManifestError as exc:
                self._db.outage.failed(self._log, exc, IDLE_RECHECK)
                await self._wait(IDLE_RECHECK)

    async def _feed(self) -> None:
        while True:
            self._wake.clear()
            await self._relinker.run_due()
            if not await self._local_ok():
                await self._hand_back([entry[0].aweme_id for entry in self._ready], 0.0)
                self._ready.clear()
                pause = self._pause
                recheck = IDLE_RECHECK if pause is None else pause.next_check - time.monotonic()
                await self._wait(max(recheck, 0.01))
                continue
            concurrency = self._config.concurrency
            free = concurrency - len(self._tasks)
            claimed = False
            # Items waiting for a busy host stay claimed: at most READY_ROUNDS of them.
            if (
                free > 0
                and free > self._startable()
                and len(self._ready) < READY_ROUNDS * concurrency
            ):
                # Enough for the free slots (started at once), and held for the next to
                # finish (hold_ahead): a finishing transfer is replaced without a claim.
                start = free - self._startable()
                shared = bool(self._config.manifest_url) or self._config.workers > 1
                started, held = await self._claim(start, hold_ahead(concurrency, shared=shared))
                self._db.outage.answered(self._log)
                self._ready.extend([(item, False, origin_of(item.url)) for item in started])
                self._ready.extend([(item, True, origin_of(item.url)) for item in held])
                claimed = bool(started or held)
            launched, deferred = await self._start_ready()
            if self._unmarked and time.monotonic() - self._unmarked_since > MARK_LAG:
                mark, self._unmarked = self._unmarked, []
                await self._db.run(
                    self._db.manifest.start_held, mark, self._clock(), owner=self._owner
                )
            if claimed and launched and len(self._tasks) < concurrency:
                continue  # there may be more due right now
            timeout, due = IDLE_RECHECK, None
            if deferred and not launched:
                # All that was due waits for a busy or cooling host: look again when a
                # transfer ends (a slot frees), when a cooldown ends, or a little later.
                timeout = PROBE_WAIT
            elif len(self._tasks) < self._config.concurrency:
                blocked = self._hosts.blocked(self._clock())
                due = await self._db.run(self._db.manifest.next_due, blocked)
                self._db.outage.answered(self._log)
            # A cooling host's items are left out of `due`, or wait here: its probe is due
            # when its cooldown ends, not at the next look.
            for when in (due, self._hosts.next_cooldown_end(self._clock())):
                if when is not None:
                    timeout = min(timeout, max(when - self._clock(), 0.01))
            if self._unmarked:
                timeout = min(timeout, MARK_LAG)
            await self._wait(timeout)

    async def _claim(self, start: int, hold: int) -> tuple[list[Item], list[Item]]:
        """One claim; a stop that comes while it runs hands back what it claimed."""
        now = self._clock()
        skip = self._hosts.blocked(now)
        mark, self._unmarked = self._unmarked, []
        lease_until = now + self._config.lease_seconds
        claiming = asyncio.ensure_future(
            self._db.run(
                self._db.manifest.claim,
                now,
                start,
                hold,
                skip,
                mark,
                owner=self._owner,
                lease_until=lease_until,
            )
        )
        try:
            started, held = await asyncio.shield(claiming)
            self._leases.update(dict.fromkeys([i.aweme_id for i in [*started, *held]], lease_until))
            return started, held
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                started, held = await claiming
                await self._hand_back([i.aweme_id for i in [*started, *held]], 0.0)
            raise

    async def _start_ready(self) -> tuple[int, int]:
        """Start what the slots allow. Returns how many started, and how many must wait for
        their host: those whose host is only busy (its slots taken, or a probe out) stay
        here, claimed, until a transfer ends; those whose host is cooling down go back to
        the queue, due when it may be tried, with no attempt counted (kept here if the
        manifest refuses that)."""
        if self._pause is not None or not self._ready:
            return 0, 0
        cooling: dict[float, list[str]] = collections.defaultdict(list)
        admitted: list[_Entry] = []
        busy: list[_Entry] = []
        popped: list[_Entry] = []
        now = self._clock()
        while self._ready and len(self._tasks) + len(admitted) < self._config.concurrency:
            entry = self._ready.popleft()
            popped.append(entry)
            item, _, host = entry
            later = self._hosts.admit(host, now, item.aweme_id)
            if later is None:
                admitted.append(entry)
            elif later <= now + PROBE_WAIT:
                busy.append(entry)
            else:
                cooling[later].append(item.aweme_id)
        self._ready.extendleft(reversed(busy))
        for item, held, host in admitted:
            if held:  # marked active with the next claim; the manifest copes if that lags
                if not self._unmarked:
                    self._unmarked_since = time.monotonic()
                self._unmarked.append(item.aweme_id)
                item = Item(
                    item.aweme_id,
                    item.url,
                    item.topics,
                    item.attempts + 1,
                    item.validator,
                    item.durable,
                    item.total,
                )
            slot = _Slot(host)
            task = asyncio.create_task(self._download(item, slot), name=f"dl-{item.aweme_id}")
            self._tasks[item.aweme_id] = task
            task.add_done_callback(functools.partial(self._task_done, item.aweme_id, slot))
        waiting = {entry[0].aweme_id: entry for entry in popped} if cooling else {}
        for due, ids in cooling.items():
            try:
                await self._hand_back(ids, due)
            except BaseException:
                self._ready.extend([waiting[i] for i in ids])
                raise
        return len(admitted), len(busy) + sum(map(len, cooling.values()))

    def _startable(self) -> int:
        """Items claimed ahead whose host could take them now."""
        blocked = set(self._hosts.blocked(self._clock()))
        if not blocked or not self._ready:
            return len(self._ready)
        return sum(entry[2] not in blocked for entry in self._ready)

    async def _hand_back(self, ids: list[str], due: float) -> None:
        if ids:
            await self._db.run(
                self._db.manifest.release, ids, self._clock(), due, owner=self._owner
            )
            for aweme_id in ids:  # not this owner's any more, whoever has them now
                self._leases.pop(aweme_id, None)

    def _task_done(self, aweme_id: str, slot: _Slot, task: asyncio.Task[None]) -> None:
        if self._tasks.get(aweme_id) is task:
            self._tasks.pop(aweme_id)
            if aweme_id not in self._recording:  # else its lease lasts until `done` is written
                self._leases.pop(aweme_id, None)
        self._wake.set()  # a slot is free
        if slot.taken:  # ended before a verdict (cancelled, even before it ran)
            self._unslot(slot.host, aweme_id, self._clock())

    def _unslot(self, host: str, aweme_id: str, now: float) -> None:
        """Give a host slot back with no verdict on the host."""
        self._hosts.finished(host, now, aweme_id, host_fault=False, cancelled=True)

    async def _wait(self, timeout: float) -> None:
        """Until woken (a transfer ended, a merge, a pause) or `timeout` seconds passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def shutdown(self) -> None:
        """Cancel transfers (each checkpoints its .part and hands its item back) and hand back
        the items claimed ahead. A transfer that does not end within STOP_WAIT keeps its item
        `active`: the next start treats it as a crash."""
        await self._cancel_transfers()
        ids = [entry[0].aweme_id for entry in self._ready]
        if ids:
            await self._hand_back(ids, 0.0)
        self._ready.clear()
        # Published files whose `done` is not written yet: a crash-like restart would fetch
        # them again.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._completions.flush(), STOP_WAIT)
        self._completions.close()

    async def _cancel_transfers(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks.values() if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)

    # --- claims and leases --------------------------------------------------------------

    async def keep_claims(self) -> None:
        """Until cancelled, every third of a lease: renew this owner's claims and hand back
        the lapsed claims of owners that stopped renewing theirs (see renew_claims)."""
        while True:
            await asyncio.sleep(renewal_interval(self._config.lease_seconds))
            await self.renew_claims()

    async def renew_claims(self) -> None:
        """One pass: renew the leases of every claim held here; stop the transfers (and drop
        the items claimed ahead) whose claims another owner has taken, or, while the manifest
        cannot be reached, whose leases could end before the next pass; hand back lapsed
        claims, an attempt counted for those that were in flight. Each finding is logged once
        per pass, not once per item."""
        lease = self._config.lease_seconds
        now = self._clock()
        claims = dict(self._leases)
        try:
            renewed = await self._db.run(
                self._db.manifest.renew_leases, self._owner, list(claims), now + lease
            )
            lapsed = await self._db.run(self._db.manifest.reclaim_lapsed, now)
        except ManifestError as exc:
            if self._renewal_failed_at is None:
                self._renewal_failed_at = now
                self._log.error("lease_renewal_failed", error=str(exc), claims=len(claims))
            self._stop_claims("claims_at_risk", at_risk(self._leases, self._clock(), lease))
            return
        if self._renewal_failed_at is not None:
            down = round(now - self._renewal_failed_at, 3)
            self._log.info("leases_renewed", claims=len(renewed), down_s=down)
            self._renewal_failed_at = None
        for aweme_id in renewed:
            if aweme_id in self._leases:
                self._leases[aweme_id] = now + lease
        # A claim handed back and made again while the renewal ran is a new one: not lost.
        self._stop_claims(
            "claims_lost", [i for i in lost(claims, renewed) if self._leases.get(i) == claims[i]]
        )
        if lapsed:
            owners = collections.Counter(claim.owner or "-" for claim in lapsed)
            self._log.warning(
                "claims_reclaimed",
                count=len(lapsed),
                in_flight=sum(claim.was_active for claim in lapsed),
                owners=dict(owners),
                aweme_ids=[claim.aweme_id for claim in lapsed[:CLAIM_IDS_LOGGED]],
            )
            self.wake()

    def _stop_claims(self, event: str, ids: list[str]) -> None:
        """Stop the transfers of `ids` (each keeps its part) and forget those claimed ahead:
        they are not this owner's, or may soon not be. Logged as `event` when it stops
        something it had not stopped yet."""
        doomed = set(ids)
        if not doomed:
            return
        ahead = [entry for entry in self._ready if entry[0].aweme_id in doomed]
        if ahead:
            self._ready = collections.deque(e for e in self._ready if e[0].aweme_id not in doomed)
            self._unmarked = [i for i in self._unmarked if i not in doomed]
        stopped = 0
        for aweme_id in ids:
            task = self._tasks.get(aweme_id)
            if task is None:
                if aweme_id not in self._recording:
                    self._leases.pop(aweme_id, None)
            elif not task.cancelling():
                task.cancel()
                stopped += 1
        if stopped or ahead:
            self._log.warning(
                event,
                count=stopped + len(ahead),
                stopped=stopped,
                owner=self._owner,
                aweme_ids=ids[:CLAIM_IDS_LOGGED],
            )

    # --- local faults: pause and resume --------------------------------------------------

    async def _local_ok(self) -> bool:
        """False while downloads are paused; looks at the condition at most every so often."""
        pause = self._pause
        now = time.monotonic()
        if pause is not None:
            if now < pause.next_check:
                return False
            problem = await self._probe(pause.probe_dir)
            if problem is not None:
                pause.checks += 1
                pause.next_check = time.monotonic() + self._pause_delay(pause.checks)
                return False
            self._pause = None
            self._last_pause = (now, pause.checks)
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

    def host_down(self, host: str, retry_in_s: float, reason: str) -> None:
        """Another worker of the node found `host` down (see HostHealth.told_down)."""
        now = self._clock()
        self._hosts.told_down(host, now + max(retry_in_s, 0.0), reason, now)

    def host_up(self, host: str) -> None:
        """Another worker of the node has `host` back: what waits for it may start."""
        self._hosts.told_up(host, self._clock())
        self.wake()

    async def pause(self, reason: str, detail: str) -> None:
        """Pause as if this pool had met `reason` itself: the node's media folder is another
        worker's too. Resumes when this pool's own look at the folder finds it fine."""
        cancel = reason != LOW_SPACE
        await self._pause_downloads(reason, detail, None, self._config.media_dir, cancel=cancel)

    def _pause_delay(self, checks: int) -> float:
        return backoff_delay(checks, 1.0, PAUSE_RECHECK_MAX, self._jitter())

    def _check_local(self, folder: Path, *, probe: bool) -> tuple[str, str, int | None] | None:
        """Blocking: (reason, detail, free bytes) when `folder` cannot take files now, else
        None. With `probe`, a write batch is written, fsynced and removed there to prove it
        (under a name of its own: probes of one folder may run at once)."""
        try:
            free: int | None = free_bytes(self._config.media_dir)
        except OSError as exc:
            self._log.warning("disk_check_failed", error=str(exc))
            free = None
        floor = self._config.min_free_bytes
        if free is not None and free < floor:
            return LOW_SPACE, f"{free} bytes free, min_free_bytes {floor}", free
        if not probe:
            return None
        try:
            fd, name = tempfile.mkstemp(prefix=".ingestd-probe-", dir=folder)
        except OSError as exc:
            return self._refused(exc, folder / ".ingestd-probe-*", free)
        try:
            try:
                os.write(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            return self._refused(exc, Path(name), free)
        return None

    @staticmethod
    def _refused(exc: OSError, path: Path, free: int | None) -> tuple[str, str, int | None]:
        reason = PAUSE_REASONS.get(exc.errno or 0, "local_io_error")
        return reason, describe_os_error(exc, path), free

    async def _probe(self, folder: Path) -> tuple[str, str, int | None] | None:
        """`_check_local(folder, probe=True)` in a worker thread, one at a time per folder:
        transfers failing together share one probe's answer."""
        running = self._probes.get(folder)
        if running is None:
            running = asyncio.ensure_future(
                asyncio.to_thread(self._check_local, folder, probe=True)
            )
            self._probes[folder] = running
            running.add_done_callback(lambda _: self._probes.pop(folder, None))
        return await asyncio.shield(running)

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
        too (each checkpoints its part and hands its item back)."""
        if self._pause is not None:
            return
        now = time.monotonic()
        ended_at, checks = self._last_pause
        checks = checks + 1 if now - ended_at < PAUSE_MEMORY else 0  # a flapping fault backs off
        delay = self._pause_delay(checks) if checks else 1.0
        self._pause = _Pause(reason, detail, probe_dir, now, checks, next_check=now + delay)
        self._log.warning(
            "downloads_paused",
            reason=reason,
            detail=detail,
            free_bytes=free,
            min_free_bytes=self._config.min_free_bytes,
            in_flight=len(self._tasks),
            retry_in_s=round(delay, 3),
        )
        self.wake()  # the feed hands back what it claimed ahead (it alone owns _ready)
        if cancel:
            await self._cancel_transfers()

    # --- one transfer ----------------------------------------------------------------------

    async def _download(self, item: Item, slot: _Slot) -> None:
        log = self._log.bind(aweme_id=item.aweme_id)
        try:
            await self._run_one(item, slot, log)
        except asyncio.CancelledError:
            # Stopped (shutdown, pause), wherever it was: the part is checkpointed, and the
            # item goes back as it was. (An outcome already written is left alone: only an
            # item still active or held is handed back.)
            await asyncio.shield(self._settle(log, self._hand_back, [item.aweme_id], 0.0))
            raise

    async def _run_one(self, item: Item, slot: _Slot, log: Logger) -> None:
        host = slot.host
        started = time.monotonic()
        outcome = await self._transfers.attempt(item, log)
        duration = round(time.monotonic() - started, 3)
        now = self._clock()
        failure = outcome if isinstance(outcome, Failure) else None
        if failure is not None and not failure.host_fault:
            if await self._host_caused(failure, host, now - duration):
                failure = outcome = dataclasses.replace(failure, host_fault=True)
            now = self._clock()
        slot.taken = False  # given back here, with the verdict
        event = self._hosts.finished(
            host,
            now,
            item.aweme_id,
            host_fault=failure is not None and failure.host_fault,
            reason=failure.reason.value if failure is not None else "",
            retry_after=failure.retry_after if failure is not None else None,
            jitter=self._jitter(),
            # No request went out, or the connection died on this item alone: no verdict.
            cancelled=failure is not None
            and (
                failure.reason in NO_CONTACT
                or (failure.reason in TRANSPORT and not failure.host_fault)
            ),
        )
        if event is not None:
            fields = {"host": event.host, "reason": event.reason}
            if event.event == "host_unavailable":
                detail = failure.detail if failure is not None else ""
                fields.update(self._hint(host, failure))
                log.warning(event.event, retry_in_s=event.retry_in_s, detail=detail, **fields)
            else:
                self._log.info(event.event, down_s=event.down_s, **fields)
                self.wake()
        if self._hosts.cooling_until(host) > now:
            await self._defer_cooling(host, now)
        if isinstance(outcome, Published):
            await self._completed(item, outcome, duration, log)
            return
        local = outcome.reason is Reason.LOCAL_IO and outcome.errno in PAUSE_REASONS
        if local and await self._local_fault(item, outcome, log):
            return
        ticket = self._order.take()  # its event is logged before the extract completes
        try:
            await self._settle(log, self._failed, item, outcome, duration, log, host)
        finally:
            self._order.give_back(ticket)

    async def _defer_cooling(self, host: str, now: float) -> None:
        """When a host's cooldown starts or grows, move its pending items past it in one pass,
        so that claims find other hosts' items instead of this one's, a batch at a time."""
        until = self._hosts.cooling_until(host)
        if until <= now or until <= self._deferred.get(host, 0.0):
            return
        self._deferred[host] = until
        if len(self._deferred) > 4 * self._config.concurrency:  # bounded: drop the oldest
            for stale in [h for h, t in self._deferred.items() if t <= now]:
                del self._deferred[stale]
        with contextlib.suppress(ManifestError):  # an optimization: claims defer them anyway
            await self._db.run(self._db.manifest.defer_origin, host, until, now)

    def _hint(self, host: str, failure: Failure | None) -> dict[str, str]:
        """`{"hint": ..., "host": ...}` for the event that reports `failure`, the first time
        this host fails with that hint; else nothing: told once per host, not once per item
        (policy.hosts.Hinted). The host goes with it: a node's main process tells it once over
        its workers by it."""
        if failure is None or not failure.hint or not self._hinted.first(host, failure.hint):
            return {}
        return {"hint": failure.hint, "host": host}

    async def _host_caused(self, failure: Failure, host: str, started_at: float) -> bool:
        """Whether a failure is the host's, not the item's: 429/503 and no connection are;
        so is a connection lost or silent while the host served nothing else, or one lost
        under this item alone while the host goes down with it (seen within a grace)."""
        if failure.reason in HOST_FAULTS:
            return True
        if failure.reason not in TRANSPORT:
            return False
        if not self._hosts.served_since(host, started_at):
            return True
        lost_at = self._clock()
        self._hosts.lost(host, lost_at)
        await asyncio.sleep(TRANSPORT_GRACE)
        return self._hosts.went_down(host, lost_at, self._clock())

    async def _local_fault(self, item: Item, failure: Failure, log: Logger) -> bool:
        """A write refused by the filesystem: if the media folder refuses a probe too, pause
        every download (True: the item is handed back). If it takes files, the fault is this
        item's own (its .part owned by someone else, its topic folder unwritable): False,
        recorded as its failure, naming the path."""
        media = self._config.media_dir
        folder = Path(failure.path).parent if failure.path else media
        if not folder.is_relative_to(media):
            folder = media
        if self._pause is None:
            problem = await self._probe(folder)
            if problem is not None and folder != media:
                problem = await self._probe(media)
            if problem is None or problem[0] not in PAUSE_REASONS.values():
                return False
            await self._settle(log, self._hand_back, [item.aweme_id], 0.0)
            await self._pause_downloads(problem[0], problem[1], problem[2], media)
        else:
            await self._settle(log, self._hand_back, [item.aweme_id], 0.0)
        return True

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
        """Record a published file. The slot does not wait for the manifest write unless
        UNRECORDED_MAX outcomes already wait for theirs."""
        ticket = self._order.take()
        self._recording.add(item.aweme_id)
        recorded = self._completions.post(
            Completion(
                item.aweme_id,
                done.size,
                done.sha256,
                str(done.path),
                done.linked_topics,
                self._clock(),
                self._owner,
            )
        )
        recorded.add_done_callback(functools.partial(self._recorded, item, done, duration, log))
        recorded.add_done_callback(lambda _: self._order.give_back(ticket))  # once it is logged
        if self._completions.backlog > UNRECORDED_MAX:
            await asyncio.shield(recorded)  # the manifest lags or refuses: slow down with it

    def _recorded(
        self,
        item: Item,
        done: Published,
        duration: float,
        log: Logger,
        recorded: asyncio.Future[bool | None],
    ) -> None:
        """The file's `done` is written: count it and say so."""
        self._recording.discard(item.aweme_id)
        if item.aweme_id not in self._tasks:
            self._leases.pop(item.aweme_id, None)
        if recorded.cancelled():
            return
        error = recorded.exception()
        if error is not None:  # not a refusal (those are retried): a bug; the item stays active
            log.error("download_bookkeeping_failed", error=repr(error)[:200])
            return
        if recorded.result() is None:  # its lease lapsed meanwhile and another owner has it
            log.warning("claim_lost", outcome="completed", path=str(done.path), owner=self._owner)
            return
        if recorded.result():  # topics merged in while it downloaded, or links left to make
            self._links_due()
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
            mbps=round(done.fetched / max(duration, 1e-6) / 1e6, 2),  # MB/s, this attempt's
        )

    def _bookkeeping_retry(
        self, failures: int, error: Exception, waiting: list[Completion]
    ) -> float:
        """How long the completions the manifest refused wait before the next try; logged
        once per refusal, not once per item."""
        delay = backoff_delay(failures, 0.5, BOOKKEEPING_RETRY_MAX, self._jitter())
        if failures == 1:
            self._log.error(
                "download_bookkeeping_failed",
                error=str(error),
                items=len(waiting),
                aweme_ids=[c.aweme_id for c in waiting[:BOOKKEEPING_IDS_LOGGED]],
                retry_in_s=round(delay, 3),
            )
        return delay

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
            owner=self._owner,
        )
        if state is None:  # its lease lapsed meanwhile and another owner has it
            log.warning("claim_lost", outcome=decision.action.value, owner=self._owner)
            return
        fields: dict[str, object] = {
            "reason": decision.reason.value,
            "status": failure.status,
            "detail": failure.detail or None,
            "duration_s": duration,
        }
        outcome = decision.action.value if state is target else "superseded"
        self._metrics.attempt(outcome, duration, reason=decision.reason)
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
                    **self._hint(host, failure),
                )
        elif decision.action is Action.EXPIRED:
            self.stats.expired += 1
            when = expired_at(item.url, now)
            if when is not None:  # absent when not known
                fields["expired_at"] = when
            log.warning("download_expired", attempts=item.attempts, **fields)
        else:
            self.stats.failed += 1
            log.error(
                "download_failed", attempts=item.attempts, **fields, **self._hint(host, failure)
            )

    # --- further topics -----------------------------------------------------------------------

    async def relink(self) -> None:
        """One pass of service.relink over the done items that gained topics."""
        await self._relinker.relink()
