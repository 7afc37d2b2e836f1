"""A transfer stopped mid-body (shutdown, pause) against a real HTTPS HTTP/2 origin: its .part is
closed, checkpointed and recorded, so a daemon that pauses often never runs out of descriptors
and a resume starts from durable bytes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from ingestd.config import Config
from ingestd.net.fetch import Fetcher, HttpSettings
from ingestd.policy.extract import Record
from ingestd.service.db import Db
from ingestd.service.publish import Publisher
from ingestd.service.transfer import Transfers
from support.origin import OriginServer

SIZE = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    with OriginServer(tmp_path_factory.mktemp("origin")) as server:
        yield server


def open_parts(under: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".part") and target.startswith(str(under)):
            found.append(target)
    return found


async def test_a_stopped_transfer_closes_and_checkpoints_its_part(
    tmp_path: Path, origin: OriginServer
) -> None:
    config = Config(data_dir=tmp_path, state_dir=tmp_path, allowed_hosts=("localhost",))
    settings = HttpSettings(
        http2=True,
        timeout=5.0,
        user_agent="test",
        referer="https://example.test/",
        ca_bundle=Path(origin.ca_pem_path),
        max_connections=4,
        allowed_hosts=("localhost",),
    )
    db = await Db.open(tmp_path / "manifest.sqlite3")
    fetcher = Fetcher(settings)
    url = origin.url("stopped", "slow", SIZE, chunk=64 * 1024, delay=0.05)
    aweme_id = "7000000000000000001"
    await db.run(db.manifest.merge, [Record(aweme_id, url, "cats", "{}")], "e.json", time.time())
    (item,) = await db.run(db.manifest.claim_due, time.time(), 1)
    transfers = Transfers(config, db, fetcher, Publisher(config.media_dir))
    try:
        task = asyncio.create_task(transfers.attempt(item, structlog.get_logger()))
        part = config.media_dir / "cats" / f"{aweme_id}.mp4.part"
        deadline = time.monotonic() + 10
        while not (part.exists() and part.stat().st_size > 1024 * 1024):
            assert time.monotonic() < deadline, "no bytes arrived"
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert open_parts(tmp_path) == [], "the .part was left open"
        row = await db.run(db.manifest.item, aweme_id)
        assert row is not None and row["validator"] == OriginServer.etag("stopped", SIZE)
        assert row["total_bytes"] == SIZE
        assert 1024 * 1024 <= row["durable_bytes"] <= part.stat().st_size
    finally:
        await fetcher.aclose()
        await db.close()
