"""Byte-level transfer rules."""

import pytest

from ingestd.policy.retry import Reason
from ingestd.policy.transfer import (
    ContentRange,
    Malformed,
    PublishPart,
    RateFloor,
    Receive,
    Reject,
    looks_like_mp4,
    parse_content_length,
    parse_content_range,
    plan_response,
    resume_headers,
    same_version,
    strong_validator,
    unsatisfied_total,
)


def test_mp4_sniffing() -> None:
    assert looks_like_mp4(b"\x00\x00\x00\x18ftypisom\x00\x00")
    assert not looks_like_mp4(b"<!DOCTYPE html><html>")
    assert not looks_like_mp4(b"\x00\x00\x00\x18ftyp")  # too short to judge
    assert not looks_like_mp4(b"")


def test_validators() -> None:
    assert strong_validator('"abc"', None) == '"abc"'
    assert strong_validator('W/"abc"', "Wed, 21 Oct 2026 07:28:00 GMT") == (
        "Wed, 21 Oct 2026 07:28:00 GMT"
    )
    assert strong_validator('W/"abc"', None) is None
    assert strong_validator(None, None) is None


def test_content_length_is_ascii_digits_and_repeats_only_itself() -> None:
    assert parse_content_length(None) is None
    assert parse_content_length("1500000") == 1500000
    assert parse_content_length(" 0 ") == 0
    assert parse_content_length("1500000, 1500000") == 1500000
    assert parse_content_length("9" * 19) == int("9" * 19)
    for bad in ["", "²", "1²", "-1", "+5", "1e3", "0x10", "1 2", "9" * 20, "5" * 5000, "10,"]:
        with pytest.raises(Malformed):
            parse_content_length(bad)
    with pytest.raises(Malformed, match="conflicting"):
        parse_content_length("1500000, 750000")


def test_content_range() -> None:
    assert parse_content_range("bytes 100-199/200") == ContentRange(100, 199, 200)
    assert parse_content_range("bytes 0-0/1") == ContentRange(0, 0, 1)
    for bad in [
        None,
        "bytes 100-199/*",
        "bytes 200-100/300",
        "bytes 100-200/200",
        "items 1-2/3",
        "bytes ¹-2/3",
        f"bytes 1-2/{'9' * 5000}",
    ]:
        with pytest.raises(Malformed):
            parse_content_range(bad)
    assert unsatisfied_total("bytes */5000") == 5000
    assert unsatisfied_total("bytes */*") is None
    assert unsatisfied_total(None) is None


def test_plan_200_takes_the_whole_file_at_its_declared_length() -> None:
    assert plan_response(200, 0, None, "5000", None) == Receive(0, 5000, 5000)
    assert plan_response(200, 3000, 5000, "6000", None) == Receive(0, 6000, 6000)  # new content
    assert plan_response(200, 0, None, None, None) == Receive(0, None, None)


def test_plan_206_must_continue_exactly_where_the_part_ends() -> None:
    assert plan_response(206, 1000, 5000, "4000", "bytes 1000-4999/5000") == Receive(
        1000, 4000, 5000
    )
    assert plan_response(206, 1000, None, None, "bytes 1000-4999/5000") == Receive(1000, 4000, 5000)
    # A CDN that caps its range replies: the bytes are good, the file is not complete yet.
    assert plan_response(206, 1000, 5000, "1000", "bytes 1000-1999/5000") == Receive(
        1000, 1000, 5000
    )
    wrong_start = plan_response(206, 1000, 5000, "4500", "bytes 500-4999/5000")
    assert isinstance(wrong_start, Reject) and wrong_start.discard
    assert wrong_start.failure.reason is Reason.RANGE_MISMATCH
    other_size = plan_response(206, 1000, 5000, "5000", "bytes 1000-5999/6000")
    assert isinstance(other_size, Reject) and other_size.discard
    for length, content_range in [("10", "bytes 1000-4999/5000"), ("4000", "bytes 1000-4999/*")]:
        plan = plan_response(206, 1000, 5000, length, content_range)
        assert isinstance(plan, Reject) and not plan.discard
        assert plan.failure.reason is Reason.MALFORMED and plan.failure.detail
    unasked = plan_response(206, 0, None, "10", "bytes 0-9/10")
    assert isinstance(unasked, Reject) and unasked.failure.reason is Reason.MALFORMED


