"""Claims with owners and leases: recorded on claim, renewed by their owner only, reclaimed
when they lapse, let go by owner (and its workers) after a restart, and never clobbered by the
outcome of an owner that lost them."""

import time
from collections.abc import Callable

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.base import Completion, LapsedClaim, ManifestStore, OwnerLoad

URL = "https://h.example/v/{}.mp4?expire=9999999999"


def r(aweme_id: str) -> Record:
    return Record(aweme_id, URL.format(aweme_id), "a", f'{{"aweme_id":"{aweme_id}"}}')


def row(store: ManifestStore, aweme_id: str) -> dict[str, object]:
    found = store.item(aweme_id)
    assert found is not None
    return found


def claim(
    store: ManifestStore,
    aweme_id: str,
    owner: str = "",
    lease_until: float | None = None,
    *,
    hold: bool = False,
) -> None:
    """Merge `aweme_id` and claim it (active, or held): the one item not claimed yet."""
    store.merge([r(aweme_id)], "e.json", now=1.0)
    due = store.claim(
        now=1.0, start=0 if hold else 1, hold=1 if hold else 0, owner=owner, lease_until=lease_until
    )
    (item,) = due[1] if hold else due[0]
    assert item.aweme_id == aweme_id


def claims(store: ManifestStore, aweme_id: str) -> tuple[object, ...]:
    """(state, held, attempts, owner, lease_until) of an item."""
    found = row(store, aweme_id)
    return (found["state"], found["held"], found["attempts"], found["owner"], found["lease_until"])


def completion(aweme_id: str, owner: str | None = None) -> Completion:
    return Completion(aweme_id, 10, "ab" * 32, f"a/{aweme_id}.mp4", ["a"], 5.0, owner)


def fail(
    store: ManifestStore, aweme_id: str, state: State, now: float, owner: str | None
) -> State | None:
    """A failed attempt of the item's own URL, due at once, its attempt counted."""
    return store.finish_failed(
        aweme_id, URL.format(aweme_id), state, "x", 500, 0.0, False, now, owner=owner
    )


def test_a_claim_records_its_owner_and_lease_and_a_start_keeps_them(
    store: ManifestStore,
) -> None:
    store.merge([r("1"), r("2"), r("3")], "e.json", now=1.0)
    started, held = store.claim(now=2.0, start=1, hold=1, owner="node/1", lease_until=30.0)
    go, ahead = started[0].aweme_id, held[0].aweme_id
    assert claims(store, go) == ("active", 0, 1, "node/1", 30.0)
    assert claims(store, ahead) == ("pending", 1, 0, "node/1", 30.0)
    (last,) = store.claim(now=3.0, start=1, hold=0)[0]  # no owner: none recorded
    assert claims(store, last.aweme_id) == ("active", 0, 1, None, None)
    assert store.start_held([ahead], now=4.0) == [1]
    assert claims(store, ahead) == ("active", 0, 1, "node/1", 30.0)


def test_a_claim_marks_its_own_held_items_started_and_keeps_their_lease(
    store: ManifestStore,
) -> None:
    store.merge([r("1"), r("2")], "e.json", now=1.0)
    (held,) = store.claim(now=2.0, start=0, hold=1, owner="a", lease_until=30.0)[1]
    (other,) = store.claim(now=2.0, start=0, hold=1, owner="b", lease_until=40.0)[1]
    # Each marks both: only its own is started by its claim.
    marks = [held.aweme_id, other.aweme_id]
    assert store.claim(now=3.0, start=0, hold=0, mark=marks, owner="a", lease_until=99.0) == (
        [],
        [],
    )
    assert claims(store, held.aweme_id) == ("active", 0, 1, "a", 30.0)
    assert claims(store, other.aweme_id) == ("pending", 1, 0, "b", 40.0)
    assert store.start_held(marks, now=4.0, owner="a") == [None, None]
    assert store.start_held(marks, now=4.0, owner="b") == [None, 1]


def test_every_way_out_of_flight_clears_owner_and_lease(store: ManifestStore) -> None:
    store.merge([r(str(i)) for i in range(4)], "e.json", now=1.0)
    started, held = store.claim(now=2.0, start=3, hold=1, owner="n", lease_until=50.0)
    one, two, three = (i.aweme_id for i in started)
    assert store.release([held[0].aweme_id], now=3.0) == [held[0].aweme_id]
    store.finish_failed(one, URL.format(one), State.PENDING, "t", None, 9.0, False, 3.0)
    store.complete_many([completion(two)])
    assert store.reset_active(now=4.0) == 1
    for aweme_id in (held[0].aweme_id, one, two, three):
        found = row(store, aweme_id)
        assert (found["owner"], found["lease_until"], found["held"]) == (None, None, 0), aweme_id


