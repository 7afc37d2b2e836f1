"""The daemon's lifecycle: start in a safe order, run the tasks, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from ingestd import __version__
from ingestd.config import Config
from ingestd.fs.watch import ExtractWatcher, WatchError
from ingestd.log import Logger, get_logger
from ingestd.net.fetch import Fetcher, HttpSettings, SetupError
from ingestd.service.db import Db
from ingestd.service.downloads import DownloadPool
from ingestd.service.ingest import Ingestor
from ingestd.store.manifest import ManifestError

STOP_BUDGET = 8.0  # seconds for the whole shutdown; systemd and users expect exit within 10
WATCH_RESTART_DELAY = 2.0


def http_settings(config: Config) -> HttpSettings:
    """The slice of the config the HTTP client needs."""
    return HttpSettings(
        http2=config.http2,
        timeout=config.timeout,
        user_agent=config.user_agent,
        referer=config.referer,
        ca_bundle=config.ca_bundle,
        max_connections=config.concurrency,
        allowed_hosts=config.allowed_hosts,
    )


class Daemon:
    """Owns the manifest, the watcher, the ingestor and the download pool for one run."""

    def __init__(self, config: Config, log: Logger) -> None:
        self._config = config
        self._log = log
        self._stop = asyncio.Event()

    def request_stop(self, signame: str) -> None:
        """Begin a clean shutdown (signal handler)."""
        if not self._stop.is_set():
            self._log.info("daemon_stopping", signal=signame)
        self._stop.set()

    async def run(self) -> int:
        """Run until a stop is requested. Returns the process exit code."""
        config, log = self._config, self._log
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        log.info(
            "daemon_started",
            version=__version__,
            pid=os.getpid(),
            data_dir=str(config.data_dir),
            state_dir=str(config.state_dir),
            concurrency=config.concurrency,
            http2=config.http2,
            allowed_hosts=list(config.allowed_hosts),
        )
        try:
            for folder in (config.raw_dir, config.media_dir):
                await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            db = await Db.open(config.manifest_path)
        except (OSError, ManifestError) as exc:
            log.critical("daemon_failed", reason="startup", error=str(exc))
            return 1
        try:
            fetcher = Fetcher(http_settings(config))
        except SetupError as exc:
            log.critical("daemon_failed", reason="http_setup", error=str(exc))
            await db.close()
            return 1
        pool = DownloadPool(config, db, fetcher, log)
        ingest = Ingestor(config, db, log, on_merged=pool.wake)
        code = 0
        tasks: list[asyncio.Task[None]] = []
        try:
            recovered = await db.run(db.manifest.reset_active, time.time())
            if recovered:
                log.info("items_recovered", count=recovered, reason="left_active_by_crash")
            watcher = ExtractWatcher(config.raw_dir, ingest.notify)
            try:
                await watcher.start()  # watch first, then scan: nothing dropped between is lost
            except WatchError as exc:
                log.error("watch_failed", error=str(exc), retry_in_s=WATCH_RESTART_DELAY)
            await ingest.scan()
            await pool.relink()
            tasks = [
                asyncio.create_task(self._supervise_watcher(watcher, ingest), name="watch"),
                asyncio.create_task(ingest.run(), name="ingest"),
                asyncio.create_task(pool.run(), name="pool"),
                asyncio.create_task(self._progress(db, pool), name="progress"),
            ]
            counts = await db.run(db.manifest.counts)
            log.info("daemon_ready", items=counts.items, raw_dir=str(config.raw_dir))
            stopper = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in done:
                if task is stopper or task.cancelled() or task.exception() is None:
                    continue
                error = repr(task.exception())
                log.critical("daemon_failed", reason=f"{task.get_name()}_crashed", error=error)
                code = 1
        except ManifestError as exc:
            log.critical("daemon_failed", reason="manifest", error=str(exc))
            code = 1
        finally:
            await self._shutdown(tasks, pool, fetcher, db)
        log.info("daemon_stopped", exit_code=code)
        return code

    async def _shutdown(
        self, tasks: list[asyncio.Task[None]], pool: DownloadPool, fetcher: Fetcher, db: Db
    ) -> None:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0)
        with contextlib.suppress(TimeoutError, ManifestError):
            await asyncio.wait_for(pool.shutdown(), STOP_BUDGET / 2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fetcher.aclose(), 1.0)
        await db.close()

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

    async def _progress(self, db: Db, pool: DownloadPool) -> None:
        last_bytes, last_time = 0, time.monotonic()
        while True:
            await asyncio.sleep(self._config.progress_seconds)
            counts = await db.run(db.manifest.counts)
            outstanding = counts.items["pending"] + counts.items["active"]
            now = time.monotonic()
            rate = (pool.stats.bytes - last_bytes) / max(now - last_time, 1e-6)
            if outstanding or pool.stats.bytes != last_bytes:
                self._log.info(
                    "progress",
                    items=counts.items,
                    bytes_done=counts.bytes_done,
                    in_flight=pool.in_flight,
                    rate_bytes_per_s=round(rate),
                    completed=pool.stats.completed,
                    retried=pool.stats.retried,
                    failed=pool.stats.failed,
                    expired=pool.stats.expired,
                )
            last_bytes, last_time = pool.stats.bytes, now


def run(config: Config) -> int:
    """Run the daemon in a fresh event loop."""
    return asyncio.run(Daemon(config, get_logger()).run())
