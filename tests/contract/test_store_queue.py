"""The download queue through the store: claims (started and held), origins passed over or
deferred, outcomes, hand-backs, crash recovery and resume points."""

from collections.abc import Callable
from typing import Any

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.base import Completion, ManifestStore
from support.store import NEW, OLD, done, r

A, B, C = "a.example:443", "b.example:8443", "c.example:80"  # as policy.urls.origin_of says


def at(aweme_id: str, origin: str) -> Record:
    """A record whose URL goes to `origin` (scheme://host[:port])."""
    return r(aweme_id, f"{origin}/v/{aweme_id}.mp4?expire=9999999999")


def ids(items: Any) -> list[str]:
    return sorted(i.aweme_id for i in items)


def test_claim_marks_active_and_counts_attempts(store: ManifestStore) -> None:
    store.merge([r(str(i)) for i in range(5)], "e.json", now=1.0)
    claimed = store.claim_due(now=10.0, limit=3)
    assert len(claimed) == 3 and all(i.attempts == 1 for i in claimed)
    assert store.counts().items == {
        "pending": 2,
        "active": 3,
        "done": 0,
        "expired": 0,
        "failed": 0,
    }
    assert store.claim_due(now=10.0, limit=0) == []


def test_a_claim_gives_what_the_download_needs(store: ManifestStore) -> None:
    store.merge([r("1", topic="b"), r("1", topic=None)], "e.json", now=1.0)
    (item,) = store.claim_due(now=2.0, limit=1)
    assert (item.aweme_id, item.url, item.topics, item.attempts) == ("1", OLD, ("b", None), 1)
    assert (item.validator, item.durable, item.total) == (None, 0, None)
    row = store.item("1")
    assert row is not None and (row["state"], row["attempts"], row["held"]) == ("active", 1, 0)


def test_retry_times_are_respected(store: ManifestStore) -> None:
    store.merge([r("1")], "e.json", now=1.0)
    (item,) = store.claim_due(now=10.0, limit=5)
    store.finish_failed("1", item.url, State.PENDING, "timeout", None, 70.0, False, 10.0)
    assert store.claim_due(now=69.0, limit=5) == []
    assert store.next_due() == 70.0
    (again,) = store.claim_due(now=70.0, limit=5)
    assert again.attempts == 2


def test_claims_take_the_earliest_due_first(store: ManifestStore) -> None:
    store.merge([r("1"), r("2"), r("3")], "e.json", now=1.0)
    assert store.next_due() == 0.0, "a new item is due at once"
    due = {"1": 30.0, "2": 10.0, "3": 20.0}
    for item in store.claim_due(now=2.0, limit=3):
        when = due[item.aweme_id]
        store.finish_failed(item.aweme_id, item.url, State.PENDING, "t", None, when, False, 2.0)
    assert store.next_due() == 10.0
    order = [store.claim_due(now=100.0, limit=1)[0].aweme_id for _ in range(3)]
    assert order == ["2", "3", "1"]
    assert store.next_due() is None and store.claim_due(now=100.0, limit=1) == []


def test_claims_and_next_due_pass_over_the_origins_skipped(store: ManifestStore) -> None:
    records = [at("a1", "https://a.example"), at("b1", "https://B.example:8443")]
    store.merge([*records, at("c1", "http://c.example")], "e.json", now=1.0)
    assert store.next_due(skip=[A, B, C]) is None
    assert store.next_due(skip=[A, B]) == 0.0
    started, held = store.claim(now=2.0, start=1, hold=5, skip=[B, C])
    assert ids(started) == ["a1"] and held == []
    started, held = store.claim(now=2.0, start=0, hold=5, skip=[C])
    assert started == [] and ids(held) == ["b1"]
    assert ids(store.claim_due(now=2.0, limit=5)) == ["c1"]


