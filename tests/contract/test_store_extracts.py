"""Extracts through the store: how each version was handled, and its completion: what it still
waits for, followed through every change of state of its items, whatever path makes it; and
the URLs a merge finds dead already."""

import time

import pytest

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.base import Completion, ExtractProgress, ManifestStore

FUTURE = "https://h/v/{}.mp4?expire=4102444800&signature=x"
PAST = "https://h/v/{}.mp4?x-expires={}&signature=x"


def rec(aweme_id: str, url: str | None = None, topic: str = "t") -> Record:
    return Record(aweme_id, url or FUTURE.format(aweme_id), topic, f'{{"aweme_id":"{aweme_id}"}}')


def merge(m: ManifestStore, name: str, records: list[Record], now: float = 10.0) -> None:
    """Merge an extract the way the daemon does: linked by its sha256, then recorded."""
    sha = f"sha-{name}"
    counts = m.merge(records, name, now, sha)
    total = (counts.records, counts.new, counts.updated, 0)
    m.record_extract(name, sha, 1, "merged", now, None, total)


def progress(m: ManifestStore, name: str, sha256: str | None = None) -> ExtractProgress:
    found = m.extract_progress(name, sha256 or f"sha-{name}")
    assert found is not None, name
    return found


def waits(m: ManifestStore, name: str, sha256: str | None = None) -> tuple[object, ...]:
    """(items, outstanding, done, expired, failed) of an extract."""
    p = progress(m, name, sha256)
    return p.items, p.outstanding, p.done, p.expired, p.failed


def settled(m: ManifestStore) -> dict[str, tuple[int, int, int, int, int]]:
    return {e.path: (e.items, e.done, e.expired, e.failed, e.bytes) for e in m.settled_extracts()}


def finish(m: ManifestStore, aweme_id: str, state: State, reason: str = "x") -> None:
    item = m.item(aweme_id)
    assert item is not None and item["state"] == "active", item
    m.finish_failed(aweme_id, str(item["url"]), state, reason, 404, 0.0, False, 20.0)


def complete(m: ManifestStore, aweme_id: str, size: int) -> None:
    m.complete_many([Completion(aweme_id, size, "ab" * 32, f"t/{aweme_id}.mp4", ["t"], 20.0)])


def test_extract_bookkeeping(store: ManifestStore) -> None:
    store.record_extract("e1.json", "h1", 10, "merged", now=1.0, counts=(3, 3, 0, 0))
    store.record_extract("bad.json", "h2", 10, "rejected", now=1.0, reason="not_array")
    assert store.extract_status("e1.json", "h1") == "merged"
    assert store.extract_status("e1.json", "other") is None
    assert store.content_merged("h1") and not store.content_merged("h2")
    assert store.counts().extracts == {"merged": 1, "rejected": 1, "duplicate": 0}


def test_an_extract_recorded_again_takes_its_new_status(store: ManifestStore) -> None:
    assert store.counts().extracts == {"merged": 0, "rejected": 0, "duplicate": 0}
    store.record_extract("e1.json", "h1", 10, "rejected", now=1.0, reason="truncated")
    store.record_extract("copy.json", "h1", 10, "duplicate", now=1.0)
    assert not store.content_merged("h1")
    store.record_extract("e1.json", "h1", 10, "merged", now=2.0, counts=(1, 1, 0, 0))
    assert store.extract_status("e1.json", "h1") == "merged"
    assert store.content_merged("h1"), "whatever the path it was merged under"
    assert store.counts().extracts == {"merged": 1, "rejected": 0, "duplicate": 1}


