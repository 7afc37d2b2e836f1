"""Retry policy: classification, Retry-After, backoff and the decision table (no clock, no I/O)."""

import email.utils
import errno

import pytest

from ingestd.policy.retry import (
    Action,
    Failure,
    Reason,
    RetryPolicy,
    backoff_delay,
    classify_status,
    decide,
    parse_retry_after,
)

POLICY = RetryPolicy(max_attempts=5, backoff_base=1.0, backoff_max=300.0)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (200, None),
        (206, None),
        (429, Reason.RATE_LIMITED),
        (503, Reason.UNAVAILABLE),
        (500, Reason.SERVER_ERROR),
        (502, Reason.SERVER_ERROR),
        (403, Reason.FORBIDDEN),
        (404, Reason.NOT_FOUND),
        (410, Reason.NOT_FOUND),
        (408, Reason.TIMEOUT),
        (400, Reason.HTTP_ERROR),
        (416, Reason.HTTP_ERROR),
    ],
)
def test_classify_status(status: int, reason: Reason | None) -> None:
    assert classify_status(status) == reason


def test_retry_after_seconds_and_dates() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0, abs=1.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    for bad in (None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2026", "²", "٣", "7" * 5000):
        assert parse_retry_after(bad, now) is None
    assert parse_retry_after("Fri, 31 Dec 99999 23:59:59 GMT", now) is None


def test_backoff_grows_exponentially_within_jitter_bounds_and_cap() -> None:
    for attempt in range(1, 12):
        ceiling = min(300.0, 2.0 ** (attempt - 1))
        low = backoff_delay(attempt, 1.0, 300.0, 0.0)
        high = backoff_delay(attempt, 1.0, 300.0, 0.999999)
        assert low == pytest.approx(ceiling / 2)
        assert high == pytest.approx(ceiling, rel=1e-5)
    assert backoff_delay(10_000, 1.0, 300.0, 0.5) <= 300.0


def test_retryable_failures_retry_until_max_attempts() -> None:
    for reason in (Reason.SERVER_ERROR, Reason.TIMEOUT, Reason.TRUNCATED, Reason.CONNECTION_ERROR):
        first = decide(Failure(reason), 1, POLICY, 0.5)
        assert first.action is Action.RETRY
        assert 0.5 <= first.delay <= 1.0
        last = decide(Failure(reason), 5, POLICY, 0.5)
        assert last.action is Action.FAILED and last.reason is reason


def test_retry_after_is_honoured_for_429_and_503_and_capped() -> None:
    d = decide(Failure(Reason.RATE_LIMITED, 429, retry_after=12.0), 1, POLICY, 0.9)
    assert d.action is Action.RETRY and d.delay == 12.0
    d = decide(Failure(Reason.UNAVAILABLE, 503, retry_after=10_000.0), 2, POLICY, 0.9)
    assert d.delay == 300.0
    # Without Retry-After, 429 falls back to backoff.
    d = decide(Failure(Reason.RATE_LIMITED, 429), 3, POLICY, 0.0)
    assert d.delay == pytest.approx(2.0)


def test_expiring_and_permanent_failures() -> None:
    assert decide(Failure(Reason.FORBIDDEN, 403), 1, POLICY, 0).action is Action.EXPIRED
    assert decide(Failure(Reason.URL_EXPIRED), 1, POLICY, 0).action is Action.EXPIRED
    for reason in (
        Reason.NOT_FOUND,
        Reason.NOT_VIDEO,
        Reason.TOO_LARGE,
        Reason.UNSAFE_URL,
        Reason.HTTP_ERROR,
        Reason.TOO_MANY_REDIRECTS,
    ):
        assert decide(Failure(reason), 1, POLICY, 0).action is Action.FAILED


def test_a_full_disk_spends_no_attempt_but_an_items_own_local_error_does() -> None:
    for space in (errno.ENOSPC, errno.EDQUOT):
        d = decide(Failure(Reason.LOCAL_IO, errno=space), 5, POLICY, 0.5)
        assert d.action is Action.RETRY and not d.count_attempt
    # e.g. a .part owned by another user, once the pool found its folder takes files
    own = decide(Failure(Reason.LOCAL_IO, errno=errno.EACCES), 5, POLICY, 0.5)
    assert own.action is Action.FAILED
    assert decide(Failure(Reason.LOCAL_IO, errno=errno.EACCES), 1, POLICY, 0.5).count_attempt


def test_host_faults_and_transport_failures_the_host_caused_spend_no_attempt() -> None:
    policy = RetryPolicy(max_attempts=2, backoff_base=1.0, backoff_max=60.0)
    for reason in (Reason.UNREACHABLE, Reason.RATE_LIMITED, Reason.UNAVAILABLE):
        decision = decide(Failure(reason), 2, policy, 0.5)
        assert (decision.action, decision.count_attempt) == (Action.RETRY, False), reason
    lost = Failure(Reason.CONNECTION_ERROR, host_fault=True)
    assert decide(lost, 2, policy, 0.5).action is Action.RETRY  # at max_attempts: not counted
    own = Failure(Reason.CONNECTION_ERROR)
    assert decide(own, 2, policy, 0.5).action is Action.FAILED
    malformed = decide(Failure(Reason.MALFORMED), 1, policy, 0.5)
    assert (malformed.action, malformed.count_attempt) == (Action.RETRY, True)