def test_leases_are_renewed_only_while_the_owner_still_has_them(store: ManifestStore) -> None:
    store.merge([r("1"), r("2"), r("3"), r("4")], "e.json", now=1.0)
    started, held = store.claim(now=2.0, start=1, hold=1, owner="a", lease_until=10.0)
    mine = [started[0].aweme_id, held[0].aweme_id]
    (theirs,) = store.claim(now=2.0, start=1, hold=0, owner="b", lease_until=10.0)[0]
    (nobodys,) = store.claim(now=2.0, start=1, hold=0, lease_until=10.0)[0]
    asked = [theirs.aweme_id, *mine, "unknown", mine[0], nobodys.aweme_id]
    assert store.renew_leases("a", asked, until=20.0) == mine
    assert [row(store, i)["lease_until"] for i in mine] == [20.0, 20.0]
    assert row(store, theirs.aweme_id)["lease_until"] == 10.0
    assert store.renew_leases("", asked, until=30.0) == [nobodys.aweme_id]
    assert store.renew_leases("a/1", mine, until=30.0) == [], "a worker is not its node"
    store.release([mine[1]], now=3.0)
    assert store.renew_leases("a", mine, until=40.0) == [mine[0]]
    store.complete_many([completion(mine[0])])
    assert store.renew_leases("a", mine, until=50.0) == []
    assert store.renew_leases("a", [], until=50.0) == []


def test_lapsed_claims_are_reclaimed_and_nothing_else(store: ManifestStore) -> None:
    claim(store, "active", "a/1", 10.0)
    claim(store, "held", "a/2", 10.0, hold=True)
    claim(store, "ownerless", "", 10.0)
    claim(store, "alive", "b", 20.0)  # lapses after now
    claim(store, "edge", "b", 15.0)  # ends at now: not before it
    claim(store, "unleased", "c")
    claim(store, "unleased-held", "c", hold=True)
    claim(store, "done", "a/1", 10.0)
    store.complete_many([completion("done")])
    store.merge([r("pending")], "e.json", now=1.0)
    untouched = ("alive", "edge", "unleased", "unleased-held", "done", "pending")
    before = {i: store.item(i) for i in untouched}
    assert store.reclaim_lapsed(now=15.0) == [
        LapsedClaim("active", "a/1", True),
        LapsedClaim("held", "a/2", False),
        LapsedClaim("ownerless", "", True),
    ]
    assert claims(store, "active") == ("pending", 0, 1, None, None), "the attempt stays spent"
    assert claims(store, "held") == ("pending", 0, 0, None, None), "none was counted"
    assert claims(store, "ownerless") == ("pending", 0, 1, None, None)
    assert {i: store.item(i) for i in untouched} == before
    assert store.counts().items["active"] == 3  # alive, edge, unleased
    assert store.reclaim_lapsed(now=15.0) == []
    # Handed back to the queue: claimed by another, the attempt counted on top.
    again = store.claim(now=16.0, start=5, hold=0, owner="d", lease_until=99.0)[0]
    assert {i.aweme_id: i.attempts for i in again} == {
        "active": 2,
        "held": 1,
        "ownerless": 2,
        "pending": 1,
    }


def test_a_restarting_owner_lets_go_of_its_own_and_its_workers_claims_only(
    store: ManifestStore,
) -> None:
    claim(store, "node", "node", 50.0)
    claim(store, "node/1", "node/1", 50.0)
    claim(store, "node/2", "node/2", 50.0, hold=True)
    claim(store, "node/1/x", "node/1/x", 50.0)
    claim(store, "nodeX", "nodeX", 50.0)
    claim(store, "nodeX/1", "nodeX/1", 50.0, hold=True)
    claim(store, "other/1", "other/1", 50.0)
    claim(store, "none", "")
    everyone = ["node", "node/1", "node/2", "node/1/x", "nodeX", "nodeX/1", "other/1", "none"]
    before = {i: claims(store, i) for i in everyone}
    # A name is compared as it is: neither `_` nor `%` is a wildcard.
    for name in ("n_de", "nod%", "%", "_", "node/", "nod"):
        assert store.reset_active(now=3.0, owner=name) == 0, name
    assert {i: claims(store, i) for i in everyone} == before
    assert store.reset_active(now=3.0, owner="node/1") == 2  # node/1 and its node/1/x
    assert store.reset_active(now=3.0, owner="node") == 1  # node; node/2 was only held
    for aweme_id in ("node", "node/1", "node/2", "node/1/x"):
        assert claims(store, aweme_id)[:2] == ("pending", 0), aweme_id
    assert claims(store, "node/1")[2] == 1, "a crash costs the attempt"
    for aweme_id in ("nodeX", "nodeX/1", "other/1", "none"):
        assert claims(store, aweme_id) == before[aweme_id], aweme_id
    assert store.reset_active(now=3.0, owner="") == 1  # those claimed by no one
    assert claims(store, "none")[:2] == ("pending", 0)
    assert store.reset_active(now=4.0) == 2  # None: all the rest (nodeX, other/1)
    assert store.in_flight_by_owner() == {}


