"""The HTTP/2 client (H2Protocol over the sans-IO Connection) against the rest of the protocol:
GOAWAY, resets, PING, SETTINGS, header blocks in pieces, informational responses, trailers,
and a peer that breaks the rules.

The server is h2 (server side); frames it will not produce are built by hand. A connection
error must fail every open stream, tell the server why (GOAWAY) and close the transport.
"""

import asyncio
import functools
import ssl
import struct

import h2.errors
import h2.events
import h2.settings
import hpack
import pytest

from ingestd.net.http2 import pool as pool_module
from ingestd.net.http2.connection import (
    COPY_BELOW,
    FREE_JUNK_FRAMES,
    MAX_INFORMATIONAL,
    MAX_UNSENT,
    READ_CHUNK,
    STREAM_WINDOW,
    PinBudget,
)
from ingestd.net.http2.errors import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimedOut,
    MalformedResponse,
    StreamFailed,
    StreamTimedOut,
)
from ingestd.net.http2.pool import H2Pool
from ingestd.net.http2.protocol import H2Protocol, Stream
from support.h2peer import FakeTransport, Peer, body, data_frame, frame

HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = (
    0x1,
    0x2,
    0x3,
    0x4,
    0x5,
    0x6,
    0x7,
    0x8,
)
CONTINUATION = 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


def goaway_sent(peer: Peer) -> h2.events.ConnectionTerminated:
    """The GOAWAY the client sent (the server must see exactly one)."""
    events = [e for e in peer.to_server() if isinstance(e, h2.events.ConnectionTerminated)]
    assert len(events) == 1, events
    return events[0]


async def assert_connection_error(peer: Peer, stream: Stream, code: int, why: str) -> None:
    """The connection ended on a breach of the protocol: the stream failed saying `why` (a
    plain StreamFailed: neither a lost connection nor a malformed response), the server got a
    GOAWAY with `code`, and nothing more can be opened."""
    assert peer.transport.closed and peer.client.closed
    assert not peer.client.can_open(100) and not peer.client.accepting
    with pytest.raises(StreamFailed, match=why) as failed:
        await asyncio.wait_for(asyncio.shield(stream.head), 1)
    assert type(failed.value) is StreamFailed and not failed.value.retry_safe
    assert peer.client.h2.terminated is not None and peer.client.h2.terminated.code == code
    assert goaway_sent(peer).error_code == code


async def test_goaway_lets_processed_streams_finish_and_fails_the_rest_as_retry_safe() -> None:
    peer = Peer()
    processed, unprocessed = peer.request(), peer.request()
    peer.respond(processed.stream_id)
    peer.server.close_connection(last_stream_id=processed.stream_id)
    peer.to_client()
    assert peer.client.h2.goaway_received and not peer.client.accepting
    assert not peer.client.can_open(100)
    with pytest.raises(StreamFailed) as refused:
        await asyncio.wait_for(asyncio.shield(unprocessed.head), 1)
    assert refused.value.retry_safe
    peer.client.release(unprocessed)
    peer.client.data_received(data_frame(processed.stream_id, b"the rest", end=True))
    assert await body(peer.client, processed) == b"the rest"
    assert not peer.transport.closed  # a stream was still running
    peer.client.release(processed)
    assert peer.transport.closed  # the last one done: nothing more can happen here


