"""The lean HTTP/2 connection against the rest of the protocol: GOAWAY, resets, PING, SETTINGS,
header blocks in pieces, informational responses, trailers, and a peer that breaks the rules.

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

from ingestd.net import h2lean
from support.h2peer import Peer, body, data_frame, frame

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


async def assert_connection_error(peer: Peer, stream: h2lean._Stream, code: int) -> None:
    assert peer.transport.closed and peer.client.closed
    assert not peer.client.can_open(100)
    with pytest.raises(h2lean.StreamFailed, match="protocol error"):
        await asyncio.wait_for(asyncio.shield(stream.headers), 1)
    assert goaway_sent(peer).error_code == code


async def test_goaway_lets_processed_streams_finish_and_fails_the_rest_as_retry_safe() -> None:
    peer = Peer()
    processed, unprocessed = peer.request(), peer.request()
    peer.respond(processed.stream_id)
    peer.server.close_connection(last_stream_id=processed.stream_id)
    peer.to_client()
    assert peer.client.goaway and not peer.client.can_open(100)
    with pytest.raises(h2lean.StreamFailed) as refused:
        await asyncio.wait_for(asyncio.shield(unprocessed.headers), 1)
    assert refused.value.retry_safe
    peer.client.finish(unprocessed)
    peer.client.data_received(data_frame(processed.stream_id, b"the rest", end=True))
    assert await body(peer.client, processed) == b"the rest"
    assert not peer.transport.closed  # a stream was still running
    peer.client.finish(processed)
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
    with pytest.raises(h2lean.StreamFailed) as never_started:
        await asyncio.wait_for(asyncio.shield(refused.headers), 1)
    assert never_started.value.retry_safe  # REFUSED_STREAM: the server did nothing with it
    with pytest.raises(h2lean.StreamFailed, match="reset") as cut:
        await body(peer.client, broken)
    assert not cut.value.retry_safe
    assert await body(peer.client, fine) == b"whole"
    for stream in (refused, broken, fine):
        peer.client.finish(stream)
    # Reset or ended streams are not reset again, and the connection carries on.
    assert not any(isinstance(e, h2.events.StreamReset) for e in peer.to_server())
    assert not peer.transport.closed and peer.client.can_open(100)
    again = peer.request()
    peer.respond(again.stream_id, [(":status", "204")], end=True)
    assert (await asyncio.wait_for(again.headers, 1))[0] == 204


async def test_unfinished_streams_are_cancelled_when_abandoned() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id)
    peer.client.finish(stream)
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
    peer.client.finish(first)
    assert peer.client.can_open(100)


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
    _, headers = await asyncio.wait_for(stream.headers, 1)
    assert (b"x-long", b"v" * 200) in headers
    assert await body(peer.client, stream) == b"body"


async def test_a_frame_inside_a_header_block_is_a_connection_error() -> None:
    peer = Peer()
    stream = peer.request()
    block = peer.server.encoder.encode([(":status", "200")])
    peer.client.data_received(
        frame(HEADERS, 0, stream.stream_id, block) + frame(PING, 0, 0, bytes(8))
    )
    await assert_connection_error(peer, stream, h2.errors.ErrorCodes.PROTOCOL_ERROR)


async def test_informational_responses_come_before_the_final_one() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "103"), ("link", "</style.css>")])
    assert not stream.headers.done()
    peer.respond(stream.stream_id, [(":status", "200"), ("content-length", "2")])
    peer.server.send_data(stream.stream_id, b"ok", end_stream=True)
    peer.to_client()
    assert (await asyncio.wait_for(stream.headers, 1))[0] == 200
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
    assert (await asyncio.wait_for(stream.headers, 1))[0] == 404
    assert await body(peer.client, stream) == b""


async def test_headers_of_an_abandoned_stream_still_update_the_decoder() -> None:
    # HPACK state is per connection: skipping the block of a stream we gave up on would
    # garble every later response that refers back to its entries.
    peer = Peer()
    abandoned, wanted = peer.request(), peer.request()
    peer.client.finish(abandoned)  # the server has not seen the reset yet
    fields = [(":status", "200"), ("x-indexed", "a value worth indexing")]
    peer.server.send_headers(abandoned.stream_id, fields)
    first = len(peer.server.data_to_send(0) or b"")
    peer.server.send_headers(wanted.stream_id, fields)
    peer.to_client()
    assert first == 0  # (peek did not consume)
    _, headers = await asyncio.wait_for(wanted.headers, 1)
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
    ("wire", "code"),
    [
        # Push is disabled in our SETTINGS.
        (lambda sid: frame(PUSH_PROMISE, END_HEADERS, sid, (2).to_bytes(4, "big") + b"\x88"), 0x1),
        # A stream we never opened (idle), and a server-initiated (even) one.
        (lambda sid: frame(HEADERS, END_HEADERS, sid + 2, b"\x88"), 0x1),
        (lambda sid: frame(HEADERS, END_HEADERS, 2, b"\x88"), 0x1),
        (lambda sid: data_frame(sid + 2, b"x"), 0x1),
        # A header block that does not decode.
        (lambda sid: frame(HEADERS, END_HEADERS, sid, b"\xff\xff\xff\xff\xff\xff"), 0x9),
        # SETTINGS: a bad length, a window over 2^31-1, push turned on, a tiny frame size.
        (lambda sid: frame(SETTINGS, 0, 0, bytes(5)), 0x6),
        (lambda sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 2**31)), 0x3),
        (lambda sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x2, 1)), 0x1),
        (lambda sid: frame(SETTINGS, 0, 0, struct.pack(">HI", 0x5, 100)), 0x1),
        (lambda sid: frame(SETTINGS, 0, sid, b""), 0x1),  # on a stream
        (lambda sid: frame(PING, 0, 0, bytes(7)), 0x6),
        (lambda sid: frame(PING, 0, sid, bytes(8)), 0x1),
        (lambda sid: frame(RST_STREAM, 0, sid, bytes(3)), 0x6),
        (lambda sid: frame(RST_STREAM, 0, 0, bytes(4)), 0x1),
        (lambda sid: frame(GOAWAY, 0, sid, bytes(8)), 0x1),
        (lambda sid: frame(WINDOW_UPDATE, 0, 0, bytes(4)), 0x1),  # a zero increment
        (lambda sid: frame(CONTINUATION, END_HEADERS, sid, b"\x88"), 0x1),  # nothing to continue
        (lambda sid: data_frame(0, b"x"), 0x1),
        (lambda sid: frame(0x0, 0x8, sid, b"\x05ab"), 0x1),  # more padding than payload
    ],
)
async def test_a_peer_breaking_the_protocol_gets_a_goaway_and_the_connection_ends(
    wire: object, code: int
) -> None:
    peer = Peer()
    stream = peer.request()
    assert callable(wire)
    peer.client.data_received(wire(stream.stream_id))
    await assert_connection_error(peer, stream, code)


# --- what a review of the rewrite found: each was reproduced against it first ---------------


def pool_of(peer: Peer) -> h2lean.H2Pool:
    """A pool whose only connection to origin.test:443 is the peer's client."""
    pool = h2lean.H2Pool(ssl.create_default_context(), _no_resolver)
    pool._pools[("origin.test", 443)] = [peer.client]
    return pool


