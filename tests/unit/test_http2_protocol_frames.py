"""The HTTP/2 client's frame handling through its asyncio adapter (H2Protocol), fed frames
directly (no socket).

A server-side h2 connection produces the SETTINGS and HEADERS; DATA frames are built by hand,
so padding, frames split across reads, unknown streams and a server ignoring flow control can
all be shown.
"""

import asyncio

import h2.errors
import h2.events
import pytest

from ingestd.net.http2.connection import CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW
from ingestd.net.http2.errors import ConnectionLost, StreamFailed
from ingestd.net.http2.pool import authority
from support.h2peer import Peer, data_frame, frame, parse, window_updates

HEADERS, CONTINUATION, WINDOW_UPDATE, RST_STREAM = 0x1, 0x9, 0x8, 0x3


async def test_data_fast_path_padding_split_reads_and_end() -> None:
    peer = Peer()
    client = peer.client
    stream = client.open(b"GET", b"/v.mp4?sig=x", [(b"user-agent", b"t"), (b"connection", b"x")])
    events = peer.to_server()
    request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert (b"connection", b"x") not in request.headers  # connection-specific: never sent
    assert (b"user-agent", b"t") in request.headers
    # The declared length counts payload only: padding is not body.
    peer.respond(stream.stream_id, [(":status", "200"), ("content-length", "13")])
    assert stream.head.done() and stream.head.result()[0] == 200
    wire = (
        data_frame(1, b"hello ") + data_frame(1, b"padded", pad=5) + data_frame(1, b"!", end=True)
    )
    for i in range(0, len(wire), 7):  # frames split across many reads
        client.data_received(wire[i : i + 7])
    chunks = await client.next_chunks(stream, timeout=1)
    assert chunks is not None and b"".join(chunks) == b"hello padded!"
    assert await client.next_chunks(stream, timeout=1) is None
    client.release(stream)
    assert client.open_streams == 0
    assert not peer.transport.closed


async def test_window_updates_follow_acknowledgement_not_delivery() -> None:
    peer = Peer()
    client, transport = peer.client, peer.transport
    stream = peer.request(b"/big")
    peer.respond(stream.stream_id)
    sent = len(transport.written)
    half = STREAM_WINDOW // 2
    frames = half // 16384 + 1
    client.data_received(data_frame(1, b"x" * 16384) * frames)
    assert len(transport.written) == sent  # nothing consumed yet: no WINDOW_UPDATE
    chunks = await client.next_chunks(stream, timeout=1)
    assert chunks is not None and sum(map(len, chunks)) == frames * 16384
    # Taken is not done with: until the consumer acknowledges, the window stays shut.
    assert len(transport.written) == sent
    client.acknowledge(stream, half - 1)
    assert len(transport.written) == sent  # batched: under half a stream window
    client.acknowledge(stream, frames * 16384 - (half - 1))
    # One stream-level update for all of it; the connection's waits for a quarter of its window.
    assert window_updates(bytes(transport.written[sent:])) == [(1, frames * 16384)]
    assert frames * 16384 < CONNECTION_WINDOW // 4
    sent = len(transport.written)
    client.acknowledge(stream, 1)  # more than was delivered: nothing left to acknowledge
    assert len(transport.written) == sent