async def test_stream_resets_fail_only_their_stream() -> None:
    peer = Peer()
    refused, broken, fine = peer.request(), peer.request(), peer.request()
    peer.server.reset_stream(refused.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
    peer.server.send_headers(broken.stream_id, [(":status", "200")])
    peer.server.send_data(broken.stream_id, b"half")
    peer.server.reset_stream(broken.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
    peer.server.send_headers(fine.stream_id, [(":status", "200")])
    peer.server.send_data(fine.stream_id, b"whole", end_stream=True)
    peer.to_client()
    with pytest.raises(StreamFailed) as never_started:
        await asyncio.wait_for(asyncio.shield(refused.head), 1)
    assert never_started.value.retry_safe  # REFUSED_STREAM: the server did nothing with it
    with pytest.raises(StreamFailed, match="reset") as cut:
        await body(peer.client, broken)
    assert not cut.value.retry_safe
    assert await body(peer.client, fine) == b"whole"
    for stream in (refused, broken, fine):
        peer.client.release(stream)
    # Reset or ended streams are not reset again, and the connection carries on.
    assert not any(isinstance(e, h2.events.StreamReset) for e in peer.to_server())
    assert not peer.transport.closed and peer.client.can_open(100)
    again = peer.request()
    peer.respond(again.stream_id, [(":status", "204")], end=True)
    assert (await asyncio.wait_for(again.head, 1))[0] == 204


async def test_unfinished_streams_are_cancelled_when_released() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id)
    peer.client.release(stream)
    resets = [e for e in peer.to_server() if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [
        (stream.stream_id, h2.errors.ErrorCodes.CANCEL)
    ]


def test_ping_is_answered_with_its_payload() -> None:
    peer = Peer()
    peer.server.ping(b"8 bytes!")
    peer.to_client()
    acks = [e for e in peer.to_server() if isinstance(e, h2.events.PingAckReceived)]
    assert [e.ping_data for e in acks] == [b"8 bytes!"]


async def test_our_ping_is_answered() -> None:
    peer = Peer()
    answered = peer.client.ping()
    peer.to_server()  # h2 answers it
    assert not answered.done()
    peer.to_client()
    await asyncio.wait_for(answered, 1)


async def test_settings_are_acknowledged_and_max_concurrent_streams_is_honoured() -> None:
    peer = Peer()
    peer.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    peer.to_client()
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in peer.to_server())
    first = peer.request()
    assert peer.client.can_open(100)
    peer.request()
    assert not peer.client.can_open(100)
    assert peer.client.can_open(100) is False and peer.client.open_streams == 2
    peer.client.release(first)
    assert peer.client.can_open(100)


async def test_one_stream_only_until_the_servers_settings_arrive() -> None:
    client = H2Protocol("origin.test")
    client.connection_made(FakeTransport())  # no server SETTINGS yet
    assert client.can_open(100)
    client.open(b"GET", b"/", [])
    assert not client.can_open(100) and client.accepting


async def test_a_smaller_header_table_is_signalled_in_the_next_block() -> None:
    peer = Peer()
    peer.server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    peer.to_client()
    peer.to_server()  # the ACK
    peer.client.open(b"GET", b"/v.mp4", [])
    wire = peer.transport.new()
    assert wire[3] == HEADERS and wire[9] == 0x20  # a dynamic table size update to 0 first
    events = peer.server.receive_data(wire)
    assert any(isinstance(e, h2.events.RequestReceived) for e in events)


async def test_a_header_block_in_continuation_frames() -> None:
    peer = Peer()
    stream = peer.request()
    block = peer.server.encoder.encode([(":status", "200"), ("x-long", "v" * 200)])
    sid = stream.stream_id
    peer.client.data_received(
        frame(HEADERS, 0, sid, block[:10])
        + frame(CONTINUATION, 0, sid, block[10:60])
        + frame(CONTINUATION, END_HEADERS, sid, block[60:])
        + data_frame(sid, b"body", end=True)
    )
    _, headers = await asyncio.wait_for(stream.head, 1)
    assert (b"x-long", b"v" * 200) in headers
    assert await body(peer.client, stream) == b"body"


async def test_a_frame_inside_a_header_block_is_a_connection_error() -> None:
    peer = Peer()
    stream = peer.request()
    block = peer.server.encoder.encode([(":status", "200")])
    peer.client.data_received(
        frame(HEADERS, 0, stream.stream_id, block) + frame(PING, 0, 0, bytes(8))
    )
    await assert_connection_error(
        peer, stream, h2.errors.ErrorCodes.PROTOCOL_ERROR, "inside a header block"
    )


async def test_informational_responses_come_before_the_final_one() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "103"), ("link", "</style.css>")])
    assert not stream.head.done()
    peer.respond(stream.stream_id, [(":status", "200"), ("content-length", "2")])
    peer.server.send_data(stream.stream_id, b"ok", end_stream=True)
    peer.to_client()
    assert (await asyncio.wait_for(stream.head, 1))[0] == 200
    assert await body(peer.client, stream) == b"ok"


