"""The scriptable raw origin (support.raw_origin) does what hostile-server tests rely on.

Ordinary responses are checked with httpx (h2 as the client); what h2 would refuse to parse is
read frame by frame with raw_get, and one test fetches through ingestd's own HTTP/2 pool.
"""

import math
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from ingestd.net import http2
from support.raw_origin import CANCEL, INTERNAL_ERROR, RawOrigin, RawResponse, Reply, raw_get

_DATA, _HEADERS, _END_STREAM = 0x0, 0x1, 0x1


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawOrigin]:
    server = RawOrigin(tmp_path_factory.mktemp("raw-origin"))
    server.start()
    yield server
    server.stop()
    assert server.loop_errors == []


@pytest.fixture
def client(origin: RawOrigin) -> Iterator[httpx.Client]:
    with httpx.Client(http2=True, verify=origin.ssl_context(), timeout=2.0) as c:
        yield c


def get(
    origin: RawOrigin,
    name: str,
    size: int,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    timeout: float = 2.0,
    stop_after: int | None = None,
    quiet: float | None = None,
) -> RawResponse:
    """A raw GET of origin.url(name, size) on a fresh connection."""
    path = origin.path(name, size)
    return raw_get(
        origin.port,
        path,
        headers,
        ca_pem_path=origin.ca_pem_path,
        timeout=timeout,
        stop_after=stop_after,
        quiet=quiet,
    )


def test_default_response_is_byte_exact(origin: RawOrigin, client: httpx.Client) -> None:
    url = origin.url("plain", 300_000)  # beyond h2's default windows: flow control at work
    assert "expire=" in url and "signature=" in url
    response = client.get(url)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.content == origin.content("plain", 300_000)
    assert response.headers["content-length"] == "300000"
    assert response.headers["etag"] == origin.etag("plain", 300_000)
    assert response.headers["last-modified"]
    origin.wait_until(lambda: origin.requests_for("plain")[0].done, 2)
    (record,) = origin.requests_for("plain")
    assert (record.status, record.bytes_sent, record.ended) == ("200", 300_000, "end")
    assert record.stream_id == 1 and record.connection >= 1 and record.script_index is None
    assert not record.client_reset and not record.disconnected


def test_raw_client_sees_windows_honoured(origin: RawOrigin) -> None:
    # raw_get keeps 65,535-byte windows and fails on any DATA frame beyond them.
    reply = get(origin, "windowed", 200_000)
    assert reply.ended == "end" and reply.body == origin.content("windowed", 200_000)


def test_range_gets_206_and_a_stale_if_range_gets_200(
    origin: RawOrigin, client: httpx.Client
) -> None:
    url, tag = origin.url("ranged", 50_000), origin.etag("ranged", 50_000)
    partial = client.get(url, headers={"Range": "bytes=1000-", "If-Range": tag})
    assert partial.status_code == 206
    assert partial.headers["content-range"] == "bytes 1000-49999/50000"
    assert partial.content == origin.content("ranged", 50_000)[1000:]
    whole = client.get(url, headers={"Range": "bytes=1000-", "If-Range": '"stale"'})
    assert whole.status_code == 200 and len(whole.content) == 50_000
    first, second = origin.requests_for("ranged")
    assert (first.range, first.if_range) == ("bytes=1000-", tag)
    assert second.if_range == '"stale"' and first.time <= second.time


def test_range_past_the_end_is_416_with_end_stream_on_headers(origin: RawOrigin) -> None:
    tag = origin.etag("short", 100).encode()
    reply = get(origin, "short", 100, [(b"range", b"bytes=100-"), (b"if-range", tag)])
    assert reply.status == "416" and reply.ended == "end"
    assert reply.values(b"content-range") == [b"bytes */100"]
    assert [(f.kind, f.flags & _END_STREAM) for f in reply.frames if f.stream_id == 1] == [
        (_HEADERS, _END_STREAM)
    ]


