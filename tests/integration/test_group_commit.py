"""Group commit of download completions, on a real manifest file and its real thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingestd.policy.extract import Record
from ingestd.service.db import Db, GroupCommit
from ingestd.store.manifest import Completion, ManifestError


async def _db_with_items(tmp_path: Path, n: int) -> Db:
    db = await Db.open(tmp_path / "manifest.sqlite3")
    records = [Record(str(i), f"https://h/{i}", "t", "{}") for i in range(n)]
    await db.run(db.manifest.merge, records, "e.json", 1.0)
    claimed = await db.run(db.manifest.claim_due, 2.0, n)
    assert len(claimed) == n
    return db


async def test_concurrent_completions_share_transactions(tmp_path: Path) -> None:
    db = await _db_with_items(tmp_path, 40)
    batches: list[int] = []

    def write_many(done: list[Completion]) -> list[bool]:
        batches.append(len(done))
        return db.manifest.complete_many(done)

    group = GroupCommit(db, write_many)
    try:
        # Item 7 gained a topic while it downloaded: only its flag says "relink".
        await db.run(db.manifest.merge, [Record("7", "https://h/7", "u", "{}")], "f.json", 3.0)
        flags = await asyncio.gather(
            *(
                group.submit(Completion(str(i), 10, "ab" * 32, f"t/{i}.mp4", ("t",), 4.0))
                for i in range(40)
            )
        )
        assert flags == [i == 7 for i in range(40)]
        assert sum(batches) == 40 and len(batches) < 40, batches  # batched, nothing lost
        counts = await db.run(db.manifest.counts)
        assert counts.items["done"] == 40 and counts.bytes_done == 400
    finally:
        await db.close()


async def test_a_failed_transaction_fails_each_of_its_calls(tmp_path: Path) -> None:
    db = await _db_with_items(tmp_path, 3)
    calls = 0

    def write_many(done: list[Completion]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ManifestError("disk full")
        return db.manifest.complete_many(done)

    group = GroupCommit(db, write_many)
    try:
        first = await asyncio.gather(
            *(group.submit(Completion(str(i), 1, "", f"t/{i}", ("t",), 4.0)) for i in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, ManifestError) for r in first), first
        assert await group.submit(Completion("0", 1, "", "t/0", ("t",), 5.0)) is False
    finally:
        await db.close()


async def test_a_cancelled_caller_still_has_its_item_written(tmp_path: Path) -> None:
    db = await _db_with_items(tmp_path, 1)
    group = GroupCommit(db, db.manifest.complete_many)
    try:
        task = asyncio.create_task(group.submit(Completion("0", 5, "", "t/0", ("t",), 4.0)))
        await asyncio.sleep(0)  # queued, and the writer started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if (await db.run(db.manifest.counts)).items["done"] == 1:
                break
            await asyncio.sleep(0.01)
        assert (await db.run(db.manifest.counts)).items["done"] == 1
    finally:
        await db.close()


async def test_with_retry_a_refused_batch_goes_in_later_and_no_call_fails(tmp_path: Path) -> None:
    db = await _db_with_items(tmp_path, 6)
    calls = 0
    retries: list[tuple[int, int]] = []

    def write_many(done: list[Completion]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ManifestError("database is locked")
        return db.manifest.complete_many(done)

    def retry(failures: int, error: Exception, waiting: list[Completion]) -> float:
        retries.append((failures, len(waiting)))
        return 0.05

    group = GroupCommit(db, write_many, retry=retry)
    try:
        first = [group.post(Completion(str(i), 1, "", f"t/{i}", ("t",), 4.0)) for i in range(3)]
        await asyncio.sleep(0.01)
        later = [group.post(Completion(str(i), 1, "", f"t/{i}", ("t",), 4.0)) for i in range(3, 6)]
        assert group.backlog == 6
        assert await asyncio.wait_for(asyncio.gather(*first, *later), 10) == [False] * 6
        assert [f for f, _ in retries] == [1, 2] and retries[-1][1] == 6, retries
        assert group.backlog == 0
        counts = await db.run(db.manifest.counts)
        assert counts.items["done"] == 6
    finally:
        await db.close()
