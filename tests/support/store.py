"""Records and outcomes as the manifest tests write them (tests/contract, tests/unit)."""

from __future__ import annotations

from typing import Any

from ingestd.policy.extract import Record
from ingestd.store.base import Completion, ManifestStore

OLD = "https://h/v?expire=100"
NEW = "https://h/v?expire=200"  # expires later than OLD: a merge prefers it


def r(aweme_id: str, url: str = OLD, topic: str | None = "a", raw: str | None = None) -> Record:
    """A record as an extract brings it (its raw text names its id unless `raw` is given)."""
    return Record(aweme_id, url, topic, raw or f'{{"aweme_id":"{aweme_id}"}}')


def done(
    m: ManifestStore, aweme_id: str, size: int, sha256: str, path: str, topics: Any, now: float
) -> bool:
    """Complete one item; True when it needs a relink."""
    return bool(m.complete_many([Completion(aweme_id, size, sha256, path, topics, now)])[0])