def test_a_deferred_origin_waits_while_others_are_claimed(store: ManifestStore) -> None:
    a = [at(f"a{i}", "https://a.example") for i in range(3)]
    store.merge([*a, at("b1", "https://b.example:8443")], "e.json", now=1.0)
    (held,) = store.claim(now=2.0, start=0, hold=1, skip=[B])[1]
    (active,) = store.claim(now=2.0, start=1, hold=0, skip=[B])[0]
    assert store.defer_origin(A, until=50.0, now=3.0) == 1, "neither held nor active items move"
    assert store.defer_origin(A, until=40.0, now=3.0) == 0, "never made due sooner"
    assert store.defer_origin("nowhere:443", until=60.0, now=3.0) == 0
    assert store.next_due() == 0.0 and store.next_due(skip=[B]) == 50.0
    assert ids(store.claim_due(now=4.0, limit=5)) == ["b1"]
    store.release([held.aweme_id, active.aweme_id], now=5.0)  # claimed before the deferral
    assert ids(store.claim_due(now=5.0, limit=5)) == ids([held, active])
    (last,) = store.claim_due(now=50.0, limit=5)
    assert last.aweme_id not in {held.aweme_id, active.aweme_id}


def test_crash_recovery_and_clean_release(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e.json", now=1.0)
    store.claim_due(now=2.0, limit=2)
    store.release(["1"], now=3.0)
    one = store.item("1")
    assert one is not None and one["attempts"] == 0  # a clean stop does not use up an attempt
    assert store.reset_active(now=4.0) == 1
    row = store.item("2")
    assert row is not None and row["state"] == "pending" and row["attempts"] == 1  # a crash does


def test_the_resume_point_is_recorded_and_cleared_when_done(store: ManifestStore) -> None:
    store.merge([r("1")], "e1.json", now=1.0)
    (item,) = store.claim_due(now=2.0, limit=1)
    assert (item.validator, item.total, item.durable) == (None, None, 0)
    store.set_part("1", '"tag"', 5_000_000, 0)
    store.set_part("1", '"tag"', 5_000_000, 2_000_000)
    store.release(["1"], now=3.0)
    (item,) = store.claim_due(now=4.0, limit=1)
    assert (item.validator, item.total, item.durable) == ('"tag"', 5_000_000, 2_000_000)
    done(store, "1", 5_000_000, "ab" * 32, "a/1.mp4", [None], 5.0)
    row = store.item("1")
    assert row is not None
    assert (row["validator"], row["total_bytes"], row["durable_bytes"]) == (None, None, 0)


def test_the_resume_point_outlasts_a_failed_attempt(store: ManifestStore) -> None:
    store.merge([r("1")], "e1.json", now=1.0)
    (item,) = store.claim_due(now=2.0, limit=1)
    store.set_part("1", None, 900, 300)
    store.finish_failed("1", item.url, State.PENDING, "reset", None, 5.0, False, 3.0)
    (item,) = store.claim_due(now=5.0, limit=1)
    assert (item.validator, item.total, item.durable, item.attempts) == (None, 900, 300, 2)


def test_items_handed_back_wait_until_due_with_their_attempt(store: ManifestStore) -> None:
    store.merge([r("1")], "e1.json", now=1.0)
    store.claim_due(now=2.0, limit=1)
    store.release(["1"], now=3.0, due=60.0)  # its host cools down until 60
    assert store.item("1")["attempts"] == 0  # type: ignore[index]
    assert store.claim_due(now=59.0, limit=1) == []
    assert store.next_due() == 60.0
    (item,) = store.claim_due(now=60.0, limit=1)
    assert item.attempts == 1


def test_a_hand_back_never_makes_an_item_due_sooner(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e1.json", now=1.0)
    (first,) = store.claim_due(now=2.0, limit=1)
    store.finish_failed(first.aweme_id, first.url, State.PENDING, "t", None, 100.0, False, 2.0)
    claimed = store.claim_due(now=100.0, limit=2)
    (other,) = [i for i in claimed if i.aweme_id != first.aweme_id]
    store.release([*(i.aweme_id for i in claimed), "unknown"], now=101.0, due=50.0)
    assert store.next_due() == 50.0
    assert ids(store.claim_due(now=50.0, limit=5)) == [other.aweme_id]
    assert store.next_due() == 100.0
    store.release([first.aweme_id], now=102.0)  # not claimed: left alone
    assert store.item(first.aweme_id)["attempts"] == 1  # type: ignore[index]


def test_outcome_for_a_superseded_url_requeues(store: ManifestStore) -> None:
    store.merge([r("1")], "e1.json", now=1.0)
    (item,) = store.claim_due(now=2.0, limit=1)
    store.merge([r("1", NEW)], "e2.json", now=3.0)  # arrives while downloading
    state = store.finish_failed("1", item.url, State.EXPIRED, "forbidden", 403, 0.0, False, 4.0)
    assert state is State.PENDING
    row = store.item("1")
    assert row is not None and row["state"] == "pending" and row["url"] == NEW
    assert row["attempts"] == 0


def test_a_failed_attempt_is_recorded_and_may_be_refunded(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e1.json", now=1.0)
    one, two = sorted(store.claim_due(now=2.0, limit=2), key=lambda i: i.aweme_id)
    assert store.finish_failed("1", one.url, State.FAILED, "not_found", 404, 0.0, False, 3.0) is (
        State.FAILED
    )
    assert store.finish_failed("2", two.url, State.PENDING, "busy", 503, 9.0, True, 3.0) is (
        State.PENDING
    )
    first, second = store.item("1"), store.item("2")
    assert first is not None and second is not None
    assert (first["state"], first["attempts"], first["last_error"], first["last_status"]) == (
        "failed",
        1,
        "not_found",
        404,
    )
    assert (second["state"], second["attempts"], second["last_error"]) == ("pending", 0, "busy")
    assert second["last_status"] == 503 and store.next_due() == 9.0


def test_an_outcome_for_an_item_not_in_flight_changes_nothing(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e1.json", now=1.0)
    (item,) = store.claim_due(now=2.0, limit=1)
    done(store, item.aweme_id, 10, "ab" * 32, "a/x.mp4", ["a"], 3.0)
    other = "2" if item.aweme_id == "1" else "1"
    outcome = (State.FAILED, "x", 500, 0.0, False, 4.0)
    assert store.finish_failed(item.aweme_id, item.url, *outcome) is State.DONE
    assert store.finish_failed(other, OLD, *outcome) is State.PENDING
    assert store.finish_failed("unknown", OLD, *outcome) is State.FAILED
    row = store.item(other)
    assert row is not None and (row["state"], row["attempts"], row["last_error"]) == (
        "pending",
        0,
        None,
    )
    assert store.item("unknown") is None


def test_completions_are_written_together_with_a_flag_each(store: ManifestStore) -> None:
    store.merge([r("1"), r("2")], "e1.json", now=1.0)
    store.claim_due(now=2.0, limit=2)
    store.set_part("1", '"tag"', 100, 50)
    store.merge([r("2", topic="b")], "e2.json", now=3.0)
    flags = store.complete_many(
        [
            Completion("1", 100, "ab" * 32, "a/1.mp4", ["a"], 4.0),
            Completion("2", 200, "cd" * 32, "a/2.mp4", ["a"], 4.0),
        ]
    )
    assert flags == [False, True]
    assert store.counts().items["done"] == 2 and store.counts().bytes_done == 300
    row = store.item("1")
    assert row is not None
    assert (row["state"], row["bytes"], row["sha256"], row["path"]) == (
        "done",
        100,
        "ab" * 32,
        "a/1.mp4",
    )
    assert (row["completed_at"], row["attempts"], row["validator"], row["durable_bytes"]) == (
        4.0,
        1,
        None,
        0,
    )
    assert store.complete_many([]) == []


def test_items_claimed_ahead_are_held_not_active_and_cost_no_attempt(
    store: ManifestStore,
) -> None:
    store.merge([r(str(i)) for i in range(5)], "e.json", now=1.0)
    started, held = store.claim(now=2.0, start=1, hold=2)
    assert [i.attempts for i in started] == [1] and [i.attempts for i in held] == [0, 0]
    assert (store.counts().items["active"], store.counts().items["pending"]) == (1, 4)
    again, more = store.claim(now=2.0, start=5, hold=5)  # held ones are not claimed twice
    assert {i.aweme_id for i in again + more}.isdisjoint({i.aweme_id for i in started + held})
    assert len(again) == 2 and more == []
    assert store.next_due() is None  # nothing left that is not claimed
    assert store.start_held([held[0].aweme_id], now=3.0) == [1]
    assert store.counts().items["active"] == 4
    store.release([held[1].aweme_id], now=4.0)  # handed back: still no attempt
    assert store.item(held[1].aweme_id)["attempts"] == 0  # type: ignore[index]
    assert store.start_held([held[1].aweme_id], now=5.0) == [None]
    # A crash: the active ones paid an attempt, a held one did not.
    (last,) = store.claim(now=6.0, start=0, hold=1)[1]
    assert store.reset_active(now=7.0) == 4
    assert store.item(last.aweme_id)["attempts"] == 0  # type: ignore[index]
    assert store.claim_due(now=8.0, limit=10) != []


def test_a_claim_starts_the_held_items_it_is_told_of_first(store: ManifestStore) -> None:
    store.merge([r("1"), r("2"), r("3")], "e.json", now=1.0)
    assert store.claim(now=2.0, start=0, hold=0) == ([], [])
    held = store.claim(now=2.0, start=0, hold=2)[1]
    (started,) = store.claim(now=3.0, start=1, hold=0, mark=[held[0].aweme_id])[0]
    assert started.aweme_id not in {i.aweme_id for i in held} and started.attempts == 1
    marked = store.item(held[0].aweme_id)
    assert marked is not None and (marked["state"], marked["attempts"], marked["held"]) == (
        "active",
        1,
        0,
    )
    assert store.claim(now=4.0, start=0, hold=0, mark=[held[1].aweme_id]) == ([], [])
    assert store.counts().items["active"] == 3
    assert store.start_held([held[1].aweme_id, "unknown"], now=5.0) == [None, None]


def test_an_outcome_may_arrive_before_its_start_is_written(store: ManifestStore) -> None:
    # The pool writes starts of held items in batches, without waiting: an outcome can win.
    store.merge([r("1"), r("2")], "e.json", now=1.0)
    store.claim(now=2.0, start=0, hold=2)
    assert store.finish_failed("1", OLD, State.PENDING, "timeout", None, 9.0, False, 3.0) is (
        State.PENDING
    )
    done(store, "2", 10, "ab" * 32, "a/2.mp4", ["a"], 3.0)
    assert store.start_held(["1", "2"], now=4.0) == [None, None]  # late: changes nothing
    one, two = store.item("1"), store.item("2")
    assert one is not None and two is not None
    assert (one["state"], one["attempts"], one["held"]) == ("pending", 1, 0)
    assert (two["state"], two["attempts"], two["held"]) == ("done", 1, 0)
    assert store.counts().items["active"] == 0


def test_what_was_written_outlives_the_store(open_store: Callable[[], ManifestStore]) -> None:
    first = open_store()
    first.merge([r("1"), r("2")], "e.json", now=1.0)
    (item,) = first.claim_due(now=2.0, limit=1)
    first.set_part(item.aweme_id, '"tag"', 10, 5)
    first.close()
    again = open_store()
    try:
        assert again.counts().items == {
            "pending": 1,
            "active": 1,
            "done": 0,
            "expired": 0,
            "failed": 0,
        }
        assert again.reset_active(now=3.0) == 1
        resumed = {i.aweme_id: i for i in again.claim_due(now=4.0, limit=2)}
        got = resumed[item.aweme_id]
        assert (got.validator, got.total, got.durable, got.attempts) == ('"tag"', 10, 5, 2)
    finally:
        again.close()