async def test_trailers_end_the_body() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    peer.server.send_data(stream.stream_id, b"abc")
    peer.server.send_headers(stream.stream_id, [("x-checksum", "1")], end_stream=True)
    peer.to_client()
    assert await body(peer.client, stream) == b"abc"


async def test_a_response_without_a_body() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "404")], end=True)
    assert (await asyncio.wait_for(stream.head, 1))[0] == 404
    assert await body(peer.client, stream) == b""


async def test_headers_of_an_abandoned_stream_still_update_the_decoder() -> None:
    # HPACK state is per connection: skipping the block of a stream we gave up on would
    # garble every later response that refers back to its entries.
    peer = Peer()
    abandoned, wanted = peer.request(), peer.request()
    peer.client.release(abandoned)  # the server has not seen the reset yet
    fields = [(":status", "200"), ("x-indexed", "a value worth indexing")]
    peer.server.send_headers(abandoned.stream_id, fields)
    first = len(peer.server.data_to_send(0) or b"")
    peer.server.send_headers(wanted.stream_id, fields)
    peer.to_client()
    assert first == 0  # (peek did not consume)
    _, headers = await asyncio.wait_for(wanted.head, 1)
    assert (b"x-indexed", b"a value worth indexing") in headers


async def test_frames_we_do_not_use_are_ignored() -> None:
    peer = Peer()
    stream = peer.request()
    sid = stream.stream_id
    peer.client.data_received(
        frame(0xFA, 0, 0, b"an extension frame")
        + frame(PRIORITY, 0, sid, bytes(5))
        + frame(WINDOW_UPDATE, 0, 0, (1000).to_bytes(4, "big"))
        + frame(WINDOW_UPDATE, 0, sid, (1000).to_bytes(4, "big"))
    )
    peer.respond(sid, [(":status", "200")])
    peer.client.data_received(data_frame(sid, b"fine", end=True))
    assert await body(peer.client, stream) == b"fine"
    assert not peer.transport.closed


@pytest.mark.parametrize(
    ("wire", "code", "why"),
    [
        # Push is disabled in our SETTINGS.
        (
            lambda sid: frame(PUSH_PROMISE, END_HEADERS, sid, (2).to_bytes(4, "big") + b"\x88"),
            0x1,
            "PUSH_PROMISE",
        ),
        # A stream we never opened (idle), and a server-initiated (even) one.
        (lambda sid: frame(HEADERS, END_HEADERS, sid + 2, b"\x88"), 0x1, "idle stream"),
        (lambda sid: frame(HEADERS, END_HEADERS, 2, b"\x88"), 0x1, "idle stream"),
        (lambda sid: data_frame(sid + 2, b"x"), 0x1, "idle stream"),
        # A header block that does not decode.
        (
            lambda sid: frame(HEADERS, END_HEADERS, sid, b"\xff\xff\xff\xff\xff\xff"),
            0x9,
            "header block",
        ),
        # SETTINGS: a bad length, a window over 2^31-1, push turned on, a tiny frame size.
        (lambda sid: frame(SETTINGS, 0, 0, bytes(5)), 0x6, "multiple of 6"),
        (lambda sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 2**31)), 0x3, "window"),
        (lambda sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x2, 1)), 0x1, "push"),
        (lambda sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x5, 100)), 0x1, "frame size"),
        (lambda sid: frame(SETTINGS, 0, sid, b""), 0x1, "SETTINGS on a stream"),
        (lambda sid: frame(PING, 0, 0, bytes(7)), 0x6, "PING is not 8 bytes"),
        (lambda sid: frame(PING, 0, sid, bytes(8)), 0x1, "PING on a stream"),
        (lambda sid: frame(RST_STREAM, 0, sid, bytes(3)), 0x6, "RST_STREAM is not 4 bytes"),
        (lambda sid: frame(RST_STREAM, 0, 0, bytes(4)), 0x1, "RST_STREAM on stream 0"),
        (lambda sid: frame(GOAWAY, 0, sid, bytes(8)), 0x1, "GOAWAY on a stream"),
        (lambda sid: frame(WINDOW_UPDATE, 0, 0, bytes(4)), 0x1, "of zero"),  # a zero increment
        # Nothing to continue.
        (lambda sid: frame(CONTINUATION, END_HEADERS, sid, b"\x88"), 0x1, "CONTINUATION"),
        (lambda sid: data_frame(0, b"x"), 0x1, "DATA on stream 0"),
        (lambda sid: frame(0x0, 0x8, sid, b"\x05ab"), 0x1, "more padding than payload"),
        # Larger than the MAX_FRAME_SIZE we advertise: as soon as the frame header is read.
        (lambda sid: (16_385).to_bytes(3, "big") + bytes([0xFA, 0]) + bytes(4), 0x6, "over 16384"),
    ],
)
async def test_a_peer_breaking_the_protocol_gets_a_goaway_and_the_connection_ends(
    wire: object, code: int, why: str
) -> None:
    peer = Peer()
    stream = peer.request()
    assert callable(wire)
    peer.client.data_received(wire(stream.stream_id))
    await assert_connection_error(peer, stream, code, why)


