"""A download worker process (`workers = N`, started by service.workers): an event loop, a
manifest connection, an HTTP client and a DownloadPool of its own, claiming as `<node>/<k>`.

It writes no log: each event goes to the main process over the channel (service.wire), through
an Outbox, with its reports (a snapshot every REPORT_PERIOD seconds, each finished attempt for
the metrics). It stops, handing its claims back as the daemon's own stop does, when the main
process says so, on SIGTERM, and when the main process is gone (its channel closes, or the
parent pid changes): no orphan goes on downloading. Ctrl-C and a hangup reach the whole process
group; the main process decides for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import MutableMapping
from http.cookiejar import CookieJar
from typing import Any

from ingestd import log
from ingestd.config import Config, ConfigError, config_from_document, load_cookies
from ingestd.log import get_logger
from ingestd.net.fetch import Fetcher, HttpSettings, SetupError
from ingestd.ops.live import snapshot_document
from ingestd.policy.retry import Reason
from ingestd.policy.workers import owner_of
from ingestd.service import wire
from ingestd.service.completion import ORDER_WAIT, EventOrder
from ingestd.service.db import Db
from ingestd.service.pool import DownloadPool
from ingestd.service.tasks import until_stopped
from ingestd.store.base import ManifestError

REPORT_PERIOD = 1.0  # seconds between two snapshots sent to the main process
# Bytes of lines waiting for the main process. Past it, logging waits until the main process
# reads again: nothing is dropped while it reads, and one that stalls cannot make a worker grow.
OUTBOX_MAX_BYTES = 4 * 1024 * 1024
FLUSH_WAIT = 2.0  # seconds, at exit, for the last lines to reach the main process
POOL_STOP_WAIT = 4.0  # for the pool to stop its transfers and hand their items back
CLOSE_WAIT = 1.0  # for the HTTP client to close its connections
READ_BYTES = 64 * 1024


class Outbox:
    """Lines to the main process, in order, written by a thread of their own: logging does not
    wait for the main process unless OUTBOX_MAX_BYTES wait already. Thread safe."""

    def __init__(self, channel: socket.socket, limit: int = OUTBOX_MAX_BYTES) -> None:
        self._channel = channel
        self._limit = limit
        self._lines: list[bytes] = []
        self._size = 0  # bytes queued or being written
        self._closing = False
        self._broken = False  # the main process is gone: lines are dropped
        lock = threading.Lock()
        # The writer is woken when lines arrive in an empty queue, not once per line: it
        # takes all that came meanwhile in one write.
        self._has_lines = threading.Condition(lock)
        self._has_room = threading.Condition(lock)
        self._thread = threading.Thread(target=self._write, name="outbox", daemon=True)
        self._thread.start()

    def put(self, line: bytes) -> None:
        """Queue `line` (a message, newline included), waiting while the queue is full."""
        with self._has_room:
            while self._size >= self._limit and not self._broken:
                self._has_room.wait()
            if self._broken:
                return
            self._lines.append(line)
            self._size += len(line)
            if len(self._lines) == 1:
                self._has_lines.notify()

    def close(self, timeout: float) -> None:
        """Write what is queued (at most `timeout` seconds), then close the channel."""
        with self._has_lines:
            self._closing = True
            self._has_lines.notify()
        self._thread.join(timeout)
        with self._has_room:
            self._broken = True  # a late line is dropped, not waited for
            self._has_room.notify_all()
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_RDWR)

    def _write(self) -> None:
        while True:
            with self._has_lines:
                while not self._lines and not self._closing:
                    self._has_lines.wait()
                if not self._lines:
                    return
                batch, self._lines = self._lines, []
            data = b"".join(batch)
            try:
                self._channel.sendall(data)
            except OSError:
                with self._has_room:
                    self._broken = True
                    self._lines.clear()
                    self._has_room.notify_all()
                return
            with self._has_room:
                self._size -= len(data)
                self._has_room.notify_all()


class _Attempts:
    """The pool's metrics in a worker: each finished attempt is sent to the main process."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def attempt(
        self, outcome: str, seconds: float, size: int = 0, reason: Reason | None = None
    ) -> None:
        """Send one finished attempt."""
        why = None if reason is None else reason.value
        self._outbox.put(wire.encode("attempt", o=outcome, s=seconds, b=size, r=why))


