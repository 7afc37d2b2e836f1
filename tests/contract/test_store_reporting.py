"""What the store reports and the CLI changes: status counts, listings and their filters,
`ingestd retry`, the queue's age and raw records, and what each node says of itself."""

import random
from collections.abc import Callable

from ingestd.policy.merge import State
from ingestd.policy.naming import UNTAGGED, topic_folder
from ingestd.store.base import NODE_FORGET_S, NODE_SILENT_S, ManifestStore, NodeReport
from support.store import NEW, OLD, done, r


def test_status_totals_follow_every_change(store: ManifestStore) -> None:
    # After any mix of operations the totals must equal a full count of the items.
    rng = random.Random(7)
    now = 1.0

    def full_count() -> tuple[dict[str, int], int]:
        items = {state.value: store.count_items(state=state.value) for state in State}
        listed = store.iter_items(state="done", limit=None)
        return items, sum(i.bytes or 0 for i in listed)

    for step in range(300):
        now += 1.0
        op = rng.randrange(6)
        if op == 0:
            store.merge(
                [r(str(rng.randrange(60)), topic=rng.choice("abc")) for _ in range(5)], "e", now
            )
        elif op == 1:
            claimed = store.claim_due(now, rng.randrange(1, 6))
            for item in claimed:
                if rng.random() < 0.5:
                    done(store, item.aweme_id, rng.randrange(1, 10**6), "x", "p", ("a",), now)
                else:
                    final = rng.choice([State.PENDING, State.EXPIRED, State.FAILED])
                    store.finish_failed(item.aweme_id, item.url, final, "e", 500, now, False, now)
        elif op == 2:
            store.retry(["expired", "failed"], [], now)
        elif op == 3:
            store.claim_due(now, 2)
            store.reset_active(now)
        elif op == 4:
            claimed = store.claim_due(now, 3)
            store.release([i.aweme_id for i in claimed], now)
        else:
            store.merge([r(str(rng.randrange(60)), url=NEW)], "f", now)  # revives some
        counts = store.counts()
        assert (counts.items, counts.bytes_done) == full_count(), step


def test_retry_says_why_each_refused_id_was_refused(store: ManifestStore) -> None:
    now = 50.0  # before OLD's expiry: a URL dead at the merge is stored expired
    store.merge([r("done1"), r("active1"), r("failed1"), r("pending1")], "e", now)
    (first,) = store.claim_due(now, 1)
    assert done(store, first.aweme_id, 10, "x", "a/x.mp4", ("a",), now) is False
    claimed = store.claim_due(now, 2)
    failed, active = claimed[0].aweme_id, claimed[1].aweme_id
    store.finish_failed(failed, OLD, State.FAILED, "not_found", 404, now, False, now)
    pending = ({"done1", "active1", "failed1", "pending1"} - {first.aweme_id, failed, active}).pop()
    ids = [first.aweme_id, active, "nope", failed, pending]
    requeued, refused = store.retry([], ids, now)
    assert requeued == [failed, pending], "failed and pending items go back, due now"
    assert refused == {first.aweme_id: "done", active: "active", "nope": "unknown"}
    assert list(refused) == [first.aweme_id, active, "nope"], "in the order asked"


def test_retry_by_state_gives_fresh_attempts_due_now(store: ManifestStore) -> None:
    store.merge([r(str(i)) for i in range(4)], "e", 1.0)
    items = sorted(store.claim_due(2.0, 4), key=lambda i: i.aweme_id)
    outcomes = [State.FAILED, State.EXPIRED, State.PENDING]
    for item, state in zip(items, outcomes, strict=False):
        store.finish_failed(item.aweme_id, item.url, state, "why", 403, 90.0, False, 3.0)
    requeued, refused = store.retry(["failed", "expired"], ["3"], now=4.0)
    assert (sorted(requeued), refused) == (["0", "1"], {"3": "active"})
    for aweme_id in ("0", "1"):
        row = store.item(aweme_id)
        assert row is not None
        assert (row["state"], row["attempts"], row["last_error"], row["last_status"]) == (
            "pending",
            0,
            None,
            None,
        )
    assert [i.aweme_id for i in store.claim_due(4.0, 5)] in (["0", "1"], ["1", "0"])
    assert store.next_due() == 90.0, "the item still waiting for its retry time keeps it"


def test_items_are_listed_newest_first_in_chunks_with_their_records(store: ManifestStore) -> None:
    count = 2 * 500 + 7  # more than one chunk of ids
    for n in range(count):  # one merge each: every item its own updated_at
        store.merge([r(f"id{n:05d}")], "e", 1000.0 + n)
    listed = list(store.iter_items(limit=None, full=True))
    assert [i.aweme_id for i in listed] == [f"id{n:05d}" for n in reversed(range(count))]
    assert listed[0].record == '{"aweme_id":"id01006"}' and listed[0].sha256 is None
    assert [i.aweme_id for i in store.iter_items(limit=3)] == ["id01006", "id01005", "id01004"]
    assert store.list_items(limit=2)[1].record is None, "records only when asked for"
    assert store.count_items() == count and store.count_items(state="done") == 0