def test_a_stale_owner_never_clobbers_its_successors_claim(store: ManifestStore) -> None:
    store.merge([r("1"), r("2"), r("3"), r("4")], "e.json", now=1.0)
    store.claim(now=2.0, start=3, hold=1, owner="a", lease_until=10.0)
    assert len(store.reclaim_lapsed(now=11.0)) == 4
    store.claim(now=12.0, start=3, hold=1, owner="b", lease_until=99.0)
    held = next(i for i in "1234" if row(store, i)["held"])
    one, two, three = (i for i in "1234" if i != held)
    before = {i: store.item(i) for i in "1234"}
    # a's late outcomes: nothing written, and each call says so.
    assert store.release([one, held], now=13.0, owner="a") == []
    assert fail(store, two, State.FAILED, 13.0, owner="a") is None
    assert store.complete_many([completion(three, "a"), completion(held, "a")]) == [None, None]
    assert store.start_held([held], now=13.0, owner="a") == [None]
    assert store.set_part(one, '"a-tag"', 100, 50, owner="a") is False
    assert {i: store.item(i) for i in "1234"} == before
    assert store.in_flight_by_owner() == {"b": OwnerLoad(active=3, held=1)}
    # b's own go through.
    assert store.set_part(one, '"b-tag"', 100, 40, owner="b") is True
    assert row(store, one)["durable_bytes"] == 40
    assert store.complete_many([completion(three, "b"), completion("5", "b")]) == [False, None]
    assert fail(store, two, State.FAILED, 14.0, owner="b") is State.FAILED
    assert store.release([held, one, held], now=14.0, owner="b") == [held, one]
    assert [claims(store, i)[0] for i in (one, two, three, held)] == [
        "pending",
        "failed",
        "done",
        "pending",
    ]
    # Not in flight any more: an outcome with an owner is refused, even b's.
    assert fail(store, three, State.FAILED, 15.0, owner="b") is None
    assert store.complete_many([completion(one, "b")]) == [None]
    assert store.release([one], now=15.0, owner="b") == []
    assert store.set_part(one, '"b-tag"', 100, 60, owner="b") is False
    assert store.set_part(one, '"b-tag"', 100, 60) is True  # without an owner, as before


def test_an_item_claimed_by_no_one_takes_any_owners_outcome(store: ManifestStore) -> None:
    # Today's single daemon claims with no owner.
    store.merge([r("1"), r("2"), r("3")], "e.json", now=1.0)
    store.claim(now=2.0, start=3, hold=0)
    assert store.release(["1"], now=3.0, owner="a") == ["1"]
    assert fail(store, "2", State.PENDING, 3.0, owner="a") is State.PENDING
    assert store.complete_many([completion("3", "a")]) == [False]


def test_without_an_owner_outcomes_and_resets_are_as_before(store: ManifestStore) -> None:
    store.merge([r("1"), r("2"), r("3"), r("4")], "e.json", now=1.0)
    store.claim(now=2.0, start=4, hold=0, owner="b", lease_until=99.0)
    assert store.release(["1", "unknown", "1"], now=3.0) == ["1"]
    assert store.finish_failed("2", URL.format("2"), State.FAILED, "x", 1, 0, False, 3.0) is (
        State.FAILED
    )
    assert store.finish_failed("2", URL.format("2"), State.FAILED, "x", 1, 0, False, 3.0) is (
        State.FAILED  # not in flight: its state, nothing written
    )
    assert store.complete_many([completion("3"), completion("unknown")]) == [False, False]
    assert store.reset_active(now=4.0) == 1
    assert store.in_flight_by_owner() == {}


