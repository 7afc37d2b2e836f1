"""The lean HTTP/2 connection's frame handling, fed frames directly (no socket).

A server-side h2 connection produces the SETTINGS and HEADERS; DATA frames are built by hand,
so padding, frames split across reads, unknown streams and a server ignoring flow control can
all be shown.
"""

import asyncio

import h2.events
import hpack
import pytest

from ingestd.net import h2lean
from support.h2peer import Peer, data_frame


async def test_data_fast_path_padding_split_reads_and_end() -> None:
    peer = Peer()
    client = peer.client
    stream = client.open(b"GET", b"/v.mp4?sig=x", [(b"user-agent", b"t"), (b"connection", b"x")])
    peer.to_server()
    peer.respond(stream.stream_id)
    assert stream.headers.done() and stream.headers.result()[0] == 200
    wire = (
        data_frame(1, b"hello ") + data_frame(1, b"padded", pad=5) + data_frame(1, b"!", end=True)
    )
    for i in range(0, len(wire), 7):  # frames split across many reads
        client.data_received(wire[i : i + 7])
    chunks = await client.next_chunks(stream, timeout=1)
    assert chunks is not None and b"".join(chunks) == b"hello padded!"
    assert await client.next_chunks(stream, timeout=1) is None
    client.finish(stream)
    assert client.open_streams == 0


async def test_window_updates_follow_consumption() -> None:
    peer = Peer()
    client, transport = peer.client, peer.transport
    stream = peer.request(b"/big")
    peer.respond(stream.stream_id)
    sent = len(transport.written)
    half = h2lean.STREAM_WINDOW // 2
    client.data_received(data_frame(1, b"x" * 16384) * (half // 16384 + 1))
    assert len(transport.written) == sent  # nothing consumed yet: no WINDOW_UPDATE
    await client.next_chunks(stream, timeout=1)
    updates = bytes(transport.written[sent:])
    assert updates[3] == 0x8 and int.from_bytes(updates[5:9], "big") == 1  # stream-level update


async def test_a_server_ignoring_flow_control_is_cut_off() -> None:
    peer = Peer()
    client, transport = peer.client, peer.transport
    stream = peer.request(b"/flood")
    peer.respond(stream.stream_id)
    flood = data_frame(1, b"x" * 16384) * (h2lean.STREAM_WINDOW // 16384 + 1)
    client.data_received(flood)
    assert transport.closed
    with pytest.raises(h2lean.StreamFailed, match="protocol error"):  # after what came in time
        for _ in range(3):
            await client.next_chunks(stream, timeout=1)


async def test_data_for_an_abandoned_stream_returns_connection_credit() -> None:
    peer = Peer()
    client, transport = peer.client, peer.transport
    stream = peer.request(b"/gone")
    peer.respond(stream.stream_id)
    client.finish(stream)  # abandoned before any body
    sent = len(transport.written)
    client.data_received(data_frame(1, b"y" * 16384) * (h2lean.CONNECTION_WINDOW // 4 // 16384 + 1))
    assert not transport.closed
    tail = bytes(transport.written[sent:])
    assert b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" in tail  # a connection-level WINDOW_UPDATE


def test_request_encoder_round_trips_through_a_real_hpack_decoder() -> None:
    encoder = h2lean._RequestEncoder()
    decoder = hpack.Decoder()
    fields = [
        (b":method", b"GET"),  # whole field in the static table: one byte
        (b":scheme", b"https"),
        (b":authority", b"cdn.example:8443"),  # name in the static table
        (b":path", b"/v/1.mp4?expire=4102444800&sig=" + b"a" * 300),  # long: multi-byte length
        (b"user-agent", b"ingestd/1"),
        (b"x-custom", b"\xe2\x82\xac"),  # neither: literal name
        (b"x-long-name-" + b"n" * 200, b""),  # a name length over one byte too
    ]
    for _ in range(3):  # the second and third blocks come from the cache
        block = encoder.encode(fields)
        assert [(bytes(k), bytes(v)) for k, v in decoder.decode(block, raw=True)] == fields
    assert decoder.header_table_size == 4096 and len(decoder.header_table.dynamic_entries) == 0
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    encoder.resize(8192)  # larger: nothing to signal, we never use the table anyway
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    # The server lowered its table size: the next block starts with the size update, once.
    encoder.resize(0)
    block = encoder.encode([(b":method", b"GET")])
    assert block == b"\x20\x82"
    assert list(decoder.decode(block, raw=True)) == [(b":method", b"GET")]
    assert decoder.header_table_size == 0
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"


def test_authority_brackets_ipv6_literals_and_omits_the_default_port() -> None:
    assert h2lean._authority("cdn.example", 443) == "cdn.example"
    assert h2lean._authority("cdn.example", 8443) == "cdn.example:8443"
    assert h2lean._authority("::1", 8443) == "[::1]:8443"
    assert h2lean._authority("2001:db8::7", 443) == "[2001:db8::7]"
    assert h2lean._authority("127.0.0.1", 4443) == "127.0.0.1:4443"


async def test_header_blocks_up_to_the_advertised_frame_size_are_accepted() -> None:
    # We advertise MAX_FRAME_SIZE. A response header block over 16 KiB may then come as one
    # HEADERS frame: it must be accepted, not fail the connection.
    peer = Peer()
    client, server = peer.client, peer.server
    stream = peer.request(b"/")
    server.send_headers(stream.stream_id, [(":status", "200"), ("x-long", "v" * 40_000)])
    block = server.data_to_send()
    assert int.from_bytes(block[:3], "big") > 16_384  # one frame, bigger than h2's default
    client.data_received(block)
    _, headers = await asyncio.wait_for(stream.headers, 1)
    assert (b"x-long", b"v" * 40_000) in headers


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


async def test_a_close_sends_what_was_queued_first() -> None:
    peer = Peer(coalesce=True)
    await asyncio.sleep(0)
    client, transport = peer.client, peer.transport
    peer.to_server()
    stream = client.open(b"GET", b"/v.mp4", [])
    client.close()  # before the loop came round to the queued request
    assert transport.closed
    events = peer.to_server()
    assert [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)] == [
        stream.stream_id
    ]
