"""Merging through the store: what a record does to the item known under its id, and what a
merge reports."""

import pytest

from ingestd.policy.merge import State
from ingestd.store.base import ManifestStore, MergeInterrupted
from support.store import NEW, OLD, done, r


def test_merge_inserts_dedups_and_counts(store: ManifestStore) -> None:
    counts = store.merge([r("1"), r("2"), r("1", topic="b")], "e1.json", now=1.0)
    assert (counts.records, counts.new, counts.updated) == (3, 2, 0)
    row = store.item("1")
    assert row is not None and row["topics"] == '["a", "b"]' and row["state"] == "pending"
    again = store.merge([r("1"), r("2")], "e1.json", now=2.0)
    assert (again.new, again.updated) == (0, 0)
    more = store.merge([r("2", topic="c"), r("3")], "e2.json", now=3.0)
    assert (more.new, more.updated) == (1, 1)
    assert store.item("2")["sources"] == '["e1.json", "e2.json"]'  # type: ignore[index]


def test_large_merge_spans_many_short_transactions(store: ManifestStore) -> None:
    records = [r(str(i)) for i in range(2_345)]
    counts = store.merge(records, "big.json", now=1.0)
    assert counts.new == 2_345
    assert store.counts().items["pending"] == 2_345


def test_fresh_url_revives_expired_and_failed_items(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e1.json", now=1.0)
    for item in store.claim_due(now=2.0, limit=2):
        state = State.EXPIRED if item.aweme_id == "1" else State.FAILED
        store.finish_failed(item.aweme_id, item.url, state, "x", 403, 0.0, False, 2.0)
    counts = store.merge([r("1", NEW), r("2", NEW)], "e2.json", now=3.0)
    assert counts.updated == 2
    for aweme_id in ("1", "2"):
        row = store.item(aweme_id)
        assert row is not None
        assert row["state"] == "pending" and row["attempts"] == 0 and row["url"] == NEW
        assert row["last_error"] is None


def test_an_older_url_never_replaces_a_fresher_one(store: ManifestStore) -> None:
    store.merge([r("1", NEW)], "e1.json", now=1.0)
    (item,) = store.claim_due(now=2.0, limit=1)
    store.finish_failed("1", item.url, State.EXPIRED, "forbidden", 403, 0.0, False, 2.0)
    counts = store.merge([r("1", OLD)], "e0.json", now=3.0)
    assert counts.updated == 0
    row = store.item("1")
    assert row is not None and (row["state"], row["url"], row["attempts"]) == ("expired", NEW, 1)


def test_done_items_are_never_requeued_but_are_relinked(store: ManifestStore) -> None:
    store.merge([r("1")], "e1.json", now=1.0)
    store.claim_due(now=2.0, limit=1)
    assert not done(store, "1", 100, "ab" * 32, "a/1.mp4", ["a"], 3.0)
    store.merge([r("1", NEW, topic="b")], "e2.json", now=4.0)
    row = store.item("1")
    assert row is not None and row["state"] == "done" and row["url"] == OLD
    (relink,) = store.pending_relinks(10)
    assert relink.topics == ("a", "b") and relink.path == "a/1.mp4"
    assert store.clear_relink("1", relink.topics)
    assert store.pending_relinks(10) == []
    assert store.claim_due(now=100.0, limit=10) == []
    assert store.counts().bytes_done == 100


def test_a_merge_during_a_relink_keeps_the_new_topic_due(store: ManifestStore) -> None:
    store.merge([r("1")], "e1.json", now=1.0)
    store.claim_due(now=2.0, limit=1)
    done(store, "1", 100, "ab" * 32, "a/1.mp4", ["a"], 3.0)
    store.merge([r("1", topic="b")], "e2.json", now=4.0)
    (relink,) = store.pending_relinks(10)
    store.merge([r("1", topic="c")], "e3.json", now=5.0)  # while "b" is being linked
    assert not store.clear_relink("1", relink.topics)
    (again,) = store.pending_relinks(10)
    assert again.topics == ("a", "b", "c")


def test_relinks_are_paged_in_id_order_and_skip_the_parked(store: ManifestStore) -> None:
    store.merge([r(i) for i in "1234"], "e1.json", now=1.0)
    store.claim_due(now=2.0, limit=4)
    for i in "1234":
        done(store, i, 10, "ab" * 32, f"a/{i}.mp4", ["a"], 3.0)
    store.merge([r(i, topic="b") for i in "4213"], "e2.json", now=4.0)
    assert [x.aweme_id for x in store.pending_relinks(10)] == ["1", "2", "3", "4"]
    assert [x.aweme_id for x in store.pending_relinks(2, after="1")] == ["2", "3"]
    assert [x.aweme_id for x in store.pending_relinks(10, skip=["2", "4"])] == ["1", "3"]
    assert not store.clear_relink("3", ["b", "a"]), "the topics in another order are not the same"
    assert store.clear_relink("3", ["a", "b"])
    assert [x.aweme_id for x in store.pending_relinks(10)] == ["1", "2", "4"]


def test_topics_merged_during_a_download_are_flagged_for_links(store: ManifestStore) -> None:
    store.merge([r("1")], "e1.json", now=1.0)
    (item,) = store.claim_due(now=2.0, limit=1)
    store.merge([r("1", topic="b")], "e2.json", now=3.0)  # while downloading
    assert done(store, "1", 10, "cd" * 32, "a/1.mp4", item.topics, 4.0)
    (relink,) = store.pending_relinks(10)
    assert relink.topics == ("a", "b")


def test_a_long_merge_can_be_interrupted_between_transactions(store: ManifestStore) -> None:
    store.interrupt.set()
    with pytest.raises(MergeInterrupted):
        store.merge([r(str(i)) for i in range(1200)], "big.json", now=1.0)
    assert store.counts().items["pending"] == 0


def test_topics_with_lone_surrogates_are_stored(store: ManifestStore) -> None:
    # Legal JSON escapes that are not encodable text: stored escaped, named by policy.naming.
    counts = store.merge([r("1", topic="t\udc00")], "e.json", now=1.0)
    assert counts.new == 1
    row = store.item("1")
    assert row is not None and row["topics"] == '["t\\udc00"]'


def test_the_latest_record_text_is_kept(store: ManifestStore) -> None:
    assert store.record("1") is None
    store.merge([r("1", raw='{"v":1}')], "e1.json", now=1.0)
    assert store.record("1") == '{"v":1}'
    store.merge([r("1", raw='{"v":2}')], "e2.json", now=2.0)
    assert store.record("1") == '{"v":2}'
