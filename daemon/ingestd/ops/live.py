"""The daemon's live state, for `status --watch` and the summary line of `run` on a terminal.

The daemon rewrites a small JSON document, `<state_dir>/live.json`, once a second while
anything changes (and every LIVE_HEARTBEAT seconds regardless); it holds what the manifest
cannot say: the transfers in flight and their bytes so far, the bytes received by the process
(a counter that running transfers advance), and whether downloads are paused and why. Readers
never lock anything, so `status` cannot get in a daemon's way. Everything here but the two
small file functions is pure: the arithmetic of rates, ETA and the bar is tested without a
clock or a file.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ingestd.store.base import NodeReport

LIVE_FILE = "live.json"
LIVE_VERSION = 1
LIVE_PERIOD = 1.0  # seconds between rewrites while something changes
LIVE_HEARTBEAT = 10.0  # rewritten at least this often, even idle
STALE_AFTER = 3 * LIVE_HEARTBEAT  # a live pid whose document is older is not responding
MAX_LIVE_BYTES = 1024 * 1024  # a reader reads no more than this
MAX_HOSTS_SHOWN = 20  # hosts down, listed; the count is always whole
RATE_WINDOW = 5.0  # seconds the byte rate is averaged over

DaemonState = Literal["running", "paused", "stopped", "not_responding", "unknown"]


@dataclass(frozen=True, slots=True)
class InFlight:
    """A transfer running now: `received` bytes this attempt, from `offset`, of `total`."""

    aweme_id: str
    topic: str
    offset: int
    received: int
    total: int | None
    seconds: float


@dataclass(frozen=True, slots=True)
class Live:
    """One snapshot of a running daemon."""

    pid: int
    written_at: float  # wall clock
    clock: float  # the daemon's monotonic clock: rates are taken on it
    state: Literal["running", "paused", "stopped"]
    received: int  # bytes received by this process, running transfers included
    transfers: tuple[InFlight, ...] = ()
    pause_reason: str | None = None
    pause_detail: str | None = None
    paused_s: float | None = None
    hosts_down: tuple[str, ...] = ()
    hosts_down_count: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    version: int = field(default=LIVE_VERSION)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The downloads of one process at one moment, or of a node (combine): what live.json, the
    `progress` event, STATUS= and the gauges are made of. The counters count from its start."""

    in_flight: int = 0
    received: int = 0  # bytes, running transfers included
    completed: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    bytes: int = 0  # of the files completed
    transfers: tuple[InFlight, ...] = ()
    pause: tuple[str, str, float] | None = None  # reason, detail, seconds paused
    hosts_down: tuple[str, ...] = ()


def node_report(
    node: str,
    snapshot: Snapshot,
    rate: float,
    now: float,
    instance: str,
    *,
    stopped: bool = False,
) -> NodeReport:
    """What node `node` (its daemon run `instance`) says of itself at `now` (see NodeReport),
    from its snapshot and the bytes a second it received lately."""
    if stopped:
        return NodeReport(node, now, "stopped", 0, 0, 0.0, instance)
    return NodeReport(
        node,
        now,
        "running" if snapshot.pause is None else "paused",
        snapshot.in_flight,
        sum(t.offset + t.received for t in snapshot.transfers),
        rate,
        instance,
    )


def combine(snapshots: Iterable[Snapshot]) -> Snapshot:
    """A node's snapshot from its workers' (and from the counters of those that ended): counts
    and transfers added up, the longest pause, each host down once."""
    parts = list(snapshots)
    pauses = [s.pause for s in parts if s.pause is not None]
    return Snapshot(
        in_flight=sum(s.in_flight for s in parts),
        received=sum(s.received for s in parts),
        completed=sum(s.completed for s in parts),
        retried=sum(s.retried for s in parts),
        failed=sum(s.failed for s in parts),
        expired=sum(s.expired for s in parts),
        bytes=sum(s.bytes for s in parts),
        transfers=tuple(t for s in parts for t in s.transfers),
        pause=max(pauses, key=lambda p: p[2]) if pauses else None,
        hosts_down=tuple(dict.fromkeys(h for s in parts for h in s.hosts_down)),
    )


def counters_of(snapshot: Snapshot) -> Snapshot:
    """Only the counters of a snapshot: what a process that ended leaves to its node's."""
    return Snapshot(
        received=snapshot.received,
        completed=snapshot.completed,
        retried=snapshot.retried,
        failed=snapshot.failed,
        expired=snapshot.expired,
        bytes=snapshot.bytes,
    )


