"""The manifest on PostgreSQL: the store of store.manifest (SQLite), for many daemons, on one host
or several, draining one queue. `PostgresManifest` meets store.base.ManifestStore; the contract
suite (tests/contract) runs on both.

psycopg 3 and psycopg_pool are imported here only (the `postgres` extra). Their errors become
ManifestError at this boundary, and no message carries a password: the DSN may hold one (as may
PGPASSFILE or the environment), so what is shown of it goes through redact_dsn. Under systemd
the password may also come as the credential CREDENTIAL (`LoadCredential=`), used when the DSN
names none, and scrubbed from messages likewise.

Connections. Each store has a small pool (psycopg_pool): its thread borrows a connection per
call, a listing streams on one of its own, and the queue's listener holds one. The pool
replaces a connection the server closed before a call uses it (a restart, an administrator, an
idle timeout), reconnects in the background with backoff, and retires connections after
CONNECTION_LIFETIME, so a server session never lives for the weeks the daemon does. A call
waits up to BORROW_WAIT for a connection, which rides out a restart; once a wait has timed out
the database is known to be down, and calls fail after BORROW_WAIT_DOWN until one gets through;
so do calls once the owner stops. An outage stalls neither the daemon's manifest thread for
long nor its shutdown.

Concurrency. Each write is one transaction (READ COMMITTED). What it checks before it acts it
reads FOR UPDATE; where there is no row to lock yet (an item a merge may bring, the data dir
not recorded yet) an advisory transaction lock stands in: merges take `_MERGE_LOCK` per chunk.
Claims lock with SKIP LOCKED: claimers never wait for each other, and no item is claimed twice.
Writers that lock several items by id lock them in id order (aweme_id is COLLATE "C", Python's
order); a deadlock that remains (a statement locking by predicate against one locking by id) is
retried, unless the transaction ran a callback.

Clock. Leases, due times and reports written by one host are read by others, so every store
measures how far the database's clock is from its host's (`clock_timestamp()`, halfway through
one round trip) when it opens and every CLOCK_CHECK_EVERY while it writes, and applies the skew
policy.lease.adopted_skew keeps: `clock` is the database's time, read without a round trip.

Counts. SQLite keeps item_totals and extract_progress by triggers that update one row per state
or extract. Here every writer of every node would queue on those rows (and deadlock, taking
them in different orders), so the trigger `items_moved` appends a row of deltas instead
(item_totals, extract_moves), readers sum them, and `_fold` sums them into one row every few
seconds, so there are never many. Only merges insert items: they append their own deltas.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from ingestd.policy.lease import adopted_skew
from ingestd.policy.merge import Known, State
from ingestd.policy.naming import topic_folder
from ingestd.policy.retry import Reason
from ingestd.policy.urls import origin_of
from ingestd.store.base import (
    META_DATA_DIR,
    NODE_COLUMNS,
    NODE_FORGET_S,
    NODE_SILENT_S,
    Completion,
    Counts,
    DerivedMethods,
    DoneItem,
    ExtractProgress,
    ForeignManifest,
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
    T,
    data_dir_key,
    holder_node,
    library_path,
    node_row,
    plan_binding,
    report_statement,
    same_dir,
)
from ingestd.store.merging import (
    ChunkPlan,
    ExpiredTally,
    chunks,
    link_counts,
    other_extracts,
    plan_chunk,
    relinked,
)
from ingestd.store.open import dsn_passwords, redact_dsn

if TYPE_CHECKING:
    from ingestd.policy.extract import Record

Cursor = psycopg.Cursor[TupleRow]
R = TypeVar("R")

SCHEMA_VERSION = 5
_CHUNK = 500  # ids per listing fetch, done items per verify page
_MERGE_CHUNK = 5_000  # records per merge transaction: its rows stay locked until it commits
_IDS_PER_READ = 10_000  # ids bound in one `= ANY(%s)`
_RETRIES = 3  # a transaction chosen as a deadlock's victim runs again, up to this many times
_FOLD_EVERY = 5.0  # seconds between two folds of the counts by a store that writes
_LOCK_TIMEOUT_MS = 30_000  # a lock wait this long is a stuck session elsewhere: fail the write
_CONNECT_TIMEOUT = 10
# The systemd credential ($CREDENTIALS_DIRECTORY/manifest_password) that holds the password.
CREDENTIAL = "manifest_password"
# The pool of one store: its thread's calls, a listing it streams meanwhile (iter_items), and
# the queue's listener (watch_queue) each hold one connection at most.
POOL_SIZE = 3
BORROW_WAIT = 5.0  # seconds a call waits for a connection: a restart takes a few
# ... and once a wait timed out (until a call gets through again), or once the store's owner
# stops (`interrupt`): an outage then costs each call this much at most.
BORROW_WAIT_DOWN = 1.0
BORROW_WAIT_STOPPING = 0.1  # ... and when both: a stop in an outage writes what it can, at once
# The pool retries a failed connection after 1, 2, 4 ... s and starts over after this long:
# it bounds the time from the database's return to the first connection.
RECONNECT_WINDOW = 10.0
CONNECTION_LIFETIME = 3600.0  # a connection is retired (and replaced) after about this long
CLOCK_CHECK_EVERY = 10.0  # seconds between two measurements of the database's clock (writes)
_URL_EXPIRED = Reason.URL_EXPIRED.value
# NOTIFY'd when items may have become due (merged, retried, handed back, reclaimed): the
# other nodes look at the queue at once instead of at their next idle recheck.
QUEUE_CHANNEL = "ingestd_queue"
LISTEN_POLL = 1.0  # seconds between looks at the stop flag while listening
LISTEN_RETRY_MAX = 30.0  # cap on the backoff between reconnections of the listener
_META_SOURCE = "migrated_from"  # the manifest `replace_with` copied in (see _check_replaceable)
# Advisory lock keys (bigint): "ingestd" in ASCII, then a number.
_MIGRATION_LOCK = 0x696E6765737464_01
_MERGE_LOCK = 0x696E6765737464_02
_META_LOCK = 0x696E6765737464_03
_FOLD_LOCK = 0x696E6765737464_04
_TRANSIENT = (errors.DeadlockDetected, errors.SerializationFailure)

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# Each one runs in a transaction of its own, recorded in schema_migrations by the same.
_MIGRATIONS: dict[int, str] = {
    # The SQLite schema at its version 6, with these differences. `origin` and `folders` are
    # derived in Python (policy.urls.origin_of, policy.naming.topic_folder) whenever the URL or
    # topics are written: SQLite calls Python from SQL for them. A topic is kept as its JSON
    # text (ensure_ascii, as SQLite's JSON arrays): a lone surrogate or NUL is legal there,
    # not in PostgreSQL text. item_totals and extract_moves are logs of deltas (see the module
    # docstring); extract_progress holds the sums folded so far, frozen once completed.
    1: r"""
    CREATE TABLE items (
        aweme_id        text COLLATE "C" PRIMARY KEY,  -- byte order, as Python compares ids
        url             text NOT NULL,
        origin          text NOT NULL,                 -- origin_of(url): host:port
        topics          text[] NOT NULL,               -- each topic's JSON text; the first
                                                       -- names the folder the file is in
        folders         text[] NOT NULL,               -- topic_folder() of each topic
        state           text NOT NULL CHECK (state IN
                            ('pending', 'active', 'done', 'expired', 'failed')),
        held            boolean NOT NULL DEFAULT false, -- pending, claimed ahead of a slot
        attempts        integer NOT NULL DEFAULT 0,
        next_attempt_at double precision NOT NULL DEFAULT 0,  -- epoch seconds
        last_error      text,
        last_status     integer,
        bytes           bigint,
        sha256          text,
        path            text,                          -- relative to media_assets, when done
        validator       text,                          -- ETag or Last-Modified of the .part
        durable_bytes   bigint NOT NULL DEFAULT 0,
        total_bytes     bigint,
        relink          boolean NOT NULL DEFAULT false,
        sources         text NOT NULL,                 -- JSON array of extract file names
        record          text NOT NULL,                 -- the raw record
        extract_ids     integer[] NOT NULL DEFAULT '{}', -- the open extracts that brought it
        created_at      double precision NOT NULL,
        updated_at      double precision NOT NULL,
        completed_at    double precision
    );
    CREATE INDEX items_due ON items (state, next_attempt_at);
    CREATE INDEX items_origin ON items (origin, next_attempt_at) WHERE state = 'pending';
    CREATE INDEX items_relink ON items (aweme_id) WHERE relink;
    -- The queue's age (oldest_pending), asked every few seconds by every daemon: a read of
    -- one entry, where SQLite scans the pending items.
    CREATE INDEX items_pending_age ON items (created_at) WHERE state = 'pending';

    CREATE TABLE extracts (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        path         text NOT NULL,
        sha256       text NOT NULL,
        size         bigint NOT NULL,
        status       text NOT NULL CHECK (status IN ('merged', 'rejected', 'duplicate')),
        reason       text,
        records      integer NOT NULL DEFAULT 0,
        new          integer NOT NULL DEFAULT 0,
        updated      integer NOT NULL DEFAULT 0,
        unusable     integer NOT NULL DEFAULT 0,
        processed_at double precision NOT NULL,
        UNIQUE (path, sha256)
    );
    CREATE INDEX extracts_sha ON extracts (sha256, status);

    CREATE TABLE extract_progress (
        id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        path         text NOT NULL,
        sha256       text NOT NULL,
        started_at   double precision NOT NULL,  -- the merge began
        merged_at    double precision,           -- the merge was recorded: no more items come
        completed_at double precision,           -- reported: the counts stop here
        items        bigint NOT NULL DEFAULT 0,  -- these six: folded from extract_moves
        outstanding  bigint NOT NULL DEFAULT 0,  -- pending or active
        done         bigint NOT NULL DEFAULT 0,
        expired      bigint NOT NULL DEFAULT 0,
        failed       bigint NOT NULL DEFAULT 0,
        bytes        bigint NOT NULL DEFAULT 0,  -- of the done ones
        UNIQUE (path, sha256)
    );
    CREATE INDEX extract_progress_open ON extract_progress (id) WHERE completed_at IS NULL;
    CREATE TABLE extract_moves (
        extract_id  integer NOT NULL,
        items       bigint NOT NULL DEFAULT 0,
        outstanding bigint NOT NULL DEFAULT 0,
        done        bigint NOT NULL DEFAULT 0,
        expired     bigint NOT NULL DEFAULT 0,
        failed      bigint NOT NULL DEFAULT 0,
        bytes       bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX extract_moves_extract ON extract_moves (extract_id);
    -- An open extract's counts are its folded ones plus its moves not folded yet.
    CREATE VIEW extract_counts AS
        SELECT p.id, p.path, p.sha256,
            p.items + coalesce(m.items, 0) AS items,
            p.outstanding + coalesce(m.outstanding, 0) AS outstanding,
            p.done + coalesce(m.done, 0) AS done,
            p.expired + coalesce(m.expired, 0) AS expired,
            p.failed + coalesce(m.failed, 0) AS failed,
            p.bytes + coalesce(m.bytes, 0) AS bytes,
            p.merged_at, p.completed_at
        FROM extract_progress AS p
        LEFT JOIN LATERAL (
            SELECT sum(items)::bigint AS items, sum(outstanding)::bigint AS outstanding,
                sum(done)::bigint AS done, sum(expired)::bigint AS expired,
                sum(failed)::bigint AS failed, sum(bytes)::bigint AS bytes
            FROM extract_moves WHERE extract_id = p.id
        ) AS m ON p.completed_at IS NULL;

    CREATE TABLE item_totals (
        pending    bigint NOT NULL DEFAULT 0,
        active     bigint NOT NULL DEFAULT 0,
        done       bigint NOT NULL DEFAULT 0,
        expired    bigint NOT NULL DEFAULT 0,
        failed     bigint NOT NULL DEFAULT 0,
        done_bytes bigint NOT NULL DEFAULT 0
    );

    CREATE TABLE meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    );

    -- A change of an item's state or bytes (an update or a delete), whatever makes it: its
    -- move in item_totals, and in each open extract it is linked to, when it enters or leaves
    -- a final state or its bytes change while done (as SQLite's extract_progress_update).
    CREATE FUNCTION ingestd_item_moved() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        new_state text := CASE WHEN TG_OP = 'UPDATE' THEN NEW.state ELSE '' END;
        new_bytes bigint := CASE WHEN new_state = 'done' THEN coalesce(NEW.bytes, 0) ELSE 0 END;
        old_bytes bigint := CASE WHEN OLD.state = 'done' THEN coalesce(OLD.bytes, 0) ELSE 0 END;
        finals constant text[] := '{done,expired,failed}';
    BEGIN
        IF new_state <> OLD.state OR new_bytes <> old_bytes THEN
            INSERT INTO item_totals (pending, active, done, expired, failed, done_bytes)
            VALUES (
                (new_state = 'pending')::int - (OLD.state = 'pending')::int,
                (new_state = 'active')::int - (OLD.state = 'active')::int,
                (new_state = 'done')::int - (OLD.state = 'done')::int,
                (new_state = 'expired')::int - (OLD.state = 'expired')::int,
                (new_state = 'failed')::int - (OLD.state = 'failed')::int,
                new_bytes - old_bytes);
        END IF;
        IF cardinality(OLD.extract_ids) > 0 AND (
            TG_OP = 'DELETE'
            OR (new_state <> OLD.state
                AND (OLD.state = ANY (finals) OR new_state = ANY (finals)))
            OR (new_state = 'done' AND OLD.bytes IS DISTINCT FROM NEW.bytes))
        THEN
            INSERT INTO extract_moves (extract_id, items, outstanding, done, expired, failed,
                bytes)
            SELECT id, -(TG_OP = 'DELETE')::int,
                (new_state IN ('pending', 'active'))::int
                    - (OLD.state IN ('pending', 'active'))::int,
                (new_state = 'done')::int - (OLD.state = 'done')::int,
                (new_state = 'expired')::int - (OLD.state = 'expired')::int,
                (new_state = 'failed')::int - (OLD.state = 'failed')::int,
                new_bytes - old_bytes
            FROM extract_progress
            WHERE id = ANY (OLD.extract_ids) AND completed_at IS NULL;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER items_moved AFTER UPDATE OF state, bytes ON items FOR EACH ROW
        WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.bytes IS DISTINCT FROM NEW.bytes)
        EXECUTE FUNCTION ingestd_item_moved();
    CREATE TRIGGER items_deleted AFTER DELETE ON items FOR EACH ROW
        EXECUTE FUNCTION ingestd_item_moved();
    """,
    # Claims with owners and leases, as SQLite's schema 7: an item records who claimed it and
    # until when while in flight, and neither otherwise. Lapsed active items are found through
    # items_due; items_held indexes the held ones (a few per worker) for reclaim_lapsed,
    # reset_active and in_flight_by_owner. Adding a column with no default rewrites nothing.
    # On the hot path: an entry in items_held per item held, removed by vacuum once started;
    # and a hold, now changing an indexed column, is never a HOT update (it seldom was: rows
    # copied in by a merge fill their pages).
    2: """
    ALTER TABLE items ADD COLUMN owner text,            -- NULL: not claimed, or by no one
        ADD COLUMN lease_until double precision;        -- epoch seconds; NULL: no lease
    CREATE INDEX items_held ON items (lease_until) WHERE held;
    """,
    # Which node holds a done item's file: the node of the owner that completed it (NULL: the
    # library's own). Each node's data dir is in meta as `data_dir/<node>` (see plan_binding).
    3: """
    ALTER TABLE items ADD COLUMN node text;
    """,
    # What each node last said of itself (report_node), for `status` across the fleet.
    4: """
    CREATE TABLE nodes (
        name            text COLLATE "C" PRIMARY KEY,
        seen_at         double precision NOT NULL,
        state           text NOT NULL,
        in_flight       integer NOT NULL,
        bytes_in_flight bigint NOT NULL,
        rate            double precision NOT NULL
    );
    """,
    # Which daemon run wrote each report: a node's name is held by one running daemon.
    5: """
    ALTER TABLE nodes ADD COLUMN instance text NOT NULL DEFAULT '';
    """,
}

# Folding (under _FOLD_LOCK): the deltas become one row; those of completed extracts go, their
# counts frozen. Rows appended meanwhile are not in the statement's snapshot and stay.
_FOLD_TOTALS = """
WITH gone AS (DELETE FROM item_totals RETURNING *)
INSERT INTO item_totals (pending, active, done, expired, failed, done_bytes)
SELECT sum(pending), sum(active), sum(done), sum(expired), sum(failed), sum(done_bytes)
FROM gone HAVING count(*) > 0
"""
_FOLD_MOVES = """
WITH gone AS (DELETE FROM extract_moves RETURNING *),
sums AS (
    SELECT extract_id, sum(items) AS items, sum(outstanding) AS outstanding, sum(done) AS done,
        sum(expired) AS expired, sum(failed) AS failed, sum(bytes) AS bytes
    FROM gone GROUP BY extract_id
)
UPDATE extract_progress AS p SET items = p.items + s.items,
    outstanding = p.outstanding + s.outstanding, done = p.done + s.done,
    expired = p.expired + s.expired, failed = p.failed + s.failed, bytes = p.bytes + s.bytes
