"""Outcome classification and retry policy for one download attempt."""

from __future__ import annotations

import email.utils
import enum
import errno
import re
from dataclasses import dataclass

MAX_RETRY_AFTER_CHARS = 40  # an HTTP-date is 29; anything longer is not one
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")  # up to 317 years; the policy caps it anyway


class Reason(enum.StrEnum):
    """Why an attempt did not produce a file. Values are stable: they appear in logs and status."""

    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    UNREACHABLE = "unreachable"  # no connection: DNS, connect or TLS handshake failed
    TRUNCATED = "truncated"
    MALFORMED = "malformed_response"
    TOO_SLOW = "too_slow"
    RANGE_MISMATCH = "range_mismatch"
    LOCAL_IO = "local_io_error"
    INTERNAL = "internal_error"
    NOT_VIDEO = "not_video"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    URL_EXPIRED = "url_expired"
    UNSAFE_URL = "unsafe_url"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    HTTP_ERROR = "http_error"


RETRYABLE = frozenset(
    {
        Reason.RATE_LIMITED,
        Reason.UNAVAILABLE,
        Reason.SERVER_ERROR,
        Reason.TIMEOUT,
        Reason.CONNECTION_ERROR,
        Reason.UNREACHABLE,
        Reason.TRUNCATED,
        Reason.MALFORMED,
        Reason.TOO_SLOW,
        Reason.RANGE_MISMATCH,
        Reason.LOCAL_IO,
        Reason.INTERNAL,
    }
)
EXPIRING = frozenset({Reason.FORBIDDEN, Reason.URL_EXPIRED})
# The host's fault, not the item's: they cool the host down (policy.hosts) and use no attempt.
HOST_FAULTS = frozenset({Reason.UNREACHABLE, Reason.RATE_LIMITED, Reason.UNAVAILABLE})
NOT_COUNTED = HOST_FAULTS
# A full filesystem or quota is never one file's fault; other local errors (a .part owned by
# someone else, a file where a folder should be) are, once the pool has ruled out the folder.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Decided before any request went out: they say nothing about the host.
NO_CONTACT = frozenset({Reason.URL_EXPIRED, Reason.UNSAFE_URL, Reason.LOCAL_IO})
# The connection died or went silent: the item's fault only if the host served other requests
# meanwhile (the caller knows; it sets Failure.host_fault otherwise).
TRANSPORT = frozenset({Reason.CONNECTION_ERROR, Reason.TIMEOUT})


class Action(enum.StrEnum):
    """What the manifest should do with the item after an attempt."""

    RETRY = "retry"
    EXPIRED = "expired"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt: the reason, the HTTP status if any, and a server-given delay if any."""

    reason: Reason
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""
    errno: int | None = None  # for LOCAL_IO: what the filesystem said, and about which path
    path: str | None = None
    host_fault: bool = False  # the host failed us: no attempt is spent
    hint: str = ""  # what the operator can change about it (HINTS), logged once per host


# What an operator can change about a failure: the `hint` of the first event that reports it
# for a host (service.pool logs each once per host, not once per item).
HINT_CA_BUNDLE = (
    "the server's certificate does not chain to a trusted CA: if a private CA signed it, set"
    " ca_bundle to that CA's PEM file"
)
HINT_NON_PUBLIC = (
    "this host resolves to a loopback, private or otherwise non-public address, refused unless"
    " the host is listed in allowed_hosts (listed hosts may resolve anywhere; once"
    " allowed_hosts is set, only the hosts it lists are fetched)"
)
HINT_NOT_ALLOWED = (
    "allowed_hosts is set and does not list this host: add it (an exact name or *.suffix)"
    " to fetch from it"
)
HINTS = (HINT_CA_BUNDLE, HINT_NON_PUBLIC, HINT_NOT_ALLOWED)
_REFUSAL_HINTS = {"non_public_address": HINT_NON_PUBLIC, "host_not_allowed": HINT_NOT_ALLOWED}


def refusal_hint(verdict: str) -> str:
    """The hint for a URL the host policy refused, by its verdict (policy.urls), or ""."""
    return _REFUSAL_HINTS.get(verdict, "")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry knobs, taken from the config."""

    max_attempts: int
    backoff_base: float
    backoff_max: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for a failed attempt. `delay` is seconds until the next try (RETRY only)."""

    action: Action
    reason: Reason
    delay: float = 0.0
    count_attempt: bool = True


def classify_status(status: int) -> Reason | None:
    """Map an HTTP status to a failure reason; None means success (2xx)."""
    if 200 <= status < 300:
        return None
    if status == 429:
        return Reason.RATE_LIMITED
    if status == 503:
        return Reason.UNAVAILABLE
    if status >= 500:
        return Reason.SERVER_ERROR
    if status == 403:
        return Reason.FORBIDDEN
    if status in (404, 410):
        return Reason.NOT_FOUND
    if status == 408:
        return Reason.TIMEOUT
    return Reason.HTTP_ERROR


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per a Retry-After header (delta-seconds or HTTP-date); None when absent
    or outside its grammar and bounds (the caller's own backoff applies then)."""
    if value is None:
        return None
    value = value.strip(" \t")
    if not value or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - now) if when.tzinfo is not None else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def backoff_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random, never above `cap`.

    `attempt` counts from 1; `jitter` is a number in [0, 1) supplied by the caller.
    """
    exponent = min(max(attempt - 1, 0), 62)
    ceiling = min(cap, base * (2.0**exponent))
    return ceiling / 2.0 + ceiling / 2.0 * min(max(jitter, 0.0), 1.0)


def decide(failure: Failure, attempt: int, policy: RetryPolicy, jitter: float) -> Decision:
    """Decide what follows a failed attempt number `attempt` (1-based)."""
    reason = failure.reason
    if reason in EXPIRING:
        return Decision(Action.EXPIRED, reason)
    if reason not in RETRYABLE:
        return Decision(Action.FAILED, reason)
    counted = not (
        reason in NOT_COUNTED
        or failure.host_fault
        or (reason is Reason.LOCAL_IO and failure.errno in SPACE_ERRNOS)
    )
    if counted and attempt >= policy.max_attempts:
        return Decision(Action.FAILED, reason)
    if failure.retry_after is not None and reason in (Reason.RATE_LIMITED, Reason.UNAVAILABLE):
        delay = min(max(failure.retry_after, 0.0), policy.backoff_max)
    else:
        delay = backoff_delay(attempt, policy.backoff_base, policy.backoff_max, jitter)
    return Decision(Action.RETRY, reason, delay, count_attempt=counted)
