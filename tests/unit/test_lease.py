"""Lease policy: the renewal interval, which claims are at risk, which were lost."""

from ingestd.policy.lease import at_risk, lost, renewal_interval


def test_a_claim_is_at_risk_when_it_could_end_before_the_next_renewal() -> None:
    assert renewal_interval(120.0) == 40.0
    leases = {"a": 1040.0, "b": 1040.5, "c": 1000.0, "d": 1120.0}
    # Now 1000, next renewal 1040: a ends then (at risk), b just after, c has ended.
    assert at_risk(leases, 1000.0, 120.0) == ["a", "c"]
    assert at_risk(leases, 959.0, 120.0) == []  # c then has a renewal to spare
    assert at_risk({}, 0.0, 3.0) == []


def test_lost_claims_are_those_held_but_not_renewed() -> None:
    assert lost(["b", "a", "c", "a"], ["c"]) == ["a", "b"]
    assert lost(["a"], ["a", "z"]) == []
    assert lost([], []) == []
