"""Extract parsing and record validation."""

import json
from pathlib import Path

import pytest

from ingestd.policy.extract import ExtractError, RejectReason, parse_extract

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"


def rec(aweme_id: object = "1", url: object = "https://h/v.mp4", topic: object = "t") -> dict:
    return {"aweme_id": aweme_id, "media": {"source_url": url}, "query_context": topic}


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def test_samples_parse_completely() -> None:
    for path in sorted(SAMPLES.glob("extract_*.json")):
        parsed = parse_extract(path.read_bytes())
        assert parsed.unusable == 0
        assert parsed.total == len(parsed.records) > 0
        first = parsed.records[0]
        assert json.loads(first.raw)["aweme_id"] == first.aweme_id


def test_unusable_records_are_counted_not_fatal() -> None:
    doc = [
        rec("1"),
        rec(12345),  # int ids are fine
        rec(True),  # bool is not an id
        rec("../../etc/passwd"),
        rec("x" * 65),
        rec("ok2", url=None),
        rec("ok3", url=["https://h"]),
        {"aweme_id": "ok4"},
        {"aweme_id": "ok5", "media": "https://h"},
        "string element",
        None,
        42,
    ]
    parsed = parse_extract(dumps(doc))
    assert [r.aweme_id for r in parsed.records] == ["1", "12345"]
    assert parsed.total == 12 and parsed.unusable == 10


def test_topic_handling() -> None:
    parsed = parse_extract(
        dumps([rec("1", topic=None), rec("2", topic=7), rec("3", topic="x" * 5000)])
    )
    topics = [r.topic for r in parsed.records]
    assert topics[0] is None and topics[1] is None
    assert topics[2] is not None and len(topics[2]) == 512


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[{", RejectReason.INVALID_JSON),
        (b"", RejectReason.INVALID_JSON),
        (b"\xff\xfe\x00garbage", RejectReason.INVALID_JSON),
        (b'{"aweme_id": "1"}', RejectReason.NOT_ARRAY),
        (b'"text"', RejectReason.NOT_ARRAY),
        (b"[1, 2, 3]", RejectReason.NO_USABLE_RECORDS),
        (b"[" * 100_000 + b"]" * 100_000, RejectReason.TOO_DEEP),
        (dumps([rec("1") | {"deep": json.loads("[" * 40 + "]" * 40)}]), RejectReason.TOO_DEEP),
    ],
)
def test_rejections(data: bytes, reason: RejectReason) -> None:
    with pytest.raises(ExtractError) as info:
        parse_extract(data)
    assert info.value.reason is reason


def test_empty_array_merges_nothing_and_is_not_an_error() -> None:
    parsed = parse_extract(b"[]")
    assert parsed.records == [] and parsed.total == 0 and parsed.unusable == 0
