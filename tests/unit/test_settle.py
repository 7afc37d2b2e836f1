"""The settle rule for extracts that do not parse yet."""

from ingestd.policy.settle import FileSignature, SettleTracker


def test_rejects_only_after_unchanged_for_the_settle_period() -> None:
    tracker = SettleTracker(settle_seconds=5.0)
    sig = FileSignature(10, 1, 7)
    first = tracker.unparsable("a", sig, now=100.0)
    assert not first.reject and first.recheck_at == 105.0
    assert not tracker.unparsable("a", sig, now=103.0).reject
    assert tracker.next_recheck() == 105.0
    assert tracker.due(104.9) == []
    assert tracker.due(105.0) == ["a"]
    assert tracker.unparsable("a", sig, now=105.0).reject
    assert tracker.next_recheck() is None


def test_a_change_restarts_the_period() -> None:
    tracker = SettleTracker(settle_seconds=5.0)
    tracker.unparsable("a", FileSignature(10, 1, 7), now=100.0)
    grown = tracker.unparsable("a", FileSignature(20, 2, 7), now=104.0)
    assert not grown.reject and grown.recheck_at == 109.0
    assert not tracker.unparsable("a", FileSignature(20, 2, 7), now=108.0).reject
    assert tracker.unparsable("a", FileSignature(20, 2, 7), now=109.0).reject


def test_forget() -> None:
    tracker = SettleTracker(settle_seconds=1.0)
    tracker.unparsable("a", FileSignature(1, 1, 1), now=0.0)
    tracker.forget("a")
    assert tracker.next_recheck() is None and tracker.due(100.0) == []