def test_outstanding_follows_every_transition_and_the_extract_completes_once(
    store: ManifestStore,
) -> None:
    merge(store, "e1.json", [rec(str(i)) for i in range(1, 6)] + [rec("3")])
    assert waits(store, "e1.json") == (5, 5, 0, 0, 0)  # a repeated id is one item
    assert len(store.claim_due(now=11.0, limit=5)) == 5  # active: still outstanding
    store.release(["4", "5"], now=11.5)  # handed back (a pause): still outstanding
    assert waits(store, "e1.json") == (5, 5, 0, 0, 0)
    complete(store, "1", 100)
    complete(store, "2", 250)
    finish(store, "3", State.FAILED, "not_found")
    assert waits(store, "e1.json") == (5, 2, 2, 0, 1)
    assert store.reset_active(now=12.0) == 0  # crash recovery of nothing active
    assert len(store.claim_due(now=13.0, limit=5)) == 2
    assert store.reset_active(now=14.0) == 2  # items_recovered: active -> pending
    assert waits(store, "e1.json") == (5, 2, 2, 0, 1)
    store.claim_due(now=15.0, limit=5)
    finish(store, "4", State.EXPIRED, "forbidden")
    assert settled(store) == {}
    # `ingestd retry` before the extract completed: it waits for that item again.
    assert store.retry(["failed"], [], now=16.0) == (["3"], {})
    assert waits(store, "e1.json") == (5, 2, 2, 1, 0)
    store.claim_due(now=17.0, limit=5)
    finish(store, "3", State.FAILED, "not_found")
    finish(store, "5", State.FAILED, "not_found")
    assert settled(store) == {"e1.json": (5, 2, 1, 2, 350)}
    assert settled(store) == {"e1.json": (5, 2, 1, 2, 350)}  # reading changes nothing
    e1 = progress(store, "e1.json").id
    assert store.close_extracts([e1], now=18.0) == 1
    assert settled(store) == {}
    # Completed for good: a retry afterwards does not reopen it, nor move its counts.
    assert sorted(store.retry(["failed"], [], now=19.0)[0]) == ["3", "5"]
    assert settled(store) == {} and waits(store, "e1.json") == (5, 0, 2, 1, 2)
    assert store.close_extracts([e1], now=20.0) == 0


def test_an_extract_completes_only_once_its_merge_is_recorded(store: ManifestStore) -> None:
    store.merge([rec("1"), rec("2")], "e1.json", 1.0, "sha-1")
    store.claim_due(now=2.0, limit=2)
    complete(store, "1", 10)
    complete(store, "2", 20)
    # All its items final, but more may come until the merge is recorded.
    assert settled(store) == {}
    store.record_extract("e1.json", "sha-1", 1, "merged", 3.0)
    assert settled(store) == {"e1.json": (2, 2, 0, 0, 30)}
    # An extract of duplicates of done items: complete right after its merge, with their bytes.
    merge(store, "e2.json", [rec("2", topic="other"), rec("1")])
    assert settled(store) == {"e1.json": (2, 2, 0, 0, 30), "e2.json": (2, 2, 0, 0, 30)}
    # An empty extract has nothing to wait for.
    merge(store, "e3.json", [])
    assert settled(store)["e3.json"] == (0, 0, 0, 0, 0)
    merged_at = {e.path: e.merged_at for e in store.settled_extracts()}
    assert merged_at == {"e1.json": 3.0, "e2.json": 10.0, "e3.json": 10.0}


def test_the_progress_of_an_extract_says_when_it_was_merged_and_reported(
    store: ManifestStore,
) -> None:
    assert store.extract_progress("e1.json", "sha-1") is None
    store.merge([rec("1")], "e1.json", 1.0, "sha-1")
    p = progress(store, "e1.json", "sha-1")
    assert (p.path, p.sha256, p.items, p.bytes, p.merged_at, p.completed_at) == (
        "e1.json",
        "sha-1",
        1,
        0,
        None,
        None,
    )
    assert store.extract_progress("e1.json", "sha-other") is None
    store.record_extract("e1.json", "sha-1", 1, "merged", 3.0)
    store.record_extract("e1.json", "sha-1", 1, "merged", 4.0)  # the first time counts
    assert progress(store, "e1.json", "sha-1").merged_at == 3.0
    store.claim_due(now=5.0, limit=1)
    complete(store, "1", 42)
    (reported,) = store.settled_extracts()
    assert (reported.id, reported.sha256, reported.bytes) == (p.id, "sha-1", 42)
    store.close_extracts([p.id], now=6.0)
    assert progress(store, "e1.json", "sha-1").completed_at == 6.0


def test_an_item_shared_by_two_extracts_counts_for_both(store: ManifestStore) -> None:
    merge(store, "e1.json", [rec("1"), rec("2")])
    merge(store, "e2.json", [rec("2", topic="u"), rec("3")])
    assert waits(store, "e1.json") == (2, 2, 0, 0, 0)
    assert waits(store, "e2.json") == (2, 2, 0, 0, 0)
    store.claim_due(now=11.0, limit=3)
    complete(store, "2", 7)
    assert waits(store, "e1.json") == (2, 1, 1, 0, 0)
    assert waits(store, "e2.json") == (2, 1, 1, 0, 0)
    complete(store, "1", 5)
    assert settled(store) == {"e1.json": (2, 2, 0, 0, 12)}
    store.close_extracts([progress(store, "e1.json").id], now=12.0)
    finish(store, "3", State.FAILED)
    assert settled(store) == {"e2.json": (2, 1, 0, 1, 7)}
    # A later extract counts them too; the reported one keeps its counts.
    merge(store, "e3.json", [rec("1"), rec("2")])
    assert settled(store) == {"e2.json": (2, 1, 0, 1, 7), "e3.json": (2, 2, 0, 0, 12)}
    assert waits(store, "e1.json") == (2, 0, 2, 0, 0)