def test_listings_filter_by_state_and_by_topic_or_its_folder(store: ManifestStore) -> None:
    store.merge([r("1", topic="big cats"), r("2", topic="a/b"), r("3", topic=None)], "e", 1.0)
    store.merge([r("4", topic="big cats"), r("2", topic="big cats")], "e", 2.0)
    store.claim_due(3.0, 4)
    store.release(["2", "3", "4"], 3.0)
    done(store, "1", 5, "ab" * 32, "big_cats/1.mp4", ["big cats"], 4.0)

    def listed(state: str | None = None, topic: str | None = None) -> list[str]:
        return sorted(i.aweme_id for i in store.iter_items(state, topic, limit=None))

    assert listed(topic="big cats") == ["1", "2", "4"]
    assert listed(topic="big_cats") == ["1", "2", "4"], "the folder name finds it too"
    assert listed(topic=topic_folder("a/b")) == ["2"] and listed(topic="a/b") == ["2"]
    assert listed(topic=UNTAGGED) == ["3"], "no topic is the untagged folder"
    assert listed(topic="nope") == [] and store.count_items(topic="nope") == 0
    assert listed(state="done") == ["1"] and listed(state="done", topic="a/b") == []
    assert store.count_items(topic="big_cats") == 3
    assert store.count_items(state="pending", topic="big cats") == 2
    assert store.count_items(state="pending") == 3
    assert store.list_items(topic="big cats", limit=1)[0].aweme_id == "1", "newest first"
    (one,) = store.list_items(state="done", full=True)
    assert (one.aweme_id, one.topics, one.state, one.attempts, one.bytes) == (
        "1",
        ("big cats",),
        "done",
        1,
        5,
    )
    assert (one.sha256, one.path, one.record, one.updated_at) == (
        "ab" * 32,
        "big_cats/1.mp4",
        '{"aweme_id":"1"}',
        4.0,
    )


def test_a_listed_item_says_why_it_last_failed(store: ManifestStore) -> None:
    store.merge([r("1")], "e", 1.0)
    (item,) = store.claim_due(2.0, 1)
    store.finish_failed("1", item.url, State.FAILED, "not_found", 404, 0.0, False, 3.0)
    (one,) = store.list_items(state="failed")
    assert (one.reason, one.status, one.attempts, one.bytes, one.updated_at) == (
        "not_found",
        404,
        1,
        None,
        3.0,
    )


def test_counts_of_an_empty_store_name_every_state_and_outcome(store: ManifestStore) -> None:
    counts = store.counts()
    assert counts.items == {s.value: 0 for s in State}
    assert counts.extracts == {"merged": 0, "rejected": 0, "duplicate": 0}
    assert counts.bytes_done == 0
    assert store.count_items() == 0 and store.list_items() == []


def test_the_oldest_pending_item_dates_the_queue(store: ManifestStore) -> None:
    assert store.oldest_pending() is None
    store.merge([r("1")], "e1", 5.0)
    store.merge([r("2")], "e2", 7.0)
    store.merge([r("1", topic="b")], "e3", 9.0)  # a merge later does not make it younger
    assert store.oldest_pending() == 5.0
    store.claim_due(10.0, 2)
    assert store.oldest_pending() is None, "active items are not waiting"
    store.release(["2"], 11.0)
    assert store.oldest_pending() == 7.0
    store.release(["1"], 11.0)
    assert store.oldest_pending() == 5.0
    store.claim(12.0, start=0, hold=2)
    assert store.oldest_pending() == 5.0, "held items still wait"


def test_each_node_reports_itself_and_a_silent_one_is_forgotten(
    open_store: Callable[[], ManifestStore],
) -> None:
    store = open_store()
    assert store.node_reports() == []
    first = NodeReport("edge-a", 100.0, "running", 3, 12_345, 1.5e6)
    other = NodeReport("edge-b", 101.0, "paused", 1, 2**40, 0.0)  # bytes past 32 bits
    store.report_node(first)
    store.report_node(other)
    latest = NodeReport("edge-a", 105.0, "running", 2, 50_000, 2.25e6)
    store.report_node(latest)  # replaces the node's earlier report
    assert store.node_reports() == [latest, other]
    store.close()
    store = open_store()  # kept: a node that stopped is still shown, as stopped
    try:
        assert store.node_reports() == [latest, other]
        gone = NodeReport("edge-a", 101.5 + NODE_FORGET_S, "stopped", 0, 0, 0.0)
        store.report_node(gone)  # edge-b was last heard over NODE_FORGET_S before
        assert store.node_reports() == [gone]
    finally:
        store.close()


def test_a_nodes_name_is_held_by_one_running_daemon_at_a_time(store: ManifestStore) -> None:
    def report(at: float, instance: str, state: str = "running") -> NodeReport:
        return NodeReport("edge-a", at, state, 0, 0, 0.0, instance)

    assert store.report_node(report(100.0, "run-1")) is None  # the name was free
    assert store.report_node(report(105.0, "run-1")) is None  # its own run goes on
    # Another daemon named edge-a (a cloned host) is refused while run-1 reports...
    assert store.report_node(report(106.0, "other")) == report(105.0, "run-1")
    assert store.report_node(report(105.0 + NODE_SILENT_S - 1, "other")) is not None
    assert store.node_reports() == [report(105.0, "run-1")], "a refused report is not kept"
    # ... but not the next run of the same node, after a crash (it knows run-1 was its last),
    assert store.report_node(report(107.0, "run-2"), previous="run-1") is None
    # and the name is free once its holder stopped, or went silent for NODE_SILENT_S.
    assert store.report_node(report(108.0, "run-2", "stopped")) is None
    assert store.report_node(report(109.0, "run-3")) is None
    assert store.report_node(report(109.0 + NODE_SILENT_S + 1, "run-4")) is None
    assert store.node_reports() == [report(109.0 + NODE_SILENT_S + 1, "run-4")]
