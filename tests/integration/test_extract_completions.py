"""extract_completed on a real manifest, with the real pool and scripted transfers: each extract
is reported once, after the event of every one of its items, however the writes interleave."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from ingestd.config import Config
from ingestd.metrics import Metrics
from ingestd.policy.extract import Record
from ingestd.policy.retry import Failure, Reason
from ingestd.service.completion import EventOrder, ExtractCompletions
from ingestd.service.db import Db
from ingestd.service.pool import DownloadPool
from ingestd.service.transfer import Published
from ingestd.store.manifest import Item

FINAL = {"download_completed", "download_failed", "download_expired"}


class Events:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.log = structlog.wrap_logger(
            None, processors=[self._keep], context_class=dict, cache_logger_on_first_use=False
        )

    def _keep(self, _: Any, __: str, event: dict[str, Any]) -> Any:
        self.seen.append(dict(event))
        raise structlog.DropEvent


class Transfers:
    """Every third item is gone (404); the others arrive after a random short while."""

    def __init__(self) -> None:
        self.rng = random.Random(3)

    async def attempt(self, item: Item, log: Any) -> Any:
        await asyncio.sleep(self.rng.random() * 0.02)
        if int(item.aweme_id) % 3 == 0:
            return Failure(Reason.NOT_FOUND, 404)
        path = PurePosixPath(f"t/{item.aweme_id}.mp4")
        return Published(path, int(item.aweme_id) % 1000, "ab" * 32, False, ("t",))

    def reconfigure(self, config: Config) -> None:
        pass


async def test_each_extract_completes_once_after_its_items_events(tmp_path: Path) -> None:
    db = await Db.open(tmp_path / "manifest.sqlite3")
    events = Events()
    order = EventOrder()
    config = Config(data_dir=tmp_path, state_dir=tmp_path, concurrency=8, min_free_bytes=0)
    config.media_dir.mkdir(parents=True)
    pool = DownloadPool(config, db, None, events.log, Metrics(), order=order)  # type: ignore[arg-type]
    pool._transfers = Transfers()  # type: ignore[assignment]
    completions = ExtractCompletions(db, events.log, tmp_path / "raw", order)
    extracts: dict[str, set[str]] = {}
    for n in range(40):  # overlapping extracts: item i is in extracts i // 5 and i // 5 + 1
        ids = [str(1000 + i) for i in range(5 * n, 5 * n + 8)]
        name = f"extract_{n:02d}.json"
        extracts[name] = set(ids)
        recs = [Record(i, f"https://cdn.example/v/{i}.mp4", "t", "{}") for i in ids]
        await db.run(db.manifest.merge, recs, name, time.time(), f"sha{n}")
        await db.run(db.manifest.record_extract, name, f"sha{n}", 1, "merged", time.time())
    runner = asyncio.create_task(pool.run())

    async def look() -> None:  # as often as the manifest thread allows
        while True:
            await completions.check()
            await asyncio.sleep(0)

    looker = asyncio.create_task(look())
    deadline = time.monotonic() + 30
    while (
        sum(e["event"] == "extract_completed" for e in events.seen) < len(extracts)
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    for task in (runner, looker):
        task.cancel()
    await asyncio.gather(runner, looker, return_exceptions=True)
    await pool.shutdown()
    await db.close()

    finals: set[str] = set()
    reported: list[str] = []
    for event in events.seen:
        if event["event"] in FINAL:
            finals.add(str(event["aweme_id"]))
        elif event["event"] == "extract_completed":
            name = Path(event["path"]).name
            missing = extracts[name] - finals
            assert not missing, f"{name} reported before the events of {sorted(missing)}"
            items = extracts[name]
            gone = {i for i in items if int(i) % 3 == 0}
            assert (event["items"], event["done"], event["failed"]) == (
                len(items),
                len(items - gone),
                len(gone),
            )
            assert event["bytes"] == sum(int(i) % 1000 for i in items - gone)
            reported.append(name)
    assert sorted(reported) == sorted(extracts), "each extract exactly once"
