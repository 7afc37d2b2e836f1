"""Host health as a pure state machine: no clock, no socket, no manifest."""

from __future__ import annotations

import pytest

from ingestd.policy.hosts import (
    HINTED_MAX,
    HOST_FAILURES_TO_COOL,
    PROBE_WAIT,
    Hinted,
    HostHealth,
)


def fail(hosts: HostHealth, now: float, ticket: str = "t", **kw: object) -> object:
    assert hosts.admit("cdn", now, ticket) is None
    return hosts.finished("cdn", now, ticket, host_fault=True, reason="unreachable", **kw)  # type: ignore[arg-type]


def test_one_failure_is_not_an_outage_two_in_a_row_are() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    assert fail(hosts, 0.0) is None
    assert hosts.admit("cdn", 0.1, "t") is None  # still admitted after one failure
    assert hosts.finished("cdn", 0.1, "t", host_fault=False) is None  # ... which it then forgets
    assert fail(hosts, 1.0) is None
    event = fail(hosts, 2.0)
    assert event is not None and event.event == "host_unavailable"  # type: ignore[attr-defined]
    assert event.reason == "unreachable" and 0.5 <= event.retry_in_s <= 1.0  # type: ignore[attr-defined]
    assert hosts.down() == ["cdn"]


def test_a_cooling_host_admits_nothing_then_one_probe_whose_failure_doubles_the_wait() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    for i in range(HOST_FAILURES_TO_COOL):
        fail(hosts, float(i), jitter=0.0)
    until = hosts.cooling_until("cdn")
    assert until == pytest.approx(1.5)  # base/2 with no jitter
    assert hosts.admit("cdn", 1.2, "t") == until
    assert hosts.admit("cdn", until, "t") is None  # the probe
    assert hosts.admit("cdn", until, "t") == until + PROBE_WAIT  # only one probe at a time
    waits = []
    now = until
    for _ in range(12):
        assert (
            hosts.finished("cdn", now, "t", host_fault=True, reason="unreachable", jitter=0.0)
            is None
        )
        wait = hosts.cooling_until("cdn") - now
        waits.append(wait)
        now = hosts.cooling_until("cdn")
        assert hosts.admit("cdn", now, "t") is None
    assert waits[:4] == pytest.approx([1.0, 2.0, 4.0, 8.0])
    assert max(waits) == pytest.approx(450.0)  # host_backoff_max 900, halved without jitter
    event = hosts.finished("cdn", now, "t", host_fault=False)
    assert event is not None and event.event == "host_recovered"
    assert event.down_s == pytest.approx(now - 1.0)
    assert hosts.down() == [] and hosts.admit("cdn", now, "t") is None


def test_failures_of_requests_sent_before_the_cooldown_do_not_stretch_it() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    for _ in range(8):  # eight transfers in flight when the network goes
        assert hosts.admit("cdn", 0.0, "t") is None
    events = [
        hosts.finished("cdn", 0.1, f"t{i}", host_fault=True, reason="unreachable", jitter=0.0)
        for i in range(8)
    ]
    assert [e.event for e in events if e is not None] == ["host_unavailable"]
    assert hosts.cooling_until("cdn") == pytest.approx(0.6)


def test_retry_after_cools_the_whole_host_at_once_within_the_cap() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=100.0, slots=8)
    event = fail(hosts, 10.0, retry_after=30.0)
    assert event is not None and event.retry_in_s == 30.0  # type: ignore[attr-defined]
    assert hosts.admit("cdn", 39.0, "t") == 40.0
    hosts2 = HostHealth(backoff_base=1.0, backoff_max=100.0, slots=8)
    fail(hosts2, 0.0, retry_after=10**9)
    assert hosts2.cooling_until("cdn") == 100.0


def test_per_host_slots_and_other_hosts_are_independent() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=2)
    assert hosts.admit("a", 0.0, "t") is None and hosts.admit("a", 0.0, "t") is None
    assert hosts.admit("a", 0.0, "t") == PROBE_WAIT
    assert hosts.admit("b", 0.0, "t") is None
    hosts.finished("a", 1.0, "t", host_fault=False)
    assert hosts.admit("a", 1.0, "t") is None


