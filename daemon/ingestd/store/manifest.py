"""The manifest: one SQLite file holding every item and every extract seen (store.postgres keeps
it in PostgreSQL). `Manifest` meets store.base.ManifestStore; the values it takes and gives are
defined there.

Durability: WAL with `synchronous=NORMAL`. A crash of the process loses nothing; a power loss can
lose the last few commits but never corrupts the database. Every such commit is re-derivable:
extracts stay in `raw/` and are merged again (merging is idempotent), and a video whose `done`
mark was lost is downloaded again and published by atomic rename. FULL would add an fsync to every
state change for no gain in what can be lost for good.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingestd.policy.merge import Known, State
from ingestd.policy.naming import topic_folder
from ingestd.policy.retry import Reason
from ingestd.policy.urls import origin_of
from ingestd.store.base import (
    EXPIRED_IDS_KEPT,
    META_DATA_DIR,
    NODE_COLUMNS,
    NODE_FORGET_S,
    NODE_SILENT_S,
    Completion,
    Counts,
    DerivedMethods,
    DoneItem,
    ExpiredAtMerge,
    ExtractProgress,
    Item,
    ItemPlace,
    ItemSummary,
    LapsedClaim,
    ManifestCopy,
    ManifestError,
    ManifestStore,
    MergeCounts,
    MergeInterrupted,
    NodeReport,
    OwnerLoad,
    Relink,
    SettledExtract,
    StoredExtract,
    StoredItem,
    StoredProgress,
    T,
    WrongLibrary,
    data_dir_key,
    holder_node,
    library_path,
    node_row,
    plan_binding,
    report_statement,
    same_dir,
)
from ingestd.store.merging import (
    ExpiredTally,
    chunks,
    link_counts,
    other_extracts,
    plan_chunk,
    relinked,
)

if TYPE_CHECKING:  # the CLI reads the manifest without loading the extract parser
    from ingestd.policy.extract import Record

__all__ = [  # with the values, so that importing them from here goes on working
    "EXPIRED_IDS_KEPT",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "Completion",
    "Counts",
    "DoneItem",
    "ExpiredAtMerge",
    "ExtractProgress",
    "Item",
    "ItemPlace",
    "ItemSummary",
    "Manifest",
    "ManifestError",
    "MergeCounts",
    "MergeInterrupted",
    "Relink",
    "SettledExtract",
    "WrongLibrary",
    "library_path",
    "same_dir",
]

SCHEMA_VERSION = 10
# The columns readers use are the same in all (in_flight_by_owner and item() do without owners
# before 7, and without `held` before 5; node_reports finds none before 9).
READABLE_VERSIONS = tuple(range(1, SCHEMA_VERSION + 1))
_CHUNK = 500  # ids per SELECT ... IN (...), records per write transaction, rows per export chunk
_URL_EXPIRED = Reason.URL_EXPIRED.value
# Passes over the items of origins that cannot take work (their URL's host:port, worked out
# per row scanned: only while some origin is busy or cooling, and only over due rows).
_SKIP = " AND url_origin(url) NOT IN (SELECT value FROM json_each(?))"
# A resume point (validator, durable bytes, total) as a claim returns it: only to the node
# holding the `.part` it describes (`node`; NULL: recorded before nodes, or with no owner).
# Another node's claim starts over: its own folder has no such part, or an older one.
# (`coalesce`, not `node IS NULL`: SQLite 3.40 reads IS NULL of this column wrong in RETURNING.)
_RESUME_POINT = (
    "CASE WHEN coalesce(node, '') IN ('', ?) THEN validator END,"
    " CASE WHEN coalesce(node, '') IN ('', ?) THEN durable_bytes ELSE 0 END,"
    " CASE WHEN coalesce(node, '') IN ('', ?) THEN total_bytes END"
)
# In flight: started, or held (claimed ahead). `held` implies `pending`.
_IN_FLIGHT = "(state = 'active' OR held = 1)"
# An outcome written with an owner applies to an item claimed by that owner, or by no one.
_OWNED = " AND (owner IS NULL OR owner = ?)"

# Every items column after the key, in order (both versions of the table share them).
_ITEM_FIELDS = """
        url             TEXT NOT NULL,
        topics          TEXT NOT NULL,            -- JSON array; the first is where the file lives
        state           TEXT NOT NULL CHECK (state IN
                            ('pending', 'active', 'done', 'expired', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,  -- epoch seconds
        last_error      TEXT,
        last_status     INTEGER,
        bytes           INTEGER,
        sha256          TEXT,
        path            TEXT,                     -- relative to media_assets, when done
        validator       TEXT,                     -- ETag or Last-Modified of the .part file
        relink          INTEGER NOT NULL DEFAULT 0,
        sources         TEXT NOT NULL,            -- JSON array of extract file names
        record          TEXT NOT NULL,            -- the raw record, for later pipeline stages
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        completed_at    REAL
"""

_MIGRATIONS: dict[int, str] = {
    1: f"""
    CREATE TABLE items (aweme_id TEXT PRIMARY KEY, {_ITEM_FIELDS}) WITHOUT ROWID;
    CREATE INDEX items_due ON items (state, next_attempt_at);
    CREATE INDEX items_relink ON items (relink) WHERE relink = 1;
    CREATE TABLE extracts (
        id           INTEGER PRIMARY KEY,
        path         TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        size         INTEGER NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('merged', 'rejected', 'duplicate')),
        reason       TEXT,
        records      INTEGER NOT NULL DEFAULT 0,
        new          INTEGER NOT NULL DEFAULT 0,
        updated      INTEGER NOT NULL DEFAULT 0,
        unusable     INTEGER NOT NULL DEFAULT 0,
        processed_at REAL NOT NULL,
        UNIQUE (path, sha256)
    );
    CREATE INDEX extracts_sha ON extracts (sha256, status);
    """,
    # Version 1 stored items WITHOUT ROWID. Rows there are ~1.3 KB (URL and raw record), and a
    # WITHOUT ROWID row over ~1 KB spills to an overflow page of its own: 4.7 KB per item on disk,
    # written twice (WAL, then database). A rowid table keeps them inline: 3.3x smaller, and a
    # 200,000-record merge takes 3.2 s instead of 5.5 s.
    # item_totals keeps the count and bytes of items per state, maintained by triggers in the
    # same transactions: `status` reads five rows instead of scanning every item (0.75 s on a
    # million mostly-done items before; a tiny read now, whatever the size).
    2: f"""
    CREATE TABLE items_v2 (aweme_id TEXT NOT NULL UNIQUE, {_ITEM_FIELDS});
    INSERT INTO items_v2 SELECT * FROM items;
    DROP TABLE items;
    ALTER TABLE items_v2 RENAME TO items;
    CREATE INDEX items_due ON items (state, next_attempt_at);
    CREATE INDEX items_relink ON items (relink) WHERE relink = 1;
    CREATE TABLE item_totals (
        state TEXT PRIMARY KEY,
        items INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    ) WITHOUT ROWID;
    WITH states (state) AS (
        VALUES ('pending'), ('active'), ('done'), ('expired'), ('failed')
    )
    INSERT INTO item_totals (state, items, bytes)
        SELECT states.state, count(items.state), coalesce(sum(items.bytes), 0)
        FROM states LEFT JOIN items ON items.state = states.state GROUP BY states.state;
    CREATE TRIGGER item_totals_insert AFTER INSERT ON items BEGIN
        UPDATE item_totals SET items = items + 1, bytes = bytes + coalesce(NEW.bytes, 0)
            WHERE state = NEW.state;
    END;
    CREATE TRIGGER item_totals_delete AFTER DELETE ON items BEGIN
        UPDATE item_totals SET items = items - 1, bytes = bytes - coalesce(OLD.bytes, 0)
            WHERE state = OLD.state;
    END;
    CREATE TRIGGER item_totals_update AFTER UPDATE OF state, bytes ON items
    WHEN OLD.state IS NOT NEW.state OR OLD.bytes IS NOT NEW.bytes BEGIN
        UPDATE item_totals SET items = items - 1, bytes = bytes - coalesce(OLD.bytes, 0)
            WHERE state = OLD.state;
        UPDATE item_totals SET items = items + 1, bytes = bytes + coalesce(NEW.bytes, 0)
            WHERE state = NEW.state;
    END;
    """,
    # A resume continues from the bytes of the .part that were fsynced (durable_bytes), never
    # from its size: after a power cut the tail may hold anything. total_bytes is the file size
    # the server declared, which every later range reply must repeat.
    3: """
    ALTER TABLE items ADD COLUMN durable_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE items ADD COLUMN total_bytes INTEGER;
    """,
    # The manifest records the library (absolute data dir) it belongs to, so that it is never
    # used for another one by mistake. `meta` holds such facts about the manifest as a whole.
    4: """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # Items claimed ahead of a free slot are `held`: still pending (not in flight, no attempt
    # counted), but no other claim takes them. `active` means in flight.
    5: """
    ALTER TABLE items ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    """,
    # An extract is complete when every item it brought is final (done, expired, failed):
    # extract_progress keeps, per merged extract, its items and how many are outstanding
    # (pending or active), done, expired and failed, and the bytes of the done ones. Each item
    # lists in `extract_ids` the open extracts that brought it (a few bytes in a row that a
    # merge writes anyway: in a prototype, a link table added 10 % to a 200,000-record merge,
    # and a trigger on it 40 %). The merge counts the items it links; from then on the trigger
    # below moves every open extract of an item with each change of its state, whatever path
    # makes it, in the same transaction. `merged_at` is set when the merge is recorded (until
    # then more items may come), `completed_at` when extract_completed is logged: its counts
    # stop there, and completed extracts are dropped from the lists of the items merges touch.
    # Extracts merged before this version linked no items: they are recorded as completed,
    # without counts and without an event.
    6: """
    ALTER TABLE items ADD COLUMN extract_ids TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE extract_progress (
        id           INTEGER PRIMARY KEY,
        path         TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        started_at   REAL NOT NULL,            -- the merge began
        merged_at    REAL,                     -- the merge was recorded: no more items come
        completed_at REAL,                     -- extract_completed was logged
        items        INTEGER DEFAULT 0,        -- distinct items linked; NULL: before schema 6
        outstanding  INTEGER DEFAULT 0,        -- of which pending or active
        done         INTEGER DEFAULT 0,
        expired      INTEGER DEFAULT 0,
        failed       INTEGER DEFAULT 0,
        bytes        INTEGER DEFAULT 0,        -- of the done ones
        UNIQUE (path, sha256)
    );
    CREATE INDEX extract_progress_open ON extract_progress (outstanding)
        WHERE completed_at IS NULL;
    INSERT INTO extract_progress (path, sha256, started_at, merged_at, completed_at, items,
            outstanding, done, expired, failed, bytes)
        SELECT path, sha256, processed_at, processed_at, processed_at, NULL, NULL, NULL, NULL,
            NULL, NULL
        FROM extracts WHERE status = 'merged';
    CREATE TRIGGER extract_progress_update AFTER UPDATE OF state, bytes ON items
    WHEN OLD.extract_ids != '[]' AND (
        (OLD.state IS NOT NEW.state
            AND (OLD.state IN ('done', 'expired', 'failed')
                OR NEW.state IN ('done', 'expired', 'failed')))
        OR (NEW.state = 'done' AND OLD.bytes IS NOT NEW.bytes))
    BEGIN
        UPDATE extract_progress SET
            outstanding = outstanding + (NEW.state IN ('pending', 'active'))
                - (OLD.state IN ('pending', 'active')),
            done = done + (NEW.state = 'done') - (OLD.state = 'done'),
            expired = expired + (NEW.state = 'expired') - (OLD.state = 'expired'),
            failed = failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
            bytes = bytes + CASE NEW.state WHEN 'done' THEN coalesce(NEW.bytes, 0) ELSE 0 END
                - CASE OLD.state WHEN 'done' THEN coalesce(OLD.bytes, 0) ELSE 0 END
        WHERE id IN (SELECT value FROM json_each(OLD.extract_ids)) AND completed_at IS NULL;
    END;
    CREATE TRIGGER extract_progress_delete AFTER DELETE ON items
    WHEN OLD.extract_ids != '[]' BEGIN
        UPDATE extract_progress SET
            items = items - 1,
            outstanding = outstanding - (OLD.state IN ('pending', 'active')),
            done = done - (OLD.state = 'done'),
            expired = expired - (OLD.state = 'expired'),
            failed = failed - (OLD.state = 'failed'),
            bytes = bytes - CASE OLD.state WHEN 'done' THEN coalesce(OLD.bytes, 0) ELSE 0 END
        WHERE id IN (SELECT value FROM json_each(OLD.extract_ids)) AND completed_at IS NULL;
    END;
    """,
    # Claims with owners and leases (several workers and hosts on one queue): an item records
    # who claimed it and until when, while in flight only (every way out of it clears them).
    # reclaim_lapsed finds lapsed active items through items_due (state, next_attempt_at);
    # items_held indexes the held ones, a few per worker, for it, for reset_active and for
    # in_flight_by_owner, which would otherwise read every pending item to find them. The cost
    # on the hot path: one entry added when an item is held and removed when it is started,
    # in that small index; nothing for an item claimed straight to active.
    7: """
    ALTER TABLE items ADD COLUMN owner TEXT;         -- NULL: not claimed, or claimed by no one
    ALTER TABLE items ADD COLUMN lease_until REAL;   -- epoch seconds; NULL: no lease
    CREATE INDEX items_held ON items (lease_until) WHERE held = 1;
    """,
    # Which node holds a done item's file (several nodes publishing into data dirs of their
    # own): the node of the owner that completed it; NULL: the library's own (no node named).
    # Each node's data dir is recorded in meta as `data_dir/<node>` (see plan_binding).
    8: """
    ALTER TABLE items ADD COLUMN node TEXT;
    """,
    # What each node last said of itself (report_node), for `status` across the fleet.
    9: """
    CREATE TABLE nodes (
        name            TEXT PRIMARY KEY,
        seen_at         REAL NOT NULL,
        state           TEXT NOT NULL,
        in_flight       INTEGER NOT NULL,
        bytes_in_flight INTEGER NOT NULL,
        rate            REAL NOT NULL
    );
    """,
    # Which daemon run wrote each report: a node's name is held by one running daemon.
    10: """
    ALTER TABLE nodes ADD COLUMN instance TEXT NOT NULL DEFAULT '';
    """,
}
_REPORT = report_statement("?")
# An item as a restart finds it (reset_active): an active one is pending again, the attempt it
# was charged spent; a held one is let go (held, owner and lease are not read). Its updated_at
# stays: exporting twice gives the very same rows.
_EXPORT_ITEMS = """
SELECT aweme_id, url, topics, CASE state WHEN 'active' THEN 'pending' ELSE state END, attempts,
    next_attempt_at, last_error, last_status, bytes, sha256, path, validator, durable_bytes,
    total_bytes, relink, sources, record, extract_ids, created_at, updated_at, completed_at,
    node
FROM items
"""


