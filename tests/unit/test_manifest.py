"""The SQLite manifest as storage: its schema and migrations, WAL, read-only readers, and the
status totals kept by triggers. What every backend must do is in tests/contract."""

import sqlite3
from pathlib import Path

import pytest

from ingestd.policy.merge import State
from ingestd.store.base import LapsedClaim, OwnerLoad
from ingestd.store.manifest import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    WrongLibrary,
)
from support.store import OLD, done, r


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    m = Manifest.open(tmp_path / "state" / "manifest.sqlite3")
    yield m
    m.close()


def test_schema_is_versioned_and_wal(tmp_path: Path, manifest: Manifest) -> None:
    conn = sqlite3.connect(tmp_path / "state" / "manifest.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ManifestError, match="newer"):
        Manifest.open(path)


def test_readonly_reader_sees_writer_commits(tmp_path: Path, manifest: Manifest) -> None:
    manifest.merge([r("1")], "e.json", now=1.0)
    reader = Manifest.open(tmp_path / "state" / "manifest.sqlite3", readonly=True)
    try:
        assert reader.counts().items["pending"] == 1
        manifest.merge([r("2")], "e2.json", now=2.0)
        assert reader.counts().items["pending"] == 2
    finally:
        reader.close()


def test_version_1_manifests_are_migrated_with_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(_MIGRATIONS[1] + "; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO items (aweme_id, url, topics, state, attempts, bytes, sources, record,"
        " created_at, updated_at) VALUES ('7', 'https://h/v', '[\"a\"]', 'done', 2, 99,"
        " '[\"e.json\"]', '{}', 1.0, 2.0)"
    )
    conn.close()
    reader = Manifest.open(path, readonly=True)  # a CLI may read it before the daemon migrates
    assert reader.counts().items["done"] == 1
    reader.close()
    m = Manifest.open(path)
    row = m.item("7")
    assert row is not None and (row["state"], row["attempts"], row["bytes"]) == ("done", 2, 99)
    assert (m.counts().items["done"], m.counts().bytes_done) == (1, 99)  # totals start right
    m.merge([r("8")], "f.json", now=3.0)
    items = m.counts().items
    assert (items["pending"], items["done"]) == (1, 1)
    m.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchone()[0]
    assert "WITHOUT ROWID" not in sql
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"items_due", "items_relink"} <= indexes
    conn.close()


def test_status_totals_are_kept_not_counted(manifest: Manifest) -> None:
    # Totals per state are kept by triggers (tests/contract checks them against a full count
    # after every kind of change); reading them must not touch the items table.
    manifest.merge([r(str(i)) for i in range(6)], "e", 1.0)
    claimed = manifest.claim_due(2.0, 3)
    done(manifest, claimed[0].aweme_id, 99, "x", "p", ("a",), 3.0)
    manifest.finish_failed(claimed[1].aweme_id, OLD, State.FAILED, "e", 404, 0.0, False, 3.0)
    rows = manifest._conn.execute(
        "SELECT state, count(*), coalesce(sum(bytes), 0) FROM items GROUP BY state"
    ).fetchall()
    items = {state.value: 0 for state in State} | {st: n for st, n, _ in rows}
    statements: list[str] = []
    manifest._conn.set_trace_callback(statements.append)
    counts = manifest.counts()
    manifest._conn.set_trace_callback(None)
    assert not [q for q in statements if " FROM items" in q], statements
    assert (counts.items, counts.bytes_done) == (items, 99)
    assert counts.items == {"pending": 3, "active": 1, "done": 1, "expired": 0, "failed": 1}


def test_a_reader_sees_the_data_dir_recorded(tmp_path: Path) -> None:
    library, other = tmp_path / "library", tmp_path / "other"
    library.mkdir()
    m = Manifest.open(tmp_path / "state" / "manifest.sqlite3")
    m.bind_data_dir(library)
    assert m.bind_data_dir(other, replace=True) == str(library)  # `ingestd rebind`
    m.close()
    reader = Manifest.open(tmp_path / "state" / "manifest.sqlite3", readonly=True)
    assert reader.recorded_data_dir() == str(other)
    with pytest.raises(WrongLibrary):
        reader.check_data_dir(library)
    reader.close()


