"""Extract completion in SQLite storage: the links from items to extracts, and schema 6's
migration. Its semantics (what each extract waits for) are in tests/contract."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestd.policy.extract import Record
from ingestd.store.manifest import _MIGRATIONS, SCHEMA_VERSION, Completion, Manifest

FUTURE = "https://h/v/{}.mp4?expire=4102444800&signature=x"


def rec(aweme_id: str, url: str | None = None, topic: str = "t") -> Record:
    return Record(aweme_id, url or FUTURE.format(aweme_id), topic, f'{{"aweme_id":"{aweme_id}"}}')


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "manifest.sqlite3"


@pytest.fixture
def manifest(path: Path) -> Iterator[Manifest]:
    m = Manifest.open(path)
    yield m
    m.close()


def merge(m: Manifest, name: str, records: list[Record], now: float = 10.0) -> None:
    """Merge an extract the way the daemon does: linked by its sha256, then recorded."""
    sha = f"sha-{name}"
    counts = m.merge(records, name, now, sha)
    total = (counts.records, counts.new, counts.updated, 0)
    m.record_extract(name, sha, 1, "merged", now, None, total)


def progress(path: Path, name: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM extract_progress WHERE path = ?", (name,)).fetchone()
        return dict(row)
    finally:
        conn.close()


def waits(path: Path, name: str) -> tuple[int, int, int, int, int]:
    """(items, outstanding, done, expired, failed) of an extract."""
    p = progress(path, name)
    return p["items"], p["outstanding"], p["done"], p["expired"], p["failed"]


def settled(m: Manifest) -> dict[str, tuple[int, int, int, int, int]]:
    return {e.path: (e.items, e.done, e.expired, e.failed, e.bytes) for e in m.settled_extracts()}


def complete(m: Manifest, aweme_id: str, size: int) -> None:
    m.complete_many([Completion(aweme_id, size, "ab" * 32, f"t/{aweme_id}.mp4", ["t"], 20.0)])


def test_items_list_the_open_extracts_that_brought_them(path: Path, manifest: Manifest) -> None:
    # A list in the item's row, not a link table (see _MIGRATIONS[6]); completed extracts are
    # dropped from the lists of the items merges touch, so that a list holds open ones only.
    merge(manifest, "e1.json", [rec("1"), rec("2")])
    merge(manifest, "e2.json", [rec("2", topic="u"), rec("3")])
    assert manifest.item("2")["extract_ids"] == "[1, 2]"
    manifest.claim_due(now=11.0, limit=3)
    complete(manifest, "2", 7)
    complete(manifest, "1", 5)
    manifest.close_extracts([progress(path, "e1.json")["id"]], now=12.0)
    assert manifest.item("1")["extract_ids"] == "[1]", "kept until a merge touches it"
    merge(manifest, "e3.json", [rec("1"), rec("2")])
    assert manifest.item("1")["extract_ids"] == "[3]"
    assert manifest.item("2")["extract_ids"] == "[2, 3]"
    assert manifest.item("3")["extract_ids"] == "[2]"


def test_version_5_manifests_are_migrated_and_their_extracts_closed(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 6):
        conn.executescript(f"{_MIGRATIONS[version]}; PRAGMA user_version = {version};")
    rows = [("1", "done", 99), ("2", "pending", None), ("3", "failed", None)]
    for aweme_id, state, size in rows:
        conn.execute(
            "INSERT INTO items (aweme_id, url, topics, state, bytes, sources, record, created_at,"
            " updated_at) VALUES (?, ?, '[\"t\"]', ?, ?, '[\"old.json\"]', '{}', 1.0, 2.0)",
            (aweme_id, FUTURE.format(aweme_id), state, size),
        )
    conn.execute(
        "INSERT INTO extracts (path, sha256, size, status, records, new, processed_at)"
        " VALUES ('old.json', 'sha-old', 10, 'merged', 3, 3, 5.0)"
    )
    conn.close()
    reader = Manifest.open(path, readonly=True)  # a CLI may read it before the daemon migrates
    assert reader.counts().items["pending"] == 1
    reader.close()
    m = Manifest.open(path)
    try:
        # Merged before schema 6: closed, with no counts (its items were never linked) and no
        # event to come.
        old = progress(path, "old.json")
        assert (old["merged_at"], old["completed_at"], old["items"]) == (5.0, 5.0, None)
        assert m.settled_extracts() == []
        assert m.item("2")["extract_ids"] == "[]"
        # Old items change state as before; a new extract that brings them counts them.
        m.claim_due(now=6.0, limit=5)
        complete(m, "2", 40)
        merge(m, "new.json", [rec("1"), rec("2"), rec("3"), rec("4")])
        assert waits(path, "new.json") == (4, 1, 2, 0, 1)
        assert progress(path, "new.json")["bytes"] == 139
        m.claim_due(now=21.0, limit=5)
        complete(m, "4", 1)
        assert settled(m) == {"new.json": (4, 3, 0, 1, 140)}
        assert m.counts().items == {"pending": 0, "active": 0, "done": 3, "expired": 0, "failed": 1}
    finally:
        m.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
    conn.close()
