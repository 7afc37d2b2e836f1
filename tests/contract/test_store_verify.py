"""The store's part of `ingestd verify`: paged reads of done items, lookups, and repairs that
check the item in the same transaction as the change."""

import functools
from collections.abc import Iterator

import pytest

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.base import Completion, ManifestStore

SHA = "a" * 64


def r(aweme_id: str, topic: str = "a") -> Record:
    return Record(aweme_id, f"https://h/{aweme_id}?expire=9999999999", topic, "{}")


def complete(
    m: ManifestStore, aweme_id: str, topics: tuple[str, ...] = ("a",), sha: str = SHA
) -> None:
    m.complete_many([Completion(aweme_id, 10, sha, f"a/{aweme_id}.mp4", topics, 2.0)])


def pages(m: ManifestStore, size: int) -> Iterator[list[str]]:
    after = ""
    while page := m.done_items(after, size):
        yield [d.aweme_id for d in page]
        after = page[-1].aweme_id


def test_done_items_pages_in_id_order(store: ManifestStore) -> None:
    ids = [f"{i:03d}" for i in range(12)]
    store.merge([r(i) for i in ids] + [r("005", "b")], "e.json", 1.0)
    for aweme_id in ids:
        if aweme_id != "007":
            complete(store, aweme_id, ("a", "b") if aweme_id == "005" else ("a",))
    seen, after = [], ""
    while page := store.done_items(after, 5):
        assert len(page) <= 5
        seen += page
        after = page[-1].aweme_id
    assert [d.aweme_id for d in seen] == [i for i in ids if i != "007"]
    five = next(d for d in seen if d.aweme_id == "005")
    assert (five.path, five.topics, five.bytes, five.sha256) == ("a/005.mp4", ("a", "b"), 10, SHA)


def test_done_items_by_default_start_at_the_first(store: ManifestStore) -> None:
    assert store.done_items() == []
    store.merge([r(f"{i:04d}") for i in range(600)], "e.json", 1.0)
    for i in range(0, 600, 2):
        complete(store, f"{i:04d}")
    first = store.done_items()
    assert first[0].aweme_id == "0000" and 0 < len(first) <= 300
    assert sum(len(page) for page in pages(store, 7)) == 300


def test_places(store: ManifestStore) -> None:
    store.merge([r("1"), r("2", "b")], "e.json", 1.0)
    complete(store, "1")
    places = store.places(["1", "2", "nope", "1"])
    assert set(places) == {"1", "2"}
    assert (places["1"].state, places["1"].path, places["1"].topics) == ("done", "a/1.mp4", ("a",))
    assert (places["2"].state, places["2"].path, places["2"].topics) == ("pending", None, ("b",))
    many = store.places(str(i) for i in range(1200))  # more than one IN (...) chunk
    assert set(many) == {"1", "2"}
    assert store.places([]) == {}


def test_requeue_done_resets_the_item_after_the_callback(store: ManifestStore) -> None:
    store.merge([r("1")], "e.json", 1.0)
    complete(store, "1")
    calls = []
    assert store.requeue_done("1", SHA, "verify_corrupt", 5.0, lambda: calls.append(1))
    assert calls == [1]
    row = store.item("1")
    assert row is not None
    assert (row["state"], row["attempts"], row["next_attempt_at"], row["last_error"]) == (
        "pending",
        0,
        0,
        "verify_corrupt",
    )
    assert (row["bytes"], row["sha256"], row["path"], row["completed_at"]) == (None,) * 4
    counts = store.counts()
    assert counts.items["done"] == 0 and counts.items["pending"] == 1 and counts.bytes_done == 0
    # the daemon claims it like any pending item, with a fresh .part
    (item,) = store.claim_due(6.0, 10)
    assert (item.aweme_id, item.attempts, item.validator, item.durable) == ("1", 1, None, 0)


def test_requeue_done_refuses_an_item_that_changed(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e.json", 1.0)
    complete(store, "1", sha="b" * 64)  # downloaded again since: another digest
    calls = []
    assert not store.requeue_done("1", SHA, "verify_missing", 5.0, lambda: calls.append(1))
    assert not store.requeue_done("2", SHA, "verify_missing", 5.0, lambda: calls.append(1))
    assert not store.requeue_done("3", SHA, "verify_missing", 5.0, lambda: calls.append(1))
    assert calls == []
    assert store.item("1")["state"] == "done"  # type: ignore[index]


def test_requeue_done_changes_nothing_when_the_callback_fails(store: ManifestStore) -> None:
    store.merge([r("1")], "e.json", 1.0)
    complete(store, "1")

    def fail() -> None:
        raise PermissionError(13, "denied", "a/1.mp4")

    with pytest.raises(PermissionError):
        store.requeue_done("1", SHA, "verify_corrupt", 5.0, fail)
    row = store.item("1")
    assert row is not None and row["state"] == "done" and row["sha256"] == SHA


def test_while_done(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e.json", 1.0)
    complete(store, "1")
    assert store.while_done("1", SHA, lambda: "linked") == "linked"
    assert store.while_done("1", "b" * 64, lambda: "linked") is None
    assert store.while_done("2", SHA, lambda: "linked") is None


def test_while_done_passes_on_what_the_action_raises(store: ManifestStore) -> None:
    store.merge([r("1")], "e.json", 1.0)
    complete(store, "1")

    def fail() -> None:
        raise FileExistsError(17, "exists", "b/1.mp4")

    with pytest.raises(FileExistsError):
        store.while_done("1", SHA, fail)
    assert store.places(["1"])["1"].state == "done"
    assert store.while_done("1", SHA, lambda: 7) == 7, "the store is usable again"


def test_drop_part_never_for_a_pending_or_active_item(store: ManifestStore) -> None:
    store.merge([r(i) for i in "12345"], "e.json", 1.0)
    items = {item.aweme_id: item for item in store.claim_due(2.0, 5)}
    complete(store, "1")
    store.finish_failed("2", items["2"].url, State.FAILED, "not_found", 404, 0, False, 3.0)
    store.finish_failed("3", items["3"].url, State.EXPIRED, "forbidden", 403, 0, False, 3.0)
    store.set_part("4", '"etag"', 100, 50)  # 4 stays active, being written
    store.release(["5"], 3.0)  # 5 is pending again
    removed: list[str] = []
    dropped = [
        store.drop_part(aweme_id, functools.partial(removed.append, aweme_id))
        for aweme_id in ("1", "2", "3", "4", "5", "unknown")
    ]
    assert removed == ["1", "2", "3", "unknown"]
    assert dropped == [True, True, True, False, False, True]
    row = store.item("4")  # the resume point of the active item is untouched
    assert row is not None and (row["state"], row["validator"], row["durable_bytes"]) == (
        "active",
        '"etag"',
        50,
    )


def test_drop_part_forgets_the_resume_point(store: ManifestStore) -> None:
    store.merge([r("1")], "e.json", 1.0)
    (item,) = store.claim_due(2.0, 1)
    store.set_part("1", '"etag"', 100, 64)
    store.finish_failed("1", item.url, State.EXPIRED, "forbidden", 403, 0, False, 3.0)
    assert store.drop_part("1", lambda: None)
    row = store.item("1")
    assert row is not None
    assert (row["state"], row["validator"], row["durable_bytes"], row["total_bytes"]) == (
        "expired",
        None,
        0,
        None,
    )
