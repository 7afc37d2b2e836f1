"""Lease policy: the renewal interval, which claims are at risk, which were lost, and the
clock skew a node applies."""

from ingestd.policy.lease import CLOCK_TOLERANCE, adopted_skew, at_risk, lost, renewal_interval


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


def test_a_host_in_step_with_the_database_keeps_its_own_clock_exactly() -> None:
    assert adopted_skew(0.0, 0.3, round_trip=0.001) == 0.0
    assert adopted_skew(0.0, -CLOCK_TOLERANCE, round_trip=0.001) == 0.0


def test_a_skew_past_the_tolerance_is_adopted_and_kept_through_jitter() -> None:
    skew = adopted_skew(0.0, 90.0004, round_trip=0.002)
    assert skew == 90.0
    assert adopted_skew(skew, 90.2, round_trip=0.002) == skew, "jitter changes nothing"
    assert adopted_skew(skew, -3.0, round_trip=0.002) == -3.0, "a clock stepped is followed"
    assert adopted_skew(skew, 0.1, round_trip=0.002) == 0.0, "and one set right again"


def test_a_measurement_too_slow_to_be_precise_is_not_used() -> None:
    assert adopted_skew(0.0, 90.0, round_trip=CLOCK_TOLERANCE + 0.1) == 0.0
    assert adopted_skew(5.0, 0.0, round_trip=2.0) == 5.0