class Worker:
    """One worker process's downloads, from its start to its stop."""

    def __init__(self, index: int, config: Config, channel: socket.socket, outbox: Outbox) -> None:
        self._index = index
        self._config = config
        self._channel = channel
        self._outbox = outbox
        self._log = get_logger()
        self._order = EventOrder()
        self._stop = asyncio.Event()
        self._parent = os.getppid()
        self._cookies: CookieJar | None = None
        self._fetcher: Fetcher | None = None
        self._pool: DownloadPool | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._syncs: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        """Download until told to stop; returns the exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        reader = threading.Thread(target=self._read, args=(loop,), name="inbox", daemon=True)
        reader.start()
        inbox = asyncio.create_task(self._handle_inbox(), name="inbox")
        try:
            try:
                self._cookies = await asyncio.to_thread(load_cookies, self._config)
                db = await Db.open(self._config.manifest_location)
            except (ConfigError, ManifestError, OSError) as exc:
                self._fatal(f"startup: {exc}")
                return 1
            try:
                return await self._run(db)
            finally:
                await db.close()
        finally:
            for task in [inbox, *self._syncs]:
                task.cancel()

    async def _run(self, db: Db) -> int:
        config = self._config
        try:
            fetcher = Fetcher(HttpSettings.of(config), self._cookies)
        except SetupError as exc:
            self._fatal(f"startup: {exc}")
            return 1
        self._fetcher = fetcher
        owner = owner_of(config.node_name, self._index)
        try:  # the claims of the worker this one replaces, if it died
            recovered = await db.run(db.manifest.reset_active, db.manifest.clock(), owner)
        except ManifestError as exc:
            self._fatal(f"startup: {exc}")
            await fetcher.aclose()
            return 1
        if recovered:
            self._log.info("items_recovered", count=recovered, reason="left_active_by_crash")
        pool = DownloadPool(
            config,
            db,
            fetcher,
            self._log,
            _Attempts(self._outbox),
            order=self._order,
            owner=owner,
            on_links_due=lambda: self._outbox.put(wire.encode("links")),
        )
        self._pool = pool
        if self._config is not config:  # reloaded while this worker started
            pool.reconfigure(self._config)
        tasks = [
            asyncio.create_task(pool.run(), name="pool"),
            asyncio.create_task(pool.keep_claims(), name="leases"),
            asyncio.create_task(self._report(pool), name="report"),
        ]
        code = await self._until_stopped(tasks)
        db.manifest.interrupt.set()  # what is left to write waits for no database outage
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError, ManifestError):
            await asyncio.wait_for(pool.shutdown(), POOL_STOP_WAIT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fetcher.aclose(), CLOSE_WAIT)
        self._send_report(pool)  # the final counts
        return code

    async def _until_stopped(self, tasks: list[asyncio.Task[None]]) -> int:
        crashed = await until_stopped(self._stop, tasks)
        if crashed:
            name, error = crashed[0]
            self._fatal(f"{name} crashed: {error!r}")
        return 1 if crashed else 0

    def _fatal(self, error: str) -> None:
        self._outbox.put(wire.encode("fatal", error=error[:500]))

    # --- the channel ---------------------------------------------------------------------

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """The inbox thread: messages from the main process, handed to the loop; at the end
        of the channel (the main process is gone), a stop."""
        lines = wire.Lines()
        with contextlib.suppress(RuntimeError):  # the loop is closed: this worker is done
            try:
                while data := self._channel.recv(READ_BYTES):
                    for line in lines.feed(data):
                        message = wire.decode(line)
                        if message is not None:
                            loop.call_soon_threadsafe(self._received, message)
            except (OSError, wire.ChannelError):
                pass
            loop.call_soon_threadsafe(self._stop.set)

    def _received(self, message: dict[str, Any]) -> None:
        if message["t"] == "stop":
            self._stop.set()
        else:
            self._inbox.put_nowait(message)

    async def _handle_inbox(self) -> None:
        """The main process's messages, in order: a wake-up that follows a new config finds
        it applied."""
        while True:
            message = await self._inbox.get()
            kind = message["t"]
            if kind == "wake":
                if self._pool is not None:
                    self._pool.wake()
            elif kind == "config":
                await self._reconfigure(config_from_document(message["config"]))
            elif kind == "pause":  # another worker found the node's media folder refusing files
                if self._pool is not None:
                    await self._pool.pause(str(message["reason"]), str(message["detail"]))
            elif kind == "host_down" and self._pool is not None:
                retry_in_s = message["retry_in_s"]
                if isinstance(retry_in_s, int | float):
                    self._pool.host_down(str(message["host"]), retry_in_s, str(message["reason"]))
            elif kind == "host_up" and self._pool is not None:
                self._pool.host_up(str(message["host"]))
            elif kind == "sync":  # waits for events: the next messages do not wait for it
                task = asyncio.create_task(self._sync(message.get("n")))
                self._syncs.add(task)
                task.add_done_callback(self._syncs.discard)

    async def _sync(self, n: object) -> None:
        """`synced` once the events of every outcome written so far are in the outbox."""
        await self._order.through(self._order.last, ORDER_WAIT)
        self._outbox.put(wire.encode("synced", n=n))

    async def _reconfigure(self, config: Config) -> None:
        """Apply a reloaded config as the daemon does; its cookies file is read again."""
        try:
            self._cookies = await asyncio.to_thread(load_cookies, config)
        except ConfigError as exc:  # changed since the main process read it: keep ours
            self._log.error(
                "config_reload_failed", reason="invalid", keys=["cookies_file"], error=str(exc)
            )
        self._config = config
        if self._fetcher is not None:
            self._fetcher.reconfigure(HttpSettings.of(config))
            self._fetcher.set_cookies(self._cookies)
        if self._pool is not None:
            self._pool.reconfigure(config)

    async def _report(self, pool: DownloadPool) -> None:
        """Every REPORT_PERIOD: the snapshot to the main process; and a stop if it is gone."""
        while True:
            self._send_report(pool)
            if os.getppid() != self._parent:
                self._stop.set()
                return
            await asyncio.sleep(REPORT_PERIOD)

    def _send_report(self, pool: DownloadPool) -> None:
        self._outbox.put(wire.encode("report", snapshot=snapshot_document(pool.snapshot())))


def main(channel: socket.socket, index: int, config: dict[str, object]) -> None:
    """A worker process's entry point: worker `index` (1-based) of the node, running with
    `config` (a config.config_document, its shares applied), talking over `channel`."""
    for ignored in (signal.SIGINT, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    channel.setblocking(True)
    outbox = Outbox(channel)

    def forward(event: MutableMapping[str, Any]) -> None:
        event["worker"] = index
        outbox.put(wire.log_line(log.encode_event(event)))

    log.configure_forward(forward)
    code = 1
    try:
        worker = Worker(index, config_from_document(config), channel, outbox)
        code = asyncio.run(worker.run())
    finally:
        outbox.close(FLUSH_WAIT)
    sys.exit(code)