@functools.lru_cache(maxsize=4096)
def _json_array(values: tuple[str | None, ...]) -> str:
    # A merge encodes the same few topic and source lists over and over.
    return json.dumps(values)


@functools.lru_cache(maxsize=4096)
def _id_array(values: tuple[int, ...]) -> str:
    return json.dumps(values)


@functools.lru_cache(maxsize=4096)
def _json_tuple(text: str) -> tuple[Any, ...]:
    # An export decodes the same few topic, source and extract lists over and over.
    return tuple(json.loads(text))


class Manifest(DerivedMethods):
    """The SQLite manifest store. Use from one thread at a time (the daemon gives it its own)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.create_function("topic_folder", 1, topic_folder, deterministic=True)
        conn.create_function("url_origin", 1, origin_of, deterministic=True)
        # Set from another thread to end a long merge between two transactions (shutdown).
        self.interrupt = threading.Event()

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Manifest:
        """Open (creating and migrating unless `readonly`) the manifest at `path`."""
        try:
            if readonly:
                conn = _open_readonly(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                _migrate(conn)
            else:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version not in READABLE_VERSIONS:
                    raise ManifestError(
                        f"{path}: schema version {version}, expected one of {READABLE_VERSIONS}"
                    )
        except sqlite3.Error as exc:
            raise ManifestError(f"{path}: {exc}") from exc
        return cls(conn)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self._conn.close()

    def clock(self) -> float:
        """This host's clock: every process that opens one SQLite file runs on this host."""
        return time.time()

    def clock_skew(self) -> float:
        """0: see `clock`."""
        return 0.0

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ManifestError(str(exc)) from exc

    @contextmanager
    def export(self) -> Iterator[ManifestCopy]:
        """The whole manifest, to be written into another backend (`ingestd migrate`), read in
        one read transaction: the other reads of this store inside the block (counts...) see
        the same state, whatever `retry` writes meanwhile. Items are read `_CHUNK` at a time, as
        a restart finds them (see _EXPORT_ITEMS)."""
        try:
            self._conn.execute("BEGIN")
            items = self._export_items()
            try:
                extracts = [
                    StoredExtract(*r)
                    for r in self._conn.execute(
                        "SELECT id, path, sha256, size, status, reason, records, new, updated,"
                        " unusable, processed_at FROM extracts ORDER BY id"
                    )
                ]
                progress = [
                    StoredProgress(*r)
                    for r in self._conn.execute(
                        "SELECT id, path, sha256, started_at, merged_at, completed_at, items,"
                        " outstanding, done, expired, failed, bytes FROM extract_progress"
                        " ORDER BY id"
                    )
                ]
                yield ManifestCopy(extracts, progress, items)
            finally:
                items.close()
                self._conn.execute("COMMIT")  # it only read
        except sqlite3.Error as exc:
            raise ManifestError(str(exc)) from exc

    def _export_items(self) -> Generator[list[StoredItem], None, None]:
        cur = self._conn.execute(_EXPORT_ITEMS)
        try:
            while rows := cur.fetchmany(_CHUNK):
                # StoredItem's fields, in order: the JSON lists decoded, relink a bool.
                yield [
                    StoredItem._make(
                        (
                            *r[:2],
                            _json_tuple(r[2]),
                            *r[3:14],
                            bool(r[14]),
                            _json_tuple(r[15]),
                            r[16],
                            _json_tuple(r[17]),
                            *r[18:],
                        )
                    )
                    for r in rows
                ]
        finally:
            cur.close()

    # --- the library it belongs to ---------------------------------------------------------

    def recorded_data_dir(self, node: str | None = None) -> str | None:
        """The data dir recorded by `bind_data_dir` (for `node`), or None: not recorded yet (or
        a schema before 4, read without migrating it)."""
        if self._version < 4:
            return None
        try:
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = ?", (data_dir_key(node),)
            ).fetchone()
        except sqlite3.Error as exc:
            raise ManifestError(str(exc)) from exc
        return None if row is None else str(row[0])

    def check_data_dir(self, data_dir: Path, node: str | None = None) -> None:
        """Raise WrongLibrary if another data dir is recorded (see plan_binding)."""
        if self._version >= 4:
            plan_binding(data_dir, node, *self._bindings(self._conn, node), replace=False)

    def bind_data_dir(
        self, data_dir: Path, *, replace: bool = False, node: str | None = None
    ) -> str | None:
        """Record `data_dir` (resolved) as this manifest's library, or `node`'s (see
        plan_binding); returns what was recorded before."""
        with self._write() as db:
            plan = plan_binding(data_dir, node, *self._bindings(db, node), replace=replace)
            if plan.write:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (data_dir_key(node), library_path(data_dir)),
                )
            if plan.adopt:
                db.execute("DELETE FROM meta WHERE key = ?", (META_DATA_DIR,))
                db.execute(
                    "UPDATE items SET node = ? WHERE state = 'done' AND node IS NULL", (node,)
                )
        return plan.before

    @staticmethod
    def _bindings(db: sqlite3.Connection, node: str | None) -> tuple[str | None, str | None, bool]:
        """The data dirs recorded: `node`'s own, the library's, and whether any node has one."""
        rows = dict(
            db.execute(
                "SELECT key, value FROM meta WHERE key = ? OR key LIKE 'data\\_dir/%' ESCAPE '\\'",
                (META_DATA_DIR,),
            ).fetchall()
        )
        nodes = [key for key in rows if key != META_DATA_DIR]
        return rows.get(data_dir_key(node)), rows.get(META_DATA_DIR), bool(nodes)

    def watch_queue(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Returns at once: SQLite tells no other process of a change (the processes on one
        file are one node's, and its main process wakes its workers itself)."""

    # --- extracts -------------------------------------------------------------------------

    def extract_status(self, path: str, sha256: str) -> str | None:
        """How this exact (path, content) was handled before, or None if never seen."""
        row = self._conn.execute(
            "SELECT status FROM extracts WHERE path = ? AND sha256 = ?", (path, sha256)
        ).fetchone()
        return None if row is None else str(row[0])

    def content_merged(self, sha256: str) -> bool:
        """True when some extract with this content was merged already."""
        row = self._conn.execute(
            "SELECT 1 FROM extracts WHERE sha256 = ? AND status = 'merged' LIMIT 1", (sha256,)
        ).fetchone()
        return row is not None

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
        """Remember how an extract version was handled. Recording it `merged` also closes its
        list of items (merge with its sha256): from now on it may complete."""
        with self._write() as db:
            db.execute(
                "INSERT INTO extracts (path, sha256, size, status, reason, records, new, updated,"
                " unusable, processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (path, sha256) DO UPDATE SET status = excluded.status,"
                " reason = excluded.reason, processed_at = excluded.processed_at",
                (path, sha256, size, status, reason, *counts, now),
            )
            if status == "merged":
                db.execute(
                    "UPDATE extract_progress SET merged_at = ?"
                    " WHERE path = ? AND sha256 = ? AND merged_at IS NULL",
                    (now, path, sha256),
                )

    def settled_extracts(self) -> list[SettledExtract]:
        """Merged extracts whose items are all final (done, expired or failed) and that were
        not reported yet, oldest first. A small read: only open extracts are indexed."""
        try:
            rows = self._conn.execute(
                "SELECT id, path, sha256, items, done, expired, failed, bytes, merged_at"
                " FROM extract_progress WHERE completed_at IS NULL AND outstanding = 0"
                " AND merged_at IS NOT NULL ORDER BY id"
            ).fetchall()
        except sqlite3.Error as exc:
            raise ManifestError(str(exc)) from exc
        return [SettledExtract(*row) for row in rows]

    def extract_progress(self, path: str, sha256: str) -> ExtractProgress | None:
        """Where the extract version merged with `sha256` stands (for tests), or None."""
        try:
            row = self._conn.execute(
                "SELECT id, path, sha256, items, outstanding, done, expired, failed, bytes,"
                " merged_at, completed_at FROM extract_progress WHERE path = ? AND sha256 = ?",
                (path, sha256),
            ).fetchone()
        except sqlite3.Error as exc:
            raise ManifestError(str(exc)) from exc
        return None if row is None else ExtractProgress(*row)

    def close_extracts(self, ids: Sequence[int], now: float) -> int:
        """Mark extracts reported (extract_completed was logged): never reported again, and
        their counts stay as reported. Returns how many were still open."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE extract_progress SET completed_at = ?"
                " WHERE id IN (SELECT value FROM json_each(?)) AND completed_at IS NULL",
                (now, json.dumps(list(ids))),
            )
            return cur.rowcount

    # --- merging --------------------------------------------------------------------------

    def merge(
        self, records: Sequence[Record], source: str, now: float, sha256: str | None = None
    ) -> MergeCounts:
        """Merge records into the manifest, in short transactions of a few hundred records.
        With `sha256` (of the extract's bytes), each item is linked to the extract, which
        completes once they are all final (see record_extract and settled_extracts). A new
        item, or an expired or failed one given a fresher URL, whose URL is already past its
        expiry is stored `expired` at once (ExpiredAtMerge): never queued, no attempt spent."""
        extract_id = None
        if sha256 is not None:
            with self._write() as db:
                extract_id = self._open_extract(db, source, sha256, now)
        expired = ExpiredTally()
        new = updated = 0
        for chunk in chunks(records, _CHUNK):
            if self.interrupt.is_set():
                raise MergeInterrupted(f"stopped after {new + updated} of {len(records)} records")
            with self._write() as db:
                n, u = self._merge_chunk(db, chunk, source, now, extract_id, expired)
            new += n
            updated += u
        return MergeCounts(len(records), new, updated, expired.summary())

    @staticmethod
    def _open_extract(db: sqlite3.Connection, path: str, sha256: str, now: float) -> int | None:
        """The extract_progress row of this version of the extract, made on its first merge
        (a merge that was interrupted goes on with its row). None when it completed already."""
        db.execute(
            "INSERT INTO extract_progress (path, sha256, started_at) VALUES (?, ?, ?)"
            " ON CONFLICT (path, sha256) DO NOTHING",
            (path, sha256, now),
        )
        row = db.execute(
            "SELECT id, completed_at FROM extract_progress WHERE path = ? AND sha256 = ?",
            (path, sha256),
        ).fetchone()
        return None if row[1] is not None else int(row[0])

    def _merge_chunk(
        self,
        db: sqlite3.Connection,
        chunk: Sequence[Record],
        source: str,
        now: float,
        extract_id: int | None,
        tally: ExpiredTally,
    ) -> tuple[int, int]:
        ids = list({r.aweme_id for r in chunk})
        marks = ",".join("?" * len(ids))
        known: dict[str, Known] = {}
        links: dict[str, tuple[int, ...]] = {}  # the extracts each known item is linked to
        sizes: dict[str, int | None] = {}
        for aweme_id, url, topics, sources, st, extract_ids, size in db.execute(
            "SELECT aweme_id, url, topics, sources, state, extract_ids, bytes FROM items"
            f" WHERE aweme_id IN ({marks})",
            ids,
        ):
            known[aweme_id] = Known(
                url, tuple(json.loads(topics)), tuple(json.loads(sources)), State(st)
            )
            links[aweme_id] = () if extract_ids == "[]" else tuple(json.loads(extract_ids))
            sizes[aweme_id] = size
        plan = plan_chunk(chunk, known, source, now)
        known, raw, inserted, dirty = plan.known, plan.raw, plan.inserted, plan.dirty
        reset, relink, expired = plan.reset, plan.relink, plan.expired
        fresh, lists = self._link(db, extract_id, dirty, links)
        # A new item is pending, or expired when its URL was dead already (and then says so).
        # Written by state, with the constants in the statement: a 200,000-record merge binds
        # no more per row than before extracts were followed.
        linked = "[]" if extract_id is None else _id_array((extract_id,))
        alive, dead = plan.new_rows()
        for rows, values in ((alive, "'pending', NULL"), (dead, f"'expired', '{_URL_EXPIRED}'")):
            if not rows:
                continue
            db.executemany(
                "INSERT INTO items (aweme_id, url, topics, sources, record, created_at,"
                " updated_at, state, last_error, extract_ids)"
                f" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, {values}, '{linked}')",
                [
                    (
                        i,
                        known[i].url,
                        _json_array(known[i].topics),
                        _json_array(known[i].sources),
                        raw[i],
                        now,
                    )
                    for i in rows
                ],
            )
        db.executemany(
            "UPDATE items SET url = ?, topics = ?, sources = ?, state = ?, record = ?,"
            " updated_at = ?, extract_ids = ?,"
            " attempts = CASE WHEN ? THEN 0 ELSE attempts END,"
            " next_attempt_at = CASE WHEN ? THEN 0 ELSE next_attempt_at END,"
            " last_error = CASE WHEN ? THEN ? ELSE last_error END,"
            " last_status = CASE WHEN ? THEN NULL ELSE last_status END,"
            " relink = CASE WHEN ? THEN 1 ELSE relink END"
            " WHERE aweme_id = ?",
            [
                (
                    known[i].url,
                    _json_array(known[i].topics),
                    _json_array(known[i].sources),
                    known[i].state.value,
                    raw[i],
                    now,
                    lists[i],
                    i in reset,
                    i in reset,
                    i in reset,
                    _URL_EXPIRED if i in expired else None,
                    i in expired,
                    i in relink,
                    i,
                )
                for i in dirty
            ],
        )
        if extract_id is not None and (inserted or fresh):
            linked_known = [(known[i].state, sizes.get(i)) for i in fresh]
            self._count_links(db, extract_id, len(alive), len(dead), linked_known)
        for aweme_id, expiry in expired.items():
            tally.add(aweme_id, expiry)
        return len(inserted), len(plan.updated)

    @staticmethod
    def _link(
        db: sqlite3.Connection,
        extract_id: int | None,
        dirty: set[str],
        links: dict[str, tuple[int, ...]],
    ) -> tuple[list[str], dict[str, str]]:
        """The `extract_ids` of each known item of a chunk, with this extract added, and the
        items that were not linked to it yet. Extracts that completed are dropped from the
        lists (see merging.relinked)."""
        if extract_id is None:
            return [], {i: _id_array(links[i]) for i in dirty}
        open_ids: set[int] = set()
        if seen := other_extracts(extract_id, dirty, links):
            open_ids.update(
                row[0]
                for row in db.execute(
                    "SELECT id FROM extract_progress WHERE id IN (SELECT value FROM json_each(?))"
                    " AND completed_at IS NULL",
                    (json.dumps(sorted(seen)),),
                )
            )
        fresh, lists = relinked(extract_id, dirty, links, open_ids)
        return fresh, {i: _id_array(kept) for i, kept in lists.items()}

    @staticmethod
    def _count_links(
        db: sqlite3.Connection,
        extract_id: int,
        pending: int,
        expired: int,
        items: list[tuple[State, int | None]],
    ) -> None:
        """Add the items just linked to the extract to its counts, each by the state it has
        now (the trigger extract_progress_update moves them from there on): `pending` and
        `expired` new ones, and known `items` (state, bytes)."""
        db.execute(
            "UPDATE extract_progress SET items = items + ?, outstanding = outstanding + ?,"
            " done = done + ?, expired = expired + ?, failed = failed + ?, bytes = bytes + ?"
            " WHERE id = ? AND completed_at IS NULL",
            (*link_counts(pending, expired, items), extract_id),
        )

    # --- the download queue ---------------------------------------------------------------

    def reset_active(self, now: float, owner: str | None = None) -> int:
        """Put items left `active` (by a crash) back to pending, and let go of those that were
        only claimed ahead: all of them, or with `owner` those of `owner` and of its workers
        (`owner/...`). Returns how many were active: a crash costs those their attempt. Held
        items are found through items_held, active ones through items_due."""
        where, args = _owned_by(owner)
        with self._write() as db:
            db.execute(
                "UPDATE items SET held = 0, owner = NULL, lease_until = NULL"
                f" WHERE held = 1{where}",
                args,
            )
            cur = db.execute(
                "UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL,"
                f" updated_at = ? WHERE state = 'active'{where}",
                (now, *args),
            )
            return cur.rowcount

    def release(
        self, ids: Iterable[str], now: float, due: float = 0.0, *, owner: str | None = None
    ) -> list[str]:
        """Return claimed items (running or held) to pending, due at `due`, without using up an
        attempt (a clean shutdown, a pause, a host cooling down); with `owner`, only those it
        (or no one) claimed. Returns the ids released, in the order given."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        with self._write() as db:
            released = {
                r[0]
                for r in db.execute(
                    "UPDATE items SET held = 0, owner = NULL, lease_until = NULL,"
                    " next_attempt_at = max(next_attempt_at, ?), attempts = CASE state"
                    " WHEN 'active' THEN max(attempts - 1, 0) ELSE attempts END,"
                    " state = 'pending', updated_at = ?"
                    f" WHERE aweme_id IN (SELECT value FROM json_each(?)) AND {_IN_FLIGHT}"
                    f"{_OWNED if owner is not None else ''} RETURNING aweme_id",
                    (due, now, json.dumps(wanted), *(() if owner is None else (owner,))),
                )
            }
        return [i for i in wanted if i in released]

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
        """In one transaction, the next due items: `start` of them made active (an attempt
        counted), then `hold` more claimed ahead. Held items stay `pending` (they are not in
        flight) with no attempt counted, until `start_held`; no other claim takes them. Items
        of the origins (host:port) in `skip` are passed over: they cannot take work now. The
        held items in `mark` have started: they are made active first (see start_held). Every
        item claimed records `owner` (none for "") and `lease_until`, in the same statement."""
        if start <= 0 and hold <= 0 and not mark:
            return [], []
        with self._write() as db:
            self._start_held(db, mark, now, owner or None)
            lease = (owner or None, lease_until)
            change = "state = 'active', attempts = attempts + 1"
            started = self._claim(db, now, change, start, skip, lease)
            held = self._claim(db, now, "held = 1", hold, skip, lease)
        return started, held

    @staticmethod
    def _claim(
        db: sqlite3.Connection,
        now: float,
        change: str,
        limit: int,
        skip: Sequence[str],
        lease: tuple[str | None, float | None],
    ) -> list[Item]:
        """Apply `change` to up to `limit` due items, recording `lease` (owner, lease_until). An
        item's resume point is returned only to the node whose `.part` it describes."""
        if limit <= 0:
            return []
        rows = db.execute(
            f"UPDATE items SET {change}, owner = ?, lease_until = ?, updated_at = ?"
            " WHERE aweme_id IN (SELECT aweme_id FROM items WHERE state = 'pending'"
            f" AND held = 0 AND next_attempt_at <= ?{_SKIP if skip else ''}"
            " ORDER BY next_attempt_at LIMIT ?)"
            f" RETURNING aweme_id, url, topics, attempts, {_RESUME_POINT}",
            (
                *lease,
                now,
                now,
                *((json.dumps(list(skip)),) if skip else ()),
                limit,
                *(holder_node(lease[0]),) * 3,
            ),
        ).fetchall()
        return [Item(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4], r[5], r[6]) for r in rows]

    def defer_origin(self, origin: str, until: float, now: float) -> int:
        """Make every pending item of `origin` (host:port) due no sooner than `until`: its host
        is cooling down, and claims should find other hosts' items. One pass over the pending
        items (a cooldown starts or grows only every so often). Returns how many moved."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE items SET next_attempt_at = ?, updated_at = ?"
                " WHERE state = 'pending' AND held = 0 AND next_attempt_at < ?"
                " AND url_origin(url) = ?",
                (until, now, until, origin),
            )
            return cur.rowcount

    def start_held(
        self, ids: Sequence[str], now: float, *, owner: str | None = None
    ) -> list[int | None]:
        """Make held items active, counting their attempt. Per id, in order: its attempt
        number, or None when it is no longer held (handed back, reclaimed, or its outcome
        written) or, with `owner`, held by another owner."""
        with self._write() as db:
            return self._start_held(db, ids, now, owner)

    @staticmethod
    def _start_held(
        db: sqlite3.Connection, ids: Sequence[str], now: float, owner: str | None
    ) -> list[int | None]:
        """One statement for all of `ids`: held -> active, attempt counted, owner and lease
        kept. The ids are looked up by key: `+state` keeps the planner from items_due, which
        for `state = 'pending'` is every pending item (it reads a backlog per call)."""
        if not ids:
            return []
        started = dict(
            db.execute(
                "UPDATE items SET state = 'active', held = 0, attempts = attempts + 1,"
                " updated_at = ? WHERE aweme_id IN (SELECT value FROM json_each(?))"
                f" AND +held = 1 AND +state = 'pending'{_OWNED if owner is not None else ''}"
                " RETURNING aweme_id, attempts",
                (now, json.dumps(list(ids)), *(() if owner is None else (owner,))),
            ).fetchall()
        )
        return [started.get(aweme_id) for aweme_id in ids]

    def renew_leases(self, owner: str, ids: Sequence[str], until: float) -> list[str]:
        """Make the leases of those of `ids` still claimed by `owner` end at `until`; returns
        those renewed, in the order given. `updated_at` stays: a renewal is no change."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        with self._write() as db:
            renewed = {
                r[0]
                for r in db.execute(
                    "UPDATE items SET lease_until = ?"
                    " WHERE aweme_id IN (SELECT value FROM json_each(?))"
                    f" AND {_IN_FLIGHT} AND owner IS ? RETURNING aweme_id",
                    (until, json.dumps(wanted), owner or None),
                )
            }
        return [i for i in wanted if i in renewed]

    def reclaim_lapsed(self, now: float) -> list[LapsedClaim]:
        """Hand back the claims whose lease ended before `now` (see the contract). Lapsed
        active items are found through items_due, held ones through items_held: no pass over
        the pending items."""
        with self._write() as db:
            lapsed = [
                LapsedClaim(r[0], r[1] or "", bool(r[2]))
                for r in db.execute(
                    "SELECT aweme_id, owner, 1 FROM items"
                    " WHERE state = 'active' AND lease_until < ?1"
                    " UNION ALL SELECT aweme_id, owner, 0 FROM items"
                    " WHERE held = 1 AND lease_until < ?1",
                    (now,),
                )
            ]
            if lapsed:
                db.execute(
                    "UPDATE items SET state = 'pending', held = 0, owner = NULL,"
                    " lease_until = NULL, updated_at = ?"
                    " WHERE aweme_id IN (SELECT value FROM json_each(?))",
                    (now, json.dumps([c.aweme_id for c in lapsed])),
                )
        return sorted(lapsed, key=lambda c: c.aweme_id)

    def in_flight_by_owner(self) -> dict[str, OwnerLoad]:
        """Items active and held per owner: two reads, of the active items (items_due) and of
        the held ones (items_held). A manifest read before its migration to 7 (or 5) has no
        owners (or no held items) to tell."""
        owner = "coalesce(owner, '')" if self._version >= 7 else "''"
        counts: dict[str, list[int]] = {}
        queries = ["state = 'active'"] + (["held = 1"] if self._version >= 5 else [])
        for n, where in enumerate(queries):
            for name, count in self._conn.execute(
                f"SELECT {owner}, count(*) FROM items WHERE {where} GROUP BY 1"
            ):
                counts.setdefault(name, [0, 0])[n] = count
        return {name: OwnerLoad(*pair) for name, pair in sorted(counts.items())}

    def next_due(self, skip: Sequence[str] = ()) -> float | None:
        """The earliest retry time among pending items not claimed (and not of the origins
        in `skip`), or None when there is none."""
        if not skip:
            row = self._conn.execute(
                "SELECT min(next_attempt_at) FROM items WHERE state = 'pending' AND held = 0"
            ).fetchone()
        else:  # in index order, stopping at the first: no min() over the whole range
            row = self._conn.execute(
                "SELECT next_attempt_at FROM items WHERE state = 'pending' AND held = 0"
                f"{_SKIP} ORDER BY next_attempt_at LIMIT 1",
                (json.dumps(list(skip)),),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def set_part(
        self,
        aweme_id: str,
        validator: str | None,
        total: int | None,
        durable: int,
        *,
        owner: str | None = None,
    ) -> bool:
        """Record what the .part is resumed under: the validator (ETag or Last-Modified) it was
        written under, the file size declared, and how many of its bytes are durable; with
        `owner`, only while it is in flight and that owner's or no one's."""
        guard = "" if owner is None else f" AND {_IN_FLIGHT}{_OWNED}"
        with self._write() as db:
            cur = db.execute(
                "UPDATE items SET validator = ?, total_bytes = ?, durable_bytes = ?, node = ?"
                f" WHERE aweme_id = ?{guard}",
                (
                    validator,
                    total,
                    durable,
                    holder_node(owner),
                    aweme_id,
                    *(() if owner is None else (owner,)),
                ),
            )
            return cur.rowcount > 0

    def complete_many(self, done: Sequence[Completion]) -> list[bool | None]:
        """Mark items done with size, digest and relative path, in one transaction. One flag per
        item, in order: True when topics arrived during its download that its `linked_topics`
        do not cover (it needs a relink); None when its `owner` lost it (nothing written)."""
        flags: list[bool | None] = []
        with self._write() as db:
            for c in done:
                guard = "" if c.owner is None else f" AND {_IN_FLIGHT}{_OWNED}"
                row = db.execute(
                    "UPDATE items SET state = 'done', bytes = ?, sha256 = ?, path = ?, node = ?,"
                    " held = 0,"
                    " attempts = attempts + held, validator = NULL, durable_bytes = 0,"
                    " total_bytes = NULL, owner = NULL, lease_until = NULL,"
                    " last_error = NULL, last_status = NULL, completed_at = ?,"
                    f" updated_at = ?, relink = (topics != ?) WHERE aweme_id = ?{guard}"
                    " RETURNING relink",
                    (
                        c.size,
                        c.sha256,
                        c.path,
                        holder_node(c.owner),
                        c.now,
                        c.now,
                        _json_array(tuple(c.linked_topics)),
                        c.aweme_id,
                        *(() if c.owner is None else (c.owner,)),
                    ),
                ).fetchone()
                if row is None and c.owner is not None:
                    flags.append(None)
                else:
                    flags.append(bool(row and row[0]))
        return flags

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
        """Record a failed attempt. If a newer URL arrived meanwhile, the item is simply pending
        again with fresh attempts. Returns the state the item ended in; with `owner`, None
        (nothing written) when the item is not in flight, or not its (or no one's)."""
        with self._write() as db:
            row = db.execute(
                "SELECT url, state, held, owner FROM items WHERE aweme_id = ?", (aweme_id,)
            ).fetchone()
            # In flight: active, or still held if its start is not written yet (then its
            # attempt is counted here).
            started = row is not None and (
                row[1] == State.ACTIVE.value or (row[1] == State.PENDING.value and row[2])
            )
            if owner is not None and not (started and row[3] in (None, owner)):
                return None
            if not started:
                return State(row[1]) if row else state
            if row[0] != attempted_url:
                state, next_attempt_at, refund_attempt = State.PENDING, 0.0, False
                db.execute(
                    "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0,"
                    " held = 0, owner = NULL, lease_until = NULL, last_error = ?,"
                    " last_status = ?, updated_at = ? WHERE aweme_id = ?",
                    (reason, status, now, aweme_id),
                )
                return state
            db.execute(
                "UPDATE items SET state = ?, next_attempt_at = ?, last_error = ?, last_status = ?,"
                " attempts = max(attempts + held - ?, 0), held = 0, owner = NULL,"
                " lease_until = NULL, updated_at = ? WHERE aweme_id = ?",
                (state.value, next_attempt_at, reason, status, int(refund_attempt), now, aweme_id),
            )
        return state

    # --- hard links for further topics ----------------------------------------------------

    def pending_relinks(
        self, limit: int, skip: Sequence[str] = (), after: str = "", *, node: str | None = None
    ) -> list[Relink]:
        """Done items that gained topics since their file was published, in id order after
        `after` (a pass sees each once), but those in `skip`; with `node`, that node's."""
        rows = self._conn.execute(
            "SELECT aweme_id, path, topics FROM items WHERE relink = 1 AND state = 'done'"
            " AND aweme_id > ? AND aweme_id NOT IN (SELECT value FROM json_each(?))"
            f"{'' if node is None else ' AND node = ?'} ORDER BY aweme_id LIMIT ?",
            (after, json.dumps(list(skip)), *(() if node is None else (node,)), limit),
        ).fetchall()
        return [Relink(r[0], r[1], tuple(json.loads(r[2]))) for r in rows]

    def clear_relink(self, aweme_id: str, linked_topics: Sequence[str | None]) -> bool:
        """Mark an item's links as made, unless topics arrived that `linked_topics` (the topics
        it was linked for) do not cover: then it stays due. True when cleared."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE items SET relink = 0 WHERE aweme_id = ? AND topics = ?",
                (aweme_id, _json_array(tuple(linked_topics))),
            )
            return cur.rowcount > 0

    # --- reporting ------------------------------------------------------------------------

    def counts(self) -> Counts:
        """Items by state, extracts by outcome, bytes downloaded."""
        items = {s.value: 0 for s in State}
        bytes_done = 0
        query = "SELECT state, items, bytes FROM item_totals"
        if self._version < 2:  # a reader of a manifest not yet migrated
            query = "SELECT state, count(*), coalesce(sum(bytes), 0) FROM items GROUP BY state"
        for state, n, size in self._conn.execute(query):
            items[state] = n
            if state == State.DONE.value:
                bytes_done = size
        extracts = {"merged": 0, "rejected": 0, "duplicate": 0}
        for status, n in self._conn.execute(
            "SELECT status, count(*) FROM extracts GROUP BY status"
        ):
            extracts[status] = n
        return Counts(items, extracts, int(bytes_done))

    def iter_items(
        self,
        state: str | None = None,
        topic: str | None = None,
        limit: int | None = 1000,
        *,
        full: bool = False,
        node: str | None = None,
    ) -> Iterator[ItemSummary]:
        """Items, most recently updated first, at most `limit` (None: all); with `full`, their
        digest, path and raw record too. Streamed: the ids are sorted alone (no row of 1.3 KB
        in SQLite's sorter), and the rows read `_CHUNK` at a time, so listing every item of a
        large manifest holds a chunk in memory, not the manifest."""
        where, args = self._item_filter(state, topic, node)
        order = f"SELECT aweme_id FROM items{where} ORDER BY updated_at DESC"
        keys = self._conn.execute(
            order + (" LIMIT ?" if limit is not None else ""),
            (*args, *(() if limit is None else (limit,))),
        )
        columns = "aweme_id, topics, state, attempts, last_error, last_status, bytes, updated_at"
        if full:
            columns += ", sha256, path, record"
        fetch = f"SELECT {columns} FROM items WHERE aweme_id IN (SELECT value FROM json_each(?))"
        while chunk := [str(r[0]) for r in keys.fetchmany(_CHUNK)]:
            rows = {r[0]: r for r in self._conn.execute(fetch, (json.dumps(chunk),))}
            for aweme_id in chunk:
                r = rows.get(aweme_id)
                if r is None:  # items are never deleted: only for safety
                    continue
                yield ItemSummary(
                    r[0], tuple(json.loads(r[1])), r[2], r[3], r[4], r[5], r[6], r[7], *r[8:]
                )

    def count_items(
        self, state: str | None = None, topic: str | None = None, *, node: str | None = None
    ) -> int:
        """How many items `iter_items` would give without a limit."""
        where, args = self._item_filter(state, topic, node)
        return int(self._conn.execute(f"SELECT count(*) FROM items{where}", args).fetchone()[0])

    @staticmethod
    def _item_filter(
        state: str | None, topic: str | None, node: str | None = None
    ) -> tuple[str, list[str]]:
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if topic is not None:
            # The raw topic or its folder name (see policy.naming.topic_folder).
            where.append(
                "EXISTS (SELECT 1 FROM json_each(items.topics) AS t"
                " WHERE t.value = ? OR topic_folder(t.value) = ?)"
            )
            args += [topic, topic]
        if node is not None:  # claimed by the node or its workers, or its file or part there
            where.append("(node = ? OR owner = ? OR substr(owner, 1, length(?) + 1) = ? || '/')")
            args += [node, node, node, node]
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def retry(
        self, states: Iterable[str], ids: Iterable[str], now: float
    ) -> tuple[list[str], dict[str, str]]:
        """Put items back to pending with fresh attempts, due now. Returns (requeued, refused):
        refused maps each id refused, in the order given, to why: `unknown`
        (not in the manifest), `done` (never downloaded again) or `active` (in flight now)."""
        states, ids = list(states), list(ids)
        requeued: list[str] = []
        refused: dict[str, str] = {}
        with self._write() as db:
            if states:
                marks = ",".join("?" * len(states))
                requeued += [
                    r[0]
                    for r in db.execute(
                        "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0,"
                        " last_error = NULL, last_status = NULL, updated_at = ?"
                        f" WHERE state IN ({marks}) RETURNING aweme_id",
                        (now, *states),
                    )
                ]
            for aweme_id in ids:
                row = db.execute(
                    "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0,"
                    " last_error = NULL, last_status = NULL, updated_at = ?"
                    " WHERE aweme_id = ? AND state IN ('pending', 'expired', 'failed')"
                    " RETURNING aweme_id",
                    (now, aweme_id),
                ).fetchone()
                if row is not None:
                    requeued.append(aweme_id)
                    continue
                found = db.execute(
                    "SELECT state FROM items WHERE aweme_id = ?", (aweme_id,)
                ).fetchone()
                refused[aweme_id] = "unknown" if found is None else str(found[0])
        return requeued, refused

    # --- verify ---------------------------------------------------------------------------
    # Reads are one short statement each (no read transaction held across a hash run); each
    # repair is one short write transaction that checks the item first. The callbacks of the
    # repairs run inside it, so the daemon cannot claim or change the item meanwhile: they must
    # be quick filesystem steps (an unlink, a link), never a download or a hash.

    def done_items(
        self, after: str = "", limit: int = _CHUNK, *, node: str | None = None
    ) -> list[DoneItem]:
        """Done items in id order after `after`: page through them with the last id seen; with
        `node`, that node's."""
        rows = self._conn.execute(
            "SELECT aweme_id, path, topics, bytes, sha256 FROM items"
            f" WHERE state = 'done' AND aweme_id > ?{'' if node is None else ' AND node = ?'}"
            " ORDER BY aweme_id LIMIT ?",
            (after, *(() if node is None else (node,)), limit),
        ).fetchall()
        return [DoneItem(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4]) for r in rows]

    def places(self, ids: Iterable[str]) -> dict[str, ItemPlace]:
        """State, path and topics of the known ones among `ids`."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, ItemPlace] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            for r in self._conn.execute(
                "SELECT aweme_id, state, path, topics FROM items"
                f" WHERE aweme_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                found[r[0]] = ItemPlace(r[0], r[1], r[2], tuple(json.loads(r[3])))
        return found

    def _is_done(self, db: sqlite3.Connection, aweme_id: str, sha256: str | None) -> bool:
        row = db.execute(
            "SELECT 1 FROM items WHERE aweme_id = ? AND state = 'done' AND sha256 IS ?",
            (aweme_id, sha256),
        ).fetchone()
        return row is not None

    def while_done(self, aweme_id: str, sha256: str | None, action: Callable[[], T]) -> T | None:
        """Run `action` in a write transaction in which the item is still done with `sha256`;
        None (without running it) when it is not."""
        with self._write() as db:
            if not self._is_done(db, aweme_id, sha256):
                return None
            return action()

    def requeue_done(
        self,
        aweme_id: str,
        sha256: str | None,
        reason: str,
        now: float,
        before: Callable[[], None],
    ) -> bool:
        """Put a done item whose file is missing or corrupt back to pending, with fresh attempts,
        due now, so that it is downloaded again; `reason` is shown by `ingestd list`. In one
        transaction: the item must still be done with `sha256` (else False, nothing done), then
        `before` runs (it removes the broken files: if it raises, nothing changes)."""
        with self._write() as db:
            if not self._is_done(db, aweme_id, sha256):
                return False
            before()
            db.execute(
                "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0, held = 0,"
                " bytes = NULL, sha256 = NULL, path = NULL, node = NULL, completed_at = NULL,"
                " relink = 0,"
                " validator = NULL, durable_bytes = 0, total_bytes = NULL,"
                " last_error = ?, last_status = NULL, updated_at = ? WHERE aweme_id = ?",
                (reason, now, aweme_id),
            )
        return True

    def drop_part(self, aweme_id: str, remove: Callable[[], None]) -> bool:
        """Remove an orphan `.part` (by `remove`) in a transaction in which its item is unknown
        or neither pending nor active: no download of it can be writing that file, and none can
        start until the removal is done. Its item's resume point is forgotten with it. False
        (nothing removed) when the item is pending or active."""
        with self._write() as db:
            row = db.execute("SELECT state FROM items WHERE aweme_id = ?", (aweme_id,)).fetchone()
            if row is not None and row[0] in (State.PENDING.value, State.ACTIVE.value):
                return False
            remove()
            if row is not None:
                db.execute(
                    "UPDATE items SET validator = NULL, durable_bytes = 0, total_bytes = NULL"
                    " WHERE aweme_id = ?",
                    (aweme_id,),
                )
        return True

    def report_node(self, report: NodeReport, previous: str = "") -> NodeReport | None:
        """Keep `report` as its node's latest, unless another daemon holds the name (see
        store.base); forget nodes silent for NODE_FORGET_S."""
        with self._write() as db:
            kept = db.execute(_REPORT, (*node_row(report), previous, NODE_SILENT_S)).rowcount
            db.execute("DELETE FROM nodes WHERE seen_at < ?", (report.seen_at - NODE_FORGET_S,))
            if kept:
                return None
            row = db.execute(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?", (report.node,)
            ).fetchone()
        return NodeReport(*row)

    def node_reports(self) -> list[NodeReport]:
        """Each node's latest report, by name (none before schema 9)."""
        if self._version < 9:
            return []
        columns = NODE_COLUMNS if self._version >= 10 else NODE_COLUMNS.replace("instance", "''")
        rows = self._conn.execute(f"SELECT {columns} FROM nodes ORDER BY name")
        return [NodeReport(*row) for row in rows]

    def oldest_pending(self) -> float | None:
        """Creation time of the oldest item still pending (for the queue-age metric)."""
        row = self._conn.execute(
            "SELECT min(created_at) FROM items WHERE state = 'pending'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def record(self, aweme_id: str) -> str | None:
        """An item's raw record (the JSON text of the latest extract that had it), or None."""
        row = self._conn.execute(
            "SELECT record FROM items WHERE aweme_id = ?", (aweme_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def item(self, aweme_id: str) -> dict[str, object] | None:
        """One item's row as a dict (for the CLI and tests)."""
        cur = self._conn.execute("SELECT * FROM items WHERE aweme_id = ?", (aweme_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return {d[0]: v for d, v in zip(cur.description, row, strict=True)}


def _owned_by(owner: str | None) -> tuple[str, tuple[object, ...]]:
    """A condition (to follow a WHERE) for the items of `owner` and its workers (`owner/...`,
    compared as a prefix: LIKE would read `_` and `%` in a name as wildcards); "" for those of
    no owner; None: no condition."""
    if owner is None:
        return "", ()
    if not owner:
        return " AND owner IS NULL", ()
    prefix = owner + "/"
    return " AND (owner = ? OR substr(owner, 1, ?) = ?)", (owner, len(prefix), prefix)


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection, also for users who may read the files but not write the folder.

    While the daemon runs, its -wal and -shm files exist and a reader shares them. When it has
    stopped (and removed them), a reader without write access cannot create them; the file is
    then read as immutable, which is safe because nothing is writing it.
    """
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=5.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if "readonly" not in str(exc) and "unable to open" not in str(exc):
            raise
    return sqlite3.connect(
        f"{path.as_uri()}?mode=ro&immutable=1", uri=True, isolation_level=None, timeout=5.0
    )


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"manifest schema version {version} is newer than this ingestd ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


if TYPE_CHECKING:
    _: type[ManifestStore] = Manifest  # mypy proves that Manifest meets the contract