def test_a_cancelled_probe_gives_no_verdict_and_frees_the_probe() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    for i in range(HOST_FAILURES_TO_COOL):
        fail(hosts, float(i), jitter=0.0)
    now = hosts.cooling_until("cdn")
    assert hosts.admit("cdn", now, "t") is None
    assert hosts.finished("cdn", now, "t", host_fault=False, cancelled=True) is None
    assert hosts.down() == ["cdn"]
    assert hosts.admit("cdn", now, "t") is None  # a new probe may go


def test_a_host_that_answered_meanwhile_makes_a_dead_transfer_the_items_own() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    assert not hosts.served_since("cdn", 0.0)
    assert hosts.admit("cdn", 0.0, "t") is None and hosts.admit("cdn", 0.0, "t") is None
    hosts.finished("cdn", 5.0, "t", host_fault=False)  # another transfer got its answer at 5
    assert hosts.served_since("cdn", 1.0)  # so one that started at 1 and died is its own
    assert not hosts.served_since("cdn", 6.0)  # one that started after: the host's, maybe
    assert not hosts.served_since("other", 0.0)


def test_only_the_probe_ends_a_probe_and_requests_never_sent_give_no_verdict() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    assert hosts.admit("cdn", 0.0, "old") is None  # in flight when the host goes down
    fail(hosts, 0.1, "a", jitter=0.0)
    fail(hosts, 0.2, "b", jitter=0.0)
    now = hosts.cooling_until("cdn")
    assert hosts.admit("cdn", now, "probe") is None
    # The old transfer is stopped: its end must not end the probe, nor judge the host.
    assert hosts.finished("cdn", now, "old", host_fault=False, cancelled=True) is None
    assert hosts.admit("cdn", now, "second") == now + PROBE_WAIT
    # An item whose URL expired before any request says nothing about the host either.
    assert hosts.finished("cdn", now, "probe", host_fault=False, cancelled=True) is None
    assert hosts.down() == ["cdn"]


def test_a_transfer_from_before_the_cooldown_that_ends_well_is_no_recovery() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    assert hosts.admit("cdn", 0.0, "old") is None  # its bytes were all in when the host went
    fail(hosts, 0.1, "a", jitter=0.0)
    fail(hosts, 0.2, "b", jitter=0.0)
    assert hosts.finished("cdn", 0.3, "old", host_fault=False) is None
    assert hosts.down() == ["cdn"]
    now = hosts.cooling_until("cdn")
    assert hosts.admit("cdn", now, "probe") is None
    event = hosts.finished("cdn", now, "probe", host_fault=False)
    assert event is not None and event.event == "host_recovered"


def test_connections_lost_together_went_down_with_their_host() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    hosts.lost("cdn", 10.0)
    assert not hosts.went_down("cdn", 10.0, 11.0)  # alone: the item's own
    hosts.lost("cdn", 10.3)
    assert hosts.went_down("cdn", 10.0, 11.0) and hosts.went_down("cdn", 10.3, 11.3)
    hosts.lost("cdn", 60.0)
    assert not hosts.went_down("cdn", 60.0, 61.0)
    assert not hosts.went_down("other", 60.0, 61.0)


