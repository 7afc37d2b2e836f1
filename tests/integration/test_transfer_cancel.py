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


async def _slow_transfer(
    tmp_path: Path, origin: OriginServer, name: str
) -> tuple[Config, Db, Fetcher, Transfers, str]:
    """A manifest holding one item whose origin sends 3 MiB slowly, and what transfers it."""
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
    url = origin.url(name, "slow", SIZE, chunk=64 * 1024, delay=0.05)
    aweme_id = "7000000000000000001"
    await db.run(db.manifest.merge, [Record(aweme_id, url, "cats", "{}")], "e.json", time.time())
    return (
        config,
        db,
        fetcher,
        Transfers(config, db, fetcher, Publisher(config.media_dir)),
        aweme_id,
    )


async def _running(
    config: Config, db: Db, transfers: Transfers, aweme_id: str, at_least: int
) -> tuple[asyncio.Task[object], Path]:
    """Claim the item and start its transfer; return once its part holds `at_least` bytes."""
    (item,) = await db.run(db.manifest.claim_due, time.time(), 1)
    task: asyncio.Task[object] = asyncio.create_task(
        transfers.attempt(item, structlog.get_logger())
    )
    part = config.media_dir / "cats" / f"{aweme_id}.mp4.part"
    deadline = time.monotonic() + 10
    while not (part.exists() and part.stat().st_size > at_least):
        assert time.monotonic() < deadline, "no bytes arrived"
        await asyncio.sleep(0.05)
    return task, part


async def test_a_stopped_transfer_closes_and_checkpoints_its_part(
    tmp_path: Path, origin: OriginServer
) -> None:
    config, db, fetcher, transfers, aweme_id = await _slow_transfer(tmp_path, origin, "stopped")
    try:
        task, part = await _running(config, db, transfers, aweme_id, 1024 * 1024)
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


async def test_a_resume_point_is_recorded_only_with_durable_bytes(
    tmp_path: Path, origin: OriginServer
) -> None:
    # A fresh download has nothing to resume until its first checkpoint: the manifest is not
    # written before then (one write a file less), and never names a version without bytes.
    config, db, fetcher, transfers, aweme_id = await _slow_transfer(tmp_path, origin, "fresh")
    try:
        task, part = await _running(config, db, transfers, aweme_id, 512 * 1024)
        row = await db.run(db.manifest.item, aweme_id)  # within the first checkpoint's 2 s
        assert row is not None
        assert (row["validator"], row["total_bytes"], row["durable_bytes"]) == (None, None, 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        row = await db.run(db.manifest.item, aweme_id)
        assert row is not None and row["validator"] == OriginServer.etag("fresh", SIZE)
        assert 512 * 1024 <= row["durable_bytes"] <= part.stat().st_size
    finally:
        await fetcher.aclose()
        await db.close()


async def test_a_part_restarted_under_a_new_version_is_recorded_before_its_bytes(
    tmp_path: Path, origin: OriginServer
) -> None:
    # The manifest says the part holds 1 MiB of another version: if the origin answers the
    # resume with the whole new version, the record must change before new bytes land, or a
    # crash would resume the new bytes as the old version's (a splice).
    config, db, fetcher, transfers, aweme_id = await _slow_transfer(tmp_path, origin, "moved")
    try:
        part = config.media_dir / "cats" / f"{aweme_id}.mp4.part"
        part.parent.mkdir(parents=True)
        old = 1024 * 1024
        part.write_bytes(b"\0\0\0\x18ftypisom" + b"o" * (old - 12))
        await db.run(db.manifest.set_part, aweme_id, '"another-version"', SIZE, old)
        (item,) = await db.run(db.manifest.claim_due, time.time(), 1)
        assert item.validator == '"another-version"' and item.durable == old
        task = asyncio.create_task(transfers.attempt(item, structlog.get_logger()))
        deadline = time.monotonic() + 10
        while not (part.stat().st_size < old or part.read_bytes()[12:13] != b"o"):
            assert time.monotonic() < deadline, "the part was never started over"
            await asyncio.sleep(0.02)
        while part.stat().st_size < 256 * 1024:  # new bytes are landing
            assert time.monotonic() < deadline, "no new bytes arrived"
            await asyncio.sleep(0.02)
        row = await db.run(db.manifest.item, aweme_id)
        assert row is not None and row["validator"] != '"another-version"'
        assert row["durable_bytes"] <= part.stat().st_size
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await fetcher.aclose()
        await db.close()
