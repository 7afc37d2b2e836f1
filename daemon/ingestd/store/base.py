"""What every manifest backend shares: the values it takes and gives, its errors, and
`ManifestStore`, the protocol whose contract `tests/contract` checks on each backend.

Times are epoch seconds, in the manifest's clock (`clock`): the callers read every time they
pass from it, so that the hosts sharing one database agree on them whatever their own clocks
say (see policy.lease). An item is `pending`, `active` (in flight, its attempt counted),
`done`, `expired` or `failed` (policy.merge.State); a pending item may also be `held`: claimed
ahead of a free slot, not in flight, no attempt counted. Its topics keep the order they came in,
the first naming the folder its file lives in.

Owners and leases. A claim may name its `owner` (a worker: `node/1`, `node/2`... for the workers
of node `node`) and a `lease_until`. An item records both while it is claimed (active or held),
and neither otherwise: every way out of flight clears them. The empty owner is no owner (stored
as none). An owner renews its leases (renew_leases); claims whose lease ran out are handed back by
reclaim_lapsed, to be claimed by others; outcomes written with an owner apply only to items still
claimed by that owner, so that a stale worker never clobbers its successor's claim. An item
claimed without a lease is never reclaimed that way, only by reset_active.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from ingestd.policy.merge import State

if TYPE_CHECKING:  # the CLI reads the manifest without loading the extract parser
    from ingestd.policy.extract import Record

EXPIRED_IDS_KEPT = 10  # ids named by a merge's summary of the items it found expired
T = TypeVar("T")


class ManifestError(Exception):
    """The manifest cannot be opened or used (corrupt, wrong version, disk trouble)."""


class WrongLibrary(ManifestError):
    """The manifest belongs to another data dir than the one it is opened for."""

    def __init__(self, recorded: str, wanted: str) -> None:
        self.recorded = recorded
        self.wanted = wanted
        super().__init__(f"the manifest belongs to the data dir {recorded}, not {wanted}")


class MergeInterrupted(ManifestError):
    """A merge stopped early on request. What was merged stays; merging again is idempotent."""


class ForeignManifest(ManifestError):
    """A store `ingestd migrate` must not replace: it holds a manifest that is not an untouched
    copy of the one being migrated (another library's, its own, or one written since)."""


@dataclass(frozen=True, slots=True)
class Item:
    """An item claimed for download."""

    aweme_id: str
    url: str
    topics: tuple[str | None, ...]
    attempts: int
    validator: str | None
    durable: int = 0  # bytes of the .part known to be fsynced
    total: int | None = None  # the file size the server declared for the .part


@dataclass(frozen=True, slots=True)
class ExpiredAtMerge:
    """Items a merge found with a signed URL already past its expiry: stored `expired`
    (`url_expired`, no attempt), never queued."""

    count: int = 0
    earliest: int | None = None  # epoch seconds
    latest: int | None = None
    aweme_ids: tuple[str, ...] = ()  # the first EXPIRED_IDS_KEPT


@dataclass(frozen=True, slots=True)
class MergeCounts:
    """What merging an extract did."""

    records: int
    new: int
    updated: int
    expired: ExpiredAtMerge = ExpiredAtMerge()


@dataclass(frozen=True, slots=True)
class SettledExtract:
    """A merged extract whose items all reached a final state, not reported yet."""

    id: int
    path: str  # the file name, as recorded by record_extract
    sha256: str
    items: int
    done: int
    expired: int
    failed: int
    bytes: int
    merged_at: float


@dataclass(frozen=True, slots=True)
class ExtractProgress:
    """Where one merged extract stands: its items, by what they wait for or how they ended.
    The counts are None for an extract merged before the manifest followed its items."""

    id: int
    path: str
    sha256: str
    items: int | None
    outstanding: int | None  # pending or active
    done: int | None
    expired: int | None
    failed: int | None
    bytes: int | None  # of the done ones
    merged_at: float | None  # the merge was recorded: no more items come
    completed_at: float | None  # reported (close_extracts): the counts stop here


class Completion(NamedTuple):
    """A finished download, for `complete_many`. With `owner`, written only while the item is
    still claimed by that owner (see complete_many); None: no such check."""

    aweme_id: str
    size: int
    sha256: str
    path: str  # relative to media_assets
    linked_topics: Sequence[str | None]
    now: float
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class LapsedClaim:
    """A claim whose lease ran out, handed back to the queue by `reclaim_lapsed`."""

    aweme_id: str
    owner: str  # who had it ("" for no owner)
    was_active: bool  # started: its attempt stays spent; held: none was counted


@dataclass(frozen=True, slots=True)
class OwnerLoad:
    """What one owner has in flight (see in_flight_by_owner)."""

    active: int
    held: int


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What a node last said of itself (report_node): `status` shows the fleet from these."""

    node: str
    seen_at: float  # epoch seconds, in the manifest's clock
    state: str  # running, paused or stopped
    in_flight: int  # transfers running
    bytes_in_flight: int  # of their files, received so far (a resumed part's included)
    rate: float  # bytes a second received, over the node's last report period
    instance: str = ""  # the daemon run that wrote it (see report_node); "": written before them


# A node reports every 5 s (service/daemon.py, STATUS_PERIOD); one not heard of for this long,
# and not stopped, is taken for not responding (dead, cut off), and its name is free.
NODE_SILENT_S = 30.0
# A node silent this long (renamed, retired) is dropped from the reports: they stay few.
NODE_FORGET_S = 7 * 24 * 3600.0
# NodeReport's order.
NODE_COLUMNS = "name, seen_at, state, in_flight, bytes_in_flight, rate, instance"


def report_statement(mark: str) -> str:
    """The upsert of a node report (report_node), with `mark` for each parameter (SQLite's
    `?`, psycopg's `%s`): the values of NODE_COLUMNS, then the holder's last run (`previous`)
    and NODE_SILENT_S. It replaces the node's last report only when the name is free for it:
    the same daemon run, this node's last one, a run that stopped or went silent NODE_SILENT_S
    before, or one written before instances."""
    values = ", ".join([mark] * len(NODE_COLUMNS.split(", ")))
    return (
        f"INSERT INTO nodes ({NODE_COLUMNS}) VALUES ({values}) ON CONFLICT (name) DO UPDATE SET"
        " seen_at = excluded.seen_at, state = excluded.state, in_flight = excluded.in_flight,"
        " bytes_in_flight = excluded.bytes_in_flight, rate = excluded.rate,"
        " instance = excluded.instance"
        f" WHERE nodes.instance IN (excluded.instance, {mark}, '') OR nodes.state = 'stopped'"
        f" OR nodes.seen_at < excluded.seen_at - {mark}"
    )


def node_row(report: NodeReport) -> tuple[str, float, str, int, int, float, str]:
    """`report` as a row of NODE_COLUMNS."""
    r = report
    return (r.node, r.seen_at, r.state, r.in_flight, r.bytes_in_flight, r.rate, r.instance)


@dataclass(frozen=True, slots=True)
class Relink:
    """A done item whose file must also appear under further topic folders."""

    aweme_id: str
    path: str
    topics: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class ItemSummary:
    """One line of `ingestd list` (with `full`, one element of `list --json`)."""

    aweme_id: str
    topics: tuple[str | None, ...]
    state: str
    attempts: int
    reason: str | None
    status: int | None
    bytes: int | None
    updated_at: float
    sha256: str | None = None  # these three only when listed `full`
    path: str | None = None  # relative to media_assets, when done
    record: str | None = None  # the raw record's JSON text


@dataclass(frozen=True, slots=True)
class Counts:
    """Totals for `ingestd status`."""

    items: dict[str, int]
    extracts: dict[str, int]
    bytes_done: int


@dataclass(frozen=True, slots=True)
class DoneItem:
    """A done item as `ingestd verify` checks it: where its file is and what it must hold."""

    aweme_id: str
    path: str | None  # relative to media_assets
    topics: tuple[str | None, ...]
    bytes: int | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class ItemPlace:
    """An item's state and places, for `ingestd verify` to tell whose a file is."""

    aweme_id: str
    state: str
    path: str | None
    topics: tuple[str | None, ...]


class StoredItem(NamedTuple):
    """An item with every field both backends keep, as `ingestd migrate` carries it from one to
    the other. No claim (held, owner, lease): a copy carries items as a restart finds them."""

    aweme_id: str
    url: str
    topics: tuple[str | None, ...]
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_status: int | None
    bytes: int | None
    sha256: str | None
    path: str | None
    validator: str | None
    durable_bytes: int
    total_bytes: int | None
    relink: bool
    sources: tuple[str, ...]
    record: str
    extract_ids: tuple[int, ...]  # ids of StoredProgress
    created_at: float
    updated_at: float
    completed_at: float | None
    node: str | None  # the node holding a done item's file (None: the library's own)


class StoredExtract(NamedTuple):
    """How one version of an extract was handled, as record_extract recorded it."""

    id: int
    path: str
    sha256: str
    size: int
    status: str
    reason: str | None
    records: int
    new: int
    updated: int
    unusable: int
    processed_at: float


class StoredProgress(NamedTuple):
    """One merged extract's progress (see ExtractProgress), as kept."""

    id: int
    path: str
    sha256: str
    started_at: float
    merged_at: float | None
    completed_at: float | None
    items: int | None  # these six None: merged before the manifest followed its items
    outstanding: int | None
    done: int | None
    expired: int | None
    failed: int | None
    bytes: int | None


@dataclass(frozen=True, slots=True)
class ManifestCopy:
    """A whole manifest, read to be written into another backend (`ingestd migrate`)."""

    extracts: list[StoredExtract]
    progress: list[StoredProgress]
    items: Iterator[list[StoredItem]]  # a chunk at a time, streamed: read once


def library_path(data_dir: str | Path) -> str:
    """A data dir as recorded and compared: absolute, symlinks resolved."""
    return os.path.realpath(data_dir)


def same_dir(a: str | Path, b: str | Path) -> bool:
    """True when both name the same folder once resolved."""
    return library_path(a) == library_path(b)


META_DATA_DIR = "data_dir"  # the meta key of the library's data dir (one node, or none named)


def data_dir_key(node: str | None) -> str:
    """The meta key a data dir is recorded under: the library's, or with `node` that node's,
    when several nodes share one manifest, each publishing into a data dir of its own."""
    return META_DATA_DIR if node is None else f"{META_DATA_DIR}/{node}"


def holder_node(owner: str | None) -> str | None:
    """The node an outcome's owner (`node` or `node/worker`) belongs to: its files are there."""
    return owner.split("/", 1)[0] if owner else None


@dataclass(frozen=True, slots=True)
class Binding:
    """What bind_data_dir does (plan_binding): the data dir recorded before, whether to write
    the node's record, and whether the node takes over the library's record (and its files)."""

    before: str | None
    write: bool
    adopt: bool


def plan_binding(
    data_dir: Path,
    node: str | None,
    own: str | None,
    library: str | None,
    nodes_bound: bool,
    replace: bool,
) -> Binding:
    """Bind `data_dir` for `node` (None: the library), given what is recorded: `own` (its
    record), `library` (the record made without a node) and whether any node has one. A
    node's first bind takes over the library's record when no node has one yet and it names
    the same folder: the manifest of a single daemon (or a migrated one) becomes that node's.
    Raises WrongLibrary when another folder is recorded, unless `replace`."""
    adopt = node is not None and own is None and library is not None and not nodes_bound
    adopt = adopt and same_dir(library or "", data_dir)
    recorded = library if adopt else own
    wanted = library_path(data_dir)
    if recorded is not None and not replace and not same_dir(recorded, data_dir):
        raise WrongLibrary(recorded, wanted)
    return Binding(recorded, adopt or recorded != wanted, adopt)


class ManifestStore(Protocol):
    """Every item and extract seen, and the download queue. Synchronous: one thread at a time
    uses a store. Each write is atomic; a write that fails raises ManifestError."""

    @property
    def interrupt(self) -> threading.Event:
        """Set from any thread when the store's owner stops: a running `merge` ends before its
        next transaction, and a call waits no longer for a database to come back."""
        ...

    def close(self) -> None:
        """Release the store; nothing written is lost."""
        ...

    def clock(self) -> float:
        """The manifest's time now, epoch seconds: this host's clock plus `clock_skew`. Never
        waits (it is read on the event loop)."""
        ...

    def clock_skew(self) -> float:
        """How far the manifest's clock is ahead of this host's, in seconds, as last measured:
        0 when they agree within policy.lease.CLOCK_TOLERANCE, and always for a manifest only
        one host uses."""
        ...

    # --- the library it belongs to -----------------------------------------------------------

    def recorded_data_dir(self, node: str | None = None) -> str | None:
        """The data dir recorded by `bind_data_dir` (for `node`), as recorded, or None: not
        recorded yet."""
        ...

    def check_data_dir(self, data_dir: Path, node: str | None = None) -> None:
        """Raise WrongLibrary if another data dir (compared resolved) is recorded (for `node`,
        or the library's record it would take over: see plan_binding). None recorded is
        accepted."""
        ...

    def bind_data_dir(
        self, data_dir: Path, *, replace: bool = False, node: str | None = None
    ) -> str | None:
        """Record `data_dir` (resolved) as the store's library, or with `node` as that node's
        (see plan_binding); returns what was recorded before. Another data dir already recorded
        raises WrongLibrary and changes nothing, unless `replace`; the same folder by another
        name is not another. A node taking over the library's record takes its done items'
        files too (their `node` becomes it)."""
        ...

    def watch_queue(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Until `stop` is set, call `on_change` whenever another process may have made items
        due (a merge, a retry, claims handed back or reclaimed), as far as the backend can
        tell: a store that cannot returns at once. Blocking, on a thread of its own."""
        ...

    # --- extracts ----------------------------------------------------------------------------

    def extract_status(self, path: str, sha256: str) -> str | None:
        """How this exact (path, content) was recorded last, or None if never."""
        ...

    def content_merged(self, sha256: str) -> bool:
        """True when some extract with this content was recorded `merged`, under any path."""
        ...

    def record_extract(
        self,
        path: str,
        sha256: str,
        size: int,
        status: str,
        now: float,
        reason: str | None = None,
        counts: tuple[int, int, int, int] = (0, 0, 0, 0),
    ) -> None:
        """Record how an extract version was handled: `merged`, `rejected` or `duplicate`,
        with the (records, new, updated, unusable) of its merge. Recording a version again
        replaces its status and reason. Recording it `merged` closes its list of items (those
        `merge` linked under its sha256; the first time, `merged_at` is `now`): from then on it
        may settle."""
        ...

    def extract_progress(self, path: str, sha256: str) -> ExtractProgress | None:
        """Where the extract version merged with this `sha256` stands, or None if it never was.
        Its items are counted once each, by their state now, until it is closed."""
        ...

    def settled_extracts(self) -> list[SettledExtract]:
        """Extracts merged with their sha256 and recorded `merged`, whose items are all final
        (done, expired or failed) and that were not closed, in the order their merges began."""
        ...

    def close_extracts(self, ids: Sequence[int], now: float) -> int:
        """Mark extracts reported: never settled again, their counts frozen (a later change of
        their items moves nothing). Returns how many were still open."""
        ...

    # --- merging -----------------------------------------------------------------------------

    def merge(
        self, records: Sequence[Record], source: str, now: float, sha256: str | None = None
    ) -> MergeCounts:
        """Merge records by the rules of policy.merge: a new id is stored pending (or expired
        with `url_expired`, no attempt spent, when its signed URL is past expiry at `now`); a
        known one gains the record's topic and `source`, a fresher URL, and a new `record`
        text; an expired or failed one given a fresher live URL is pending again with fresh
        attempts; a done one is never queued again, but a topic it gains makes it due for a
        relink. `new` counts the ids first seen, `updated` the known items that changed.

        With `sha256`, each item is linked to that extract version (see extract_progress); a
        version already closed links nothing. Idempotent; `interrupt` raises MergeInterrupted
        between two transactions, keeping what was merged."""
        ...

    # --- the download queue ------------------------------------------------------------------

    def reset_active(self, now: float, owner: str | None = None) -> int:
        """After a crash: active items are pending again (their attempt stays spent), held ones
        let go, owner and lease cleared. With `owner`, only the items claimed by `owner` or by
        one of its workers (an owner `owner + "/..."`: not `ownerX`), "" meaning those claimed
        with no owner; None: all. Returns how many were active."""
        ...

    def release(
        self, ids: Iterable[str], now: float, due: float = 0.0, *, owner: str | None = None
    ) -> list[str]:
        """Return claimed items (active or held) to pending, due no sooner than `due`, owner and
        lease cleared; an active one gets its attempt back. With `owner`, only those claimed by
        `owner` or by no one. Other ids are left alone. Returns the ids released, in the order
        given (once each): an id missing is no longer claimed by the caller."""
        ...

    def claim_due(self, now: float, limit: int) -> list[Item]:
        """`claim(now, limit, 0)`: up to `limit` due items made active."""
        ...

    def claim(
        self,
        now: float,
        start: int,
        hold: int,
        skip: Sequence[str] = (),
        mark: Sequence[str] = (),
        *,
        owner: str = "",
        lease_until: float | None = None,
    ) -> tuple[list[Item], list[Item]]:
        """In one transaction: the held items in `mark` are started (see start_held; with an
        `owner`, only those held by it or by no one); then of the pending items due at `now`,
        not held, whose URL's origin (policy.urls.origin_of) is not in `skip`, earliest due
        first, `start` are made active (attempt counted, as the returned Item says) and `hold`
        more are held. Every item claimed records `owner` and `lease_until` (None: no lease).
        No item is claimed twice."""
        ...

    def defer_origin(self, origin: str, until: float, now: float) -> int:
        """Make every pending, unheld item of `origin` due no sooner than `until`. Returns how
        many moved."""
        ...

    def start_held(
        self, ids: Sequence[str], now: float, *, owner: str | None = None
    ) -> list[int | None]:
        """Make held items active, counting their attempt; owner and lease stay. Per id, in
        order: its attempt number, or None when it is no longer held (released, reclaimed, or
        its outcome written) or, with `owner`, held by another owner than `owner` (no owner
        matches any)."""
        ...

    def renew_leases(self, owner: str, ids: Sequence[str], until: float) -> list[str]:
        """Make the lease of those of `ids` still claimed (active or held) by `owner` end at
        `until`. Returns those renewed, in the order given (once each): the others were lost
        (reclaimed, released, finished) or never were the owner's. "" renews only items
        claimed with no owner."""
        ...

    def reclaim_lapsed(self, now: float) -> list[LapsedClaim]:
        """Hand back every claim whose lease ended before `now`: the item is pending again,
        owner and lease cleared, due as it was; an active one keeps the attempt it was charged
        (as after a crash), a held one was charged none. Items with no lease are never
        reclaimed here; no other item is touched. Returns those reclaimed, in id order."""
        ...

    def in_flight_by_owner(self) -> dict[str, OwnerLoad]:
        """Items active and held, per owner ("" for no owner); only owners with some."""
        ...

    def report_node(self, report: NodeReport, previous: str = "") -> NodeReport | None:
        """Keep `report` as its node's latest, unless another daemon holds the node's name: its
        report is of another instance than `report`'s and `previous` (this node's last run),
        not stopped, and less than NODE_SILENT_S older than `report`. Returns None when kept,
        else that report. Drops the reports of nodes silent for NODE_FORGET_S before it."""
        ...

    def node_reports(self) -> list[NodeReport]:
        """Each node's latest report, by name; none from a manifest older than them."""
        ...

    def next_due(self, skip: Sequence[str] = ()) -> float | None:
        """The earliest due time among pending items not held and not of an origin in `skip`,
        or None when there is none."""
        ...

    def set_part(
        self,
        aweme_id: str,
        validator: str | None,
        total: int | None,
        durable: int,
        *,
        owner: str | None = None,
    ) -> bool:
        """Record an item's resume point: the validator its .part was written under, the size
        declared, the bytes durable, and the node holding the .part (holder_node of `owner`).
        Claims return it until it is done, requeued or dropped, and only to that node (or to
        any, when no node is recorded): another node's folder has no such part.
        With `owner`, written only while the item is in flight and claimed by that owner or
        by no one (a node that lost the claim never moves its successor's resume point).
        True when written."""
        ...

    def complete_many(self, done: Sequence[Completion]) -> list[bool | None]:
        """Mark items done (size, digest, path), in one transaction; a held one's attempt is
        counted, the resume point, last error, owner and lease cleared, and `node` (where the
        file is) set to the owner's node (holder_node; None without one). A completion with an
        `owner` is written only if its item is in flight (active or held) and claimed by that
        owner or by no one; one without is written whatever the item's state. One flag per
        item, in order: None when it was not written for that (never without an owner), else
        True when its topics now differ from `linked_topics` (it is due for a relink); False
        too for an unknown id without an owner."""
        ...

    def finish_failed(
        self,
        aweme_id: str,
        attempted_url: str,
        state: State,
        reason: str,
        status: int | None,
        next_attempt_at: float,
        refund_attempt: bool,
        now: float,
        *,
        owner: str | None = None,
    ) -> State | None:
        """Record a failed attempt of an item in flight (active, or held with its start not yet
        written: its attempt is counted then): `state`, due at `next_attempt_at`, `reason` and
        `status` kept, the attempt given back with `refund_attempt`, owner and lease cleared.
        If its URL changed since `attempted_url`, it is pending again, due now, with fresh
        attempts. An item not in flight is left alone; returns the state the item is in
        (`state` for an unknown one). With `owner`, an item not in flight, unknown, or claimed
        by another owner (no owner matches any) is left alone and None is returned."""
        ...

    # --- hard links for further topics -------------------------------------------------------

    def pending_relinks(
        self, limit: int, skip: Sequence[str] = (), after: str = "", *, node: str | None = None
    ) -> list[Relink]:
        """Done items due for a relink, in id order after `after`, but those in `skip`; with
        `node`, only those whose file that node holds."""
        ...

    def clear_relink(self, aweme_id: str, linked_topics: Sequence[str | None]) -> bool:
        """Mark an item's links made, unless its topics are no longer exactly `linked_topics`
        (more arrived meanwhile: it stays due). True when cleared."""
        ...

    # --- reporting ---------------------------------------------------------------------------

    def counts(self) -> Counts:
        """Items in each of the five states, extracts by recorded status (`merged`, `rejected`,
        `duplicate`), all keys present; bytes of the done items."""
        ...

    def list_items(
        self,
        state: str | None = None,
        topic: str | None = None,
        limit: int | None = 1000,
        *,
        full: bool = False,
        node: str | None = None,
    ) -> list[ItemSummary]:
        """`iter_items` as a list."""
        ...

    def iter_items(
        self,
        state: str | None = None,
        topic: str | None = None,
        limit: int | None = 1000,
        *,
        full: bool = False,
        node: str | None = None,
    ) -> Iterator[ItemSummary]:
        """Items in `state`, with `topic` among their topics (raw, or as its folder name,
        policy.naming.topic_folder), of `node` (claimed by it or one of its workers, or whose
        file or .part it holds), most recently updated first, at most `limit` (None: all);
        with `full`, their digest, path and raw record too. Streamed: memory stays bounded."""
        ...

    def count_items(
        self, state: str | None = None, topic: str | None = None, *, node: str | None = None
    ) -> int:
        """How many items `iter_items` would give without a limit."""
        ...

    def retry(
        self, states: Iterable[str], ids: Iterable[str], now: float
    ) -> tuple[list[str], dict[str, str]]:
        """Put items back to pending with fresh attempts, due now, last error cleared: all in
        `states`, then each of `ids` that is pending, expired or failed. Returns (requeued,
        refused), `ids` in the order given; refused says why: `unknown`, `done` or `active`."""
        ...

    def oldest_pending(self) -> float | None:
        """When the oldest item still pending was first merged, or None."""
        ...

    def record(self, aweme_id: str) -> str | None:
        """An item's raw record (the JSON text of the latest merge that had it), or None."""
        ...

    def item(self, aweme_id: str) -> dict[str, object] | None:
        """One item's fields (for the CLI and tests), or None. Keys include aweme_id, url, state,
        attempts, held (0 or 1), next_attempt_at, last_error, last_status, bytes, sha256, path,
        validator, total_bytes, durable_bytes, owner (None for none) and lease_until (neither
        read from a store not migrated yet), created_at, updated_at, completed_at; topics and
        sources as JSON array text."""
        ...

    # --- verify ------------------------------------------------------------------------------

    def done_items(
        self, after: str = "", limit: int = 500, *, node: str | None = None
    ) -> list[DoneItem]:
        """Done items in id order after `after`: page through them with the last id seen; with
        `node`, only those whose file that node holds."""
        ...

    def places(self, ids: Iterable[str]) -> dict[str, ItemPlace]:
        """State, path and topics of the known ones among `ids`, any number of them."""
        ...

    def while_done(self, aweme_id: str, sha256: str | None, action: Callable[[], T]) -> T | None:
        """Run `action` while the item is done with `sha256`, no change to it possible
        meanwhile; None (without running it) when it is not."""
        ...

    def requeue_done(
        self,
        aweme_id: str,
        sha256: str | None,
        reason: str,
        now: float,
        before: Callable[[], None],
    ) -> bool:
        """If the item is still done with `sha256`: run `before`, then make it pending, due now,
        with fresh attempts, `reason` as its last error, and no file, digest, size or resume
        point. Atomic with `before`: if it raises, nothing changes. False, nothing run, when
        the item is not done with `sha256`."""
        ...

    def drop_part(self, aweme_id: str, remove: Callable[[], None]) -> bool:
        """Run `remove` (of an orphan .part) unless the item is pending or active: no download
        of it can start meanwhile. Its resume point is forgotten. False, nothing run, when the
        item is pending or active; an unknown item is removed too."""
        ...


class DerivedMethods:
    """The methods of the contract that follow from others, written once for every backend."""

    def claim_due(self: ManifestStore, now: float, limit: int) -> list[Item]:
        """Atomically move up to `limit` due pending items to active and return them."""
        return self.claim(now, limit, 0)[0]

    def list_items(
        self: ManifestStore,
        state: str | None = None,
        topic: str | None = None,
        limit: int | None = 1000,
        *,
        full: bool = False,
        node: str | None = None,
    ) -> list[ItemSummary]:
        """Items for `ingestd list`, most recently updated first (see iter_items)."""
        return list(self.iter_items(state, topic, limit, full=full, node=node))
