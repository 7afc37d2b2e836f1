"""The manifest on a real SQLite file: merge rules, queue, crash recovery, status counts."""

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.manifest import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    Completion,
    Manifest,
    ManifestError,
    WrongLibrary,
)

OLD = "https://h/v?expire=100"
NEW = "https://h/v?expire=200"


def r(aweme_id: str, url: str = OLD, topic: str | None = "a") -> Record:
    return Record(aweme_id, url, topic, f'{{"aweme_id":"{aweme_id}"}}')


def done(
    m: Manifest, aweme_id: str, size: int, sha256: str, path: str, topics: Any, now: float
) -> bool:
    """Complete one item; True when it needs a relink."""
    return m.complete_many([Completion(aweme_id, size, sha256, path, topics, now)])[0]


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


def test_merge_inserts_dedups_and_counts(manifest: Manifest) -> None:
    counts = manifest.merge([r("1"), r("2"), r("1", topic="b")], "e1.json", now=1.0)
    assert (counts.records, counts.new, counts.updated) == (3, 2, 0)
    row = manifest.item("1")
    assert row is not None and row["topics"] == '["a", "b"]' and row["state"] == "pending"
    again = manifest.merge([r("1"), r("2")], "e1.json", now=2.0)
    assert (again.new, again.updated) == (0, 0)
    more = manifest.merge([r("2", topic="c"), r("3")], "e2.json", now=3.0)
    assert (more.new, more.updated) == (1, 1)
    assert manifest.item("2")["sources"] == '["e1.json", "e2.json"]'


def test_large_merge_spans_many_short_transactions(manifest: Manifest) -> None:
    records = [r(str(i)) for i in range(2_345)]
    counts = manifest.merge(records, "big.json", now=1.0)
    assert counts.new == 2_345
    assert manifest.counts().items["pending"] == 2_345


def test_claim_marks_active_and_counts_attempts(manifest: Manifest) -> None:
    manifest.merge([r(str(i)) for i in range(5)], "e.json", now=1.0)
    claimed = manifest.claim_due(now=10.0, limit=3)
    assert len(claimed) == 3 and all(i.attempts == 1 for i in claimed)
    assert manifest.counts().items == {
        "pending": 2,
        "active": 3,
        "done": 0,
        "expired": 0,
        "failed": 0,
    }
    assert manifest.claim_due(now=10.0, limit=0) == []


