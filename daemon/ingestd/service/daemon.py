"""The daemon's lifecycle: start in a safe order, run the tasks, reload on SIGHUP, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from http.cookiejar import CookieJar
from typing import Any, Protocol

from ingestd import __version__, log
from ingestd.config import Config, ConfigError, load_cookies
from ingestd.fs.files import write_file_atomic
from ingestd.fs.watch import ExtractWatcher, WatchError
from ingestd.log import Logger, get_logger
from ingestd.metrics import Metrics
from ingestd.net.cookies import same_cookies
from ingestd.net.fetch import Fetcher, HttpSettings, SetupError
from ingestd.notify import Notifier
from ingestd.ops.live import (
    LIVE_FILE,
    LIVE_HEARTBEAT,
    LIVE_PERIOD,
    Live,
    RateMeter,
    Snapshot,
    node_report,
    summary_line,
    write_live,
)
from ingestd.ops.status import status_line
from ingestd.policy.lease import CLOCK_TOLERANCE
from ingestd.policy.workers import worker_count
from ingestd.service.completion import ORDER_WAIT, EventOrder, ExtractCompletions
from ingestd.service.db import Db
from ingestd.service.ingest import Ingestor
from ingestd.service.pool import DownloadPool
from ingestd.service.publish import Publisher
from ingestd.service.relink import Relinker
from ingestd.service.tasks import until_stopped
from ingestd.service.workers import Workers
from ingestd.store.base import NODE_SILENT_S, ManifestError, NodeReport

STOP_BUDGET = 8.0  # seconds for the whole shutdown; systemd and users expect exit within 10
# Of it, what download workers get to stop once told (then they are killed): the rest covers
# reaping them and closing the manifest.
WORKERS_STOP_WAIT = STOP_BUDGET - 2.0
WATCH_RESTART_DELAY = 2.0
STATUS_PERIOD = 5.0  # seconds between STATUS= updates for `systemctl status`
# This node's last daemon run, in its state dir: the next run takes the node's name over from
# it at once (after a crash), where it waits to see whether another holder is alive.
INSTANCE_FILE = "instance"
INSTANCE_MAX = 64  # bytes read of it
NAME_CHECK_EVERY = 1.0  # seconds between two looks at a name another run holds
EXIT_NAME_IN_USE = 4  # as a data dir locked by another daemon: systemd does not restart it
# Keys that name places, the TLS/HTTP setup of the shared client, or the processes that run:
# changing them needs a restart.
RESTART_ONLY = frozenset(
    {"data_dir", "state_dir", "http2", "ca_bundle", "metrics_address", "connections_per_host"}
    | {"idle_timeout", "http2_client", "manifest_url", "node_name", "workers"}
)


def changed_keys(old: Config, new: Config) -> list[str]:
    """Names of the config keys whose values differ."""
    return [f.name for f in fields(Config) if getattr(old, f.name) != getattr(new, f.name)]


class _Downloads(Protocol):
    """Where downloads run: in this process (_InProcess), or in worker processes (_InWorkers)."""

    async def start(self) -> None:
        """Begin (the manifest holds no claim of this node's any more)."""

    async def ready(self) -> None:
        """Wait until downloads can run (before READY=1)."""

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """What runs until the stop, by task name."""

    def snapshot(self) -> Snapshot:
        """The node's downloads now."""

    def merged(self) -> None:
        """An extract was merged: new items may be due, done items may need links."""

    def wake(self) -> None:
        """Items may be due (another node's merge or retry): look at the queue now."""

    async def relink(self) -> None:
        """One pass over the done items that need links."""

    def reconfigure(self, config: Config, cookies: CookieJar | None) -> None:
        """Apply a reloaded config."""

    def request_stop(self) -> None:
        """Begin stopping, without waiting."""

    async def shutdown(self) -> None:
        """Stop: transfers stopped, claims handed back."""


class _InProcess:
    """Downloads in the daemon's own process (`workers = 1`)."""

    def __init__(self, pool: DownloadPool, fetcher: Fetcher) -> None:
        self.pool = pool
        self._fetcher = fetcher

    async def start(self) -> None:
        """Nothing to start: the pool runs as a task."""

    async def ready(self) -> None:
        """Ready as soon as its task runs."""

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The pool and its lease keeper."""
        return {"pool": self.pool.run(), "leases": self.pool.keep_claims()}

    def snapshot(self) -> Snapshot:
        """The pool's."""
        return self.pool.snapshot()

    def merged(self) -> None:
        """The pool's feed looks at the queue and makes due links."""
        self.pool.merged()

    def wake(self) -> None:
        """The pool's feed looks at the queue."""
        self.pool.wake()

    async def relink(self) -> None:
        """The pool's pass."""
        await self.pool.relink()

    def reconfigure(self, config: Config, cookies: CookieJar | None) -> None:
        """The HTTP client's settings and cookies, and the pool's config."""
        self._fetcher.reconfigure(HttpSettings.of(config))
        self._fetcher.set_cookies(cookies)
        self.pool.reconfigure(config)

    def request_stop(self) -> None:
        """Nothing before shutdown()."""

    async def shutdown(self) -> None:
        """The pool's shutdown, then the HTTP client's."""
        with contextlib.suppress(TimeoutError, ManifestError):
            await asyncio.wait_for(self.pool.shutdown(), STOP_BUDGET / 2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._fetcher.aclose(), 1.0)


class _InWorkers:
    """Downloads in worker processes (service.workers); links made here, where merges are."""

    def __init__(self, workers: Workers, relinker: Relinker) -> None:
        self.workers = workers
        self._relinker = relinker

    async def start(self) -> None:
        """Start the worker processes."""
        await self.workers.start()

    async def ready(self) -> None:
        """Wait for them to be ready (each has its manifest and pool), within a bound."""
        await self.workers.ready()

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """Their supervision, and the links."""
        return {"workers": self.workers.run(), "relinks": self._relinker.run()}

    def snapshot(self) -> Snapshot:
        """The sum of the workers' reports."""
        return self.workers.snapshot()

    def merged(self) -> None:
        """Wake the workers; make due links."""
        self.workers.wake()
        self._relinker.merged()

    def wake(self) -> None:
        """Every worker looks at the queue."""
        self.workers.wake()

    async def relink(self) -> None:
        """The relinker's pass."""
        await self._relinker.relink()

    def reconfigure(self, config: Config, cookies: CookieJar | None) -> None:
        """The workers get the config (each reads the cookies file itself)."""
        self.workers.reconfigure(config)
        self._relinker.reconfigure(config)

    def request_stop(self) -> None:
        """Tell the workers to stop."""
        self.workers.request_stop()

    async def shutdown(self) -> None:
        """Wait for the workers to stop, killing stragglers."""
        await self.workers.stop(WORKERS_STOP_WAIT)


@dataclass
class _Parts:
    db: Db
    downloads: _Downloads
    ingest: Ingestor
    completions: ExtractCompletions


class NameInUse(Exception):
    """Another running daemon reports under this node's name."""


class _StoppedEarly(Exception):
    """A stop came before the daemon could start its work."""


class Daemon:
    """Owns the manifest, the watcher, the ingestor and the download pool for one run."""

    def __init__(
        self,
        config: Config,
        logger: Logger,
        notifier: Notifier,
        reload_config: Callable[[], Config] | None = None,
        cookies: CookieJar | None = None,
    ) -> None:
        """`cookies`: those of config.cookies_file, already read (by the CLI, where a bad file
        is a configuration error); read here when it is not given."""
        self._config = config
        self._log = logger
        self._notifier = notifier
        self._reload_config = reload_config
        self._cookies = cookies
        self._stop = asyncio.Event()
        self._parts: _Parts | None = None
        self._reloading = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._metrics = Metrics()
        self._instance = uuid.uuid4().hex  # this run: see _take_name

    def request_stop(self, signame: str) -> None:
        """Begin a clean shutdown (signal handler)."""
        if not self._stop.is_set():
            self._log.info("daemon_stopping", signal=signame)
        self._stop.set()

    def request_reload(self) -> None:
        """Reload the config file (SIGHUP handler)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self) -> int:
        """Run until a stop is requested. Returns the process exit code."""
        config, logger = self._config, self._log
        if self._cookies is None and config.cookies_file is not None:
            try:
                self._cookies = await asyncio.to_thread(load_cookies, config)
            except ConfigError as exc:
                logger.critical("daemon_failed", reason="config", error=str(exc))
                return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        logger.info(
            "daemon_started",
            version=__version__,
            pid=os.getpid(),
            data_dir=str(config.data_dir),
            state_dir=str(config.state_dir),
            manifest=config.manifest_label,
            node=config.node_name,
            concurrency=config.concurrency,
            workers=worker_count(config.workers, config.concurrency),
            http2=config.http2,
            http2_client=config.http2_client,
            allowed_hosts=list(config.allowed_hosts),
            notify=self._notifier.enabled,
            watchdog_s=self._notifier.watchdog_interval,
        )
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        try:
            parts = await self._open(config)
        except (OSError, ManifestError, SetupError) as exc:
            logger.critical("daemon_failed", reason="startup", error=str(exc))
            watchdog.cancel()
            return 1
        self._parts = parts
        self._serve_metrics(config)
        code = 0
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._take_name(parts)
            # A SQLite manifest is this node's alone; on a shared one, only this node's own
            # claims (and its workers') are left over from its last run.
            own = config.manifest_node
            recovered = await parts.db.run(
                parts.db.manifest.reset_active, parts.db.manifest.clock(), own
            )
            if recovered:
                logger.info("items_recovered", count=recovered, reason="left_active_by_crash")
            watcher = ExtractWatcher(config.raw_dir, parts.ingest.notify)
            try:
                await watcher.start()  # watch first, then scan: nothing dropped between is lost
            except WatchError as exc:
                logger.error("watch_failed", error=str(exc), retry_in_s=WATCH_RESTART_DELAY)
            await parts.downloads.start()
            await parts.ingest.scan()
            await parts.downloads.relink()
            tasks = [
                asyncio.create_task(self._supervise_watcher(watcher, parts.ingest), name="watch"),
                asyncio.create_task(parts.ingest.run(), name="ingest"),
                *(asyncio.create_task(c, name=n) for n, c in parts.downloads.tasks().items()),
                asyncio.create_task(self._progress(parts), name="progress"),
                asyncio.create_task(parts.completions.run(), name="completions"),
            ]
            await parts.downloads.ready()
            counts = await parts.db.run(parts.db.manifest.counts)
            in_flight = parts.downloads.snapshot().in_flight
            self._notifier.ready(status_line(counts, in_flight, 0.0))
            logger.info("daemon_ready", items=counts.items, raw_dir=str(config.raw_dir))
            if config.manifest_url:  # other nodes' merges and retries wake this one at once
                watching = parts.db.watch_queue(parts.downloads.wake)
                tasks.append(asyncio.create_task(watching, name="queue-watch"))
            tasks.append(asyncio.create_task(self._report_status(parts), name="status"))
            tasks.append(asyncio.create_task(self._report_live(parts), name="live"))
            code = await self._until_stopped(tasks)
        except ManifestError as exc:
            logger.critical("daemon_failed", reason="manifest", error=str(exc))
            code = 1
        except NameInUse as exc:
            logger.critical("daemon_failed", reason="node_name_in_use", error=str(exc))
            code = EXIT_NAME_IN_USE
        except _StoppedEarly:
            code = 0
        finally:
            self._notifier.stopping()
            await self._shutdown([*tasks, watchdog], parts)
            self._metrics.close()
            await self._write_live(self._live(parts.downloads.snapshot(), stopped=True))
            log.set_summary(None)
        self._log.info("daemon_stopped", exit_code=code)
        return code

    async def _open(self, config: Config) -> _Parts:
        for folder in (config.raw_dir, config.media_dir):
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        db = await Db.open(config.manifest_location)
        try:
            fetcher = Fetcher(HttpSettings.of(config), self._cookies)
        except SetupError:
            await db.close()
            raise
        order = EventOrder()
        count = worker_count(config.workers, config.concurrency)
        downloads: _InProcess | _InWorkers
        if count == 1:
            pool = DownloadPool(config, db, fetcher, self._log, self._metrics, order=order)
            downloads = _InProcess(pool, fetcher)
            completions = ExtractCompletions(db, self._log, config.raw_dir, order)
        else:
            await fetcher.aclose()  # it proved the HTTP setup; each worker makes its own
            relinker = Relinker(config, db, Publisher(config.media_dir), self._log)
            workers = Workers(config, count, self._log, self._metrics, relinker.merged)
            db.outage.gate = workers.admit_own  # an outage is the node's, not each process's
            downloads = _InWorkers(workers, relinker)
            # An extract completes after the outcome events of its items, wherever logged.
            completions = ExtractCompletions(
                db, self._log, config.raw_dir, order, barrier=lambda: workers.sync(ORDER_WAIT)
            )

        def merged() -> None:
            downloads.merged()
            completions.kick()

        ingest = Ingestor(config, db, self._log, on_merged=merged, order=order)
        return _Parts(db, downloads, ingest, completions)

    async def _until_stopped(self, tasks: list[asyncio.Task[None]]) -> int:
        crashed = await until_stopped(self._stop, tasks)
        for name, error in crashed:
            if isinstance(error, NameInUse):
                raise error
            self._log.critical("daemon_failed", reason=f"{name}_crashed", error=repr(error))
        return 1 if crashed else 0

    async def _take_name(self, parts: _Parts) -> None:
        """Hold this node's name in the manifest before touching its claims: another daemon
        with the same name (a cloned host) would have its claims let go by this one's start.
        A name this node's last run held (it crashed) is taken at once; one another run holds
        is waited for while that run is silent, until it has been for NODE_SILENT_S. Raises
        NameInUse when that run reports meanwhile (it is alive), _StoppedEarly on a stop."""
        path = self._config.state_dir / INSTANCE_FILE
        try:
            with path.open("rb") as file:
                previous = file.read(INSTANCE_MAX).decode("ascii", "replace").strip()
        except OSError:
            previous = ""
        manifest, name = parts.db.manifest, self._config.node_name
        held: NodeReport | None = None
        while True:
            report = node_report(name, Snapshot(), 0.0, manifest.clock(), self._instance)
            holder = await parts.db.run(manifest.report_node, report, previous)
            if holder is None:
                break
            if held is None:
                held = holder
                self._log.warning(
                    "node_name_held",
                    node=name,
                    instance=holder.instance,
                    silent_s=round(report.seen_at - holder.seen_at, 3),
                    wait_s=round(NODE_SILENT_S - (report.seen_at - holder.seen_at), 3),
                )
            elif holder != held:
                raise NameInUse(_name_in_use(name, holder, manifest.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), NAME_CHECK_EVERY)
            if self._stop.is_set():
                raise _StoppedEarly
        await asyncio.to_thread(write_file_atomic, path, self._instance.encode())

    async def _shutdown(self, tasks: list[asyncio.Task[None]], parts: _Parts) -> None:
        parts.downloads.request_stop()  # workers stop while this process does
        parts.db.manifest.interrupt.set()  # a long merge ends; no call waits out an outage
        parts.ingest.stop()  # ... and one in a child process ends now
        for task in [*tasks, *self._background]:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0)
        await parts.downloads.shutdown()
        snapshot, now = parts.downloads.snapshot(), parts.db.manifest.clock()
        node, instance = self._config.node_name, self._instance
        await self._report_node(
            parts, node_report(node, snapshot, 0.0, now, instance, stopped=True)
        )
        await parts.db.close()

    # --- reload ----------------------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read the config and apply what can change live; refuse the rest, keep the old."""
        if self._reload_config is None or self._parts is None:
            return
        async with self._reloading:
            self._notifier.reloading()
            try:
                new = await asyncio.to_thread(self._reload_config)
            except ConfigError as exc:
                self._log.error("config_reload_failed", reason="invalid", keys=[], error=str(exc))
                self._notifier.ready()
                return
            changed = changed_keys(self._config, new)
            refused = sorted(set(changed) & RESTART_ONLY)
            if refused:
                self._log.error(
                    "config_reload_failed",
                    reason="restart_required",
                    keys=refused,
                    error=f"{', '.join(refused)} cannot change while running; old config kept",
                )
                self._notifier.ready()
                return
            # The cookies file is read again on every reload, changed or not (like the log file).
            try:
                cookies = await asyncio.to_thread(load_cookies, new)
            except ConfigError as exc:
                self._log.error(
                    "config_reload_failed", reason="invalid", keys=["cookies_file"], error=str(exc)
                )
                self._notifier.ready()
                return
            if "cookies_file" not in changed and not same_cookies(self._cookies, cookies):
                changed.append("cookies_file")
            # Always reopen the log file: this is also how an external logrotate hands over.
            log.configure(new.log_format, new.log_file, new.log_max_bytes, new.log_backups)
            self._config = new
            parts = self._parts
            self._cookies = cookies
            parts.downloads.reconfigure(new, cookies)
            parts.ingest.reconfigure(new)
            self._log.info("config_reloaded", changed=changed)
            self._notifier.ready()

    # --- background duties -----------------------------------------------------------------

    async def _watchdog(self) -> None:
        # Sent from the event loop itself: if the loop hangs, the pings stop and systemd acts.
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)

    def _serve_metrics(self, config: Config) -> None:
        if not config.metrics_address:
            return
        try:
            host, port = self._metrics.serve(config.metrics_address)
        except (OSError, ValueError) as exc:
            self._log.error("metrics_failed", address=config.metrics_address, error=str(exc))
            return
        self._log.info("metrics_serving", address=f"{host}:{port}")

    async def _report_status(self, parts: _Parts) -> None:
        """Keep `systemctl status` (STATUS=), the Prometheus gauges and this node's report in
        the manifest (what `status` shows of the fleet) current."""
        first = parts.downloads.snapshot()
        last_bytes, last_received, last_time = first.bytes, first.received, time.monotonic()
        manifest = parts.db.manifest
        skew = 0.0
        while True:
            if manifest.clock_skew() != skew:
                skew = manifest.clock_skew()
                level = self._log.warning if skew else self._log.info
                level("clock_skew", skew_s=skew, tolerance_s=CLOCK_TOLERANCE)
            await asyncio.sleep(STATUS_PERIOD)
            try:
                counts = await parts.db.run(parts.db.manifest.counts)
                oldest = await parts.db.run(parts.db.manifest.oldest_pending)
            except ManifestError:  # the feeder reports an outage; the next round tries again
                continue
            now, snapshot = time.monotonic(), parts.downloads.snapshot()
            elapsed = max(now - last_time, 1e-6)
            rate = (snapshot.bytes - last_bytes) / elapsed
            received = (snapshot.received - last_received) / elapsed
            last_bytes, last_received, last_time = snapshot.bytes, snapshot.received, now
            age = 0.0 if oldest is None else manifest.clock() - oldest
            self._metrics.snapshot(counts.items, age, snapshot.in_flight)
            self._notifier.status(status_line(counts, snapshot.in_flight, rate))
            report = node_report(
                self._config.node_name, snapshot, received, manifest.clock(), self._instance
            )
            holder = await self._report_node(parts, report)
            if holder is not None:  # it took the name while this node could not report
                raise NameInUse(_name_in_use(self._config.node_name, holder, manifest.clock()))

    @staticmethod
    async def _report_node(parts: _Parts, report: NodeReport) -> NodeReport | None:
        """Write `report`; the report of the run that holds the node's name instead, if
        another does."""
        with contextlib.suppress(ManifestError):  # the feeder reports an outage
            return await parts.db.run(parts.db.manifest.report_node, report)
        return None

    @staticmethod
    def _live(snapshot: Snapshot, stopped: bool = False) -> Live:
        pause, down = snapshot.pause, snapshot.hosts_down
        return Live(
            pid=os.getpid(),
            written_at=time.time(),
            clock=time.monotonic(),
            state="stopped" if stopped else "running" if pause is None else "paused",
            received=snapshot.received,
            transfers=() if stopped else snapshot.transfers,
            pause_reason=None if pause is None else pause[0],
            pause_detail=None if pause is None else pause[1],
            paused_s=None if pause is None else round(pause[2], 1),
            hosts_down=tuple(down[:20]),
            hosts_down_count=len(down),
            completed=snapshot.completed,
            retried=snapshot.retried,
            failed=snapshot.failed,
            expired=snapshot.expired,
        )

    async def _write_live(self, live: Live) -> None:
        # The view is a convenience: a state dir that refuses it costs nothing else.
        with contextlib.suppress(OSError):
            await asyncio.to_thread(write_live, self._config.state_dir / LIVE_FILE, live)

    async def _report_live(self, parts: _Parts) -> None:
        """Keep live.json (for `status --watch`) and the terminal's summary line current."""
        rate = RateMeter()
        last: Live | None = None
        written_at = float("-inf")
        while True:
            live = self._live(parts.downloads.snapshot())
            same = last is not None and dataclasses.replace(
                live, written_at=0, clock=0
            ) == dataclasses.replace(last, written_at=0, clock=0)
            if not same or live.clock - written_at >= LIVE_HEARTBEAT:
                await self._write_live(live)
                last, written_at = live, live.clock
            if log.summary_enabled():
                rate.add(live.clock, live.received)
                counts = await parts.db.run(parts.db.manifest.counts)
                log.set_summary(summary_line(counts.items, live, rate.rate(), counts.bytes_done))
            await asyncio.sleep(LIVE_PERIOD)

    async def _supervise_watcher(self, watcher: ExtractWatcher, ingest: Ingestor) -> None:
        while True:
            try:
                await watcher.wait()
                return
            except WatchError as exc:
                self._log.error("watch_failed", error=str(exc), retry_in_s=WATCH_RESTART_DELAY)
            await asyncio.sleep(WATCH_RESTART_DELAY)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._config.raw_dir.mkdir, parents=True, exist_ok=True)
            watcher = ExtractWatcher(self._config.raw_dir, ingest.notify)
            try:
                await watcher.start()
            except WatchError as exc:
                self._log.error("watch_failed", error=str(exc), retry_in_s=WATCH_RESTART_DELAY)
                continue
            await ingest.scan()

    async def _progress(self, parts: _Parts) -> None:
        last_bytes, last_time = 0, time.monotonic()
        while True:
            await asyncio.sleep(self._config.progress_seconds)
            try:
                counts = await parts.db.run(parts.db.manifest.counts)
            except ManifestError:  # the feeder reports an outage; the next round tries again
                continue
            outstanding = counts.items["pending"] + counts.items["active"]
            now, snapshot = time.monotonic(), parts.downloads.snapshot()
            rate = (snapshot.bytes - last_bytes) / max(now - last_time, 1e-6)
            if outstanding or snapshot.bytes != last_bytes:
                self._log.info(
                    "progress",
                    items=counts.items,
                    bytes_done=counts.bytes_done,
                    in_flight=snapshot.in_flight,
                    rate_bytes_per_s=round(rate),
                    completed=snapshot.completed,
                    retried=snapshot.retried,
                    failed=snapshot.failed,
                    expired=snapshot.expired,
                )
            last_bytes, last_time = snapshot.bytes, now


def run(
    config: Config,
    reload_config: Callable[[], Config] | None = None,
    cookies: CookieJar | None = None,
) -> int:
    """Run the daemon in a fresh event loop."""
    notifier = Notifier.from_env()
    try:
        return asyncio.run(Daemon(config, get_logger(), notifier, reload_config, cookies).run())
    finally:
        notifier.close()


def _name_in_use(name: str, holder: NodeReport, now: float) -> str:
    return (
        f"node_name {name!r} is in use by another running daemon (instance {holder.instance},"
        f" which reported {now - holder.seen_at:.1f} s ago): give each host its own node_name"
    )