# --- what a review of the rewrite found: each was reproduced against it first ---------------


def pool_of(peer: Peer) -> H2Pool:
    """A pool whose only connection to origin.test:443 is the peer's client."""
    pool = H2Pool(ssl.create_default_context(), _no_resolver)
    pool._origins[("origin.test", 443)] = pool_module._Origin([peer.client])
    pool._all.add(peer.client)
    return pool


async def _no_resolver(host: str, port: int, timeout: float | None) -> list[str]:
    raise AssertionError("no connection may be made here")


async def request(pool: H2Pool, connect: float | None = 1, read: float | None = 1) -> None:
    await pool.request("origin.test", 443, b"GET", b"/", [], connect, read)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([(b":status", b"200"), (b":status", b"2x0")], "out of place"),  # a second :status
        ([(b"server", b"x"), (b":status", b"200")], "out of place"),  # after a regular field
        ([(b":status", b"200"), (b":path", b"/")], "out of place"),  # a request pseudo-header
        ([(b"server", b"x")], "no valid :status"),
        ([(b":status", b"2x0")], "no valid :status"),  # once parsed as int(): ValueError
        ([(b":status", b"200"), (b"Content-Length", b"10")], "invalid field name"),  # 8.2.1
        ([(b":status", b"200"), (b"x-Cache", b"hit")], "invalid field name"),
        ([(b":status", b"200"), (b"connection", b"close")], "connection-specific"),  # 8.2.2
        ([(b":status", b"200"), (b"x-a", b"b\r\nx-b: c")], "invalid value"),  # 8.2.1
        (
            [(b":status", b"200"), (b"content-length", b"1"), (b"content-length", b"2")],
            "conflicting content-length",
        ),
    ],
)
async def test_malformed_response_headers_fail_that_stream_and_free_it(
    fields: list[tuple[bytes, bytes]], why: str
) -> None:
    peer = Peer()
    task = asyncio.create_task(request(pool_of(peer)))
    await asyncio.sleep(0)
    peer.to_server()
    block = hpack.Encoder().encode(fields)
    peer.client.data_received(frame(HEADERS, END_HEADERS, 1, block))
    with pytest.raises(MalformedResponse, match=f"^protocol error: .*{why}"):
        await task
    assert peer.client.open_streams == 0 and not peer.transport.closed
    resets = [e for e in peer.to_server() if isinstance(e, h2.events.StreamReset)]
    assert [e.error_code for e in resets] == [h2.errors.ErrorCodes.PROTOCOL_ERROR]