async def _no_resolver(host: str, port: int, timeout: float | None) -> list[str]:
    raise AssertionError("no connection may be made here")


async def request(pool: h2lean.H2Pool, connect: float | None = 1, read: float | None = 1) -> None:
    await pool.request("origin.test", 443, b"GET", b"/", [], connect, read)


@pytest.mark.parametrize(
    "fields",
    [
        [(b":status", b"200"), (b":status", b"2x0")],  # once parsed as int(): ValueError
        [(b"server", b"x"), (b":status", b"200")],  # a pseudo-header after a field
        [(b":status", b"200"), (b":path", b"/")],  # a request pseudo-header
        [(b"server", b"x")],  # no status at all
        [(b":status", b"200"), (b"Content-Length", b"10")],  # upper case: RFC 9113 8.2.1
        [(b":status", b"200"), (b"x-Cache", b"hit")],
    ],
)
async def test_malformed_response_headers_fail_that_stream_and_free_it(
    fields: list[tuple[bytes, bytes]],
) -> None:
    peer = Peer()
    task = asyncio.create_task(request(pool_of(peer)))
    await asyncio.sleep(0)
    peer.to_server()
    block = hpack.Encoder().encode(fields)
    peer.client.data_received(frame(HEADERS, END_HEADERS, 1, block))
    with pytest.raises(h2lean.MalformedResponse, match="malformed"):
        await task
    assert peer.client.open_streams == 0 and not peer.transport.closed
    resets = [e for e in peer.to_server() if isinstance(e, h2.events.StreamReset)]
    assert [e.error_code for e in resets] == [h2.errors.ErrorCodes.PROTOCOL_ERROR]


