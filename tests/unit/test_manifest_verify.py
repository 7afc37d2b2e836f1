"""The SQLite manifest's part of `ingestd verify` as storage: its reads hold no snapshot. What
verify asks of every backend is in tests/contract."""

import sqlite3
from pathlib import Path

from ingestd.policy.extract import Record
from ingestd.store.manifest import Completion, Manifest

SHA = "a" * 64


def r(aweme_id: str, topic: str = "a") -> Record:
    return Record(aweme_id, f"https://h/{aweme_id}?expire=9999999999", topic, "{}")


def complete(m: Manifest, aweme_id: str, topics: tuple[str, ...] = ("a",), sha: str = SHA) -> None:
    m.complete_many([Completion(aweme_id, 10, sha, f"a/{aweme_id}.mp4", topics, 2.0)])


def test_reads_hold_no_transaction_between_pages(tmp_path: Path) -> None:
    """Between two pages the reader keeps no snapshot: the daemon's writes and a full WAL
    checkpoint go through (a read transaction held over a hash run would pin the WAL)."""
    path = tmp_path / "manifest.sqlite3"
    writer = Manifest.open(path)
    writer.merge([r(f"{i:03d}") for i in range(20)], "e.json", 1.0)
    for i in range(10):
        complete(writer, f"{i:03d}")
    reader = Manifest.open(path, readonly=True)
    page = reader.done_items("", 5)
    reader.places(["000", "001"])
    for i in range(10, 20):
        complete(writer, f"{i:03d}")
    other = sqlite3.connect(path)
    busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    other.close()
    assert busy == 0, "the reader still holds a snapshot"
    rest = reader.done_items(page[-1].aweme_id, 100)
    assert [d.aweme_id for d in rest] == [f"{i:03d}" for i in range(5, 20)]
    reader.close()
    writer.close()