def test_items_in_flight_are_counted_by_owner(store: ManifestStore) -> None:
    assert store.in_flight_by_owner() == {}
    store.merge([r(str(i)) for i in range(10)], "e.json", now=1.0)
    store.claim(now=2.0, start=2, hold=1, owner="a/1", lease_until=9.0)
    store.claim(now=2.0, start=0, hold=2, owner="b", lease_until=9.0)
    (started,) = store.claim(now=2.0, start=1, hold=0)[0]
    assert store.in_flight_by_owner() == {
        "": OwnerLoad(active=1, held=0),
        "a/1": OwnerLoad(active=2, held=1),
        "b": OwnerLoad(active=0, held=2),
    }
    store.complete_many([completion(started.aweme_id)])
    store.reclaim_lapsed(now=10.0)
    assert store.in_flight_by_owner() == {}


def test_claims_and_leases_outlive_the_store(open_store: Callable[[], ManifestStore]) -> None:
    first = open_store()
    first.merge([r("1")], "e.json", now=1.0)
    first.claim(now=2.0, start=1, hold=0, owner="node/1", lease_until=10.0)
    first.close()
    again = open_store()
    try:
        assert claims(again, "1") == ("active", 0, 1, "node/1", 10.0)
        assert again.reclaim_lapsed(now=11.0) == [LapsedClaim("1", "node/1", True)]
    finally:
        again.close()


def test_a_resume_point_is_given_only_to_the_node_holding_the_part(store: ManifestStore) -> None:
    # Each node writes .part files into its own data dir: another node's resume point would
    # splice its bytes onto whatever that node's folder holds under the same name.
    store.merge([r("1")], "e.json", now=1.0)
    store.claim(now=2.0, start=1, hold=0, owner="edge-a/1", lease_until=10.0)
    assert store.set_part("1", '"tag"', 1000, 400, owner="edge-a/1")
    assert store.release(["1"], now=3.0, owner="edge-a/1") == ["1"]
    (theirs,), _ = store.claim(now=4.0, start=1, hold=0, owner="edge-b", lease_until=10.0)
    assert (theirs.validator, theirs.durable, theirs.total) == (None, 0, None)
    assert store.release(["1"], now=5.0, owner="edge-b") == ["1"]
    (mine,), _ = store.claim(now=6.0, start=1, hold=0, owner="edge-a/2", lease_until=10.0)
    assert (mine.validator, mine.durable, mine.total) == ('"tag"', 400, 1000)  # the node's
    # Recorded without an owner (one daemon, no nodes): any claim may resume it.
    assert store.set_part("1", '"tag"', 1000, 500)
    store.release(["1"], now=7.0)
    (any_node,), _ = store.claim(now=8.0, start=1, hold=0, owner="edge-c", lease_until=10.0)
    assert any_node.durable == 500


def test_items_are_listed_by_node(store: ManifestStore) -> None:
    # `ingestd list --node`: what a node (or one of its workers) has claimed, and the items
    # whose file or .part it holds.
    store.merge([r(str(i)) for i in range(6)], "e.json", now=1.0)
    a_started, a_held = store.claim(now=2.0, start=2, hold=1, owner="edge-a/1", lease_until=9.0)
    (b_started,), _ = store.claim(now=2.0, start=1, hold=0, owner="edge-b", lease_until=9.0)
    store.complete_many([completion(a_started[0].aweme_id, "edge-a/1")])
    assert store.set_part(b_started.aweme_id, '"tag"', 100, 50, owner="edge-b")
    mine = {a_started[0].aweme_id, a_started[1].aweme_id, a_held[0].aweme_id}
    assert {i.aweme_id for i in store.list_items(node="edge-a")} == mine
    assert store.count_items(node="edge-a") == 3
    assert [i.aweme_id for i in store.list_items(node="edge-b")] == [b_started.aweme_id]
    assert [i.aweme_id for i in store.list_items("done", node="edge-a")] == [a_started[0].aweme_id]
    assert store.list_items(node="edge") == []  # a name, not a prefix
    assert len(store.list_items()) == 6


def test_the_manifest_clock_is_this_hosts_when_they_agree(store: ManifestStore) -> None:
    # The database here runs on this host: no skew, and the manifest's time is this host's,
    # exactly (a skewed host is tests/e2e/test_nodes.py's, under libfaketime).
    assert store.clock_skew() == 0.0
    before = time.time()
    now = store.clock()
    assert before <= now <= time.time()
