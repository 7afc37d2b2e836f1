"""Transfers against an origin that recycles every connection with a graceful GOAWAY (as nginx
does every keepalive_requests), with either HTTP/2 client. httpx's own HTTP/2 stack (the
"h2" fallback) fails every stream still reading when the GOAWAY arrives, even those the server
accepted and finishes; that is no failure of the item's, so the transfer asks again at once,
within the attempt, and no attempt is spent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from ingestd.config import Config
from ingestd.net.fetch import Fetcher, HttpSettings
from ingestd.policy.extract import Record
from ingestd.service.db import Db
from ingestd.service.publish import Publisher
from ingestd.service.transfer import MAX_RECYCLED, Failure, Published, Transfers
from ingestd.store.base import Item
from support.goaway_origin import GoawayOrigin
from support.origin import content

SIZE = 150_000


@contextlib.asynccontextmanager
async def _transfers(
    tmp_path: Path, origin: GoawayOrigin, client: str
) -> AsyncIterator[tuple[Config, Db, Transfers]]:
    """A manifest and Transfers on `client`'s HTTP/2 stack, trusting `origin`; closed after."""
    config = Config(data_dir=tmp_path, state_dir=tmp_path, allowed_hosts=("localhost",))
    settings = HttpSettings(
        True, 10.0, "t", "https://r/", origin.ca_path, 8, ("localhost",), http2_client=client
    )
    db = await Db.open(tmp_path / "manifest.sqlite3")
    fetcher = Fetcher(settings)
    try:
        yield config, db, Transfers(config, db, fetcher, Publisher(config.media_dir))
    finally:
        await fetcher.aclose()
        await db.close()


@pytest.mark.parametrize("client", ["builtin", "h2"])
async def test_a_recycled_connection_costs_no_attempt(tmp_path: Path, client: str) -> None:
    names = [f"goaway-{i}" for i in range(60)]
    ids = {name: str(7_100_000_000_000_000_000 + i) for i, name in enumerate(names)}
    async with (
        GoawayOrigin(tmp_path, max_requests=10) as origin,
        _transfers(tmp_path, origin, client) as (config, db, transfers),
    ):
        records = [Record(ids[n], origin.url(n, SIZE), "cats", "{}") for n in names]
        await db.run(db.manifest.merge, records, "e.json", time.time())
        items = await db.run(db.manifest.claim_due, time.time(), len(names))
        gate = asyncio.Semaphore(8)

        async def one(item: Item) -> Published | Failure:
            async with gate:
                return await transfers.attempt(item, structlog.get_logger())

        outcomes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in items)), 60)
    failures = [o for o in outcomes if not isinstance(o, Published)]
    assert failures == []
    for name in names:
        published = config.media_dir / "cats" / f"{ids[name]}.mp4"
        assert published.read_bytes() == content(name, SIZE), name
    assert origin.goaways >= 5


@pytest.mark.parametrize("client", ["builtin", "h2"])
async def test_a_host_that_recycles_every_connection_at_once_is_asked_a_bounded_number_of_times(
    tmp_path: Path, client: str
) -> None:
    """Asking again at once is for a connection recycled now and then: a host that answers
    every request with a GOAWAY taking none gets at most MAX_RECYCLED more in an attempt (each
    client may also send a refused stream once more itself), then a failure that the item's
    retry and the host's health deal with."""
    async with (
        GoawayOrigin(tmp_path, max_requests=0) as origin,
        _transfers(tmp_path, origin, client) as (_, db, transfers),
    ):
        record = Record("7100000000000000999", origin.url("refused", SIZE), "cats", "{}")
        await db.run(db.manifest.merge, [record], "e.json", time.time())
        [item] = await db.run(db.manifest.claim_due, time.time(), 1)
        outcome = await asyncio.wait_for(transfers.attempt(item, structlog.get_logger()), 60)
    assert isinstance(outcome, Failure), outcome
    assert 1 <= origin.requests <= 2 * (1 + MAX_RECYCLED), origin.requests
    assert MAX_RECYCLED <= 4  # what the bound above means: a few, not MAX_RANGE_REQUESTS
