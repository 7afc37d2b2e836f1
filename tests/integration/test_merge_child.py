"""The merge child's own steps, run in this process: real files, a real SQLite manifest."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

from ingestd.service.merger import _merge_in_child
from ingestd.store.manifest import Manifest


def _run(tmp_path: Path, data: bytes, sha256: str | None = None) -> tuple[object, ...]:
    extract = tmp_path / "extract_1.json"
    extract.write_bytes(data)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    digest = sha256 or hashlib.sha256(data).hexdigest()
    manifest = tmp_path / "manifest.sqlite3"
    _merge_in_child(sender, str(manifest), str(extract), digest, 1 << 30, extract.name)
    assert receiver.poll(5)
    reply = tuple(receiver.recv())
    receiver.close()
    return reply


def _doc(n: int) -> bytes:
    return json.dumps(
        [
            {"aweme_id": str(i), "media": {"source_url": f"https://h/{i}"}, "query_context": "t"}
            for i in range(n)
        ]
        + [{"aweme_id": "x/y"}]
    ).encode()


def test_merges_and_reports_counts_and_timings(tmp_path: Path) -> None:
    reply = _run(tmp_path, _doc(1200))
    assert reply[:5] == ("ok", 1201, 1, 1200, 0)
    parse_s, write_s = reply[5:7]
    assert isinstance(parse_s, float) and isinstance(write_s, float) and parse_s > 0 < write_s
    m = Manifest.open(tmp_path / "manifest.sqlite3", readonly=True)
    assert m.counts().items["pending"] == 1200
    m.close()


def test_a_different_version_than_the_one_hashed_is_not_merged(tmp_path: Path) -> None:
    assert _run(tmp_path, _doc(10), sha256="0" * 64) == ("changed",)
    # Not even a rejection: the bytes read are not the version the daemon decided about.
    assert _run(tmp_path, b"[{", sha256="0" * 64) == ("changed",)
    assert not (tmp_path / "manifest.sqlite3").exists()


def test_rejections_are_reported(tmp_path: Path) -> None:
    assert _run(tmp_path, b"[{")[:2] == ("rejected", "invalid_json")
    assert _run(tmp_path, b'[1, "x"]')[:2] == ("rejected", "no_usable_records")