def test_a_lone_loss_went_down_with_a_host_that_is_down_though_not_cooling_right_now() -> None:
    # The outage test's flake: one transfer alone on its connection is lost at 10.0; the other
    # connection's transfers fail as the host's (no loss recorded for them), and the host goes
    # down with a 0.1 s cooldown. When the grace ends, a probe is out and the cooldown is over.
    hosts = HostHealth(backoff_base=0.2, backoff_max=4.0, slots=8)
    hosts.lost("cdn", 10.0)
    for i in range(HOST_FAILURES_TO_COOL):
        assert hosts.admit("cdn", 9.9, f"t{i}") is None
        hosts.finished("cdn", 10.0, f"t{i}", host_fault=True, reason="connection_error", jitter=0)
    assert hosts.down() == ["cdn"]
    assert hosts.admit("cdn", 10.5, "probe") is None  # the cooldown has ended: a probe is out
    assert hosts.cooling_until("cdn") < 11.0
    assert hosts.went_down("cdn", 10.0, 11.0)
    # Down and back up within the grace: the loss still went down with its host.
    hosts.finished("cdn", 10.8, "probe", host_fault=False)
    assert hosts.down() == [] and hosts.went_down("cdn", 10.0, 11.0)
    # A host that went down long after (or long before) a loss says nothing about it.
    hosts.lost("cdn", 100.0)
    assert not hosts.went_down("cdn", 100.0, 101.0)


def test_the_first_cooldown_to_end_is_when_a_probe_may_go() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    assert hosts.next_cooldown_end(0.0) is None  # nothing cooling
    for i in range(HOST_FAILURES_TO_COOL):
        fail(hosts, float(i), jitter=0.0)
    until = hosts.cooling_until("cdn")
    assert hosts.next_cooldown_end(1.2) == until
    assert hosts.next_cooldown_end(until) is None  # over: the probe may go now


def test_a_hint_is_news_once_per_host_within_a_bounded_memory() -> None:
    told = Hinted()
    assert told.first("cdn:443", "set ca_bundle")
    assert not told.first("cdn:443", "set ca_bundle")  # the next item's failure: old news
    assert told.first("cdn:443", "list it in allowed_hosts")  # another hint is news
    assert told.first("img:443", "set ca_bundle")  # and so is another host
    for n in range(HINTED_MAX):  # past the bound the oldest is forgotten, and told again
        told.first(f"h{n}:443", "hint")
    assert told.first("cdn:443", "set ca_bundle")
    told.clear()  # a reload
    assert told.first("h5:443", "hint")


def test_a_host_another_worker_found_down_is_sent_nothing_then_probed_once() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    hosts.told_down("cdn", 12.0, "unreachable", now=10.0)
    assert hosts.down() == ["cdn"] and hosts.blocked(11.0) == ["cdn"]
    assert hosts.admit("cdn", 11.0, "a") == 12.0  # nothing before the cooldown ends
    assert hosts.admit("cdn", 12.0, "a") is None  # then one probe
    assert hosts.admit("cdn", 12.0, "b") == 12.0 + PROBE_WAIT
    # Its failure doubles the wait, and tells nothing: the node said it was down.
    assert (
        hosts.finished("cdn", 12.5, "a", host_fault=True, reason="unreachable", jitter=0.0) is None
    )
    assert hosts.cooling_until("cdn") == pytest.approx(13.5)
    # Its success ends the outage; the node already knows it began: the event says so.
    assert hosts.admit("cdn", 13.5, "c") is None
    event = hosts.finished("cdn", 14.0, "c", host_fault=False)
    assert event is not None and event.event == "host_recovered" and event.down_s == 4.0


def test_a_host_another_worker_has_back_is_sent_requests_at_once() -> None:
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    hosts.told_up("cdn", 1.0)  # never down here: nothing to do
    assert hosts.admit("cdn", 1.0, "a") is None
    hosts.told_down("cdn", 60.0, "rate_limited", now=2.0)
    assert hosts.finished("cdn", 2.5, "a", host_fault=True, reason="rate_limited") is None
    hosts.told_up("cdn", 3.0)
    assert hosts.down() == [] and hosts.blocked(3.0) == []
    assert hosts.admit("cdn", 3.0, "b") is None and hosts.admit("cdn", 3.0, "c") is None
    assert hosts.finished("cdn", 3.5, "b", host_fault=False) is None  # no second recovery
    # A later outage is found as ever: HOST_FAILURES_TO_COOL failures in a row.
    assert hosts.finished("cdn", 4.0, "c", host_fault=True, reason="unreachable") is None