FROM sums AS s WHERE p.id = s.extract_id AND p.completed_at IS NULL
"""

# A known item of a merge chunk, as merging rewrites it (see _merge_chunk). The ids are bound
# too: merge_rows has no statistics, and without them the planner hashes all of items.
_MERGE_ROWS = """
CREATE TEMP TABLE IF NOT EXISTS merge_rows (
    aweme_id    text COLLATE "C" NOT NULL,
    url         text NOT NULL,
    origin      text,              -- NULL: the URL stays
    topics      text[] NOT NULL,
    folders     text[] NOT NULL,
    sources     text NOT NULL,
    state       text NOT NULL,
    record      text NOT NULL,
    extract_ids integer[] NOT NULL,
    reset       boolean NOT NULL,
    last_error  text,
    expired     boolean NOT NULL,
    relink      boolean NOT NULL
) ON COMMIT DELETE ROWS
"""
_MERGE_UPDATE = """
UPDATE items AS i SET url = m.url, origin = coalesce(m.origin, i.origin), topics = m.topics,
    folders = m.folders, sources = m.sources, state = m.state, record = m.record, updated_at = %s,
    extract_ids = m.extract_ids,
    attempts = CASE WHEN m.reset THEN 0 ELSE i.attempts END,
    next_attempt_at = CASE WHEN m.reset THEN 0 ELSE i.next_attempt_at END,
    last_error = CASE WHEN m.reset THEN m.last_error ELSE i.last_error END,
    last_status = CASE WHEN m.expired THEN NULL ELSE i.last_status END,
    relink = i.relink OR m.relink
