"""Extracts over the in-process limit are parsed and merged by a child process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ingestd.service.merger import IN_PROCESS_MAX_BYTES
from support.daemon import Daemon

PAUSED = {"min_free_bytes": 2**60}  # no downloads: only merging is under test


def _records(n: int, first: int = 0, topic: str = "big") -> list[dict[str, Any]]:
    pad = "x" * 900  # realistic record size: about 1 KB each
    return [
        {
            "aweme_id": f"8{i:018d}",
            "desc": pad,
            "media": {"source_url": f"https://cdn.invalid/v/{i}.mp4?expire=4102444800"},
            "query_context": topic,
        }
        for i in range(first, first + n)
    ]


def test_big_extract_merges_in_a_child_and_the_daemon_stays_small(daemon_factory: Any) -> None:
    n = 6_000
    payload = [*_records(n), {"aweme_id": "../bad"}, "junk"]
    assert len(json.dumps(payload)) > IN_PROCESS_MAX_BYTES
    daemon: Daemon = daemon_factory(**PAUSED)
    daemon.start()
    daemon.drop_atomic("extract_20261126T200000.json", payload)
    merged = daemon.wait_for("extract_merged", timeout=60)
    assert (merged["records"], merged["new"], merged["updated"], merged["unusable"]) == (
        n + 2,
        n,
        0,
        2,
    )
    # A second big extract: half known ids under a new topic, half new.
    again = _records(n // 2, first=n // 2, topic="other") + _records(n // 2, first=n, topic="x")
    assert len(json.dumps(again)) > IN_PROCESS_MAX_BYTES
    daemon.drop_atomic("extract_20261126T210000.json", again)
    second = daemon.wait_for(
        "extract_merged", lambda e: e["path"].endswith("T210000.json"), timeout=60
    )
    assert (second["new"], second["updated"]) == (n // 2, n // 2)
    status = daemon.status_json()
    assert status["items"]["pending"] == n + n // 2
    assert status["extracts"]["merged"] == 2
    status_text = Path(f"/proc/{daemon.pid}/status").read_text()
    rss_kib = next(int(x.split()[1]) for x in status_text.splitlines() if x.startswith("VmHWM:"))
    assert rss_kib < 150 * 1024, f"daemon peaked at {rss_kib // 1024} MiB"
    daemon.terminate()


def test_big_invalid_extract_is_rejected(daemon_factory: Any) -> None:
    daemon: Daemon = daemon_factory(settle_seconds=0.5, **PAUSED)
    daemon.start()
    text = json.dumps(_records(6_000))
    broken = text[: len(text) - 10]  # never completed
    raw = daemon.raw_dir
    tmp = raw / ".extract_broken.json.tmp"
    tmp.write_text(broken)
    os.rename(tmp, raw / "extract_20261126T220000.json")
    rejected = daemon.wait_for("extract_rejected", timeout=60)
    assert rejected["reason"] == "invalid_json"
    not_array = json.dumps({"records": _records(6_000)})
    tmp.write_text(not_array)
    os.rename(tmp, raw / "extract_20261126T230000.json")
    second = daemon.wait_for(
        "extract_rejected", lambda e: e["path"].endswith("T230000.json"), timeout=60
    )
    assert second["reason"] == "not_array"
    assert daemon.status_json()["items"]["pending"] == 0
    daemon.terminate()
