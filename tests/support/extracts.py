"""Build extracts for e2e tests: shared samples pointed at the local origin, or synthetic ones."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .origin import OriginServer

Record = dict[str, Any]

_REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_FIRST = "extract_20261126T090000.json"
SAMPLE_SECOND = "extract_20261126T150000.json"


def samples_dir() -> Path | None:
    """Where the sample extracts are: $INGESTD_SAMPLES, ../shared/samples, /work/shared/..."""
    candidates = [
        os.environ.get("INGESTD_SAMPLES"),
        _REPO_ROOT.parent / "shared" / "samples",
        _REPO_ROOT / "shared" / "samples",
        "/work/shared/samples",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / SAMPLE_FIRST).is_file():
            return Path(candidate)
    return None


def load_sample(name: str) -> list[Record]:
    directory = samples_dir()
    if directory is None:
        raise FileNotFoundError(f"sample extract {name} not found")
    data = json.loads((directory / name).read_text(encoding="utf-8"))
    assert isinstance(data, list)
    return data


def size_for(aweme_id: str, low: int = 48 * 1024, spread: int = 160 * 1024) -> int:
    """A deterministic body size per video (same id, same size, in every extract)."""
    digest = hashlib.sha1(aweme_id.encode()).digest()
    return low + int.from_bytes(digest[:4], "big") % spread


@dataclass(frozen=True)
class Item:
    aweme_id: str
    name: str  # origin name
    size: int
    topic: str

    def content(self) -> bytes:
        return OriginServer.content(self.name, self.size)


def localize(
    records: list[Record], origin: OriginServer, prefix: str, mode: str = "ok"
) -> tuple[list[Record], list[Item]]:
    """Deep-copy ``records`` with every ``media.source_url`` pointed at ``origin``.

    The query string keeps its signed-URL shape (``expire`` moved into the future); the origin name
    is ``<prefix>-<aweme_id>`` so tests sharing one origin never share fault counters."""
    out: list[Record] = []
    items: list[Item] = []
    for record in records:
        rec = copy.deepcopy(record)
        aweme_id = str(rec["aweme_id"])
        name = f"{prefix}-{aweme_id}"
        size = size_for(aweme_id)
        rec["media"]["source_url"] = origin.localize(
            rec["media"]["source_url"], name, mode=mode, size=size
        )
        rec["media"]["data_size"] = size
        out.append(rec)
        items.append(Item(aweme_id, name, size, rec["query_context"]))
    return out, items


def new_id(rng: random.Random) -> str:
    return str(7_440_000_000_000_000_000 + rng.randrange(10**15))


def make_record(aweme_id: str, url: str, topic: str, size: int | None = None) -> Record:
    """A record in the samples' shape."""
    return {
        "aweme_id": aweme_id,
        "desc": f"test video {aweme_id}",
        "create_time": 1790304909,
        "author": {"uid": "816522387186459933", "unique_id": "e2e.tests", "nickname": "E2E"},
        "stats": {"play_count": 1, "digg_count": 1, "comment_count": 0, "share_count": 0},
        "media": {
            "source_url": url,
            "duration": 9,
            "width": 576,
            "height": 1024,
            "data_size": size,
            "cover_url": f"https://p16-sign.tiktokcdn-us.com/obj/{aweme_id}.jpeg",
        },
        "query_context": topic,
        "extracted_at": "2026-11-26T09:00:00Z",
    }


def origin_records(
    origin: Any, prefix: str, rng: random.Random, n: int, topic: str, size: int, mode: str = "ok"
) -> tuple[list[Record], dict[str, str]]:
    """``n`` records served by ``origin`` in ``mode``; returns (records, {aweme_id: name})."""
    records, names = [], {}
    for _ in range(n):
        aweme_id = new_id(rng)
        name = f"{prefix}-{aweme_id}"
        records.append(make_record(aweme_id, origin.url(name, mode=mode, size=size), topic, size))
        names[aweme_id] = name
    return records, names