FROM merge_rows AS m WHERE i.aweme_id = m.aweme_id AND i.aweme_id = ANY (%s)
"""
_INSERT_COLUMNS = (
    "aweme_id, url, origin, topics, folders, sources, record, state, last_error, extract_ids,"
    " created_at, updated_at"
)

# Locks the items of `ids` that meet a condition, in id order, ahead of an UPDATE ... FROM mine.
_MINE = (
    "WITH mine AS (SELECT aweme_id FROM items WHERE aweme_id = ANY (%s) AND {}"
    " ORDER BY aweme_id FOR UPDATE)"
)
# In flight: started, or held (claimed ahead). `held` implies `pending`.
_IN_FLIGHT = "(state = 'active' OR held)"
_REPORT = report_statement("%s")
# An outcome written with an owner applies to an item claimed by that owner, or by no one.
_OWNED = " AND (owner IS NULL OR owner = %s)"

# What item() gives: SQLite's columns (as `SELECT *` there), and the origin.
_ITEM_COLUMNS = (
    "aweme_id, url, origin, topics, state, attempts, held, next_attempt_at, last_error,"
    " last_status, bytes, sha256, path, validator, total_bytes, durable_bytes, relink, sources,"
    " record, extract_ids, created_at, updated_at, completed_at"
)
_OWNER_COLUMNS = ", owner, lease_until"  # from schema 2
_NODE_COLUMNS = ", node"  # from schema 3
# A resume point as a claim returns it: only to the node holding the `.part` it describes
# (`node`; NULL: recorded before nodes, or with no owner). Another node's claim starts over.
_RESUME_POINT = (
    "CASE WHEN i.node IS NULL OR i.node = %s THEN i.validator END,"
    " CASE WHEN i.node IS NULL OR i.node = %s THEN i.durable_bytes ELSE 0 END,"
    " CASE WHEN i.node IS NULL OR i.node = %s THEN i.total_bytes END"
)

# What `replace_with` writes of an item: every column, origin and folders derived as a merge
# derives them. Not its claim (held, owner, lease_until): a copy is made with no daemon running,
# and carries items as a restart finds them (see Manifest.export), claimed by no one.
_COPY_COLUMNS = (
    "aweme_id, url, origin, topics, folders, state, attempts, next_attempt_at, last_error,"
    " last_status, bytes, sha256, path, validator, durable_bytes, total_bytes, relink, sources,"
    " record, extract_ids, created_at, updated_at, completed_at, node"
)
# The tables a copy replaces (meta: only the keys it writes). The counts kept as deltas
# (item_totals, extract_moves) are not copied: the copy's are counted from its rows.
_COPY_TABLES = "items, extracts, extract_progress, extract_moves, item_totals"
# item_totals of a copy: its rows counted, so that checking `counts` against the source's
# checks the rows themselves.
_COUNT_COPY = """
INSERT INTO item_totals (pending, active, done, expired, failed, done_bytes)
SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'active'),
    count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'expired'),
    count(*) FILTER (WHERE state = 'failed'),
    coalesce(sum(bytes) FILTER (WHERE state = 'done'), 0)
