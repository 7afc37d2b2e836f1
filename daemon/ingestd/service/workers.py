"""The main process's side of `workers = N`: it starts the download worker processes
(service.worker), gives each its config and wake-ups, writes their events as its own (each
with its `worker` field), adds up their reports and attempts, and starts again, after a backoff
(policy.workers), a worker that died or hung; on a stop it tells them, waits, and kills what is
left.

Workers are started with multiprocessing's "spawn": a fresh interpreter that imports what it
needs, as the merge child does (service.merger). Forking this process would copy an event loop
and threads (the manifest's, the watcher's, the metrics server's) that the child could not use
safely; spawn shares nothing but the channel it is given. Each worker's channel is one end of
its own socket pair: when this process dies, however it dies, the worker reads the end of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from ingestd import log
from ingestd.config import Config, config_document
from ingestd.log import Logger, encode_event
from ingestd.metrics import Metrics
from ingestd.ops.live import Snapshot, combine, counters_of, parse_snapshot
from ingestd.policy.hosts import Hinted
from ingestd.policy.retry import Reason
from ingestd.policy.workers import (
    CONDITION_EVENTS,
    CONDITIONS,
    Conditions,
    deaths_after,
    host_shares,
    restart_delay,
    shares,
)
from ingestd.service import wire, worker

REAP_WAIT = 2.0  # seconds for a worker that exited (or was killed) to be reaped
DRAIN_WAIT = 1.0  # for the last lines of a worker that exited, before its exit is logged
SILENT_MAX = 30.0  # a worker that sent no report for this long is hung: killed, started again
SILENT_CHECK = 5.0  # how often that is looked at
READY_WAIT = 10.0  # at most this long, at start, for every worker to be ready


def worker_config(config: Config, index: int, count: int) -> Config:
    """Worker `index`'s (1-based) config: its shares of `concurrency` and
    `per_host_concurrency`."""
    return dataclasses.replace(
        config,
        concurrency=shares(config.concurrency, count)[index - 1],
        per_host_concurrency=host_shares(config.per_host_concurrency, count)[index - 1],
    )


class _Channel(asyncio.Protocol):
    """The main process's end of one worker's socket pair."""

    def __init__(
        self,
        on_message: Callable[[dict[str, Any]], None],
        admit: Callable[[bytes], bytes | None],
    ) -> None:
        """`on_message`: each message but `log`, whose events are written here as `admit`
        gives them back (None: not at all)."""
        self._on_message = on_message
        self._admit = admit
        self._lines = wire.Lines()
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.syncs: dict[int, asyncio.Future[None]] = {}  # sent, not answered yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            lines = self._lines.feed(data)
        except wire.ChannelError:
            self.close()  # the worker reads the end of its channel, and stops
            return
        events: list[bytes] = []
        for line in lines:
            event = wire.logged(line)
            if event is not None:
                admitted = self._admit(event)
                if admitted is not None:
                    events.append(admitted)
                continue
            if events:  # written before what follows them (a `synced` says they are)
                log.emit_encoded(events)
                events = []
            message = wire.decode(line)
            if message is not None:
                self._on_message(message)
        if events:
            log.emit_encoded(events)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in [self.closed, *self.syncs.values()]:
            if not future.done():
                future.set_result(None)

    def send(self, message: bytes) -> None:
        """Queue `message` (never waits: a worker that is not reading only grows the queue by
        the few messages this process sends)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(message)

    @property
    def idle(self) -> bool:
        """Nothing waits to be written to the worker."""
        return self._transport is None or self._transport.get_write_buffer_size() == 0

    def close(self) -> None:
        """Close this end."""
        if self._transport is not None:
            self._transport.close()