def test_header_only_replies_close_their_streams(origin: RawOrigin, client: httpx.Client) -> None:
    # More than h2's 100 concurrent streams on one connection: each HEADERS+END_STREAM reply
    # closed its stream in h2's books too.
    url = origin.url("many", 10)
    origin.script("many", [Reply(status=304, body=b"")] * 150)
    for _ in range(150):
        assert client.get(url).status_code == 304
    assert len({r.connection for r in origin.requests_for("many")}) == 1


def test_headers_go_out_verbatim(origin: RawOrigin) -> None:
    digits = "7" * 5000
    origin.script(
        "verbatim",
        [
            Reply(
                headers=[("Content-Length", "5"), ("x-unit", "²"), ("x-long", digits)],
                body=b"hello",
            )
        ],
    )
    reply = get(origin, "verbatim", 100)
    assert reply.headers == [
        (b":status", b"200"),
        (b"Content-Length", b"5"),
        (b"x-unit", "²".encode()),
        (b"x-long", digits.encode()),
    ]
    assert reply.body == b"hello" and reply.ended == "end"


def test_a_repeated_content_length_arrives_twice(origin: RawOrigin) -> None:
    origin.script("twice", [Reply(override=[("content-length", "100"), ("content-length", "100")])])
    reply = get(origin, "twice", 100)
    assert reply.values(b"content-length") == [b"100", b"100"]
    assert reply.values(b"etag") == [origin.etag("twice", 100).encode()]  # the rest is default
    assert reply.body == origin.content("twice", 100)


def test_scripted_replies_are_used_in_order_then_the_default(
    origin: RawOrigin, client: httpx.Client
) -> None:
    origin.script(
        "scripted",
        [
            Reply(status=503, headers=[("retry-after", "1")], body=b""),
            Reply(override=[("etag", '"other"')], extra=[("x-extra", "1")], drop=["last-modified"]),
        ],
    )
    url = origin.url("scripted", 1000)
    first, second, third = (client.get(url) for _ in range(3))
    assert first.status_code == 503 and first.headers["retry-after"] == "1"
    assert second.status_code == 200 and second.headers["etag"] == '"other"'
    assert second.headers["x-extra"] == "1" and "last-modified" not in second.headers
    assert third.headers["etag"] == origin.etag("scripted", 1000)
    assert [r.script_index for r in origin.requests_for("scripted")] == [0, 1, None]


def test_a_body_callable_gets_the_range_start(origin: RawOrigin) -> None:
    origin.script("called", [Reply(status=206, body=lambda start: str(start).encode())])
    reply = get(origin, "called", 1000, [(b"range", b"bytes=123-")])
    assert reply.status == "206" and reply.body == b"123"


def test_a_cut_body_then_rst_stream(origin: RawOrigin) -> None:
    origin.script("cut", [Reply(limit=1000, end="reset")])
    reply = get(origin, "cut", 50_000, [(b"range", b"bytes=500-")])
    assert reply.status == "206" and reply.values(b"content-length") == [b"49500"]
    assert reply.body == origin.content("cut", 50_000)[500:1500]
    assert (reply.ended, reply.reset_code) == ("reset", INTERNAL_ERROR)
    origin.wait_until(lambda: origin.requests_for("cut")[0].done, 2)
    (record,) = origin.requests_for("cut")
    assert (record.bytes_sent, record.ended) == (1000, "reset")


def test_a_short_body_ends_the_stream(origin: RawOrigin) -> None:
    origin.script("short-end", [Reply(limit=10)])
    reply = get(origin, "short-end", 1000)
    assert reply.values(b"content-length") == [b"1000"]
    assert reply.body == origin.content("short-end", 1000)[:10] and reply.ended == "end"


def test_hang_never_ends_the_stream(origin: RawOrigin) -> None:
    origin.script("hung", [Reply(limit=100, end="hang")])
    reply = get(origin, "hung", 1000, quiet=0.3)
    assert reply.ended == "quiet" and len(reply.body) == 100
    origin.wait_until(lambda: origin.requests_for("hung")[0].done, 2)  # raw_get closed the socket
    (record,) = origin.requests_for("hung")
    assert record.ended is None and record.disconnected


