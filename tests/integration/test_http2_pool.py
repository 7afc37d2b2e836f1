"""Our HTTP/2 pool's connection upkeep against a real TLS origin (support.raw_origin): a
connection gone silent is found out by a PING before it gets a stream, and one left idle is
closed."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestd.net import http2
from ingestd.net.http2 import pool as pool_module
from support.raw_origin import RawOrigin


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[RawOrigin]:
    server = RawOrigin(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_pool(origin: RawOrigin, **kwargs: float) -> http2.H2Pool:
    async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
        return ["127.0.0.1"]

    context = ssl.create_default_context(cafile=origin.ca_pem_path)
    context.set_alpn_protocols(["h2"])
    return http2.H2Pool(context, resolve, **kwargs)  # type: ignore[arg-type]


async def fetch(pool: http2.H2Pool, origin: RawOrigin, name: str, timeout: float) -> bytes:
    path = origin.path(name, 1000).encode()
    response = await pool.request("localhost", origin.port, b"GET", path, [], timeout, timeout)
    try:
        return b"".join([bytes(c) async for chunks in response.body for c in chunks])
    finally:
        response.close()


async def test_a_connection_gone_silent_is_pinged_and_replaced(
    origin: RawOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "LIVENESS_AFTER", 0.3)
    monkeypatch.setattr(pool_module, "LIVENESS_WAIT", 0.5)
    pool = make_pool(origin)
    try:
        assert await fetch(pool, origin, "first", 10) == origin.content("first", 1000)
        origin.silence()  # the flow is gone, and nobody told us
        time.sleep(0.4)  # quiet for longer than LIVENESS_AFTER
        started = time.monotonic()
        assert await fetch(pool, origin, "second", 10) == origin.content("second", 1000)
        # A PING's wait, not the 10 s request timeout, and no attempt lost on the dead one.
        assert time.monotonic() - started < 3
        assert origin.accepts["serve"] == 2
        assert [r.name for r in origin.requests()] == ["first", "second"]
        assert pool.connections == 1
    finally:
        await pool.aclose()


async def test_a_busy_connection_is_not_pinged(origin: RawOrigin) -> None:
    pool = make_pool(origin)
    try:
        for i in range(5):
            await fetch(pool, origin, f"n{i}", 10)
        assert origin.accepts["serve"] == 1  # reused, no PING round trip needed
    finally:
        await pool.aclose()


async def test_an_idle_connection_is_closed(
    origin: RawOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "SWEEP_EVERY", 0.05)
    pool = make_pool(origin, idle_timeout=0.3)
    try:
        await fetch(pool, origin, "before", 10)
        assert pool.connections == 1
        time.sleep(0.5)
        await fetch(pool, origin, "after", 10)  # the sweep closed the idle one first
        assert origin.accepts["serve"] == 2
        assert pool.connections == 1
    finally:
        await pool.aclose()