async def test_padding_is_credited_back_at_once() -> None:
    # Padding reaches no consumer; held as pending credit it used up the window for good.
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    sid = stream.stream_id
    while peer.server.local_flow_control_window(sid) >= 256:
        peer.server.send_data(sid, b"", pad_length=255)
        peer.to_client()
    updates = [e for e in peer.to_server() if isinstance(e, h2.events.WindowUpdated)]
    assert {e.stream_id for e in updates} >= {sid}
    assert peer.server.local_flow_control_window(sid) > h2lean.STREAM_WINDOW // 2


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
    with pytest.raises(h2lean.StreamTimedOut):
        await peer.client.next_chunks(stream, 0.2)
    assert loop.time() - start < 0.5
    trickling.cancel()
    assert not peer.transport.closed  # the server was talking: the connection is alive


async def test_a_silent_connection_is_dropped_when_a_stream_times_out() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    with pytest.raises(h2lean.StreamTimedOut):
        await peer.client.next_chunks(stream, 0.1)
    assert peer.transport.closed and not peer.client.can_open(100)  # presumed half-open


async def test_waiting_for_a_free_stream_honours_the_timeout() -> None:
    peer = Peer()
    peer.client.data_received(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 0)))  # no streams
    with pytest.raises(h2lean.ConnectTimedOut):
        await asyncio.wait_for(request(pool_of(peer), connect=0.1), 2)


@pytest.mark.parametrize("how", ["goaway", "lost"])
async def test_a_connection_that_dies_during_the_handshake_is_not_used(how: str) -> None:
    pool = h2lean.H2Pool(ssl.create_default_context(), _no_resolver)
    made: list[Peer] = []

    async def connect(host: str, port: int, timeout: float | None) -> h2lean._Connection:
        peer = Peer()
        made.append(peer)
        if how == "goaway":  # a server shedding load
            peer.client.data_received(frame(GOAWAY, 0, 0, bytes(8)))
        else:
            peer.client.connection_lost(ConnectionResetError("reset after the handshake"))
        return peer.client

    pool._connect = connect  # type: ignore[method-assign]
    with pytest.raises(h2lean.ConnectFailed, match="ends every new connection"):
        await asyncio.wait_for(request(pool, read=None), 2)  # no read timeout: must not hang
    assert len(made) == 3 and all(p.client.open_streams == 0 for p in made)


def test_a_ping_flood_from_a_server_that_does_not_read_ends_the_connection() -> None:
    peer = Peer()
    peer.transport.new()
    peer.client.data_received(frame(PING, 0, 0, bytes(8)) * 100_000)
    assert peer.transport.closed
    # Checked after each read: at most one read buffer's worth of answers over the bound.
    assert len(peer.transport.new()) <= h2lean.MAX_UNSENT + h2lean.READ_CHUNK


