"""Extract parsing and record validation."""

import json
import random
from pathlib import Path

import pytest

from ingestd.policy.extract import (
    ExtractError,
    ParsedExtract,
    RejectReason,
    _parse_fast,
    _parse_stdlib,
    _Undecided,
    parse_extract,
)

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


def test_a_url_with_control_characters_is_unusable_at_merge() -> None:
    # Never sendable (check_url refuses it), and PostgreSQL text cannot hold a NUL: kept, one
    # such record failed the merge of its whole extract there, on every retry.
    doc = [
        rec("1"),
        rec("2", url="https://h/v.mp4\u0000"),
        rec("3", url="https://h/a b.mp4"),
        rec("4", url="https://h/v.mp4\n"),
        rec("5", url="https://h/v\x7f.mp4"),
    ]
    parsed = parse_extract(dumps(doc))
    assert [r.aweme_id for r in parsed.records] == ["1"]
    assert parsed.unusable == 4


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


def test_raw_is_the_records_own_text_whatever_the_layout() -> None:
    first = '{"aweme_id" : "1", "media": {"source_url": "https://h/a"}, "x": [1, 2]}'
    text = f"  [\n  {first} ,\n\t 7,"
    text += '{"aweme_id":"2","media":{"source_url":"https://h/b"},"s":"] , ["}  ]  \n'
    parsed = parse_extract(text.encode())
    assert parsed.total == 3 and parsed.unusable == 1
    assert parsed.records[0].raw == first
    assert json.loads(parsed.records[1].raw)["s"] == "] , ["


@pytest.mark.parametrize(
    "data",
    [b"[1,]", b"[1 2]", b"[1] [2]", b"[1]x", b"[", b"[,1]", b"[1,,2]", b'[{"a":1}'],
)
def test_malformed_arrays_are_invalid_json(data: bytes) -> None:
    with pytest.raises(ExtractError) as info:
        parse_extract(data)
    assert info.value.reason is RejectReason.INVALID_JSON


def test_depth_limit_is_exact() -> None:
    def nested(lists: int) -> bytes:
        # The array is depth 1, the record depth 2, and each list one more.
        return b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"d":%s%s}]' % (
            b"[" * lists,
            b"]" * lists,
        )

    assert len(parse_extract(nested(30)).records) == 1  # depth 32
    with pytest.raises(ExtractError) as info:
        parse_extract(nested(31))  # depth 33
    assert info.value.reason is RejectReason.TOO_DEEP
    # Brackets inside strings may be many; they are not nesting.
    deep_looking = [rec("1") | {"s": "[" * 100}]
    assert len(parse_extract(dumps(deep_looking)).records) == 1


def test_lone_surrogates_never_poison_an_extract() -> None:
    data = (
        b'[{"aweme_id":"1","media":{"source_url":"https://h/\\ud800"},"query_context":"t"},'
        b'{"aweme_id":"2","media":{"source_url":"https://h/b"},"query_context":"x\\udc00"}]'
    )
    parsed = parse_extract(data)
    assert [r.aweme_id for r in parsed.records] == ["2"]  # a URL that cannot be sent: unusable
    assert parsed.records[0].topic == "x\udc00"  # a topic is only ever used through naming
    assert "\\udc00" in parsed.records[0].raw  # the record's text keeps the escape: storable
    parsed.records[0].raw.encode("utf-8")


def test_utf16_and_bom_extracts_parse() -> None:
    doc = [rec("1", topic="café")]
    for data in (json.dumps(doc).encode("utf-16"), b"\xef\xbb\xbf" + dumps(doc)):
        parsed = parse_extract(data)
        assert [r.topic for r in parsed.records] == ["café"]


def _verdict(parse: object, data: bytes) -> ParsedExtract | RejectReason | str:
    try:
        return parse(data, 32)  # type: ignore[operator, no-any-return]
    except ExtractError as exc:
        return exc.reason
    except _Undecided:
        return "undecided"


TRICKY = [
    b"[]",
    b" \n[ ] ",
    b'[{"aweme_id":"1","aweme_id":"2","media":{"source_url":"https://h/a"}}]',  # last key wins
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a","source_url":7}}]',
    b'[{"aweme_id":123456789012345678901234567890,"media":{"source_url":"https://h/a"}}]',
    b'[{"aweme_id":1.5,"media":{"source_url":"https://h/a"}},{"aweme_id":-3,"media":{}}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"n":1e999}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"n":NaN}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"s":"\xff"}]',  # not UTF-8
    b'[{"aweme_id":"1","media":{"source_url":"https://h/\\u00e9"},"query_context":"\\ud83d\\ude00"}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"query_context":"\\ud83d"}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"x":"\\udc00"}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"query_context":["t"]}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"}}, [], "s", null, true, 1]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"c":"\\u0000\t"}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"c":"\t raw tab"}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"}} {"aweme_id":"2"}]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"}},]',
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"}}] x',
    b'{"aweme_id":"1"}',
    b"\xef\xbb\xbf[]",
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"d":' + b"[" * 30 + b"]" * 30 + b"}]",
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"d":' + b"[" * 31 + b"]" * 31 + b"}]",
    b'[{"aweme_id":"1","media":{"source_url":"https://h/a"},"d":"' + b"{" * 40 + b'"}]',
    b"[" + b"[" * 5000 + b"]" * 5000 + b"]",
]


@pytest.mark.parametrize("data", TRICKY)
def test_the_fast_path_agrees_with_the_reference_or_defers(data: bytes) -> None:
    reference = _verdict(_parse_stdlib, data)
    fast = _verdict(_parse_fast, data)
    assert fast in ("undecided", reference)
    assert _verdict(lambda d, m: parse_extract(d, m), data) == reference


def test_the_fast_path_decides_ordinary_extracts(tmp_path: Path) -> None:
    for path in sorted(SAMPLES.glob("extract_*.json")):
        data = path.read_bytes()
        assert _verdict(_parse_fast, data) == _verdict(_parse_stdlib, data)
        assert isinstance(_verdict(_parse_fast, data), ParsedExtract)


def test_mutated_extracts_get_the_reference_verdict() -> None:
    # Random damage to a valid extract (byte flips, cuts, insertions): whatever the fast path
    # decides must be what the standard library decides.
    rng = random.Random(4)
    base = dumps(
        [rec(str(i), topic=f"t{i} é \U0001f600") | {"n": [1.5, None, True]} for i in range(6)]
    )
    alphabet = b'[]{},:"\\ \x00\xff\xc3\xa9u0dE.-1'
    for _ in range(600):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[at] = rng.choice(alphabet)
            elif op == 1:
                del data[at : at + rng.randint(1, 4)]
            else:
                data[at:at] = bytes([rng.choice(alphabet)])
        sample = bytes(data)
        reference = _verdict(_parse_stdlib, sample)
        assert _verdict(_parse_fast, sample) in ("undecided", reference), sample
