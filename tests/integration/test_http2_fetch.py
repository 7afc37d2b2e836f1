"""Our HTTP/2 client (net.http2, through net.fetch) against a real HTTPS HTTP/2 server.

Flow control is ours on this path, so bodies larger than the stream and connection windows,
many streams at once, and streams abandoned half-way are what must be shown to work.
"""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestd.net.fetch import Fetcher, FetchFailed, HttpSettings
from ingestd.net.http2 import connection
from ingestd.policy.retry import Reason
from support.goaway_origin import GoawayOrigin
from support.origin import OriginServer, content


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    server = OriginServer(tmp_path_factory.mktemp("http2-origin"))
    server.start()
    yield server
    server.stop()


def fetcher(origin: OriginServer, timeout: float = 10.0) -> Fetcher:
    return Fetcher(
        HttpSettings(
            True, timeout, "ingestd-test", "https://r/", Path(origin.ca_pem_path), 8, ("localhost",)
        )
    )


async def body(f: Fetcher, url: str, stop_after: int | None = None) -> tuple[int, bytes]:
    async with f.get(url, {}) as response:
        assert response.http_version == "HTTP/2"
        parts = []
        got = 0
        async for chunk in response.chunks():
            parts.append(chunk)
            got += len(chunk)
            if stop_after is not None and got >= stop_after:
                break
        return response.status, b"".join(parts)


async def test_bodies_larger_than_every_window(origin: OriginServer) -> None:
    size = connection.STREAM_WINDOW * 2 + 12_345  # needs stream-level WINDOW_UPDATEs
    count = (connection.CONNECTION_WINDOW // size) + 2  # and connection-level ones
    f = fetcher(origin)
    try:
        names = [f"big-{i}" for i in range(count)]
        results = await asyncio.gather(*(body(f, origin.url(n, size=size)) for n in names))
    finally:
        await f.aclose()
    for name, (status, data) in zip(names, results, strict=True):
        assert status == 200
        assert data == origin.content(name, size)


async def test_abandoned_streams_leave_the_connection_usable(origin: OriginServer) -> None:
    size = connection.STREAM_WINDOW * 2
    f = fetcher(origin)
    try:
        for i in range(6):  # each one leaves unread bytes in flight, counted on the connection
            status, data = await body(f, origin.url(f"drop-{i}", size=size), stop_after=100_000)
            assert status == 200 and len(data) >= 100_000
        status, data = await body(f, origin.url("after-drops", size=size))
        assert data == origin.content("after-drops", size)
    finally:
        await f.aclose()


async def test_range_resume_and_statuses_over_our_http2_path(origin: OriginServer) -> None:
    f = fetcher(origin)
    try:
        url = origin.url("ranged", size=50_000)
        async with f.get(url, {}) as first:
            etag = first.header("etag")
        assert etag
        async with f.get(url, {"Range": "bytes=1000-", "If-Range": etag}) as second:
            assert second.status == 206
            assert second.header("content-range") == "bytes 1000-49999/50000"
            data = b"".join([c async for c in second.chunks()])
        assert data == origin.content("ranged", 50_000)[1000:]
        async with f.get(origin.url("missing", mode="404"), {}) as missing:
            assert missing.status == 404
    finally:
        await f.aclose()


async def test_a_stalled_body_times_out(origin: OriginServer) -> None:
    f = fetcher(origin, timeout=0.5)
    try:
        with pytest.raises(FetchFailed) as info:
            await body(f, origin.url("stalled", mode="stall", size=200_000, times=1))
        assert info.value.reason is Reason.TIMEOUT
    finally:
        await f.aclose()


async def test_a_graceful_goaway_loses_no_transfer(tmp_path: Path) -> None:
    # At every tenth stream the server says GOAWAY while earlier ones are mid-body: those
    # must finish, and streams it never took must go, once, to a new connection.
    async with GoawayOrigin(tmp_path, max_requests=10) as origin:
        f = Fetcher(HttpSettings(True, 10.0, "t", "https://r/", origin.ca_path, 8, ("localhost",)))
        gate = asyncio.Semaphore(8)

        async def one(name: str) -> bytes:
            async with gate, f.get(origin.url(name, 150_000), {}) as response:
                assert response.status == 200
                return b"".join([bytes(c) async for c in response.chunks()])

        names = [f"goaway-{i}" for i in range(60)]
        try:
            bodies = await asyncio.wait_for(asyncio.gather(*(one(n) for n in names)), 30)
        finally:
            await f.aclose()
    for name, data in zip(names, bodies, strict=True):
        assert data == content(name, 150_000), name
    assert origin.goaways >= 5 and origin.connections >= 6
    assert set(origin.served.values()) == {1}  # nothing was fetched twice