def test_a_reported_extract_merged_again_takes_no_items(store: ManifestStore) -> None:
    merge(store, "e1.json", [rec("1")])
    store.claim_due(now=11.0, limit=1)
    complete(store, "1", 5)
    store.close_extracts([progress(store, "e1.json").id], now=12.0)
    merge(store, "e1.json", [rec("1"), rec("2")], now=13.0)  # the same version, seen again
    assert waits(store, "e1.json") == (1, 0, 1, 0, 0)
    assert settled(store) == {}
    assert store.counts().items["pending"] == 1


def test_an_interrupted_merge_goes_on_without_counting_twice(store: ManifestStore) -> None:
    records = [rec(str(i)) for i in range(1_200)]
    store.interrupt.set()
    with pytest.raises(Exception, match="stopped after 0"):
        store.merge(records, "big.json", 1.0, "sha-big.json")
    store.interrupt.clear()
    store.merge(records[:700], "big.json", 1.0, "sha-big.json")  # stopped half-way (a crash)
    assert waits(store, "big.json") == (700, 700, 0, 0, 0)
    merge(store, "big.json", records)  # the next start merges it again, whole
    assert waits(store, "big.json") == (1_200, 1_200, 0, 0, 0)


def test_urls_dead_at_merge_are_stored_expired_and_summarized(store: ManifestStore) -> None:
    now = time.time()
    dead = [rec(f"d{i}", PAST.format(i, int(now) - 600 + i)) for i in range(12)]
    # Milliseconds, and upper-case keys, are read as url_expiry reads them.
    dead.append(rec("ms", f"https://h/v.mp4?a=1&EXPIRE={(int(now) - 30) * 1000}"))
    alive = [rec("a1"), rec("a2", f"https://h/v.mp4?expire={(int(now) + 60) * 1000}")]
    counts = store.merge([*alive[:1], *dead, *alive[1:]], "e1.json", now, "sha-1")
    assert (counts.new, counts.expired.count) == (15, 13)
    assert counts.expired.earliest == int(now) - 600
    assert counts.expired.latest == int(now) - 30
    assert counts.expired.aweme_ids == tuple(f"d{i}" for i in range(10))
    row = store.item("d0")
    assert row is not None
    assert (row["state"], row["last_error"], row["attempts"]) == ("expired", "url_expired", 0)
    assert store.counts().items["expired"] == 13
    assert {i.aweme_id for i in store.claim_due(now=now, limit=100)} == {"a1", "a2"}
    store.record_extract("e1.json", "sha-1", 1, "merged", now)
    assert waits(store, "e1.json", "sha-1") == (15, 2, 0, 13, 0)
    # A fresher URL that is dead too keeps an expired item expired (and says so once more);
    # a live one brings it back.
    again = store.merge(
        [rec("d0", PAST.format(0, int(now) - 5)), rec("d1", FUTURE.format("d1"))],
        "e2.json",
        now,
        "sha-2",
    )
    assert (again.expired.count, again.expired.aweme_ids, again.updated) == (1, ("d0",), 2)
    assert store.item("d0")["state"] == "expired"  # type: ignore[index]
    assert store.item("d1")["state"] == "pending"  # type: ignore[index]
    assert waits(store, "e1.json", "sha-1") == (15, 3, 0, 12, 0)  # d1 outstanding again
    # A merge that finds nothing dead says so.
    assert store.merge([rec("z")], "e3.json", now, "sha-3").expired.count == 0


def test_an_extract_of_dead_urls_is_complete_at_its_merge(store: ManifestStore) -> None:
    dead = [rec(str(i), PAST.format(i, 1_700_000_000)) for i in range(3)]
    merge(store, "dead.json", dead, now=time.time())
    assert settled(store) == {"dead.json": (3, 0, 3, 0, 0)}