def snapshot_document(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot as JSON values (a transfer as the list of its fields), as a worker sends it."""
    doc = asdict(snapshot)
    doc["transfers"] = [
        [t.aweme_id, t.topic, t.offset, t.received, t.total, t.seconds] for t in snapshot.transfers
    ]
    return doc


def parse_snapshot(doc: object) -> Snapshot | None:
    """A snapshot_document read back; None when it is not one."""
    if not isinstance(doc, dict):
        return None
    try:
        values = dict(doc)
        transfers = tuple(InFlight(*t) for t in values.pop("transfers"))
        pause = values.pop("pause")
        hosts = tuple(str(h) for h in values.pop("hosts_down"))
        return Snapshot(
            **{k: int(v) for k, v in values.items()},
            transfers=transfers,
            pause=None if pause is None else (str(pause[0]), str(pause[1]), float(pause[2])),
            hosts_down=hosts,
        )
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def live_document(live: Live) -> dict[str, Any]:
    """The JSON shape of live.json."""
    doc = asdict(live)
    doc["hosts_down"] = list(live.hosts_down[:MAX_HOSTS_SHOWN])
    doc["transfers"] = [asdict(t) for t in live.transfers]
    return doc


def parse_live(data: bytes) -> Live | None:
    """A document read back; None when it is not one (torn, foreign, another version)."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != LIVE_VERSION:
            return None
        transfers = tuple(InFlight(**t) for t in doc.pop("transfers"))
        hosts = tuple(str(h) for h in doc.pop("hosts_down"))
        return Live(**doc, transfers=transfers, hosts_down=hosts)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def write_live(path: Path, live: Live) -> None:
    """Replace live.json atomically (no fsync: it describes this moment, not history)."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps(live_document(live), separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_live(path: Path) -> Live | None:
    """live.json as the daemon last wrote it, or None (absent, unreadable, not one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    with contextlib.closing(os.fdopen(fd, "rb")) as file:
        data = file.read(MAX_LIVE_BYTES + 1)
    return None if len(data) > MAX_LIVE_BYTES else parse_live(data)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    return pid > 0 and os.path.exists(f"/proc/{pid}")


def daemon_state(live: Live | None, now: float, alive: bool) -> tuple[DaemonState, str]:
    """What the daemon is doing, and a few words on why, from its last document."""
    if live is None:
        return "unknown", "it has not written live.json (not started, or older than this view)"
    if live.state == "stopped" or not alive:
        return "stopped", f"pid {live.pid}"
    age = now - live.written_at
    if age > STALE_AFTER:
        return "not_responding", f"pid {live.pid}, no update for {age:.0f} s"
    if live.state == "paused":
        return "paused", f"{live.pause_reason}: {live.pause_detail}"
    if live.hosts_down_count:
        shown = ", ".join(live.hosts_down[:3])
        more = f" and {live.hosts_down_count - 3} more" if live.hosts_down_count > 3 else ""
        return "running", f"hosts down: {shown}{more}"
    return "running", f"pid {live.pid}"


class RateMeter:
    """Bytes a second over the last RATE_WINDOW seconds of (clock, received) samples: in-flight
    bytes count as they arrive, so a long transfer shows its rate before it completes."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)

    def add(self, clock: float, received: int) -> None:
        """One sample; a counter that went back (a new daemon) starts the window over."""
        samples = self._samples
        if samples and (received < samples[-1][1] or clock < samples[-1][0]):
            samples.clear()
        if samples and clock == samples[-1][0]:
            return  # the same document read twice
        samples.append((clock, received))
        while len(samples) > 2 and clock - samples[1][0] >= self._window:
            samples.popleft()

    def rate(self) -> float | None:
        """Bytes a second, or None before two samples."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def outstanding(items: Mapping[str, int]) -> int:
    """Items that may still complete: pending and active."""
    return items.get("pending", 0) + items.get("active", 0)


def work_fraction(items: Mapping[str, int]) -> float:
    """Done out of the work that can still complete (expired and failed items cannot)."""
    done = items.get("done", 0)
    total = done + outstanding(items)
    return done / total if total else 1.0


def eta_seconds(
    items: Mapping[str, int], bytes_done: int, transfers: Sequence[InFlight], rate: float | None
) -> float | None:
    """Seconds until the outstanding items are done at `rate`, sizing the ones not started by
    the average done file (or the in-flight ones' known sizes); None when unknown."""
    remaining = outstanding(items)
    if remaining == 0:
        return 0.0
    if not rate or rate <= 0:
        return None
    done = items.get("done", 0)
    known = [t.total for t in transfers if t.total]
    if done:
        average = bytes_done / done
    elif known:
        average = sum(known) / len(known)
    else:
        return None
    arrived = sum(t.offset + t.received for t in transfers)
    return max(remaining * average - arrived, 0.0) / rate


def human_bytes(n: float) -> str:
    """1023 B, 1.5 KiB, 12.3 MiB..."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """`-` (unknown), 0.4 s, 12 s, 3m05s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def human_rate(bytes_per_s: float | None) -> str:
    """MB/s (10^6 bytes a second), as download tools print it."""
    return "- MB/s" if bytes_per_s is None else f"{bytes_per_s / 1e6:.2f} MB/s"


def summary_line(items: Mapping[str, int], live: Live, rate: float | None, bytes_done: int) -> str:
    """The one line `run` keeps under the scrolling events on a terminal."""
    done = items.get("done", 0)
    total = done + outstanding(items)
    eta = eta_seconds(items, bytes_done, live.transfers, rate)
    state = "" if live.state == "running" else f"PAUSED ({live.pause_reason})  "
    failed = items.get("failed", 0)
    return (
        f"{state}[{len(live.transfers)} in flight]  done {done}/{total}"
        f"  {human_rate(rate)}  ETA {human_duration(eta)}"
        + (f"  failed {failed}" if failed else "")
    )
