"""Extract completion and expired-at-merge, on a real SQLite file: what each extract still waits
for, kept by triggers through every change of state, whatever path makes it."""

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.manifest import _MIGRATIONS, SCHEMA_VERSION, Completion, Manifest

FUTURE = "https://h/v/{}.mp4?expire=4102444800&signature=x"
PAST = "https://h/v/{}.mp4?x-expires={}&signature=x"


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


def finish(m: Manifest, aweme_id: str, state: State, reason: str = "x") -> None:
    item = m.item(aweme_id)
    assert item is not None and item["state"] == "active", item
    m.finish_failed(aweme_id, str(item["url"]), state, reason, 404, 0.0, False, 20.0)


def complete(m: Manifest, aweme_id: str, size: int) -> None:
    m.complete_many([Completion(aweme_id, size, "ab" * 32, f"t/{aweme_id}.mp4", ["t"], 20.0)])


def test_outstanding_follows_every_transition_and_the_extract_completes_once(
    path: Path, manifest: Manifest
) -> None:
    merge(manifest, "e1.json", [rec(str(i)) for i in range(1, 6)] + [rec("3")])
    assert waits(path, "e1.json") == (5, 5, 0, 0, 0)  # a repeated id is one item
    assert len(manifest.claim_due(now=11.0, limit=5)) == 5  # active: still outstanding
    manifest.release(["4", "5"], now=11.5)  # handed back (a pause): still outstanding
    assert waits(path, "e1.json") == (5, 5, 0, 0, 0)
    complete(manifest, "1", 100)
    complete(manifest, "2", 250)
    finish(manifest, "3", State.FAILED, "not_found")
    assert waits(path, "e1.json") == (5, 2, 2, 0, 1)
    assert manifest.reset_active(now=12.0) == 0  # crash recovery of nothing active
    assert len(manifest.claim_due(now=13.0, limit=5)) == 2
    assert manifest.reset_active(now=14.0) == 2  # items_recovered: active -> pending
    assert waits(path, "e1.json") == (5, 2, 2, 0, 1)
    manifest.claim_due(now=15.0, limit=5)
    finish(manifest, "4", State.EXPIRED, "forbidden")
    assert settled(manifest) == {}
    # `ingestd retry` before the extract completed: it waits for that item again.
    assert manifest.retry(["failed"], [], now=16.0) == (["3"], {})
    assert waits(path, "e1.json") == (5, 2, 2, 1, 0)
    manifest.claim_due(now=17.0, limit=5)
    finish(manifest, "3", State.FAILED, "not_found")
    finish(manifest, "5", State.FAILED, "not_found")
    assert settled(manifest) == {"e1.json": (5, 2, 1, 2, 350)}
    assert settled(manifest) == {"e1.json": (5, 2, 1, 2, 350)}  # reading changes nothing
    assert manifest.close_extracts([progress(path, "e1.json")["id"]], now=18.0) == 1
    assert settled(manifest) == {}
    # Completed for good: a retry afterwards does not reopen it, nor move its counts.
    assert sorted(manifest.retry(["failed"], [], now=19.0)[0]) == ["3", "5"]
    assert settled(manifest) == {} and waits(path, "e1.json") == (5, 0, 2, 1, 2)
    assert manifest.close_extracts([progress(path, "e1.json")["id"]], now=20.0) == 0


def test_an_extract_completes_only_once_its_merge_is_recorded(
    path: Path, manifest: Manifest
) -> None:
    manifest.merge([rec("1"), rec("2")], "e1.json", 1.0, "sha-1")
    manifest.claim_due(now=2.0, limit=2)
    complete(manifest, "1", 10)
    complete(manifest, "2", 20)
    # All its items final, but more may come until the merge is recorded.
    assert settled(manifest) == {}
    manifest.record_extract("e1.json", "sha-1", 1, "merged", 3.0)
    assert settled(manifest) == {"e1.json": (2, 2, 0, 0, 30)}
    # An extract of duplicates of done items: complete right after its merge, with their bytes.
    merge(manifest, "e2.json", [rec("2", topic="other"), rec("1")])
    assert settled(manifest) == {"e1.json": (2, 2, 0, 0, 30), "e2.json": (2, 2, 0, 0, 30)}
    # An empty extract has nothing to wait for.
    merge(manifest, "e3.json", [])
    assert settled(manifest)["e3.json"] == (0, 0, 0, 0, 0)
    merged_at = {e.path: e.merged_at for e in manifest.settled_extracts()}
    assert merged_at == {"e1.json": 3.0, "e2.json": 10.0, "e3.json": 10.0}