def test_close_drops_the_connection_mid_body(origin: RawOrigin) -> None:
    origin.script("dropped", [Reply(limit=10, end="close")])
    reply = get(origin, "dropped", 1000)
    assert reply.ended == "closed" and reply.body == origin.content("dropped", 1000)[:10]


def test_a_delay_past_the_client_timeout_sends_nothing(origin: RawOrigin) -> None:
    origin.script("silent", [Reply(delay=math.inf)])
    with pytest.raises(TimeoutError):
        get(origin, "silent", 100, timeout=0.3)
    origin.wait_until(lambda: origin.requests_for("silent")[0].done, 2)
    (record,) = origin.requests_for("silent")
    assert record.status is None and record.disconnected


def test_a_paced_body_goes_until_the_client_leaves(origin: RawOrigin) -> None:
    origin.script("paced", [Reply(bytes_per_second=200, frame_size=10)])
    started = time.monotonic()
    reply = get(origin, "paced", 10_000, stop_after=30)
    elapsed = time.monotonic() - started
    assert reply.ended == "stopped" and reply.body == origin.content("paced", 10_000)[:30]
    assert [len(f.payload) for f in reply.frames if f.kind == _DATA] == [10, 10, 10]
    assert 0.08 < elapsed < 1.0  # two pauses of 50 ms between the three frames
    origin.wait_until(lambda: origin.requests_for("paced")[0].done, 2)
    (record,) = origin.requests_for("paced")
    assert record.client_reset and record.reset_code == CANCEL and record.bytes_sent < 100


def test_refuse_then_restore_on_the_same_port(origin: RawOrigin, client: httpx.Client) -> None:
    port = origin.port
    assert client.get(origin.url("before-refuse", 100)).status_code == 200
    origin.refuse()  # also drops the client's open connection
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        with pytest.raises(httpx.TransportError):
            client.get(origin.url("during-refuse", 100))
    finally:
        origin.restore()
    assert origin.port == port
    response = client.get(origin.url("after-refuse", 100))
    assert response.content == origin.content("after-refuse", 100)
    assert origin.requests_for("during-refuse") == []


def test_blackhole_accepts_but_never_completes_tls(origin: RawOrigin) -> None:
    before = origin.accepts.get("blackhole", 0)
    origin.blackhole()
    try:
        with socket.create_connection(("127.0.0.1", origin.port), timeout=1) as raw:
            raw.settimeout(0.3)
            with pytest.raises(TimeoutError):
                origin.ssl_context().wrap_socket(raw, server_hostname="localhost")
        origin.wait_until(lambda: origin.accepts.get("blackhole", 0) == before + 1, 2)
    finally:
        origin.restore()
    assert get(origin, "after-blackhole", 100).ended == "end"


async def test_ingestd_http2_pool_fetches_byte_exact(origin: RawOrigin) -> None:
    async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
        return ["127.0.0.1"]

    context = ssl.create_default_context(cafile=origin.ca_pem_path)
    context.set_alpn_protocols(["h2"])
    pool = http2.H2Pool(context, resolve)
    try:
        path = origin.path("ours", 200_000).encode()
        response = await pool.request("localhost", origin.port, b"GET", path, [], 2, 2)
        assert response.status == 200
        parts = [bytes(c) async for chunks in response.body for c in chunks]
    finally:
        await pool.aclose()
    assert b"".join(parts) == origin.content("ours", 200_000)


def test_stop_is_bounded_with_a_stream_hanging(tmp_path: Path) -> None:
    server = RawOrigin(tmp_path)
    server.start()
    server.script("stuck", [Reply(limit=0, end="hang")])
    seen: list[RawResponse] = []
    reader = threading.Thread(target=lambda: seen.append(get(server, "stuck", 100, timeout=5)))
    reader.start()
    try:
        server.wait_until(lambda: any(r.status for r in server.requests_for("stuck")), 2)
    finally:
        started = time.monotonic()
        server.stop()
        reader.join(5)
    assert time.monotonic() - started < 2
    assert seen and seen[0].status == "200" and seen[0].ended == "closed"