async def test_a_body_that_does_not_match_its_content_length_fails_that_stream() -> None:
    peer = Peer()
    short, long, exact = peer.request(), peer.request(), peer.request()
    for stream in (short, long, exact):
        peer.respond(stream.stream_id, [(":status", "200"), ("content-length", "5")])
    peer.client.data_received(
        data_frame(short.stream_id, b"abc", end=True)
        + data_frame(long.stream_id, b"abcdef")
        + data_frame(exact.stream_id, b"abcde", end=True)
    )
    # Cut short of its content-length, a body is truncated (what came is a sound prefix):
    # a plain stream failure. Longer than declared, it is malformed.
    with pytest.raises(StreamFailed, match="3 body bytes for content-length 5") as cut:
        await body(peer.client, short)
    assert type(cut.value) is StreamFailed and not cut.value.retry_safe
    with pytest.raises(MalformedResponse, match="6 body bytes for content-length 5"):
        await body(peer.client, long)
    assert await body(peer.client, exact) == b"abcde"
    resets = [e for e in peer.to_server() if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [
        (short.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR),
        (long.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR),
    ]
    assert not peer.transport.closed


async def test_padding_is_credited_back_at_once() -> None:
    # Padding reaches no consumer: it goes back to the server's window at once, while the
    # payload waits for the consumer's acknowledgement. (Padding-only frames carry nothing
    # and count as junk, see test_http2_connection; here every frame carries payload.)
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    sid = stream.stream_id
    sent = padding = 0
    while peer.server.local_flow_control_window(sid) >= 511:
        peer.server.send_data(sid, b"x" * 255, pad_length=255)  # 511 flow-controlled bytes
        sent += 511
        padding += 256  # the pad length byte and 255 bytes of padding
        peer.to_client()
    assert not peer.transport.closed
    updates = [e for e in peer.to_server() if isinstance(e, h2.events.WindowUpdated)]
    returned = sum(e.delta for e in updates if e.stream_id == sid)
    assert [e.stream_id for e in updates] == [sid]  # nothing acknowledged: padding only
    assert STREAM_WINDOW // 2 <= returned <= padding
    window = peer.server.local_flow_control_window(sid)
    assert window == STREAM_WINDOW - sent + returned > STREAM_WINDOW // 2


async def test_empty_data_frames_do_not_stretch_the_stall_timeout() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])

    async def trickle() -> None:
        for _ in range(20):
            await asyncio.sleep(0.05)
            peer.client.data_received(data_frame(stream.stream_id, b""))

    trickling = asyncio.create_task(trickle())
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(StreamTimedOut):
        await peer.client.next_chunks(stream, 0.2)
    assert loop.time() - start < 0.5
    trickling.cancel()
    assert not peer.transport.closed  # the server was talking: the connection is alive


async def test_a_silent_connection_is_dropped_when_a_stream_times_out() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    with pytest.raises(StreamTimedOut):
        await peer.client.next_chunks(stream, 0.1)
    assert peer.transport.closed and not peer.client.can_open(100)  # presumed half-open


async def test_a_response_head_that_never_comes_times_out_and_frees_the_stream() -> None:
    peer = Peer()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(StreamTimedOut, match=r"no response headers for 0\.1 s"):
        await asyncio.wait_for(request(pool_of(peer), connect=1, read=0.1), 2)
    assert loop.time() - start < 1
    assert peer.client.open_streams == 0  # released: its slot is free again
    assert peer.transport.closed  # nothing at all came: presumed half-open


async def test_a_head_that_arrives_in_time_cancels_its_timer() -> None:
    peer = Peer()
    task = asyncio.create_task(request(pool_of(peer), connect=1, read=0.2))
    await asyncio.sleep(0.05)
    (sid,) = peer.client._streams
    peer.to_server()
    peer.respond(sid, [(":status", "204")], end=True)
    await asyncio.wait_for(task, 2)
    await asyncio.sleep(0.3)  # past the head's timeout: nothing fires on the stream any more
    assert not peer.transport.closed