@dataclass
class _Slot:
    """Worker `index`: its process while one runs, its last report, its restarts."""

    index: int
    process: BaseProcess | None = None
    pid: int | None = None
    channel: _Channel | None = None
    started: float = 0.0  # monotonic
    heard: float = 0.0  # its last report (monotonic)
    snapshot: Snapshot = field(default_factory=Snapshot)
    error: str | None = None  # its last words (a `fatal` message), or why it was killed
    deaths: int = 0  # in a row, for the backoff
    restart: asyncio.TimerHandle | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # it reported, or exited
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class Workers:
    """The node's download worker processes."""

    def __init__(
        self,
        config: Config,
        count: int,
        logger: Logger,
        metrics: Metrics,
        on_links_due: Callable[[], None],
    ) -> None:
        """`on_links_due`: told when a worker's completion left links to make."""
        self._config = config
        self._log = logger
        self._metrics = metrics
        self._on_links_due = on_links_due
        self._slots = [_Slot(k) for k in range(1, count + 1)]
        self._context = multiprocessing.get_context("spawn")
        self._ended = Snapshot()  # the counters of the workers that exited
        self._conditions = Conditions()
        self._hinted = Hinted()  # over the workers' events: see _admit
        self._syncs = itertools.count(1)
        self._stopping = False
        self._stop_asked = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._crashed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def count(self) -> int:
        """How many workers the node runs."""
        return len(self._slots)

    async def start(self) -> None:
        """Start every worker (see ready)."""
        for slot in self._slots:
            await self._spawn(slot)

    async def ready(self) -> None:
        """Wait until every worker started is ready (its manifest open, its predecessor's
        claims let go, its pool running: it has reported) or has exited; at most READY_WAIT
        seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_WAIT):
                for slot in self._slots:
                    if slot.process is not None:
                        await slot.settled.wait()

    async def run(self) -> None:
        """Until cancelled: kill a worker that stopped reporting (it is started again as one
        that died). Raises what broke the supervision itself."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._crashed), SILENT_CHECK)
            if self._crashed.done():
                self._crashed.result()
            now = time.monotonic()
            for slot in self._slots:
                process = slot.process
                if process is None or slot.exited.is_set() or slot.error is not None:
                    continue
                if now - slot.heard > SILENT_MAX:
                    slot.error = f"no report for {SILENT_MAX:g} s: killed"
                    process.kill()

    def snapshot(self) -> Snapshot:
        """The node's downloads: the workers' last reports, and the counts of those that
        ended."""
        return combine([self._ended, *(slot.snapshot for slot in self._slots)])

    def wake(self) -> None:
        """An extract was merged: every worker looks at the queue now (a worker that has not
        read the last wake-up yet needs no second one)."""
        for channel in self._channels():
            if channel.idle:
                channel.send(wire.encode("wake"))

    def reconfigure(self, config: Config) -> None:
        """Give every worker the reloaded config (with its shares); restarts get it too."""
        self._config = config
        self._hinted.clear()  # as each worker's pool does: allowed_hosts may have changed
        for slot in self._slots:
            if slot.channel is not None:
                slot.channel.send(self._config_message(slot))

    async def sync(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, until every worker has logged the outcomes it had
        written when this was called (or has exited): what an extract_completed must follow."""
        waits = []
        for channel in self._channels():
            n = next(self._syncs)
            future = asyncio.get_running_loop().create_future()
            channel.syncs[n] = future
            channel.send(wire.encode("sync", n=n))
            waits.append(future)
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    def request_stop(self) -> None:
        """Tell every worker to stop (each hands its claims back); start none again."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_asked = time.monotonic()
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
        for channel in self._channels():
            channel.send(wire.encode("stop"))

    async def stop(self, wait: float) -> None:
        """Stop every worker: told to, then given until `wait` seconds after they were told;
        SIGKILL for those still running then (their items are let go by the next start)."""
        self.request_stop()
        running = [s for s in self._slots if s.process is not None and not s.exited.is_set()]
        waits = [asyncio.ensure_future(s.exited.wait()) for s in running]
        try:
            if waits:
                left = self._stop_asked + wait - time.monotonic()
                _, late = await asyncio.wait(waits, timeout=max(left, 0.0))
                for slot in running:
                    if not slot.exited.is_set() and slot.process is not None:
                        slot.error = f"still running {wait:g} s after the stop: killed"
                        slot.process.kill()
                if late:
                    await asyncio.wait(late, timeout=REAP_WAIT + DRAIN_WAIT)
        finally:
            for task in [*waits, *self._tasks]:
                task.cancel()

    # --- one worker ----------------------------------------------------------------------

    def _channels(self) -> list[_Channel]:
        return [
            s.channel
            for s in self._slots
            if s.channel is not None and not s.channel.closed.done() and not s.exited.is_set()
        ]

    def _config_message(self, slot: _Slot) -> bytes:
        config = worker_config(self._config, slot.index, self.count)
        return wire.encode("config", config=config_document(config))

    async def _spawn(self, slot: _Slot) -> None:
        """Start worker `slot.index`; a failure to start counts as a death."""
        slot.restart = None
        if self._stopping:
            return
        config = worker_config(self._config, slot.index, self.count)
        ours, theirs = socket.socketpair()
        process = self._context.Process(
            target=worker.main,
            args=(theirs, slot.index, config_document(config)),
            name=f"ingestd-worker-{slot.index}",
            daemon=True,
        )
        try:
            await asyncio.to_thread(process.start)  # spawn forks and pickles: not on the loop
        except OSError as exc:
            ours.close()
            slot.error = f"could not start: {exc}"
            slot.pid = None
            self._ended_badly(slot, None, 0.0)
            return
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        channel = _Channel(
            lambda message: self._received(slot, message), lambda event: self._admit(slot, event)
        )
        await loop.create_unix_connection(lambda: channel, sock=ours)
        slot.process, slot.pid, slot.channel, slot.error = process, process.pid, channel, None
        slot.started = slot.heard = time.monotonic()
        slot.snapshot = Snapshot()
        slot.settled, slot.exited = asyncio.Event(), asyncio.Event()
        exited = loop.create_future()
        loop.add_reader(process.sentinel, _settle, exited)
        self._track(self._watch(slot, process, channel, exited))
        self._log.info(
            "worker_started", worker=slot.index, pid=process.pid, concurrency=config.concurrency
        )
        if self._stopping:  # asked while it started
            channel.send(wire.encode("stop"))

    async def _watch(
        self, slot: _Slot, process: BaseProcess, channel: _Channel, exited: asyncio.Future[None]
    ) -> None:
        """Until the worker exits: then its last lines, its exit logged, its restart set."""
        try:
            await exited
        finally:
            asyncio.get_running_loop().remove_reader(process.sentinel)
        await asyncio.to_thread(process.join, REAP_WAIT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(channel.closed), DRAIN_WAIT)
        channel.close()
        lived = time.monotonic() - slot.started
        self._ended = combine([self._ended, counters_of(slot.snapshot)])
        slot.snapshot = Snapshot()
        code = process.exitcode
        with contextlib.suppress(ValueError):
            process.close()
        slot.process = slot.channel = None
        self._conditions.forget(slot.index)
        if self._stopping and code == 0:
            self._log.info("worker_exited", **_exit_fields(slot, code), restart_in_s=None)
        else:
            self._ended_badly(slot, code, lived)
        slot.settled.set()
        slot.exited.set()

    def _ended_badly(self, slot: _Slot, code: int | None, lived: float) -> None:
        """Log a worker's exit (or failed start) and, unless stopping, start it again later."""
        delay = None
        if not self._stopping:
            slot.deaths = deaths_after(slot.deaths, lived)
            delay = restart_delay(slot.deaths)
            slot.restart = asyncio.get_running_loop().call_later(
                delay, lambda: self._track(self._spawn(slot))
            )
        self._log.warning("worker_exited", **_exit_fields(slot, code), restart_in_s=delay)

    def _track(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and not self._crashed.done():
            self._crashed.set_exception(error)

    def admit_own(self, event: str) -> bool:
        """Whether the main process's own `event` (a condition it met too, such as a manifest
        outage) is the node's news: it counts as one more reporter, numbered 0."""
        return self._conditions.admit(0, event, {})

    def _admit(self, slot: _Slot, event: bytes) -> bytes | None:
        """A worker's event as the node writes it, or None: a host down, a pause or an outage
        is logged once for the node, not once per worker, and so is a hint about a host (the
        event stays, without it). A pause, a host down or back that the node logs is passed on
        to the other workers."""
        hinted = _HINT_MARK in event
        if not hinted and not any(mark in event for mark in _CONDITION_MARKS):
            return event
        fields = wire.decode_event(event)
        name = fields.get("event")
        if isinstance(name, str) and not self._conditions.admit(slot.index, name, fields):
            return None
        if isinstance(name, str) and name in _TOLD:
            self._tell_others(slot, name, fields)
        hint, host = fields.get("hint"), fields.get("host")
        if not hinted or not isinstance(hint, str) or not isinstance(host, str):
            return event
        if self._hinted.first(host, hint):
            return event
        del fields["hint"]
        return encode_event(fields)

    def _tell_others(self, slot: _Slot, event: str, fields: dict[str, Any]) -> None:
        """Pass the node's news `event` (worker `slot.index`'s) on to the other workers: the
        media folder and the hosts are all of theirs. Those told of a condition are in it, as
        if they had found it: the first of them through it may say it is over."""
        kind, keys = _TOLD[event]
        message = wire.encode(kind, **{key: fields.get(key) for key in keys})
        for other in self._slots:
            if other is not slot and other.channel is not None:
                other.channel.send(message)
                if event in CONDITIONS:
                    self._conditions.admit(other.index, event, fields)

    def _received(self, slot: _Slot, message: dict[str, Any]) -> None:
        """One message from worker `slot.index`."""
        kind = message["t"]
        try:
            if kind == "attempt":
                self._metrics.attempt(message["o"], message["s"], message["b"], _reason(message))
            elif kind == "report":
                snapshot = parse_snapshot(message["snapshot"])
                if snapshot is not None:
                    slot.snapshot, slot.heard = snapshot, time.monotonic()
                    slot.settled.set()
            elif kind == "links":
                self._on_links_due()
            elif kind == "synced":
                channel = slot.channel
                future = None if channel is None else channel.syncs.pop(message["n"], None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif kind == "fatal":
                slot.error = str(message["error"])
        except (KeyError, TypeError, ValueError):
            pass  # not a message this version sends: ignored


# The node's news each worker hears of (as the message kind, with the fields it carries).
_TOLD: dict[str, tuple[str, tuple[str, ...]]] = {
    "downloads_paused": ("pause", ("reason", "detail")),
    "host_unavailable": ("host_down", ("host", "retry_in_s", "reason")),
    "host_recovered": ("host_up", ("host",)),
}
_CONDITION_MARKS = tuple(f'"{name}"'.encode() for name in sorted(CONDITION_EVENTS))
_HINT_MARK = b'"hint":'


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reason(message: dict[str, Any]) -> Reason | None:
    try:
        return None if message["r"] is None else Reason(message["r"])
    except ValueError:
        return None


def _exit_fields(slot: _Slot, code: int | None) -> dict[str, Any]:
    """worker_exited's fields: the worker, its pid, how it ended and why (when known)."""
    killed_by = None
    if code is not None and code < 0:
        try:
            killed_by = signal.Signals(-code).name
        except ValueError:
            killed_by = str(-code)
    return {
        "worker": slot.index,
        "pid": slot.pid,
        "exit_code": None if code is None or code < 0 else code,
        "signal": killed_by,
        "error": slot.error,
    }