def test_retry_times_are_respected(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e.json", now=1.0)
    (item,) = manifest.claim_due(now=10.0, limit=5)
    manifest.finish_failed("1", item.url, State.PENDING, "timeout", None, 70.0, False, 10.0)
    assert manifest.claim_due(now=69.0, limit=5) == []
    assert manifest.next_due() == 70.0
    (again,) = manifest.claim_due(now=70.0, limit=5)
    assert again.attempts == 2


def test_crash_recovery_and_clean_release(manifest: Manifest) -> None:
    manifest.merge([r("1"), r("2")], "e.json", now=1.0)
    manifest.claim_due(now=2.0, limit=2)
    manifest.release(["1"], now=3.0)
    assert manifest.item("1")["attempts"] == 0  # a clean stop does not use up an attempt
    assert manifest.reset_active(now=4.0) == 1
    row = manifest.item("2")
    assert row["state"] == "pending" and row["attempts"] == 1  # a crash does


def test_fresh_url_revives_expired_and_failed_items(manifest: Manifest) -> None:
    manifest.merge([r("1"), r("2")], "e1.json", now=1.0)
    for item in manifest.claim_due(now=2.0, limit=2):
        state = State.EXPIRED if item.aweme_id == "1" else State.FAILED
        manifest.finish_failed(item.aweme_id, item.url, state, "x", 403, 0.0, False, 2.0)
    counts = manifest.merge([r("1", NEW), r("2", NEW)], "e2.json", now=3.0)
    assert counts.updated == 2
    for aweme_id in ("1", "2"):
        row = manifest.item(aweme_id)
        assert row["state"] == "pending" and row["attempts"] == 0 and row["url"] == NEW
        assert row["last_error"] is None


def test_done_items_are_never_requeued_but_are_relinked(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e1.json", now=1.0)
    manifest.claim_due(now=2.0, limit=1)
    assert not done(manifest, "1", 100, "ab" * 32, "a/1.mp4", ["a"], 3.0)
    manifest.merge([r("1", NEW, topic="b")], "e2.json", now=4.0)
    row = manifest.item("1")
    assert row["state"] == "done" and row["url"] == OLD
    (relink,) = manifest.pending_relinks(10)
    assert relink.topics == ("a", "b") and relink.path == "a/1.mp4"
    assert manifest.clear_relink("1", relink.topics)
    assert manifest.pending_relinks(10) == []
    assert manifest.claim_due(now=100.0, limit=10) == []
    assert manifest.counts().bytes_done == 100


def test_a_merge_during_a_relink_keeps_the_new_topic_due(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e1.json", now=1.0)
    manifest.claim_due(now=2.0, limit=1)
    done(manifest, "1", 100, "ab" * 32, "a/1.mp4", ["a"], 3.0)
    manifest.merge([r("1", topic="b")], "e2.json", now=4.0)
    (relink,) = manifest.pending_relinks(10)
    manifest.merge([r("1", topic="c")], "e3.json", now=5.0)  # while "b" is being linked
    assert not manifest.clear_relink("1", relink.topics)
    (again,) = manifest.pending_relinks(10)
    assert again.topics == ("a", "b", "c")


def test_the_resume_point_is_recorded_and_cleared_when_done(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e1.json", now=1.0)
    (item,) = manifest.claim_due(now=2.0, limit=1)
    assert (item.validator, item.total, item.durable) == (None, None, 0)
    manifest.set_part("1", '"tag"', 5_000_000, 0)
    manifest.set_part("1", '"tag"', 5_000_000, 2_000_000)
    manifest.release(["1"], now=3.0)
    (item,) = manifest.claim_due(now=4.0, limit=1)
    assert (item.validator, item.total, item.durable) == ('"tag"', 5_000_000, 2_000_000)
    done(manifest, "1", 5_000_000, "ab" * 32, "a/1.mp4", [None], 5.0)
    row = manifest.item("1")
    assert (row["validator"], row["total_bytes"], row["durable_bytes"]) == (None, None, 0)


def test_items_handed_back_wait_until_due_with_their_attempt(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e1.json", now=1.0)
    manifest.claim_due(now=2.0, limit=1)
    manifest.release(["1"], now=3.0, due=60.0)  # its host cools down until 60
    assert manifest.item("1")["attempts"] == 0
    assert manifest.claim_due(now=59.0, limit=1) == []
    assert manifest.next_due() == 60.0
    (item,) = manifest.claim_due(now=60.0, limit=1)
    assert item.attempts == 1


def test_outcome_for_a_superseded_url_requeues(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e1.json", now=1.0)
    (item,) = manifest.claim_due(now=2.0, limit=1)
    manifest.merge([r("1", NEW)], "e2.json", now=3.0)  # arrives while downloading
    state = manifest.finish_failed("1", item.url, State.EXPIRED, "forbidden", 403, 0.0, False, 4.0)
    assert state is State.PENDING
    row = manifest.item("1")
    assert row["state"] == "pending" and row["url"] == NEW and row["attempts"] == 0


def test_extract_bookkeeping(manifest: Manifest) -> None:
    manifest.record_extract("e1.json", "h1", 10, "merged", now=1.0, counts=(3, 3, 0, 0))
    manifest.record_extract("bad.json", "h2", 10, "rejected", now=1.0, reason="not_array")
    assert manifest.extract_status("e1.json", "h1") == "merged"
    assert manifest.extract_status("e1.json", "other") is None
    assert manifest.content_merged("h1") and not manifest.content_merged("h2")
    assert manifest.counts().extracts == {"merged": 1, "rejected": 1, "duplicate": 0}


def test_readonly_reader_sees_writer_commits(tmp_path: Path, manifest: Manifest) -> None:
    manifest.merge([r("1")], "e.json", now=1.0)
    reader = Manifest.open(tmp_path / "state" / "manifest.sqlite3", readonly=True)
    try:
        assert reader.counts().items["pending"] == 1
        manifest.merge([r("2")], "e2.json", now=2.0)
        assert reader.counts().items["pending"] == 2
    finally:
        reader.close()


def test_a_long_merge_can_be_interrupted_between_transactions(manifest: Manifest) -> None:
    from ingestd.store.manifest import MergeInterrupted

    manifest.interrupt.set()
    with pytest.raises(MergeInterrupted):
        manifest.merge([r(str(i)) for i in range(1200)], "big.json", now=1.0)
    assert manifest.counts().items["pending"] == 0


def test_topics_merged_during_a_download_are_flagged_for_links(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e1.json", now=1.0)
    (item,) = manifest.claim_due(now=2.0, limit=1)
    manifest.merge([r("1", topic="b")], "e2.json", now=3.0)  # while downloading
    assert done(manifest, "1", 10, "cd" * 32, "a/1.mp4", item.topics, 4.0)
    (relink,) = manifest.pending_relinks(10)
    assert relink.topics == ("a", "b")


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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchone()[0]
    assert "WITHOUT ROWID" not in sql
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"items_due", "items_relink"} <= indexes
    conn.close()


def test_topics_with_lone_surrogates_are_stored(manifest: Manifest) -> None:
    # Legal JSON escapes that are not encodable text: stored escaped, named by policy.naming.
    counts = manifest.merge([r("1", topic="t\udc00")], "e.json", now=1.0)
    assert counts.new == 1
    row = manifest.item("1")
    assert row is not None and row["topics"] == '["t\\udc00"]'


def test_status_totals_follow_every_change_without_scanning_items(manifest: Manifest) -> None:
    # Totals per state are kept by triggers; after any mix of operations they must equal a
    # full count, and reading them must not touch the items table.
    rng = random.Random(7)
    now = 1.0

    def full_count() -> tuple[dict[str, int], int]:
        rows = manifest._conn.execute(
            "SELECT state, count(*), coalesce(sum(bytes), 0) FROM items GROUP BY state"
        ).fetchall()
        items = {state.value: 0 for state in State} | {st: n for st, n, _ in rows}
        return items, sum(b for st, _, b in rows if st == "done")

    for step in range(300):
        now += 1.0
        op = rng.randrange(6)
        if op == 0:
            manifest.merge(
                [r(str(rng.randrange(60)), topic=rng.choice("abc")) for _ in range(5)], "e", now
            )
        elif op == 1:
            claimed = manifest.claim_due(now, rng.randrange(1, 6))
            for item in claimed:
                if rng.random() < 0.5:
                    done(manifest, item.aweme_id, rng.randrange(1, 10**6), "x", "p", ("a",), now)
                else:
                    final = rng.choice([State.PENDING, State.EXPIRED, State.FAILED])
                    manifest.finish_failed(
                        item.aweme_id, item.url, final, "e", 500, now, False, now
                    )
        elif op == 2:
            manifest.retry(["expired", "failed"], [], now)
        elif op == 3:
            manifest.claim_due(now, 2)
            manifest.reset_active(now)
        elif op == 4:
            claimed = manifest.claim_due(now, 3)
            manifest.release([i.aweme_id for i in claimed], now)
        else:
            manifest.merge([r(str(rng.randrange(60)), url=NEW)], "f", now)  # revives some
        counts = manifest.counts()
        assert (counts.items, counts.bytes_done) == full_count(), step
    statements: list[str] = []
    manifest._conn.set_trace_callback(statements.append)
    manifest.counts()
    manifest._conn.set_trace_callback(None)
    assert not [q for q in statements if " FROM items" in q], statements


def test_the_first_bind_records_the_data_dir_and_another_is_refused(tmp_path: Path) -> None:
    library, other = tmp_path / "library", tmp_path / "other"
    library.mkdir()
    (tmp_path / "alias").symlink_to(library)
    m = Manifest.open(tmp_path / "state" / "manifest.sqlite3")
    assert m.recorded_data_dir() is None
    m.check_data_dir(other)  # nothing recorded: any data dir may read it
    assert m.bind_data_dir(library) is None
    assert m.recorded_data_dir() == str(library.resolve())
    assert m.bind_data_dir(tmp_path / "alias") == str(library.resolve())  # the same folder
    m.check_data_dir(tmp_path / "." / "library")
    with pytest.raises(WrongLibrary) as refused:
        m.bind_data_dir(other)
    assert (refused.value.recorded, refused.value.wanted) == (str(library), str(other))
    assert str(library) in str(refused.value) and str(other) in str(refused.value)
    with pytest.raises(WrongLibrary):
        m.check_data_dir(other)
    assert m.recorded_data_dir() == str(library), "a refused bind changes nothing"
    assert m.bind_data_dir(other, replace=True) == str(library)  # `ingestd rebind`
    assert m.recorded_data_dir() == str(other)
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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'meta'").fetchone()[0]
    assert "WITHOUT ROWID" in sql
    assert conn.execute("SELECT key, value FROM meta").fetchall() == [
        ("data_dir", str(tmp_path / "library"))
    ]
    conn.close()


def test_items_claimed_ahead_are_held_not_active_and_cost_no_attempt(manifest: Manifest) -> None:
    manifest.merge([r(str(i)) for i in range(5)], "e.json", now=1.0)
    started, held = manifest.claim(now=2.0, start=1, hold=2)
    assert [i.attempts for i in started] == [1] and [i.attempts for i in held] == [0, 0]
    assert (manifest.counts().items["active"], manifest.counts().items["pending"]) == (1, 4)
    again, more = manifest.claim(now=2.0, start=5, hold=5)  # held ones are not claimed twice
    assert {i.aweme_id for i in again + more}.isdisjoint({i.aweme_id for i in started + held})
    assert len(again) == 2 and more == []
    assert manifest.next_due() is None  # nothing left that is not claimed
    assert manifest.start_held([held[0].aweme_id], now=3.0) == [1]
    assert manifest.counts().items["active"] == 4
    manifest.release([held[1].aweme_id], now=4.0)  # handed back: still no attempt
    assert manifest.item(held[1].aweme_id)["attempts"] == 0
    assert manifest.start_held([held[1].aweme_id], now=5.0) == [None]
    # A crash: the active ones paid an attempt, a held one did not.
    (last,) = manifest.claim(now=6.0, start=0, hold=1)[1]
    assert manifest.reset_active(now=7.0) == 4
    assert manifest.item(last.aweme_id)["attempts"] == 0
    assert manifest.claim_due(now=8.0, limit=10) != []


def test_an_outcome_may_arrive_before_its_start_is_written(manifest: Manifest) -> None:
    # The pool writes starts of held items in batches, without waiting: an outcome can win.
    manifest.merge([r("1"), r("2")], "e.json", now=1.0)
    manifest.claim(now=2.0, start=0, hold=2)
    assert manifest.finish_failed("1", OLD, State.PENDING, "timeout", None, 9.0, False, 3.0) is (
        State.PENDING
    )
    done(manifest, "2", 10, "ab" * 32, "a/2.mp4", ["a"], 3.0)
    assert manifest.start_held(["1", "2"], now=4.0) == [None, None]  # late: changes nothing
    one, two = manifest.item("1"), manifest.item("2")
    assert (one["state"], one["attempts"], one["held"]) == ("pending", 1, 0)
    assert (two["state"], two["attempts"], two["held"]) == ("done", 1, 0)
    assert manifest.counts().items["active"] == 0


def test_retry_says_why_each_refused_id_was_refused(manifest: Manifest) -> None:
    now = 50.0  # before OLD's expiry: a URL dead at the merge is stored expired
    manifest.merge([r("done1"), r("active1"), r("failed1"), r("pending1")], "e", now)
    (first,) = manifest.claim_due(now, 1)
    assert done(manifest, first.aweme_id, 10, "x", "a/x.mp4", ("a",), now) is False
    claimed = manifest.claim_due(now, 2)
    failed, active = claimed[0].aweme_id, claimed[1].aweme_id
    manifest.finish_failed(failed, OLD, State.FAILED, "not_found", 404, now, False, now)
    pending = ({"done1", "active1", "failed1", "pending1"} - {first.aweme_id, failed, active}).pop()
    ids = [first.aweme_id, active, "nope", failed, pending]
    requeued, refused = manifest.retry([], ids, now)
    assert requeued == [failed, pending], "failed and pending items go back, due now"
    assert refused == {first.aweme_id: "done", active: "active", "nope": "unknown"}
    assert list(refused) == [first.aweme_id, active, "nope"], "in the order asked"


def test_items_are_listed_newest_first_in_chunks_with_their_records(manifest: Manifest) -> None:
    count = 2 * 500 + 7  # more than one chunk of ids
    for n in range(count):  # one merge each: every item its own updated_at
        manifest.merge([r(f"id{n:05d}")], "e", 1000.0 + n)
    listed = list(manifest.iter_items(limit=None, full=True))
    assert [i.aweme_id for i in listed] == [f"id{n:05d}" for n in reversed(range(count))]
    assert listed[0].record == '{"aweme_id":"id01006"}' and listed[0].sha256 is None
    assert [i.aweme_id for i in manifest.iter_items(limit=3)] == ["id01006", "id01005", "id01004"]
    assert manifest.list_items(limit=2)[1].record is None, "records only when asked for"
    assert manifest.count_items() == count and manifest.count_items(state="done") == 0