async def test_a_server_ignoring_flow_control_is_cut_off() -> None:
    peer = Peer()
    client, transport = peer.client, peer.transport
    stream = peer.request(b"/flood")
    peer.respond(stream.stream_id)
    flood = data_frame(1, b"x" * 16384) * (STREAM_WINDOW // 16384 + 1)
    client.data_received(flood)
    assert transport.closed
    received = 0
    with pytest.raises(StreamFailed, match="beyond the stream window") as failed:
        for _ in range(3):  # what came in time is delivered first
            chunks = await client.next_chunks(stream, timeout=1)
            received += sum(map(len, chunks or []))
    assert received == STREAM_WINDOW and type(failed.value) is StreamFailed
    goaway = [e for e in peer.to_server() if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in goaway] == [h2.errors.ErrorCodes.FLOW_CONTROL_ERROR]


async def test_data_for_an_abandoned_stream_returns_connection_credit() -> None:
    # A released stream's in-flight DATA (up to its window) goes back to the connection at
    # once, though nobody reads it. Several streams' worth, to pass the batching threshold.
    peer = Peer()
    client, transport = peer.client, peer.transport
    streams = [peer.request(f"/gone{i}".encode()) for i in range(3)]
    for stream in streams:
        peer.respond(stream.stream_id)
        client.release(stream)  # abandoned before any body
    sent = len(transport.written)
    for stream in streams:
        client.data_received(data_frame(stream.stream_id, b"y" * 16384) * (STREAM_WINDOW // 16384))
    assert not transport.closed
    updates = window_updates(bytes(transport.written[sent:]))
    assert [sid for sid, _ in updates] == [0]  # a connection-level WINDOW_UPDATE, nothing else
    assert CONNECTION_WINDOW // 4 <= updates[0][1] <= 3 * STREAM_WINDOW


def test_authority_brackets_ipv6_literals_and_omits_the_default_port() -> None:
    assert authority("cdn.example", 443) == "cdn.example"
    assert authority("cdn.example", 8443) == "cdn.example:8443"
    assert authority("::1", 8443) == "[::1]:8443"
    assert authority("2001:db8::7", 443) == "[2001:db8::7]"
    assert authority("127.0.0.1", 4443) == "127.0.0.1:4443"


async def test_header_blocks_larger_than_a_frame_come_in_continuations() -> None:
    # We advertise the default MAX_FRAME_SIZE (16,384): a 40 KB response header block comes
    # as HEADERS plus CONTINUATION frames, each within it, and is accepted whole.
    peer = Peer()
    client, server = peer.client, peer.server
    stream = peer.request(b"/")
    server.send_headers(stream.stream_id, [(":status", "200"), ("x-long", "v" * 40_000)])
    block = server.data_to_send()
    sent = parse(block)
    assert [kind for kind, *_ in sent] == [HEADERS, CONTINUATION, CONTINUATION]
    assert all(len(payload) <= MAX_FRAME_SIZE == 16_384 for *_, payload in sent)
    client.data_received(block)
    _, headers = await asyncio.wait_for(stream.head, 1)
    assert (b"x-long", b"v" * 40_000) in headers
    assert not peer.transport.closed


async def test_a_frame_over_the_advertised_size_is_a_connection_error() -> None:
    # (Changed by design: the old client advertised 2^24-1 and took 40 KB HEADERS frames.)
    peer = Peer()
    stream = peer.request(b"/")
    block = peer.server.encoder.encode([(":status", "200"), ("x-long", "v" * 40_000)])
    assert len(block) > MAX_FRAME_SIZE
    peer.client.data_received(frame(HEADERS, 0x4, stream.stream_id, block))
    assert peer.transport.closed
    with pytest.raises(StreamFailed, match="over 16384"):
        await asyncio.wait_for(asyncio.shield(stream.head), 1)
    goaway = [e for e in peer.to_server() if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in goaway] == [h2.errors.ErrorCodes.FRAME_SIZE_ERROR]


async def test_frames_queued_in_one_loop_iteration_leave_in_one_write() -> None:
    peer = Peer(coalesce=True)
    await asyncio.sleep(0)  # the connection preface goes out
    client, transport = peer.client, peer.transport
    peer.to_server()
    writes = transport.writes
    streams = [client.open(b"GET", f"/v{i}.mp4".encode(), []) for i in range(3)]
    assert transport.writes == writes  # queued until the callbacks ready now have run
    await asyncio.sleep(0)
    assert transport.writes == writes + 1
    events = peer.to_server()
    opened = [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)]
    assert opened == [s.stream_id for s in streams]


async def test_acknowledgements_in_one_loop_iteration_leave_in_one_write() -> None:
    peer = Peer(coalesce=True)
    client, transport = peer.client, peer.transport
    streams = [client.open(b"GET", f"/v{i}.mp4".encode(), []) for i in range(2)]
    await asyncio.sleep(0)
    peer.to_server()
    for stream in streams:
        peer.respond(stream.stream_id)
        client.data_received(data_frame(stream.stream_id, b"z" * 16384) * 128)  # 2 MiB each
    writes, sent = transport.writes, len(transport.written)
    for stream in streams:
        client.acknowledge(stream, STREAM_WINDOW // 2)
    assert transport.writes == writes
    await asyncio.sleep(0)
    assert transport.writes == writes + 1
    assert window_updates(bytes(transport.written[sent:])) == [
        (streams[0].stream_id, STREAM_WINDOW // 2),
        (streams[1].stream_id, STREAM_WINDOW // 2),
    ]


async def test_a_close_sends_what_was_queued_first() -> None:
    peer = Peer(coalesce=True)
    await asyncio.sleep(0)
    client, transport = peer.client, peer.transport
    peer.to_server()
    stream = client.open(b"GET", b"/v.mp4", [])
    client.abort("shutting down")  # before the loop came round to the queued request
    assert transport.closed and client.closed and not client.accepting
    events = peer.to_server()
    assert [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)] == [
        stream.stream_id
    ]
    # ... then our GOAWAY, after the request it queued behind.
    assert isinstance(events[-1], h2.events.ConnectionTerminated)
    assert events[-1].error_code == h2.errors.ErrorCodes.NO_ERROR
    with pytest.raises(ConnectionLost, match="shutting down"):
        await asyncio.wait_for(asyncio.shield(stream.head), 1)
