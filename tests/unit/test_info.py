"""write_info_json: the `<id>.info.json` document built from the record the manifest keeps, with
every URL's query string, fragment and credentials cut off, and its size bounded."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from ingestd.fs.files import write_file_atomic
from ingestd.policy.info import MAX_INFO_BYTES, info_document
from ingestd.policy.naming import info_path

SIGNED = "https://v16.tiktokcdn-us.com/a/b/video.mp4?expire=1790000000&signature=abc123&tk=tt"


def record(**media: object) -> dict[str, object]:
    return {
        "aweme_id": "7440000000000000001",
        "desc": "a video",
        "media": {"source_url": SIGNED, "duration": 9, **media},
        "query_context": "street food",
    }


def test_source_url_loses_its_query_string_and_nothing_else_changes() -> None:
    document = json.loads(info_document(json.dumps(record()), "7440000000000000001", None, None))
    assert document == {
        **record(),
        "media": {"source_url": "https://v16.tiktokcdn-us.com/a/b/video.mp4", "duration": 9},
    }


def test_every_url_anywhere_is_redacted() -> None:
    raw = record(
        cover_url="https://p16-sign.tiktokcdn-us.com/obj/x.jpeg?x-expires=1&x-signature=zz",
        mirrors=["HTTPS://user:pw@cdn.example.com/v.mp4#frag", "http://plain.example.com/x"],
        note="see https://example.com/p?token=SECRET1 and more",
    )
    text = info_document(json.dumps(raw), "7440000000000000001", None, None).decode()
    for secret in ("signature", "x-signature", "SECRET1", "pw@", "#frag", "?"):
        assert secret not in text, (secret, text)
    media = json.loads(text)["media"]
    assert media["cover_url"] == "https://p16-sign.tiktokcdn-us.com/obj/x.jpeg"
    assert media["mirrors"] == ["HTTPS://cdn.example.com/v.mp4", "http://plain.example.com/x"]
    assert media["note"] == "see https://example.com/p and more"


def test_a_record_without_secrets_is_kept_byte_for_byte() -> None:
    raw = '{"aweme_id": "1",  "media": {"source_url": "https://h.example/v.mp4"}, "n": 1.50}'
    assert info_document(raw, "1", None, None) == raw.encode()


def test_non_ascii_and_lone_surrogates() -> None:
    raw = json.dumps({"desc": "caf\u00e9 \ud800", "media": {"source_url": SIGNED}})
    document = info_document(raw, "1", None, None)
    assert json.loads(document)["desc"] == "caf\u00e9 \ud800"
    raw = json.dumps({"desc": "caf\u00e9", "u": SIGNED}, ensure_ascii=False)
    assert "caf\u00e9".encode() in info_document(raw, "1", None, None)


def test_size_is_bounded() -> None:
    raw = json.dumps(record(blob="x" * MAX_INFO_BYTES))
    document = info_document(raw, "7440000000000000001", SIGNED, "street food")
    assert len(document) < 1024
    assert json.loads(document) == {
        "aweme_id": "7440000000000000001",
        "media": {"source_url": "https://v16.tiktokcdn-us.com/a/b/video.mp4"},
        "query_context": "street food",
        "ingestd_record_omitted": {"bytes": len(raw), "max_bytes": MAX_INFO_BYTES},
    }
    unparsable = info_document("{not json", "1", None, None)
    assert json.loads(unparsable)["ingestd_record_omitted"]["bytes"] == 9


def test_info_path_and_atomic_write(tmp_path: Path) -> None:
    assert info_path(PurePosixPath("street_food/7440.mp4")) == PurePosixPath(
        "street_food/7440.info.json"
    )
    target = tmp_path / "7440.info.json"
    (tmp_path / ".7440.info.json.tmp").symlink_to(tmp_path / "elsewhere")  # a stale temp file
    write_file_atomic(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert not (tmp_path / "elsewhere").exists()
    write_file_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7440.info.json"]