FROM items
"""


def _scrub(message: str, dsn: str) -> str:
    """A message about `dsn` without its password, in any spelling (libpq's parse too), nor
    any password read from a credential."""
    secrets = dsn_passwords(dsn) | _CREDENTIAL_PASSWORDS
    try:
        parsed = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        parsed = None
    if isinstance(parsed, str) and parsed:
        secrets.add(parsed)
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return redact_dsn(message.strip())


# --- values as stored ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _stored_topics(topics: tuple[str | None, ...]) -> list[str]:
    """Topics as stored: each one's JSON text (a list: psycopg sends it as an array)."""
    return [json.dumps(t) for t in topics]


@functools.lru_cache(maxsize=4096)
def _topic_literals(topics: tuple[str | None, ...]) -> tuple[str, str]:
    """The `topics` and `folders` of a row, as array literals for COPY: a merge writes the same
    few topic lists over and over, and psycopg's list dumper costs more than the rest of it."""
    return _array_literal(_stored_topics(topics)), _array_literal(map(topic_folder, topics))


def _array_literal(values: Iterable[str]) -> str:
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"


@functools.lru_cache(maxsize=1024)
def _id_literal(ids: tuple[int, ...]) -> str:
    return "{" + ",".join(map(str, ids)) + "}"


@functools.lru_cache(maxsize=4096)
def _topics(stored: tuple[str, ...]) -> tuple[str | None, ...]:
    """Stored topics back as Python values."""
    return tuple(json.loads("[" + ", ".join(stored) + "]"))


def _topics_of(stored: list[str]) -> tuple[str | None, ...]:
    return _topics(tuple(stored))


@functools.lru_cache(maxsize=4096)
def _sources(stored: str) -> tuple[str, ...]:
    return tuple(json.loads(stored))


@functools.lru_cache(maxsize=4096)
def _json_array(values: tuple[str, ...]) -> str:
    # A merge encodes the same few source lists over and over.
    return json.dumps(values)


def _storable(text: str) -> bool:
    """Whether PostgreSQL text can hold `text` (no NUL, no lone surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- the store -----------------------------------------------------------------------------------


class PostgresManifest(DerivedMethods):
    """The manifest in a PostgreSQL database. Use from one thread at a time (the daemon gives
    it its own), besides watch_queue on a thread of its own. Many stores, in one process or
    many, may share a database. Connections come from a pool: see the module docstring."""

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[TupleRow]],
        dsn: str,
        *,
        readonly: bool,
        version: int = SCHEMA_VERSION,
        skew: float = 0.0,
    ) -> None:
        self._pool = pool
        self._down = False  # a wait for a connection timed out, and no call got through since
        self._dsn = dsn  # never shown: redact_dsn
        self._readonly = readonly
        self._version = version  # a reader may find an older schema, not migrated yet
        self._cursors = itertools.count(1)
        self._fold_due = time.monotonic() + _FOLD_EVERY
        self._wrote = False  # since the last fold
        self._skew = skew  # see clock_skew
        self._clock_due = time.monotonic() + CLOCK_CHECK_EVERY
        # Set from another thread when the owner stops: a long merge ends between two
        # transactions, and calls stop waiting for the database (_connection).
        self.interrupt = threading.Event()

    @classmethod
    def open(cls, dsn: str, *, readonly: bool = False) -> PostgresManifest:
        """Connect to the database `dsn` names and (unless `readonly`) create or migrate the
        manifest's schema there. A schema newer than this code, or none when `readonly`,
        raises ManifestError."""
        args = _connect_args(dsn, os.environ.get("CREDENTIALS_DIRECTORY"))
        # A connection of its own first, whose failure says why (the pool's would only time
        # out): the schema is made or checked there, then the pool takes over.
        with contextlib.closing(_connect(dsn, readonly, args)) as conn:
            version = SCHEMA_VERSION
            try:
                if readonly:
                    version = _check_version(conn)
                else:
                    _migrate(conn)
                skew = adopted_skew(0.0, *_measure_skew(conn))
            except psycopg.Error as exc:
                raise ManifestError(f"{redact_dsn(dsn)}: {_scrub(str(exc), dsn)}") from None
        pool = _pool(dsn, readonly, args)
        return cls(pool, dsn, readonly=readonly, version=version, skew=skew)

    def close(self) -> None:
        """Fold the counts this store moved, and disconnect."""
        if self._wrote and not self._down:
            self._fold()
        self._pool.close(timeout=BORROW_WAIT_DOWN)

    def clock(self) -> float:
        """The database's time now: this host's clock plus the skew last adopted."""
        return time.time() + self._skew

    def clock_skew(self) -> float:
        """The skew `clock` applies (see the module docstring)."""
        return self._skew

    def _check_clock(self) -> None:
        """Measure the database's clock again (housekeeping: on failure the skew stays)."""
        self._clock_due = time.monotonic() + CLOCK_CHECK_EVERY
        try:
            with self._connection() as conn:
                self._skew = adopted_skew(self._skew, *_measure_skew(conn))
        except (psycopg.Error, ManifestError):
            pass

    # --- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """A connection of the pool for the length of the block. Raises ManifestError when
        none comes within borrow_limit (the wait is taken in steps, to see `interrupt`)."""
        waited = 0.0
        while True:
            step = min(BORROW_WAIT_DOWN, borrow_limit(self._down, self.interrupt.is_set()) - waited)
            if step <= 0:
                self._down = True
                raise self._unreachable(waited)
            try:
                conn = self._pool.getconn(timeout=step)
                break
            except PoolTimeout:
                waited += step
        self._down = False
        try:
            yield conn
        finally:
            self._pool.putconn(conn)

    def _unreachable(self, waited: float) -> ManifestError:
        why = _CONNECT_FAILURES.get(self._dsn)
        return ManifestError(
            f"{redact_dsn(self._dsn)}: no connection to the database within {waited:g} s"
            + (f" ({_scrub(why, self._dsn)})" if why else "")
        )

    def _error(self, exc: psycopg.Error) -> ManifestError:
        return ManifestError(_scrub(str(exc), self._dsn))

    def _write(self, body: Callable[[Cursor], R], *, retry: bool = True) -> R:
        """Run `body` in one transaction and commit. A deadlock victim runs again when `retry`
        (a body that only speaks SQL); other database errors raise ManifestError, anything
        `body` raises rolls back and passes on."""
        for attempt in itertools.count(1):
            try:
                with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
                    result = body(cur)
            except _TRANSIENT as exc:
                if retry and attempt < _RETRIES:
                    continue
                raise self._error(exc) from exc
            except psycopg.Error as exc:
                raise self._error(exc) from exc
            break
        self._wrote = True
        if time.monotonic() >= self._fold_due:
            self._fold()
        if time.monotonic() >= self._clock_due:
            self._check_clock()
        return result

    def _read(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """All rows of one statement (its own snapshot, no transaction held)."""
        try:
            with self._connection() as conn:
                return conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _read_one(self, query: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        rows = self._read(query, params)
        return rows[0] if rows else None

    def _fold(self) -> None:
        """Sum the deltas of the counts into one row each, unless another store is at it."""
        self._fold_due = time.monotonic() + _FOLD_EVERY
        self._wrote = False
        try:
            with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (_FOLD_LOCK,))
                row = cur.fetchone()
                if row is not None and row[0]:
                    cur.execute(_FOLD_TOTALS)
                    cur.execute(_FOLD_MOVES)
        except (psycopg.Error, ManifestError):
            pass  # housekeeping: the deltas stay, correct as they are, for the next fold

    # --- the library it belongs to ---------------------------------------------------------

    def recorded_data_dir(self, node: str | None = None) -> str | None:
        """The data dir recorded by `bind_data_dir` (for `node`), or None: not recorded yet."""
        row = self._read_one("SELECT value FROM meta WHERE key = %s", (data_dir_key(node),))
        return None if row is None else str(row[0])

    def check_data_dir(self, data_dir: Path, node: str | None = None) -> None:
        """Raise WrongLibrary if another data dir is recorded (see plan_binding)."""
        rows = self._read(_BINDINGS, (META_DATA_DIR,))
        plan_binding(data_dir, node, *_bindings(rows, node), replace=False)

    def bind_data_dir(
        self, data_dir: Path, *, replace: bool = False, node: str | None = None
    ) -> str | None:
        """Record `data_dir` (resolved) as this manifest's library, or `node`'s (see
        plan_binding); returns what was recorded before."""

        def bind(cur: Cursor) -> str | None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_META_LOCK,))
            rows = cur.execute(_BINDINGS, (META_DATA_DIR,)).fetchall()
            plan = plan_binding(data_dir, node, *_bindings(rows, node), replace=replace)
            if plan.write:
                cur.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (data_dir_key(node), library_path(data_dir)),
                )
            if plan.adopt:
                cur.execute("DELETE FROM meta WHERE key = %s", (META_DATA_DIR,))
                cur.execute(
                    "UPDATE items SET node = %s WHERE state = 'done' AND node IS NULL", (node,)
                )
            return plan.before

        return self._write(bind)

    def replace_with(
        self, copy: ManifestCopy, data_dir: Path, source: str, node: str | None = None
    ) -> None:
        """Make this manifest a copy of `copy`, the manifest of the library `data_dir` read from
        `source` (`ingestd migrate`), bound to `data_dir` as `node`'s library, its done files
        held by `node` (unless the copy names their node). One transaction, the tables locked:
        on any error or interruption nothing changes. What this manifest held is replaced only
        if it is empty, or the copy of `source` that a former call left and nobody wrote since
        (so a second call gives the same state); else ForeignManifest, nothing changed. The
        ids of extracts and their progress are kept: the items' extract_ids name them."""

        def load(cur: Cursor) -> None:
            cur.execute(f"LOCK TABLE meta, {_COPY_TABLES} IN ACCESS EXCLUSIVE MODE")
            _check_replaceable(cur, data_dir, source, node)
            cur.execute(f"TRUNCATE {_COPY_TABLES} RESTART IDENTITY")
            # COPY writes the ids given, even into GENERATED ALWAYS columns.
            with cur.copy(
                "COPY extracts (id, path, sha256, size, status, reason, records, new, updated,"
                " unusable, processed_at) FROM STDIN"
            ) as out:
                for extract in copy.extracts:
                    out.write_row(extract)
            with cur.copy(
                "COPY extract_progress (id, path, sha256, started_at, merged_at, completed_at,"
                " items, outstanding, done, expired, failed, bytes) FROM STDIN"
            ) as out:
                for p in copy.progress:
                    # No counts (merged before SQLite's schema 6, completed then): 0 here,
                    # where they are NOT NULL. Only extract_progress() shows the difference.
                    out.write_row((*p[:6], *(n or 0 for n in p[6:])))
            for table in ("extracts", "extract_progress"):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id))"
                    f" FROM {table} HAVING count(*) > 0"
                )
            with cur.copy(f"COPY items ({_COPY_COLUMNS}) FROM STDIN") as out:
                for chunk in copy.items:
                    for i in chunk:
                        topics, folders = _topic_literals(i.topics)
                        out.write_row(
                            (
                                i.aweme_id,
                                i.url,
                                origin_of(i.url),
                                topics,
                                folders,
                                i.state,
                                i.attempts,
                                i.next_attempt_at,
                                i.last_error,
                                i.last_status,
                                i.bytes,
                                i.sha256,
                                i.path,
                                i.validator,
                                i.durable_bytes,
                                i.total_bytes,
                                i.relink,
                                _json_array(i.sources),
                                i.record,
                                _id_literal(i.extract_ids),
                                i.created_at,
                                i.updated_at,
                                i.completed_at,
                                i.node or (node if i.state == "done" else None),
                            )
                        )
            cur.execute(_COUNT_COPY)
            cur.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s), (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (data_dir_key(node), library_path(data_dir), _META_SOURCE, source),
            )

        self._write(load, retry=False)  # the items are read once

    def watch_queue(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Until `stop` is set, call `on_change` whenever another connection may have made items
        due (see QUEUE_CHANNEL), and once per (re)connection, for what came meanwhile. Blocking,
        on a thread of its own, with a connection of its own; a lost connection is made again,
        with backoff (a missed notification costs only the wait until the next idle look)."""
        failures = 0
        while not stop.is_set():
            try:
                with self._connection() as conn:
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    try:
                        failures = 0
                        on_change()
                        while not stop.is_set():
                            for _ in conn.notifies(timeout=LISTEN_POLL, stop_after=1):
                                on_change()
                    finally:
                        with contextlib.suppress(psycopg.Error):  # back to the pool as it was
                            conn.execute("UNLISTEN *")
            except (psycopg.Error, ManifestError):  # the latter: no connection
                failures += 1
                stop.wait(min(2.0**failures, LISTEN_RETRY_MAX))

    # --- extracts -------------------------------------------------------------------------

    def extract_status(self, path: str, sha256: str) -> str | None:
        """How this exact (path, content) was handled before, or None if never seen."""
        row = self._read_one(
            "SELECT status FROM extracts WHERE path = %s AND sha256 = %s", (path, sha256)
        )
        return None if row is None else str(row[0])

    def content_merged(self, sha256: str) -> bool:
        """True when some extract with this content was merged already."""
        row = self._read_one(
            "SELECT 1 FROM extracts WHERE sha256 = %s AND status = 'merged' LIMIT 1", (sha256,)
        )
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

        def record(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO extracts (path, sha256, size, status, reason, records, new,"
                " updated, unusable, processed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (path, sha256) DO UPDATE SET status = excluded.status,"
                " reason = excluded.reason, processed_at = excluded.processed_at",
                (path, sha256, size, status, reason, *counts, now),
            )
            if status == "merged":
                cur.execute(
                    "UPDATE extract_progress SET merged_at = %s"
                    " WHERE path = %s AND sha256 = %s AND merged_at IS NULL",
                    (now, path, sha256),
                )

        self._write(record)

    def settled_extracts(self) -> list[SettledExtract]:
        """Merged extracts whose items are all final (done, expired or failed) and that were
        not reported yet, oldest first. Open extracts are few, and each has few moves."""
        rows = self._read(
            "SELECT id, path, sha256, items, done, expired, failed, bytes, merged_at"
            " FROM extract_counts WHERE completed_at IS NULL AND merged_at IS NOT NULL"
            " AND outstanding = 0 ORDER BY id"
        )
        return [SettledExtract(*row) for row in rows]

    def extract_progress(self, path: str, sha256: str) -> ExtractProgress | None:
        """Where the extract version merged with `sha256` stands, or None."""
        row = self._read_one(
            "SELECT id, path, sha256, items, outstanding, done, expired, failed, bytes,"
            " merged_at, completed_at FROM extract_counts WHERE path = %s AND sha256 = %s",
            (path, sha256),
        )
        return None if row is None else ExtractProgress(*row)

    def close_extracts(self, ids: Sequence[int], now: float) -> int:
        """Mark extracts reported: never reported again, and their counts stay as reported (their
        moves are folded in first, under the fold's lock). Returns how many were still open."""

        def close(cur: Cursor) -> int:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_FOLD_LOCK,))
            cur.execute(_FOLD_MOVES)
            cur.execute(
                "UPDATE extract_progress SET completed_at = %s"
                " WHERE id = ANY (%s) AND completed_at IS NULL",
                (now, list(ids)),
            )
            return cur.rowcount

        return self._write(close)

    # --- merging --------------------------------------------------------------------------

    def merge(
        self, records: Sequence[Record], source: str, now: float, sha256: str | None = None
    ) -> MergeCounts:
        """Merge records into the manifest, in transactions of `_MERGE_CHUNK` records, one
        merge at a time (`_MERGE_LOCK`: only merges insert items). With `sha256`, each item is
        linked to the extract (see record_extract and settled_extracts)."""
        extract_id = None
        if sha256 is not None:
            extract_id = self._write(lambda cur: _open_extract(cur, source, sha256, now))
        tally = ExpiredTally()
        new = updated = 0
        for chunk in chunks(records, _MERGE_CHUNK):
            if self.interrupt.is_set():
                raise MergeInterrupted(f"stopped after {new + updated} of {len(records)} records")
            write = functools.partial(
                _merge_chunk, chunk=chunk, source=source, now=now, extract_id=extract_id
            )
            plan = self._write(_notifying(write))
            new += len(plan.inserted)
            updated += len(plan.updated)
            for aweme_id, expiry in plan.expired.items():
                tally.add(aweme_id, expiry)
        return MergeCounts(len(records), new, updated, tally.summary())

    # --- the download queue ---------------------------------------------------------------

    def reset_active(self, now: float, owner: str | None = None) -> int:
        """Put items left `active` (by a crash) back to pending, and let go of those that were
        only claimed ahead: all of them, or with `owner` those of `owner` and of its workers
        (`owner/...`). Returns how many were active: a crash costs those their attempt. Held
        items are found through items_held, active ones through items_due."""
        where, args = _owned_by(owner)

        def reset(cur: Cursor) -> int:
            cur.execute(
                "UPDATE items SET held = false, owner = NULL, lease_until = NULL"
                f" WHERE held{where}",
                args,
            )
            cur.execute(
                "UPDATE items SET state = 'pending', owner = NULL, lease_until = NULL,"
                f" updated_at = %s WHERE state = 'active'{where}",
                (now, *args),
            )
            return cur.rowcount

        return self._write(reset)

    def release(
        self, ids: Iterable[str], now: float, due: float = 0.0, *, owner: str | None = None
    ) -> list[str]:
        """Return claimed items (running or held) to pending, due at `due`, without using up an
        attempt (a clean shutdown, a pause, a host cooling down); with `owner`, only those it
        (or no one) claimed. Returns the ids released, in the order given."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        owned = "" if owner is None else _OWNED

        def release(cur: Cursor) -> set[str]:
            cur.execute(
                _MINE.format(_IN_FLIGHT + owned) + " UPDATE items AS i SET held = false,"
                " owner = NULL, lease_until = NULL,"
                " next_attempt_at = greatest(i.next_attempt_at, %s),"
                " attempts = CASE i.state WHEN 'active' THEN greatest(i.attempts - 1, 0)"
                " ELSE i.attempts END, state = 'pending', updated_at = %s"
                " FROM mine WHERE i.aweme_id = mine.aweme_id RETURNING i.aweme_id",
                (wanted, *(() if owner is None else (owner,)), due, now),
            )
            released = {r[0] for r in cur.fetchall()}
            if released:
                _queue_changed(cur)
            return released

        released = self._write(release)
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
        counted), then `hold` more claimed ahead (held: pending, no attempt counted). Items of
        the origins in `skip` are passed over; the held items in `mark` are started first.
        Rows another claim has locked are passed over too (SKIP LOCKED): claims on several
        connections never wait for each other, and never take one item twice. Every item
        claimed records `owner` (none for "") and `lease_until`, in the same statement."""
        if start <= 0 and hold <= 0 and not mark:
            return [], []
        lease = (owner or None, lease_until)

        def claim(cur: Cursor) -> tuple[list[Item], list[Item]]:
            _start_held(cur, mark, now, owner or None)
            change = "state = 'active', attempts = i.attempts + 1"
            started = _claim(cur, now, change, start, skip, lease)
            held = _claim(cur, now, "held = true", hold, skip, lease)
            return started, held

        return self._write(claim)

    def defer_origin(self, origin: str, until: float, now: float) -> int:
        """Make every pending item of `origin` (host:port) due no sooner than `until`: its host
        is cooling down, and claims should find other hosts' items. Returns how many moved."""
        return self._write(
            lambda cur: (
                cur.execute(
                    "UPDATE items SET next_attempt_at = %s, updated_at = %s WHERE origin = %s"
                    " AND state = 'pending' AND NOT held AND next_attempt_at < %s",
                    (until, now, origin, until),
                ).rowcount
            )
        )

    def start_held(
        self, ids: Sequence[str], now: float, *, owner: str | None = None
    ) -> list[int | None]:
        """Make held items active, counting their attempt. Per id, in order: its attempt
        number, or None when it is no longer held (handed back, reclaimed, or its outcome
        written) or, with `owner`, held by another owner."""
        if not ids:
            return []
        return self._write(lambda cur: _start_held(cur, ids, now, owner))

    def renew_leases(self, owner: str, ids: Sequence[str], until: float) -> list[str]:
        """Make the leases of those of `ids` still claimed by `owner` end at `until` (locked
        in id order); returns those renewed, in the order given. `updated_at` stays."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []

        def renew(cur: Cursor) -> set[str]:
            cur.execute(
                _MINE.format(_IN_FLIGHT + " AND owner IS NOT DISTINCT FROM %s")
                + " UPDATE items AS i SET lease_until = %s FROM mine"
                " WHERE i.aweme_id = mine.aweme_id RETURNING i.aweme_id",
                (wanted, owner or None, until),
            )
            return {r[0] for r in cur.fetchall()}

        renewed = self._write(renew)
        return [i for i in wanted if i in renewed]

    def reclaim_lapsed(self, now: float) -> list[LapsedClaim]:
        """Hand back the claims whose lease ended before `now` (see the contract): lapsed
        active items are found through items_due, held ones through items_held. Rows another
        transaction has locked are passed over (SKIP LOCKED): their owner is writing them (a
        renewal, an outcome), and a later reclaim sees them if they are still lapsed."""

        def reclaim(cur: Cursor) -> list[LapsedClaim]:
            cur.execute(
                "WITH lapsed AS (SELECT aweme_id FROM items"
                " WHERE state = 'active' AND lease_until < %s"
                " UNION ALL SELECT aweme_id FROM items WHERE held AND lease_until < %s),"
                # Checked again as locked: the row may have moved since the snapshot.
                " mine AS (SELECT aweme_id, owner, state = 'active' AS was_active FROM items"
                " WHERE aweme_id IN (SELECT aweme_id FROM lapsed)"
                f" AND {_IN_FLIGHT} AND lease_until < %s FOR UPDATE SKIP LOCKED)"
                " UPDATE items AS i SET state = 'pending', held = false, owner = NULL,"
                " lease_until = NULL, updated_at = %s FROM mine"
                " WHERE i.aweme_id = mine.aweme_id"
                " RETURNING i.aweme_id, mine.owner, mine.was_active",
                (now, now, now, now),
            )
            lapsed = [LapsedClaim(r[0], r[1] or "", r[2]) for r in cur.fetchall()]
            if lapsed:
                _queue_changed(cur)
            return lapsed

        return sorted(self._write(reclaim), key=lambda c: c.aweme_id)

    def in_flight_by_owner(self) -> dict[str, OwnerLoad]:
        """Items active and held per owner: active ones read through items_due, held ones
        through items_held. A schema before 2 has no owners to tell."""
        owner = "coalesce(owner, '')" if self._version >= 2 else "''"
        counts: dict[str, list[int]] = {}
        for n, where in enumerate(("state = 'active'", "held")):
            for name, count in self._read(
                f"SELECT {owner}, count(*) FROM items WHERE {where} GROUP BY 1"
            ):
                counts.setdefault(name, [0, 0])[n] = int(count)
        return {name: OwnerLoad(*pair) for name, pair in sorted(counts.items())}

    def report_node(self, report: NodeReport, previous: str = "") -> NodeReport | None:
        """Keep `report` as its node's latest, unless another daemon holds the name (see
        store.base); forget nodes silent for NODE_FORGET_S."""

        def report_(cur: Cursor) -> NodeReport | None:
            cur.execute(_REPORT, (*node_row(report), previous, NODE_SILENT_S))
            kept = cur.rowcount
            cur.execute("DELETE FROM nodes WHERE seen_at < %s", (report.seen_at - NODE_FORGET_S,))
            if kept:
                return None
            cur.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE name = %s", (report.node,))
            row = cur.fetchone()
            assert row is not None  # the row the insert ran into, locked by it
            return NodeReport(*row)

        return self._write(report_)

    def node_reports(self) -> list[NodeReport]:
        """Each node's latest report, by name (none before migration 4)."""
        if self._version < 4:
            return []
        columns = NODE_COLUMNS if self._version >= 5 else NODE_COLUMNS.replace("instance", "''")
        rows = self._read(f"SELECT {columns} FROM nodes ORDER BY name")
        return [
            NodeReport(str(n), float(s), str(st), int(i), int(b), float(r), str(inst))
            for n, s, st, i, b, r, inst in rows
        ]

    def next_due(self, skip: Sequence[str] = ()) -> float | None:
        """The earliest retry time among pending items not claimed (and not of the origins
        in `skip`), or None when there is none."""
        if not skip:
            row = self._read_one(
                "SELECT min(next_attempt_at) FROM items WHERE state = 'pending' AND NOT held"
            )
        else:  # in index order, stopping at the first
            row = self._read_one(
                "SELECT next_attempt_at FROM items WHERE state = 'pending' AND NOT held"
                " AND origin <> ALL (%s) ORDER BY next_attempt_at LIMIT 1",
                (list(skip),),
            )
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
        return self._write(
            lambda cur: (
                cur.execute(
                    "UPDATE items SET validator = %s, total_bytes = %s, durable_bytes = %s,"
                    f" node = %s WHERE aweme_id = %s{guard}",
                    (
                        validator,
                        total,
                        durable,
                        holder_node(owner),
                        aweme_id,
                        *(() if owner is None else (owner,)),
                    ),
                ).rowcount
                > 0
            )
        )

    def complete_many(self, done: Sequence[Completion]) -> list[bool | None]:
        """Mark items done with size, digest and relative path, in one transaction, written in
        id order (the lock order). One flag per item, in order: True when topics arrived during
        its download that its `linked_topics` do not cover (it needs a relink); None when its
        `owner` no longer had it (not written). One statement for all: the owner check is a
        bound NULL for a completion without one."""
        if not done:
            return []
        order = sorted(range(len(done)), key=lambda n: done[n].aweme_id)

        def complete(cur: Cursor) -> list[bool | None]:
            cur.executemany(
                "UPDATE items SET state = 'done', bytes = %s, sha256 = %s, path = %s, node = %s,"
                " held = false, attempts = attempts + held::int, validator = NULL,"
                " durable_bytes = 0, total_bytes = NULL, owner = NULL, lease_until = NULL,"
                " last_error = NULL, last_status = NULL, completed_at = %s, updated_at = %s,"
                " relink = (topics <> %s::text[]) WHERE aweme_id = %s"
                f" AND (%s::text IS NULL OR ({_IN_FLIGHT}{_OWNED})) RETURNING relink",
                [
                    (
                        c.size,
                        c.sha256,
                        c.path,
                        holder_node(c.owner),
                        c.now,
                        c.now,
                        _stored_topics(tuple(c.linked_topics)),
                        c.aweme_id,
                        c.owner,
                        c.owner,
                    )
                    for c in (done[n] for n in order)
                ],
                returning=True,
            )
            flags: list[bool | None] = [False] * len(done)
            for n in order:
                row = cur.fetchone()
                flags[n] = (
                    None if row is None and done[n].owner is not None else bool(row and row[0])
                )
                cur.nextset()
            return flags

        return self._write(complete)

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

        def finish(cur: Cursor) -> State | None:
            row = cur.execute(
                "SELECT url, state, held, owner FROM items WHERE aweme_id = %s FOR UPDATE",
                (aweme_id,),
            ).fetchone()
            url, current, held, claimed_by = row if row is not None else (None, None, None, None)
            # In flight: active, or still held if its start is not written yet (then its
            # attempt is counted here).
            started = current == State.ACTIVE.value or (current == State.PENDING.value and held)
            if owner is not None and not (started and claimed_by in (None, owner)):
                return None
            if not started:
                return state if current is None else State(current)
            if url != attempted_url:
                cur.execute(
                    "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0,"
                    " held = false, owner = NULL, lease_until = NULL, last_error = %s,"
                    " last_status = %s, updated_at = %s WHERE aweme_id = %s",
                    (reason, status, now, aweme_id),
                )
                return State.PENDING
            cur.execute(
                "UPDATE items SET state = %s, next_attempt_at = %s, last_error = %s,"
                " last_status = %s, attempts = greatest(attempts + held::int - %s, 0),"
                " held = false, owner = NULL, lease_until = NULL, updated_at = %s"
                " WHERE aweme_id = %s",
                (state.value, next_attempt_at, reason, status, int(refund_attempt), now, aweme_id),
            )
            return state

        return self._write(finish)

    # --- hard links for further topics ----------------------------------------------------

    def pending_relinks(
        self, limit: int, skip: Sequence[str] = (), after: str = "", *, node: str | None = None
    ) -> list[Relink]:
        """Done items that gained topics since their file was published, in id order after
        `after` (a pass sees each once), but those in `skip`; with `node`, that node's."""
        rows = self._read(
            "SELECT aweme_id, path, topics FROM items WHERE relink AND state = 'done'"
            " AND aweme_id > %s AND aweme_id <> ALL (%s)"
            f"{'' if node is None else ' AND node = %s'} ORDER BY aweme_id LIMIT %s",
            (after, list(skip), *(() if node is None else (node,)), limit),
        )
        return [Relink(r[0], r[1], _topics_of(r[2])) for r in rows]

    def clear_relink(self, aweme_id: str, linked_topics: Sequence[str | None]) -> bool:
        """Mark an item's links as made, unless topics arrived that `linked_topics` (the topics
        it was linked for) do not cover: then it stays due. True when cleared."""
        stored = _stored_topics(tuple(linked_topics))
        return self._write(
            lambda cur: (
                cur.execute(
                    "UPDATE items SET relink = false WHERE aweme_id = %s AND topics = %s::text[]",
                    (aweme_id, stored),
                ).rowcount
                > 0
            )
        )

    # --- reporting ------------------------------------------------------------------------

    def counts(self) -> Counts:
        """Items by state, extracts by outcome, bytes downloaded: the sums of item_totals'
        few rows, and a count of the extracts' (one row per file seen)."""
        row = self._read_one(
            "SELECT coalesce(sum(pending), 0)::bigint, coalesce(sum(active), 0)::bigint,"
            " coalesce(sum(done), 0)::bigint, coalesce(sum(expired), 0)::bigint,"
            " coalesce(sum(failed), 0)::bigint, coalesce(sum(done_bytes), 0)::bigint"
            " FROM item_totals"
        )
        assert row is not None  # an aggregate always has its row
        states = (State.PENDING, State.ACTIVE, State.DONE, State.EXPIRED, State.FAILED)
        items = {s.value: int(n) for s, n in zip(states, row, strict=False)}
        extracts = {"merged": 0, "rejected": 0, "duplicate": 0}
        for status, n in self._read("SELECT status, count(*) FROM extracts GROUP BY status"):
            extracts[status] = int(n)
        return Counts(items, extracts, int(row[5]))

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
        digest, path and raw record too. Streamed: the ids are sorted alone, by the server, in
        a cursor WITH HOLD (no transaction stays open between two reads); the rows are read
        `_CHUNK` at a time."""
        where, args = _item_filter(state, topic, node)
        query = f"SELECT aweme_id FROM items{where} ORDER BY updated_at DESC"
        if limit is not None:
            query += " LIMIT %s"
            args.append(limit)
        columns = "aweme_id, topics, state, attempts, last_error, last_status, bytes, updated_at"
        if full:
            columns += ", sha256, path, record"
        fetch = f"SELECT {columns} FROM items WHERE aweme_id = ANY (%s)"
        try:
            with (
                self._connection() as conn,
                conn.cursor(name=f"ingestd_items_{next(self._cursors)}", withhold=True) as keys,
            ):
                keys.execute(query, args)
                while chunk := [str(r[0]) for r in keys.fetchmany(_CHUNK)]:
                    rows = {r[0]: r for r in conn.execute(fetch, (chunk,))}
                    for aweme_id in chunk:
                        r = rows.get(aweme_id)
                        if r is None:  # items are never deleted: only for safety
                            continue
                        yield ItemSummary(
                            r[0], _topics_of(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], *r[8:]
                        )
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def count_items(
        self, state: str | None = None, topic: str | None = None, *, node: str | None = None
    ) -> int:
        """How many items `iter_items` would give without a limit."""
        where, args = _item_filter(state, topic, node)
        row = self._read_one(f"SELECT count(*) FROM items{where}", args)
        return 0 if row is None else int(row[0])

    def retry(
        self, states: Iterable[str], ids: Iterable[str], now: float
    ) -> tuple[list[str], dict[str, str]]:
        """Put items back to pending with fresh attempts, due now. Returns (requeued, refused):
        refused maps each id refused, in the order given, to why: `unknown`
        (not in the manifest), `done` (never downloaded again) or `active` (in flight now)."""
        states, ids = list(states), list(ids)
        requeue = (
            "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0,"
            " last_error = NULL, last_status = NULL, updated_at = %s"
        )

        def retry(cur: Cursor) -> tuple[list[str], dict[str, str]]:
            requeued: list[str] = []
            refused: dict[str, str] = {}
            if states:
                cur.execute(requeue + " WHERE state = ANY (%s) RETURNING aweme_id", (now, states))
                requeued += [r[0] for r in cur]
            for aweme_id in ids:
                row = cur.execute(
                    requeue + " WHERE aweme_id = %s AND state IN ('pending', 'expired', 'failed')"
                    " RETURNING aweme_id",
                    (now, aweme_id),
                ).fetchone()
                if row is not None:
                    requeued.append(aweme_id)
                    continue
                found = cur.execute(
                    "SELECT state FROM items WHERE aweme_id = %s", (aweme_id,)
                ).fetchone()
                refused[aweme_id] = "unknown" if found is None else str(found[0])
            if requeued:
                _queue_changed(cur)
            return requeued, refused

        return self._write(retry)

    # --- verify ---------------------------------------------------------------------------
    # Reads are one short statement each; each repair is one short transaction that locks the
    # item first (FOR UPDATE). Its callback runs inside it, so no daemon can claim or change
    # the item meanwhile: it must be a quick filesystem step, never a download or a hash.

    def done_items(
        self, after: str = "", limit: int = _CHUNK, *, node: str | None = None
    ) -> list[DoneItem]:
        """Done items in id order after `after`: page through them with the last id seen; with
        `node`, that node's."""
        rows = self._read(
            "SELECT aweme_id, path, topics, bytes, sha256 FROM items"
            f" WHERE state = 'done' AND aweme_id > %s{'' if node is None else ' AND node = %s'}"
            " ORDER BY aweme_id LIMIT %s",
            (after, *(() if node is None else (node,)), limit),
        )
        return [DoneItem(r[0], r[1], _topics_of(r[2]), r[3], r[4]) for r in rows]

    def places(self, ids: Iterable[str]) -> dict[str, ItemPlace]:
        """State, path and topics of the known ones among `ids`."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, ItemPlace] = {}
        for start in range(0, len(wanted), _IDS_PER_READ):
            for r in self._read(
                "SELECT aweme_id, state, path, topics FROM items WHERE aweme_id = ANY (%s)",
                (wanted[start : start + _IDS_PER_READ],),
            ):
                found[r[0]] = ItemPlace(r[0], r[1], r[2], _topics_of(r[3]))
        return found

    @staticmethod
    def _lock_done(cur: Cursor, aweme_id: str, sha256: str | None) -> bool:
        row = cur.execute(
            "SELECT 1 FROM items WHERE aweme_id = %s AND state = 'done'"
            " AND sha256 IS NOT DISTINCT FROM %s FOR UPDATE",
            (aweme_id, sha256),
        ).fetchone()
        return row is not None

    def while_done(self, aweme_id: str, sha256: str | None, action: Callable[[], T]) -> T | None:
        """Run `action` in a transaction in which the item is still done with `sha256`, its
        row locked; None (without running it) when it is not."""

        def run(cur: Cursor) -> T | None:
            if not self._lock_done(cur, aweme_id, sha256):
                return None
            return action()

        return self._write(run, retry=False)

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

        def requeue(cur: Cursor) -> bool:
            if not self._lock_done(cur, aweme_id, sha256):
                return False
            before()
            cur.execute(
                "UPDATE items SET state = 'pending', attempts = 0, next_attempt_at = 0,"
                " held = false, bytes = NULL, sha256 = NULL, path = NULL, node = NULL,"
                " completed_at = NULL,"
                " relink = false, validator = NULL, durable_bytes = 0, total_bytes = NULL,"
                " last_error = %s, last_status = NULL, updated_at = %s WHERE aweme_id = %s",
                (reason, now, aweme_id),
            )
            return True

        return self._write(requeue, retry=False)

    def drop_part(self, aweme_id: str, remove: Callable[[], None]) -> bool:
        """Remove an orphan `.part` (by `remove`) in a transaction in which its item is unknown
        or neither pending nor active: no download of it can be writing that file, and none can
        start until the removal is done (a known item's row is locked; for an unknown one, the
        merge lock keeps merges from bringing it). Its item's resume point is forgotten with it.
        False (nothing removed) when the item is pending or active."""
        lock = "SELECT state FROM items WHERE aweme_id = %s FOR UPDATE"

        def drop(cur: Cursor) -> bool:
            row = cur.execute(lock, (aweme_id,)).fetchone()
            if row is None:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MERGE_LOCK,))
                row = cur.execute(lock, (aweme_id,)).fetchone()
            if row is not None and row[0] in (State.PENDING.value, State.ACTIVE.value):
                return False
            remove()
            if row is not None:
                cur.execute(
                    "UPDATE items SET validator = NULL, durable_bytes = 0, total_bytes = NULL"
                    " WHERE aweme_id = %s",
                    (aweme_id,),
                )
            return True

        return self._write(drop, retry=False)

    def oldest_pending(self) -> float | None:
        """Creation time of the oldest item still pending (for the queue-age metric)."""
        row = self._read_one("SELECT min(created_at) FROM items WHERE state = 'pending'")
        return None if row is None or row[0] is None else float(row[0])

    def record(self, aweme_id: str) -> str | None:
        """An item's raw record (the JSON text of the latest extract that had it), or None."""
        row = self._read_one("SELECT record FROM items WHERE aweme_id = %s", (aweme_id,))
        return None if row is None else str(row[0])

    def item(self, aweme_id: str) -> dict[str, object] | None:
        """One item's row as a dict (for the CLI and tests), valued as the SQLite store's:
        topics, sources and extract_ids as JSON array text, held and relink 0 or 1."""
        try:
            columns = _ITEM_COLUMNS + (_OWNER_COLUMNS if self._version >= 2 else "")
            columns += _NODE_COLUMNS if self._version >= 3 else ""
            with self._connection() as conn:
                cur = conn.execute(f"SELECT {columns} FROM items WHERE aweme_id = %s", (aweme_id,))
                row = cur.fetchone()
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        if row is None:
            return None
        names = [d.name for d in cur.description or ()]
        fields: dict[str, object] = dict(zip(names, row, strict=True))
        fields["topics"] = "[" + ", ".join(row[3]) + "]"
        fields["extract_ids"] = json.dumps(fields["extract_ids"])
        fields["held"] = int(bool(fields["held"]))
        fields["relink"] = int(bool(fields["relink"]))
        return fields