def test_version_2_manifests_are_migrated_and_adopted_by_the_first_bind(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(_MIGRATIONS[1] + ";" + _MIGRATIONS[2] + "; PRAGMA user_version = 2;")
    conn.execute(
        "INSERT INTO items (aweme_id, url, topics, state, attempts, bytes, sources, record,"
        " created_at, updated_at) VALUES ('7', 'https://h/v', '[\"a\"]', 'done', 1, 99,"
        " '[\"e.json\"]', '{}', 1.0, 2.0)"
    )
    conn.close()
    reader = Manifest.open(path, readonly=True)  # read before any daemon migrated it
    assert reader.recorded_data_dir() is None
    reader.check_data_dir(tmp_path / "anything")
    assert reader.counts().items["done"] == 1
    reader.close()
    m = Manifest.open(path)
    assert m.recorded_data_dir() is None
    assert m.bind_data_dir(tmp_path / "library") is None
    assert (m.counts().items["done"], m.counts().bytes_done) == (1, 99)
    m.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'meta'").fetchone()[0]
    assert "WITHOUT ROWID" in sql
    assert conn.execute("SELECT key, value FROM meta").fetchall() == [
        ("data_dir", str(tmp_path / "library"))
    ]
    conn.close()


def test_version_6_manifests_gain_owners_and_leases(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    script = ";".join(_MIGRATIONS[v] for v in range(1, 7))
    conn.executescript(script + "; PRAGMA user_version = 6;")
    for aweme_id, state, held, attempts in (("1", "active", 0, 1), ("2", "pending", 1, 0)):
        conn.execute(
            "INSERT INTO items (aweme_id, url, topics, state, held, attempts, sources, record,"
            " created_at, updated_at) VALUES (?, 'https://h/v', '[\"a\"]', ?, ?, ?,"
            " '[\"e.json\"]', '{}', 1.0, 2.0)",
            (aweme_id, state, held, attempts),
        )
    conn.close()
    reader = Manifest.open(path, readonly=True)  # a CLI may read it before the daemon migrates
    assert reader.in_flight_by_owner() == {"": OwnerLoad(active=1, held=1)}
    assert reader.counts().items["active"] == 1
    reader.close()
    m = Manifest.open(path)
    one = m.item("1")
    assert one is not None and (one["state"], one["owner"], one["lease_until"]) == (
        "active",
        None,
        None,
    )
    assert m.reclaim_lapsed(now=1e12) == [], "no lease: never reclaimed"
    assert m.reset_active(now=3.0, owner="") == 1  # claimed by no one: let go
    assert m.in_flight_by_owner() == {}
    started, held = m.claim(now=4.0, start=1, hold=1, owner="n/1", lease_until=5.0)
    assert len(started) == len(held) == 1
    assert m.reclaim_lapsed(now=6.0) == [
        LapsedClaim(started[0].aweme_id, "n/1", True),
        LapsedClaim(held[0].aweme_id, "n/1", False),
    ]
    m.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'items_held'").fetchone()[0]
    assert "WHERE held = 1" in sql
    conn.close()


def test_lapsed_and_owned_claims_are_found_without_reading_the_queue(
    manifest: Manifest,
) -> None:
    # reclaim_lapsed, reset_active and in_flight_by_owner find active items through items_due
    # and held ones through items_held: never a pass over every pending item.
    manifest.merge([r(str(i)) for i in range(50)], "e", 1.0)
    manifest.claim(2.0, 2, 2, owner="n", lease_until=3.0)
    statements: list[str] = []
    manifest._conn.set_trace_callback(statements.append)
    manifest.in_flight_by_owner()
    assert len(manifest.reclaim_lapsed(4.0)) == 4
    manifest.claim(5.0, 2, 2, owner="n", lease_until=9.0)
    assert manifest.reset_active(6.0, owner="n") == 2
    manifest._conn.set_trace_callback(None)
    queries = [q for q in statements if q.startswith(("SELECT", "UPDATE")) and "items" in q]
    plans = [
        step[-1]
        for query in queries
        for step in manifest._conn.execute(f"EXPLAIN QUERY PLAN {query}")
    ]
    scans = [p for p in plans if p.startswith("SCAN items") and " INDEX " not in p]
    assert len(queries) >= 6 and "SCAN items USING INDEX items_held" in plans and not scans, plans