async def test_waiting_for_a_free_stream_honours_the_timeout() -> None:
    peer = Peer()
    peer.client.data_received(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 0)))  # no streams
    with pytest.raises(ConnectTimedOut):
        await asyncio.wait_for(request(pool_of(peer), connect=0.1), 2)


async def test_a_raised_stream_limit_wakes_a_request_waiting_for_a_stream() -> None:
    peer = Peer()
    peer.client.data_received(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 0)))  # no streams
    task = asyncio.create_task(request(pool_of(peer), connect=None, read=None))
    await asyncio.sleep(0.05)
    assert peer.client.open_streams == 0
    peer.client.data_received(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100)))
    await asyncio.sleep(0.05)
    assert peer.client.open_streams == 1  # sent at once, not at some timeout
    peer.to_server()
    peer.respond(1, [(":status", "204")], end=True)
    await asyncio.wait_for(task, 1)


@pytest.mark.parametrize("how", ["goaway", "lost"])
async def test_a_connection_that_dies_during_the_handshake_is_not_used(how: str) -> None:
    pool = H2Pool(ssl.create_default_context(), _no_resolver)
    made: list[Peer] = []

    async def connect(host: str, port: int, timeout: float | None) -> H2Protocol:
        peer = Peer()
        made.append(peer)
        if how == "goaway":  # a server shedding load
            peer.client.data_received(frame(GOAWAY, 0, 0, bytes(8)))
        else:
            peer.client.connection_lost(ConnectionResetError("reset after the handshake"))
        return peer.client

    pool._connect = connect  # type: ignore[method-assign]
    with pytest.raises(ConnectFailed, match="ends every new connection"):
        await asyncio.wait_for(request(pool, read=None), 2)  # no read timeout: must not hang
    assert len(made) == 3 and all(p.client.open_streams == 0 for p in made)
    assert all(p.transport.closed for p in made if how == "goaway")


def test_a_ping_flood_ends_the_connection() -> None:
    # (Changed by design: useless frames are budgeted, so a flood of PINGs ends the
    # connection with ENHANCE_YOUR_CALM long before MAX_UNSENT of answers pile up.)
    peer = Peer()
    peer.transport.new()
    peer.client.data_received(frame(PING, 0, 0, bytes(8)) * 100_000)
    assert peer.transport.closed
    wire = peer.transport.new()
    answers = wire.count(frame(PING, 0x1, 0, bytes(8)))
    assert FREE_JUNK_FRAMES - 10 <= answers <= FREE_JUNK_FRAMES
    assert wire.endswith(frame(GOAWAY, 0, 0, bytes(4) + (0xB).to_bytes(4, "big")))


async def test_a_server_that_does_not_read_our_output_ends_the_connection() -> None:
    # MAX_UNSENT still holds: our requests pile up unread, then PINGs (few enough to be
    # within the junk budget) make us write past it.
    peer = Peer()
    peer.transport.new()
    path = b"/" + b"p" * 12_000
    streams = []
    while peer.transport.get_write_buffer_size() < MAX_UNSENT - 12_100:
        streams.append(peer.client.open(b"GET", path, []))
    assert not peer.transport.closed and len(streams) < 100
    peer.client.data_received(frame(PING, 0, 0, bytes(8)) * 900)
    assert peer.transport.closed
    # Checked after each read: at most one read buffer's worth of answers over the bound.
    assert MAX_UNSENT < len(peer.transport.new()) <= MAX_UNSENT + READ_CHUNK
    for stream in streams:
        with pytest.raises(StreamFailed, match="the server does not read"):
            await asyncio.wait_for(asyncio.shield(stream.head), 1)


def held_buffers(chunks: object) -> dict[int, int]:
    """The receive buffers that body chunks pin: id -> size."""
    assert isinstance(chunks, list)
    return {id(c.obj): len(c.obj) for c in chunks if isinstance(c, memoryview)}