def test_plan_416_publishes_a_complete_part_or_starts_over() -> None:
    assert plan_response(416, 5000, None, "0", "bytes */5000") == PublishPart(5000)
    assert plan_response(416, 5000, 5000, None, "bytes */5000") == PublishPart(5000)
    for known, content_range in [(None, "bytes */6000"), (6000, "bytes */5000"), (None, None)]:
        plan = plan_response(416, 5000, known, None, content_range)
        assert isinstance(plan, Reject) and plan.discard
        assert plan.failure.reason is Reason.RANGE_MISMATCH
    fresh = plan_response(416, 0, None, None, "bytes */5000")
    assert isinstance(fresh, Reject) and fresh.failure.reason is Reason.HTTP_ERROR


def test_malformed_values_are_classified_never_raised() -> None:
    for status, offset, length, content_range in [
        (200, 0, "²", None),
        (200, 0, "7" * 5000, None),
        (200, 0, "100, 200", None),
        (206, 10, "5" * 5000, "bytes 10-19/20"),
        (416, 10, "x", "bytes */10"),
    ]:
        plan = plan_response(status, offset, None, length, content_range)
        assert isinstance(plan, Reject), plan
        assert plan.failure.reason is Reason.MALFORMED
        assert len(plan.failure.detail) < 100


def test_resume_headers_only_with_validator_and_sniffable_prefix() -> None:
    assert resume_headers(1000, '"e"') == {"Range": "bytes=1000-", "If-Range": '"e"'}
    assert resume_headers(1000, None) == {}
    assert resume_headers(5, '"e"') == {}
    assert resume_headers(0, '"e"') == {}


def test_rate_floor_needs_a_whole_window_below_the_rate() -> None:
    floor = RateFloor(min_rate=1024, window=60.0, now=0.0)
    # 1 byte a second: judged only once a whole window has passed
    assert not any(floor.too_slow(t, float(t)) for t in range(1, 60))
    assert floor.too_slow(60, 60.0)
    assert "B/s over 60 s" in floor.describe()


def test_rate_floor_looks_at_the_last_window_only() -> None:
    floor = RateFloor(min_rate=1000, window=10.0, now=0.0)
    received = 0
    for t in range(1, 32):  # fast for 20 s ...
        received += 10_000 if t <= 20 else 10
        slow = floor.too_slow(received, float(t))
        assert slow == (t >= 30), t  # ... then slow: caught once the window holds slow only
    assert len(floor._marks) <= 12  # bounded by the window, not by the peer


def test_rate_floor_zero_is_off() -> None:
    floor = RateFloor(min_rate=0, window=1.0, now=0.0)
    assert not floor.too_slow(0, 1000.0)


def test_plan_206_of_another_version_is_never_spliced() -> None:
    cr = "bytes 1000-4999/5000"
    same = plan_response(206, 1000, 5000, "4000", cr, sent_validator='"v1"', etag='"v1"')
    assert same == Receive(1000, 4000, 5000)
    other = plan_response(206, 1000, 5000, "4000", cr, sent_validator='"v1"', etag='"v2"')
    assert isinstance(other, Reject) and other.discard
    assert other.failure.reason is Reason.RANGE_MISMATCH
    silent = plan_response(206, 1000, 5000, "4000", cr, sent_validator='"v1"')
    assert silent == Receive(1000, 4000, 5000)  # no validator in the answer: nothing to compare
    date = "Wed, 25 Nov 2026 08:00:00 GMT"
    # If-Range sent a date: the answer's Last-Modified is what to compare, not its ETag.
    by_date = plan_response(206, 1000, 5000, "4000", cr, sent_validator=date, etag='"abc"')
    assert by_date == Receive(1000, 4000, 5000)
    assert isinstance(
        plan_response(
            206, 1000, 5000, "4000", cr, sent_validator=date, last_modified="Thu, 26 Nov 2026"
        ),
        Reject,
    )
    assert same_version('"v1"', ' "v1" ', None) and same_version(date, None, date)


def test_plan_a_body_ended_only_by_the_connection_closing_is_refused() -> None:
    assert plan_response(200, 0, None, None, None, framed=True) == Receive(0, None, None)
    unframed = plan_response(200, 0, None, None, None, framed=False)
    assert isinstance(unframed, Reject) and unframed.failure.reason is Reason.MALFORMED
    assert plan_response(200, 0, None, "10", None, framed=False) == Receive(0, 10, 10)