# --- statements shared by several writes ----------------------------------------------------------


def _claim(
    cur: Cursor,
    now: float,
    change: str,
    limit: int,
    skip: Sequence[str],
    lease: tuple[str | None, float | None],
) -> list[Item]:
    """Apply `change` to up to `limit` due, unclaimed items, earliest due first, passing over
    rows other transactions hold, recording `lease` (owner, lease_until); the claimed items
    in that order."""
    if limit <= 0:
        return []
    skipping = " AND origin <> ALL (%s)" if skip else ""
    cur.execute(
        "WITH due AS (SELECT aweme_id FROM items WHERE state = 'pending' AND NOT held"
        f" AND next_attempt_at <= %s{skipping} ORDER BY next_attempt_at LIMIT %s"
        " FOR UPDATE SKIP LOCKED)"
        f" UPDATE items AS i SET {change}, owner = %s, lease_until = %s, updated_at = %s"
        " FROM due WHERE i.aweme_id = due.aweme_id RETURNING i.aweme_id, i.url, i.topics,"
        f" i.attempts, {_RESUME_POINT}, i.next_attempt_at",
        (now, *((list(skip),) if skip else ()), limit, *lease, now, *(holder_node(lease[0]),) * 3),
    )
    rows = sorted(cur.fetchall(), key=lambda r: r[7])
    return [Item(r[0], r[1], _topics_of(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def _start_held(cur: Cursor, ids: Sequence[str], now: float, owner: str | None) -> list[int | None]:
    """One statement for all of `ids`: held -> active, attempt counted, owner and lease
    kept; with `owner`, only items held by it or by no one."""
    if not ids:
        return []
    owned = "" if owner is None else _OWNED
    cur.execute(
        _MINE.format("held AND state = 'pending'" + owned)
        + " UPDATE items AS i SET state = 'active', held = false, attempts = i.attempts + 1,"
        " updated_at = %s FROM mine WHERE i.aweme_id = mine.aweme_id"
        " RETURNING i.aweme_id, i.attempts",
        (list(ids), *(() if owner is None else (owner,)), now),
    )
    started = {r[0]: r[1] for r in cur.fetchall()}
    return [started.get(aweme_id) for aweme_id in ids]


def _owned_by(owner: str | None) -> tuple[str, tuple[object, ...]]:
    """A condition (to follow a WHERE) for the items of `owner` and its workers (`owner/...`,
    compared as a prefix: LIKE would read `_` and `%` in a name as wildcards); "" for those of
    no owner; None: no condition."""
    if owner is None:
        return "", ()
    if not owner:
        return " AND owner IS NULL", ()
    return " AND (owner = %s OR starts_with(owner, %s))", (owner, owner + "/")


def _item_filter(
    state: str | None, topic: str | None, node: str | None = None
) -> tuple[str, list[object]]:
    where: list[str] = []
    args: list[object] = []
    if state is not None:
        where.append("state = %s")
        args.append(state)
    if topic is not None:
        # The raw topic or its folder name (see policy.naming.topic_folder); text no folder
        # name can be is sent as NULL, as PostgreSQL could not take it.
        where.append("(%s = ANY (topics) OR %s = ANY (folders))")
        args += [json.dumps(topic), topic if _storable(topic) else None]
    if node is not None:  # claimed by the node or its workers, or its file or part there
        where.append("(node = %s OR owner = %s OR starts_with(owner, %s))")
        args += [node, node, node + "/"]
    return (" WHERE " + " AND ".join(where) if where else ""), args


def _open_extract(cur: Cursor, path: str, sha256: str, now: float) -> int | None:
    """The extract_progress row of this version of the extract, made on its first merge
    (a merge that was interrupted goes on with its row). None when it completed already."""
    cur.execute(
        "INSERT INTO extract_progress (path, sha256, started_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (path, sha256) DO NOTHING",
        (path, sha256, now),
    )
    row = cur.execute(
        "SELECT id, completed_at FROM extract_progress WHERE path = %s AND sha256 = %s",
        (path, sha256),
    ).fetchone()
    assert row is not None  # inserted, or there already
    return None if row[1] is not None else int(row[0])


_BINDINGS = "SELECT key, value FROM meta WHERE key = %s OR starts_with(key, 'data_dir/')"


def _bindings(
    rows: Sequence[tuple[Any, ...]], node: str | None
) -> tuple[str | None, str | None, bool]:
    """From the meta rows of _BINDINGS: `node`'s data dir, the library's, and whether any
    node has one."""
    recorded = {str(key): str(value) for key, value in rows}
    nodes = [key for key in recorded if key != META_DATA_DIR]
    return recorded.get(data_dir_key(node)), recorded.get(META_DATA_DIR), bool(nodes)


def _queue_changed(cur: Cursor) -> None:
    """Tell the nodes listening (watch_queue) that items may be due, once the transaction
    commits (PostgreSQL sends one notification per channel and transaction)."""
    cur.execute("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))


def _notifying(write: Callable[[Cursor], ChunkPlan]) -> Callable[[Cursor], ChunkPlan]:
    """A merge chunk's write that notifies the queue's listeners when it queued anything."""

    def merge(cur: Cursor) -> ChunkPlan:
        plan = write(cur)
        if plan.inserted or plan.updated:
            _queue_changed(cur)
        return plan

    return merge


def _check_replaceable(cur: Cursor, data_dir: Path, source: str, node: str | None) -> None:
    """Raise ForeignManifest unless the (locked) manifest may become a copy of `source`, the
    manifest of `data_dir`: no other data dir bound, and no rows, or only those the last copy
    of `source` wrote. Each row carries the id of the transaction that wrote it (xmin): those of
    a copy all have the one of its `migrated_from` mark, a row written since has another."""
    meta: dict[str, str] = dict(cur.execute("SELECT key, value FROM meta").fetchall())
    recorded = meta.get(data_dir_key(node), meta.get(META_DATA_DIR))
    if recorded is not None and not same_dir(recorded, data_dir):
        raise ForeignManifest(
            f"it holds the manifest of the data dir {recorded}, not {library_path(data_dir)}"
        )
    copied = meta.get(_META_SOURCE)
    if copied is None:
        if _any_row(cur, "TRUE", ()):
            raise ForeignManifest(f"it holds a manifest of its own, not a copy of {source}")
    elif copied != source:
        raise ForeignManifest(f"it holds a copy of {copied}, not of {source}")
    elif _any_row(cur, "xmin <> (SELECT xmin FROM meta WHERE key = %s)", (_META_SOURCE,)):
        raise ForeignManifest(
            f"it was written since it was copied from {source} (a daemon ran on it): copying"
            " again would undo that"
        )


def _any_row(cur: Cursor, where: str, params: tuple[object, ...]) -> bool:
    """Whether items, extracts or extract_progress has a row where `where` holds."""
    tables = ("items", "extracts", "extract_progress")
    query = " OR ".join(f"EXISTS (SELECT FROM {table} WHERE {where})" for table in tables)
    row = cur.execute(f"SELECT {query}", params * len(tables)).fetchone()
    return bool(row and row[0])


def _merge_chunk(
    cur: Cursor, chunk: Sequence[Record], source: str, now: float, extract_id: int | None
) -> ChunkPlan:
    """One transaction of a merge: under the merge lock, the known items of the chunk locked
    in id order and read, the plan made (store.merging), new items copied in, known ones
    rewritten from a temp table, and the counts' deltas of the new rows and the new links
    appended (the trigger moves the rest)."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MERGE_LOCK,))
    cur.execute(
        "SELECT aweme_id, url, topics, sources, state, extract_ids, bytes FROM items"
        " WHERE aweme_id = ANY (%s) ORDER BY aweme_id FOR UPDATE",
        (sorted({r.aweme_id for r in chunk}),),
    )
    known: dict[str, Known] = {}
    urls: dict[str, str] = {}  # as stored: origin_of only for those that change
    links: dict[str, tuple[int, ...]] = {}  # the extracts each known item is linked to
    sizes: dict[str, int | None] = {}
    for aweme_id, url, topics, sources, st, extract_ids, size in cur.fetchall():
        known[aweme_id] = Known(url, _topics_of(topics), _sources(sources), State(st))
        urls[aweme_id] = url
        links[aweme_id] = tuple(extract_ids)
        sizes[aweme_id] = size
    plan = plan_chunk(chunk, known, source, now)
    known = plan.known
    fresh, lists = _link(cur, extract_id, plan.dirty, links)
    alive, dead = plan.new_rows()
    if plan.inserted:
        linked = "{}" if extract_id is None else _id_literal((extract_id,))
        with cur.copy(f"COPY items ({_INSERT_COLUMNS}) FROM STDIN") as copy:
            for rows, state, error in ((alive, "pending", None), (dead, "expired", _URL_EXPIRED)):
                for i in rows:
                    k = known[i]
                    topics, folders = _topic_literals(k.topics)
                    copy.write_row(
                        (
                            i,
                            k.url,
                            origin_of(k.url),
                            topics,
                            folders,
                            _json_array(k.sources),
                            plan.raw[i],
                            state,
                            error,
                            linked,
                            now,
                            now,
                        )
                    )
        cur.execute(
            "INSERT INTO item_totals (pending, expired) VALUES (%s, %s)", (len(alive), len(dead))
        )
    if plan.dirty:
        cur.execute(_MERGE_ROWS)
        with cur.copy("COPY merge_rows FROM STDIN") as copy:
            for i in plan.dirty:
                k = known[i]
                topics, folders = _topic_literals(k.topics)
                expired = i in plan.expired
                copy.write_row(
                    (
                        i,
                        k.url,
                        None if k.url == urls[i] else origin_of(k.url),
                        topics,
                        folders,
                        _json_array(k.sources),
                        k.state.value,
                        plan.raw[i],
                        _id_literal(lists[i]),
                        i in plan.reset,
                        _URL_EXPIRED if expired else None,
                        expired,
                        i in plan.relink,
                    )
                )
        cur.execute(_MERGE_UPDATE, (now, sorted(plan.dirty)))
    if extract_id is not None and (plan.inserted or fresh):
        linked_known = [(known[i].state, sizes.get(i)) for i in fresh]
        cur.execute(
            "INSERT INTO extract_moves (extract_id, items, outstanding, done, expired, failed,"
            " bytes) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (extract_id, *link_counts(len(alive), len(dead), linked_known)),
        )
    return plan


def _link(
    cur: Cursor, extract_id: int | None, dirty: set[str], links: dict[str, tuple[int, ...]]
) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """The extract list of each known item of a chunk, with this extract added (completed
    ones dropped, see merging.relinked), and the items not linked to it yet."""
    if extract_id is None:
        return [], {i: links[i] for i in dirty}
    open_ids: set[int] = set()
    if seen := other_extracts(extract_id, dirty, links):
        cur.execute(
            "SELECT id FROM extract_progress WHERE id = ANY (%s) AND completed_at IS NULL",
            (sorted(seen),),
        )
        open_ids.update(row[0] for row in cur)
    return relinked(extract_id, dirty, links, open_ids)


# --- connecting and migrating ---------------------------------------------------------------------


_CONNECT_ARGS: dict[str, Any] = {
    "autocommit": True,  # a write opens its own transaction
    "connect_timeout": _CONNECT_TIMEOUT,
    "application_name": "ingestd",
}
_CREDENTIAL_PASSWORDS: set[str] = set()  # read from credentials: what _scrub also hides


def _connect_args(dsn: str, credentials: str | None) -> dict[str, Any]:
    """How to connect to `dsn`: with the password in the credential CREDENTIAL of the
    directory `credentials` ($CREDENTIALS_DIRECTORY) when there is one and `dsn` names none
    (libpq then prefers it to PGPASSWORD and PGPASSFILE). Raises ManifestError if that
    credential is empty or unreadable."""
    if not credentials or _named_password(dsn):
        return _CONNECT_ARGS
    path = Path(credentials) / CREDENTIAL
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        return _CONNECT_ARGS
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"credential {CREDENTIAL} ({path}): unreadable: {exc}") from None
    if not password:
        raise ManifestError(f"credential {CREDENTIAL} is empty ({path})")
    _CREDENTIAL_PASSWORDS.add(password)
    return {**_CONNECT_ARGS, "password": password}


def _named_password(dsn: str) -> bool:
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except psycopg.Error:
        return False  # connecting will say what is wrong with it


# The last reason each DSN's pool failed to connect: its timeouts say only that they timed out.
_CONNECT_FAILURES: dict[str, str] = {}
# The pool logs each failed reconnection; with no handler, Python would print them to stderr
# (the journal), one per attempt. The daemon tells an outage once itself (manifest_error).
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
logging.getLogger("psycopg.pool").propagate = False


class _PoolConnection(psycopg.Connection[TupleRow]):
    """A connection that notes why it could not connect, for the error its caller sees."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> _PoolConnection:
        try:
            conn = super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            _CONNECT_FAILURES[conninfo] = str(exc)
            raise
        _CONNECT_FAILURES.pop(conninfo, None)
        return conn


def _configure(readonly: bool) -> Callable[[psycopg.Connection[TupleRow]], None]:
    """Set up a new connection: a bounded lock wait, every transaction read-only when
    `readonly`."""

    def configure(conn: psycopg.Connection[TupleRow]) -> None:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false),"
            " set_config('default_transaction_read_only', %s, false)",
            (f"{_LOCK_TIMEOUT_MS}ms", "on" if readonly else "off"),
        )

    return configure


def _check_unread(conn: psycopg.Connection[TupleRow]) -> None:
    """Raise if the server closed `conn` while it sat in the pool. An idle connection in
    autocommit that listens to nothing is sent nothing, so only when its socket has something
    to read (the server's goodbye, its EOF) does this cost a round trip, which then fails."""
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        conn.execute("")


def borrow_limit(down: bool, stopping: bool) -> float:
    """How long a call waits for a connection: long enough to ride out a restart, unless the
    database is known to be down (a wait timed out since the last call that got through) or
    the store's owner is stopping."""
    if down and stopping:
        return BORROW_WAIT_STOPPING
    return BORROW_WAIT_DOWN if down or stopping else BORROW_WAIT


def _pool(
    dsn: str, readonly: bool, args: dict[str, Any]
) -> ConnectionPool[psycopg.Connection[TupleRow]]:
    """The connections of one store (see the module docstring); it connects in the
    background."""
    return ConnectionPool(
        dsn,
        connection_class=_PoolConnection,
        kwargs=args,
        min_size=1,
        max_size=POOL_SIZE,
        configure=_configure(readonly),
        check=_check_unread,
        name="ingestd-manifest",
        timeout=BORROW_WAIT,
        max_lifetime=CONNECTION_LIFETIME,
        reconnect_timeout=RECONNECT_WINDOW,
        num_workers=1,
        open=True,
    )


def _connect(dsn: str, readonly: bool, args: dict[str, Any]) -> psycopg.Connection[TupleRow]:
    """A connection as the pool makes them, outside of it. Raises ManifestError."""
    try:
        conn = psycopg.connect(dsn, **args)
    except psycopg.Error as exc:
        # Not chained: the driver's message, shown in a traceback, may quote the DSN.
        raise ManifestError(f"{redact_dsn(dsn)}: {_scrub(str(exc), dsn)}") from None
    try:
        _configure(readonly)(conn)
    except psycopg.Error as exc:
        conn.close()
        raise ManifestError(f"{redact_dsn(dsn)}: {_scrub(str(exc), dsn)}") from None
    return conn


def _measure_skew(conn: psycopg.Connection[TupleRow]) -> tuple[float, float]:
    """(how far the database's clock is ahead of this host's, the round trip it took)."""
    before = time.time()
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    after = time.time()
    assert row is not None
    return float(row[0]) - (before + after) / 2, after - before


def _schema_version(conn: psycopg.Connection[TupleRow]) -> int | None:
    """The newest migration recorded, 0 for none, None when there is no record at all."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return 0 if row is None else int(row[0])


def _newer(version: int) -> ManifestError:
    return ManifestError(
        f"manifest schema version {version} is newer than this ingestd ({SCHEMA_VERSION})"
    )


def _check_version(conn: psycopg.Connection[TupleRow]) -> int:
    """For a reader: the schema must be there, and not newer than this code's. Returns its
    version."""
    version = _schema_version(conn)
    if not version:
        raise ManifestError("no manifest in this database yet (the daemon creates it)")
    if version > SCHEMA_VERSION:
        raise _newer(version)
    return version


def _migrate(conn: psycopg.Connection[TupleRow]) -> None:
    """Apply the migrations this database lacks, each in a transaction of its own that records
    it, under an advisory lock: daemons starting together apply each one once."""
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(_MIGRATIONS_TABLE)
            version = _schema_version(conn) or 0
            if version > SCHEMA_VERSION:
                raise _newer(version)
            if version == SCHEMA_VERSION:
                return
            conn.execute(_MIGRATIONS[version + 1])
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version + 1,))


if TYPE_CHECKING:
    _: type[ManifestStore] = PostgresManifest  # mypy proves that it meets the contract