async def test_tiny_data_frames_pin_no_buffer() -> None:
    # The old attack: one small DATA frame per receive buffer, each view pinning the whole
    # buffer. Payloads under COPY_BELOW are copied, so many of them pin nothing. (Smaller than
    # DATA_FRAME_AVERAGE_MIN, they would be a flood of their own: see test_http2_connection.)
    pins = PinBudget()
    peer = Peer(pins=pins)
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    count = 4 * READ_CHUNK // 309  # 300 bytes a frame: they span several buffers
    peer.client.data_received(data_frame(stream.stream_id, b"x" * 300) * count)
    assert not peer.transport.closed
    chunks = await peer.client.next_chunks(stream, 1)
    assert chunks is not None and sum(map(len, chunks)) == 300 * count
    assert held_buffers(chunks) == {} and all(type(c) is bytes for c in chunks)
    assert pins.pinned == 0
    # Larger payloads are still handed out as views of the receive buffer (no copy).
    peer.client.data_received(data_frame(stream.stream_id, b"y" * COPY_BELOW))
    chunks = await peer.client.next_chunks(stream, 1)
    assert chunks is not None and [type(c) for c in chunks] == [memoryview]


async def test_past_the_pin_budget_payloads_are_copied_until_views_are_released() -> None:
    pins = PinBudget(limit=2 * READ_CHUNK)
    peer = Peer(pins=pins)
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    held: list[memoryview | bytes] = []  # a consumer that keeps everything
    for _ in range(6 * READ_CHUNK // 16_000):
        peer.client.data_received(data_frame(stream.stream_id, b"z" * 16_000))
        held += await peer.client.next_chunks(stream, 1) or []
        assert sum(held_buffers(held).values()) <= pins.limit
    assert len(held_buffers(held)) == 2  # the budget's worth of buffers, then copies
    assert type(held[-1]) is bytes and pins.pinned <= pins.limit
    peer.client.acknowledge(stream, sum(map(len, held)))
    held.clear()  # written: the views are gone, and so are the pins
    for _ in range(READ_CHUNK // 16_000):  # a buffer's worth: views again
        peer.client.data_received(data_frame(stream.stream_id, b"z" * 16_000))
        held += await peer.client.next_chunks(stream, 1) or []
    assert type(held[-1]) is memoryview
    assert not peer.transport.closed


async def test_a_pin_budget_holds_across_the_connections_that_share_it() -> None:
    pins = PinBudget(limit=4 * READ_CHUNK)
    peers = [Peer(pins=pins) for _ in range(3)]
    streams = [p.request() for p in peers]
    for peer, stream in zip(peers, streams, strict=True):
        peer.respond(stream.stream_id, [(":status", "200")])
    held: list[memoryview | bytes] = []
    for _ in range(3 * READ_CHUNK // 64_000):  # three buffers each, arriving in turn
        for peer, stream in zip(peers, streams, strict=True):
            peer.client.data_received(data_frame(stream.stream_id, b"z" * 16_000) * 4)
            held += await peer.client.next_chunks(stream, 1) or []
            assert sum(held_buffers(held).values()) <= pins.limit
    assert pins.pinned <= pins.limit
    assert any(type(c) is bytes and len(c) == 16_000 for c in held)  # the budget did bite
    # A connection that ends gives its share back.
    for peer in peers:
        peer.client.connection_lost(None)
    assert pins.pinned == 0


async def test_trailers_without_end_stream_and_endless_1xx_fail_only_their_stream() -> None:
    peer = Peer()
    trailing, chatty, fine = peer.request(), peer.request(), peer.request()
    peer.respond(trailing.stream_id, [(":status", "200")])
    trailer = peer.server.encoder.encode([("x-trailer", "1")])  # h2 would not send it so
    peer.client.data_received(frame(HEADERS, END_HEADERS, trailing.stream_id, trailer))
    for _ in range(MAX_INFORMATIONAL + 1):
        peer.server.send_headers(chatty.stream_id, [(":status", "103")])
    peer.server.send_headers(fine.stream_id, [(":status", "200")])
    peer.server.send_data(fine.stream_id, b"ok", end_stream=True)
    peer.to_client()
    with pytest.raises(MalformedResponse, match="trailers"):
        await body(peer.client, trailing)
    with pytest.raises(MalformedResponse, match="informational"):
        await asyncio.wait_for(asyncio.shield(chatty.head), 1)
    assert await body(peer.client, fine) == b"ok"
    assert not peer.transport.closed


async def test_stream_ids_running_out_drain_the_connection() -> None:
    peer = Peer()
    peer.client.h2._next_stream_id = 2**31 - 3
    first = peer.request()
    assert peer.client.accepting
    last = peer.request()
    assert last.stream_id == 2**31 - 1 and not peer.client.accepting
    assert not peer.client.can_open(100)
    with pytest.raises(StreamFailed) as refused:
        peer.client.open(b"GET", b"/", [])
    assert refused.value.retry_safe  # never sent: another connection takes it
    for stream in (first, last):
        peer.respond(stream.stream_id, [(":status", "200"), ("content-length", "2")])
        peer.server.send_data(stream.stream_id, b"ok", end_stream=True)
        peer.to_client()
        assert await body(peer.client, stream) == b"ok"
    peer.client.release(first)
    assert not peer.transport.closed  # the last stream is still held
    peer.client.release(last)
    assert peer.transport.closed  # drained: closed


async def test_streams_spread_over_up_to_n_connections_per_origin() -> None:
    pool = H2Pool(ssl.create_default_context(), _no_resolver, connections_per_origin=3)
    made: list[Peer] = []

    async def connect(host: str, port: int, timeout: float | None) -> H2Protocol:
        made.append(Peer())
        return made[-1].client

    pool._connect = connect  # type: ignore[method-assign]
    for _ in range(7):
        connection = await pool._connection("origin.test", 443, 1)
        connection.open(b"GET", b"/", [])
    assert sorted(p.client.open_streams for p in made) == [2, 2, 3]
    # One connection per origin (the default) multiplexes everything on it.
    single = H2Pool(ssl.create_default_context(), _no_resolver)
    single._connect = connect  # type: ignore[method-assign]
    for _ in range(5):
        (await single._connection("origin.test", 443, 1)).open(b"GET", b"/", [])
    assert len(made) == 4 and made[-1].client.open_streams == 5


async def test_an_ended_connection_frees_its_buffer_and_leaves_the_pool() -> None:
    # Over weeks a daemon meets many CDN hosts; nothing of a dead connection may stay.
    pool = H2Pool(ssl.create_default_context(), _no_resolver)
    made: list[Peer] = []

    async def connect(host: str, port: int, timeout: float | None) -> H2Protocol:
        made.append(Peer())
        made[-1].client._on_lost = functools.partial(pool._forget, (host, port))
        pool._all.add(made[-1].client)
        return made[-1].client

    pool._connect = connect  # type: ignore[method-assign]
    stream = (await pool._connection("cdn-1.test", 443, 1)).open(b"GET", b"/", [])
    peer = made[0]
    peer.to_server()
    peer.respond(stream.stream_id, [(":status", "200")])
    kept = b"kept by the consumer " * 100  # large enough to come as a view, not a copy
    peer.client.data_received(data_frame(stream.stream_id, kept))
    held = await peer.client.next_chunks(stream, 1)
    assert held is not None and all(isinstance(c, memoryview) for c in held)
    peer.client.connection_lost(None)
    assert len(peer.client.h2._buffer) == 0 and pool._origins == {} and pool._all == set()
    assert b"".join(held) == kept  # views stay valid
    with pytest.raises(ConnectionLost, match="connection lost"):
        await peer.client.next_chunks(stream, 1)
    await pool._connection("cdn-1.test", 443, 1)  # a new one when asked again
    assert len(made) == 2 and list(pool._origins) == [("cdn-1.test", 443)]
