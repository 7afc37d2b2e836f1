"""The manifest's part of `ingestd verify`, on a real SQLite file: paged reads of done items,
lookups, and repairs that check the item in the same transaction as the change."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.manifest import Completion, Manifest

SHA = "a" * 64


def r(aweme_id: str, topic: str = "a") -> Record:
    return Record(aweme_id, f"https://h/{aweme_id}?expire=9999999999", topic, "{}")


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    m = Manifest.open(tmp_path / "manifest.sqlite3")
    yield m
    m.close()


def complete(m: Manifest, aweme_id: str, topics: tuple[str, ...] = ("a",), sha: str = SHA) -> None:
    m.complete_many([Completion(aweme_id, 10, sha, f"a/{aweme_id}.mp4", topics, 2.0)])


def test_done_items_pages_in_id_order(manifest: Manifest) -> None:
    ids = [f"{i:03d}" for i in range(12)]
    manifest.merge([r(i) for i in ids] + [r("005", "b")], "e.json", 1.0)
    for aweme_id in ids:
        if aweme_id != "007":
            complete(manifest, aweme_id, ("a", "b") if aweme_id == "005" else ("a",))
    seen, after = [], ""
    while page := manifest.done_items(after, 5):
        assert len(page) <= 5
        seen += page
        after = page[-1].aweme_id
    assert [d.aweme_id for d in seen] == [i for i in ids if i != "007"]
    five = next(d for d in seen if d.aweme_id == "005")
    assert (five.path, five.topics, five.bytes, five.sha256) == ("a/005.mp4", ("a", "b"), 10, SHA)


def test_places(manifest: Manifest) -> None:
    manifest.merge([r("1"), r("2", "b")], "e.json", 1.0)
    complete(manifest, "1")
    places = manifest.places(["1", "2", "nope", "1"])
    assert set(places) == {"1", "2"}
    assert (places["1"].state, places["1"].path, places["1"].topics) == ("done", "a/1.mp4", ("a",))
    assert (places["2"].state, places["2"].path, places["2"].topics) == ("pending", None, ("b",))
    many = manifest.places(str(i) for i in range(1200))  # more than one IN (...) chunk
    assert set(many) == {"1", "2"}


def test_requeue_done_resets_the_item_after_the_callback(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e.json", 1.0)
    complete(manifest, "1")
    calls = []
    assert manifest.requeue_done("1", SHA, "verify_corrupt", 5.0, lambda: calls.append(1))
    assert calls == [1]
    row = manifest.item("1")
    assert row is not None
    assert (row["state"], row["attempts"], row["next_attempt_at"], row["last_error"]) == (
        "pending",
        0,
        0,
        "verify_corrupt",
    )
    assert (row["bytes"], row["sha256"], row["path"], row["completed_at"]) == (None,) * 4
    counts = manifest.counts()
    assert counts.items["done"] == 0 and counts.items["pending"] == 1 and counts.bytes_done == 0
    # the daemon claims it like any pending item, with a fresh .part
    (item,) = manifest.claim_due(6.0, 10)
    assert (item.aweme_id, item.attempts, item.validator, item.durable) == ("1", 1, None, 0)


def test_requeue_done_refuses_an_item_that_changed(manifest: Manifest) -> None:
    manifest.merge([r("1"), r("2")], "e.json", 1.0)
    complete(manifest, "1", sha="b" * 64)  # downloaded again since: another digest
    calls = []
    assert not manifest.requeue_done("1", SHA, "verify_missing", 5.0, lambda: calls.append(1))
    assert not manifest.requeue_done("2", SHA, "verify_missing", 5.0, lambda: calls.append(1))
    assert not manifest.requeue_done("3", SHA, "verify_missing", 5.0, lambda: calls.append(1))
    assert calls == []
    assert manifest.item("1")["state"] == "done"  # type: ignore[index]


def test_requeue_done_changes_nothing_when_the_callback_fails(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e.json", 1.0)
    complete(manifest, "1")

    def fail() -> None:
        raise PermissionError(13, "denied", "a/1.mp4")

    with pytest.raises(PermissionError):
        manifest.requeue_done("1", SHA, "verify_corrupt", 5.0, fail)
    row = manifest.item("1")
    assert row is not None and row["state"] == "done" and row["sha256"] == SHA


def test_while_done(manifest: Manifest) -> None:
    manifest.merge([r("1"), r("2")], "e.json", 1.0)
    complete(manifest, "1")
    assert manifest.while_done("1", SHA, lambda: "linked") == "linked"
    assert manifest.while_done("1", "b" * 64, lambda: "linked") is None
    assert manifest.while_done("2", SHA, lambda: "linked") is None


def test_drop_part_never_for_a_pending_or_active_item(manifest: Manifest) -> None:
    manifest.merge([r(i) for i in "12345"], "e.json", 1.0)
    items = {item.aweme_id: item for item in manifest.claim_due(2.0, 5)}
    complete(manifest, "1")
    manifest.finish_failed("2", items["2"].url, State.FAILED, "not_found", 404, 0, False, 3.0)
    manifest.finish_failed("3", items["3"].url, State.EXPIRED, "forbidden", 403, 0, False, 3.0)
    manifest.set_part("4", '"etag"', 100, 50)  # 4 stays active, being written
    manifest.release(["5"], 3.0)  # 5 is pending again
    removed: list[str] = []
    for aweme_id in ("1", "2", "3", "4", "5", "unknown"):
        manifest.drop_part(aweme_id, lambda i=aweme_id: removed.append(i))
    assert removed == ["1", "2", "3", "unknown"]
    row = manifest.item("4")  # the resume point of the active item is untouched
    assert row is not None and (row["state"], row["validator"], row["durable_bytes"]) == (
        "active",
        '"etag"',
        50,
    )


def test_drop_part_forgets_the_resume_point(manifest: Manifest) -> None:
    manifest.merge([r("1")], "e.json", 1.0)
    (item,) = manifest.claim_due(2.0, 1)
    manifest.set_part("1", '"etag"', 100, 64)
    manifest.finish_failed("1", item.url, State.EXPIRED, "forbidden", 403, 0, False, 3.0)
    assert manifest.drop_part("1", lambda: None)
    row = manifest.item("1")
    assert row is not None
    assert (row["state"], row["validator"], row["durable_bytes"], row["total_bytes"]) == (
        "expired",
        None,
        0,
        None,
    )


def test_reads_hold_no_transaction_between_pages(tmp_path: Path) -> None:
    """Between two pages the reader keeps no snapshot: the daemon's writes and a full WAL
    checkpoint go through (a read transaction held over a hash run would pin the WAL)."""
    path = tmp_path / "manifest.sqlite3"
    writer = Manifest.open(path)
    writer.merge([r(f"{i:03d}") for i in range(20)], "e.json", 1.0)
    for i in range(10):
        complete(writer, f"{i:03d}")
    reader = Manifest.open(path, readonly=True)
    page = reader.done_items("", 5)
    reader.places(["000", "001"])
    for i in range(10, 20):
        complete(writer, f"{i:03d}")
    other = sqlite3.connect(path)
    busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    other.close()
    assert busy == 0, "the reader still holds a snapshot"
    rest = reader.done_items(page[-1].aweme_id, 100)
    assert [d.aweme_id for d in rest] == [f"{i:03d}" for i in range(5, 20)]
    reader.close()
    writer.close()