async def test_tiny_data_frames_cannot_pin_unbounded_buffers() -> None:
    peer = Peer()
    stream = peer.request()
    peer.respond(stream.stream_id, [(":status", "200")])
    junk = frame(0xFA, 0, 0, bytes(500_000))  # an extension frame: not flow controlled
    for _ in range(200):  # 200 bytes of window would pin 100 MB of buffers
        peer.client.data_received(data_frame(stream.stream_id, b"x") + junk)
        if peer.transport.closed:
            break
    pinned = {id(c.obj): len(c.obj) for c in stream.chunks}
    assert peer.transport.closed and sum(pinned.values()) <= h2lean.MAX_PINNED + 2**20
    assert goaway_sent(peer).error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


async def test_trailers_without_end_stream_and_endless_1xx_fail_only_their_stream() -> None:
    peer = Peer()
    trailing, chatty, fine = peer.request(), peer.request(), peer.request()
    peer.respond(trailing.stream_id, [(":status", "200")])
    trailer = peer.server.encoder.encode([("x-trailer", "1")])  # h2 would not send it so
    peer.client.data_received(frame(HEADERS, END_HEADERS, trailing.stream_id, trailer))
    for _ in range(h2lean.MAX_INFORMATIONAL + 1):
        peer.server.send_headers(chatty.stream_id, [(":status", "103")])
    peer.server.send_headers(fine.stream_id, [(":status", "200")])
    peer.server.send_data(fine.stream_id, b"ok", end_stream=True)
    peer.to_client()
    with pytest.raises(h2lean.StreamFailed, match="trailers"):
        await body(peer.client, trailing)
    with pytest.raises(h2lean.StreamFailed, match="informational"):
        await asyncio.wait_for(asyncio.shield(chatty.headers), 1)
    assert await body(peer.client, fine) == b"ok"
    assert not peer.transport.closed


async def test_streams_spread_over_up_to_n_connections_per_origin() -> None:
    pool = h2lean.H2Pool(ssl.create_default_context(), _no_resolver, connections_per_origin=3)
    made: list[Peer] = []

    async def connect(host: str, port: int, timeout: float | None) -> h2lean._Connection:
        made.append(Peer())
        return made[-1].client

    pool._connect = connect  # type: ignore[method-assign]
    for _ in range(7):
        connection = await pool._connection("origin.test", 443, 1)
        connection.open(b"GET", b"/", [])
    assert sorted(p.client.open_streams for p in made) == [2, 2, 3]
    # One connection per origin (the default) multiplexes everything on it.
    single = h2lean.H2Pool(ssl.create_default_context(), _no_resolver)
    single._connect = connect  # type: ignore[method-assign]
    for _ in range(5):
        (await single._connection("origin.test", 443, 1)).open(b"GET", b"/", [])
    assert len(made) == 4 and made[-1].client.open_streams == 5


async def test_an_ended_connection_frees_its_buffer_and_leaves_the_pool() -> None:
    # Over weeks a daemon meets many CDN hosts; nothing of a dead connection may stay.
    pool = h2lean.H2Pool(ssl.create_default_context(), _no_resolver)
    made: list[Peer] = []

    async def connect(host: str, port: int, timeout: float | None) -> h2lean._Connection:
        made.append(Peer())
        made[-1].client._on_lost = functools.partial(pool._forget, (host, port))
        return made[-1].client

    pool._connect = connect  # type: ignore[method-assign]
    stream = (await pool._connection("cdn-1.test", 443, 1)).open(b"GET", b"/", [])
    peer = made[0]
    peer.to_server()
    peer.respond(stream.stream_id, [(":status", "200")])
    peer.client.data_received(data_frame(stream.stream_id, b"kept by the consumer"))
    held = await peer.client.next_chunks(stream, 1)
    peer.client.connection_lost(None)
    assert len(peer.client._buffer) == 0 and pool._pools == {} and pool._connecting == {}
    assert held is not None and b"".join(held) == b"kept by the consumer"  # views stay valid
    with pytest.raises(h2lean.StreamFailed, match="connection lost"):
        await peer.client.next_chunks(stream, 1)
    await pool._connection("cdn-1.test", 443, 1)  # a new one when asked again
    assert len(made) == 2 and list(pool._pools) == [("cdn-1.test", 443)]