def test_an_item_shared_by_two_extracts_counts_for_both(path: Path, manifest: Manifest) -> None:
    merge(manifest, "e1.json", [rec("1"), rec("2")])
    merge(manifest, "e2.json", [rec("2", topic="u"), rec("3")])
    assert waits(path, "e1.json") == (2, 2, 0, 0, 0)
    assert waits(path, "e2.json") == (2, 2, 0, 0, 0)
    assert manifest.item("2")["extract_ids"] == "[1, 2]"
    manifest.claim_due(now=11.0, limit=3)
    complete(manifest, "2", 7)
    assert waits(path, "e1.json") == (2, 1, 1, 0, 0)
    assert waits(path, "e2.json") == (2, 1, 1, 0, 0)
    complete(manifest, "1", 5)
    assert settled(manifest) == {"e1.json": (2, 2, 0, 0, 12)}
    manifest.close_extracts([progress(path, "e1.json")["id"]], now=12.0)
    finish(manifest, "3", State.FAILED)
    assert settled(manifest) == {"e2.json": (2, 1, 0, 1, 7)}
    # A completed extract is dropped from the lists of the items a later merge touches.
    merge(manifest, "e3.json", [rec("1"), rec("2")])
    assert manifest.item("1")["extract_ids"] == "[3]"
    assert manifest.item("2")["extract_ids"] == "[2, 3]"


def test_an_interrupted_merge_goes_on_without_counting_twice(
    path: Path, manifest: Manifest
) -> None:
    records = [rec(str(i)) for i in range(1_200)]
    manifest.interrupt.set()
    with pytest.raises(Exception, match="stopped after 0"):
        manifest.merge(records, "big.json", 1.0, "sha-big.json")
    manifest.interrupt.clear()
    manifest.merge(records[:700], "big.json", 1.0, "sha-big.json")  # stopped half-way (a crash)
    assert waits(path, "big.json") == (700, 700, 0, 0, 0)
    merge(manifest, "big.json", records)  # the next start merges it again, whole
    assert waits(path, "big.json") == (1_200, 1_200, 0, 0, 0)


def test_urls_dead_at_merge_are_stored_expired_and_summarized(
    path: Path, manifest: Manifest
) -> None:
    now = time.time()
    dead = [rec(f"d{i}", PAST.format(i, int(now) - 600 + i)) for i in range(12)]
    # Milliseconds, and upper-case keys, are read as url_expiry reads them.
    dead.append(rec("ms", f"https://h/v.mp4?a=1&EXPIRE={(int(now) - 30) * 1000}"))
    alive = [rec("a1"), rec("a2", f"https://h/v.mp4?expire={(int(now) + 60) * 1000}")]
    counts = manifest.merge([*alive[:1], *dead, *alive[1:]], "e1.json", now, "sha-1")
    assert (counts.new, counts.expired.count) == (15, 13)
    assert counts.expired.earliest == int(now) - 600
    assert counts.expired.latest == int(now) - 30
    assert counts.expired.aweme_ids == tuple(f"d{i}" for i in range(10))
    row = manifest.item("d0")
    assert row is not None
    assert (row["state"], row["last_error"], row["attempts"]) == ("expired", "url_expired", 0)
    assert manifest.counts().items["expired"] == 13
    assert {i.aweme_id for i in manifest.claim_due(now=now, limit=100)} == {"a1", "a2"}
    manifest.record_extract("e1.json", "sha-1", 1, "merged", now)
    assert waits(path, "e1.json") == (15, 2, 0, 13, 0)
    # A fresher URL that is dead too keeps an expired item expired (and says so once more);
    # a live one brings it back.
    again = manifest.merge(
        [rec("d0", PAST.format(0, int(now) - 5)), rec("d1", FUTURE.format("d1"))],
        "e2.json",
        now,
        "sha-2",
    )
    assert (again.expired.count, again.expired.aweme_ids, again.updated) == (1, ("d0",), 2)
    assert manifest.item("d0")["state"] == "expired"
    assert manifest.item("d1")["state"] == "pending"
    assert waits(path, "e1.json") == (15, 3, 0, 12, 0)  # d1 outstanding again
    # A merge that finds nothing dead says so.
    assert manifest.merge([rec("z")], "e3.json", now, "sha-3").expired.count == 0


def test_an_extract_of_dead_urls_is_complete_at_its_merge(path: Path, manifest: Manifest) -> None:
    dead = [rec(str(i), PAST.format(i, 1_700_000_000)) for i in range(3)]
    merge(manifest, "dead.json", dead, now=time.time())
    assert settled(manifest) == {"dead.json": (3, 0, 3, 0, 0)}


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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    conn.close()
