"""Byte-level transfer rules."""

from ingestd.policy.transfer import (
    content_range_start,
    looks_like_mp4,
    resume_headers,
    strong_validator,
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


def test_content_range() -> None:
    assert content_range_start("bytes 100-199/200") == 100
    assert content_range_start("bytes 100-199/*") == 100
    assert content_range_start("bytes 200-100/300") is None
    assert content_range_start("items 1-2/3") is None
    assert content_range_start(None) is None


def test_resume_headers_only_with_validator_and_sniffable_prefix() -> None:
    assert resume_headers(1000, '"e"') == {"Range": "bytes=1000-", "If-Range": '"e"'}
    assert resume_headers(1000, None) == {}
    assert resume_headers(5, '"e"') == {}
    assert resume_headers(0, '"e"') == {}
