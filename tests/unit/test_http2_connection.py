"""The sans-IO Connection driven directly, one test per bound or rule of its docstring.

Two kinds of server: `Wire` builds every frame by hand (one HPACK encoder for all its header
blocks, so the connection's decoder stays in step), for what a conforming server will not send;
`Peer` is h2's server-side H2Connection, for what a conforming server does send (bodies under
flow control, above all). Each test asserts the exact event, or the exact code the connection
ends with.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from ingestd.net.http2 import frames
from ingestd.net.http2.connection import (
    CONNECTION_WINDOW,
    DATA_FRAME_AVERAGE_MIN,
    FREE_DATA_FRAMES,
    FREE_JUNK_BYTES,
    FREE_JUNK_FRAMES,
    MAX_CONTINUATIONS,
    MAX_FRAME_SIZE,
    MAX_HEADER_BLOCK,
    READ_CHUNK,
    STREAM_WINDOW,
    Connection,
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamMalformed,
    StreamUnavailable,
)
from ingestd.net.http2.frames import ErrorCode, Setting
from support.h2peer import parse, window_updates

CALM = ErrorCode.ENHANCE_YOUR_CALM
FRAME = 16_384  # the largest DATA frame a server may send us


def resets(wire: bytes) -> list[tuple[int, int]]:
    return [
        (sid, int.from_bytes(payload, "big"))
        for kind, _, sid, payload in parse(wire)
        if kind == frames.RST_STREAM
    ]


def goaways(wire: bytes) -> list[int]:
    """The error codes of the GOAWAYs in `wire`."""
    return [
        int.from_bytes(payload[4:8], "big")
        for kind, _, _, payload in parse(wire)
        if kind == frames.GOAWAY
    ]


def held(conn: Connection) -> int:
    """Connection-window bytes delivered and not yet acknowledged or released: what the
    server is kept from sending (the rest of the window is open, or about to be)."""
    return CONNECTION_WINDOW - conn._window - conn._to_return


class Wire:
    """A Connection and a server whose frames are all built by hand."""

    def __init__(self, settings: dict[Setting, int] | None = None) -> None:
        self.conn = Connection("origin.test")
        self.encoder = hpack.Encoder()
        self.conn.data_to_send()  # preface, SETTINGS, WINDOW_UPDATE
        if settings is not None:
            events = self.conn.receive_data(frames.settings(settings))
            assert [type(e) for e in events] == [SettingsReceived]
            assert parse(self.conn.data_to_send()) == [(frames.SETTINGS, frames.ACK, 0, b"")]

    def open(self) -> int:
        sid = self.conn.send_request(b"GET", b"/v.mp4", [])
        self.conn.data_to_send()
        return sid

    def block(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        return self.encoder.encode(fields)

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool = False) -> bytes:
        flags = frames.END_HEADERS | (frames.END_STREAM if end else 0)
        return frames.pack(frames.HEADERS, flags, sid, self.block(fields))

    def feed(self, wire: bytes) -> list[Event]:
        return self.conn.receive_data(wire)


def data(sid: int, payload: bytes, end: bool = False) -> bytes:
    return frames.pack(frames.DATA, frames.END_STREAM if end else 0, sid, payload)


OK = [(b":status", b"200")]


class Peer:
    """A Connection talking to h2's server side, handshake done."""

    def __init__(self) -> None:
        self.conn = Connection("origin.test")
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.server.initiate_connection()
        self.to_server()
        assert [type(e) for e in self.to_client()] == [SettingsReceived]
        self.to_server()  # our SETTINGS ACK

    def to_server(self) -> list[h2.events.Event]:
        return self.server.receive_data(self.conn.data_to_send())

    def flush(self) -> bytes:
        """What the connection has to send, delivered to the server too."""
        wire = self.conn.data_to_send()
        for event in self.server.receive_data(wire):
            assert not isinstance(event, h2.events.ConnectionTerminated), event
        return wire

    def to_client(self) -> list[Event]:
        return self.conn.receive_data(self.server.data_to_send())

    def open(self, headers: list[tuple[str, str]] | None = None) -> int:
        sid = self.conn.send_request(b"GET", b"/v.mp4", [])
        self.to_server()
        self.server.send_headers(sid, headers or [(":status", "200")])
        events = self.to_client()
        assert [type(e) for e in events] == [ResponseReceived]
        return sid

    def send(self, sid: int, size: int, end: bool = False) -> list[Event]:
        """`size` body bytes from the server, in the largest frames it may send."""
        chunk = b"b" * FRAME
        while size:
            n = min(size, FRAME)
            size -= n
            self.server.send_data(sid, chunk[:n], end_stream=end and not size)
        return self.to_client()


def delivered(events: list[Event], sid: int) -> int:
    return sum(e.size for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


# --- header blocks: CONTINUATION count and block size --------------------------------------


def test_a_header_block_spans_at_most_eight_continuations() -> None:
    w = Wire({})
    first, second = w.open(), w.open()
    block = w.block([*OK, (b"x-long", b"v" * 100)])
    step = len(block) // (MAX_CONTINUATIONS + 1) + 1
    pieces = [block[i : i + step] for i in range(0, len(block), step)]
    assert len(pieces) == MAX_CONTINUATIONS + 1  # HEADERS and eight CONTINUATIONs: accepted
    wire = frames.pack(frames.HEADERS, 0, first, pieces[0])
    for i, piece in enumerate(pieces[1:], 1):
        wire += frames.pack(
            frames.CONTINUATION, frames.END_HEADERS * (i == MAX_CONTINUATIONS), first, piece
        )
    events = w.feed(wire)
    assert len(events) == 1 and isinstance(events[0], ResponseReceived)
    assert events[0].headers == [(b"x-long", b"v" * 100)]
    # The ninth CONTINUATION ends it all, before the block is even complete.
    assert w.feed(frames.pack(frames.HEADERS, 0, second, b"")) == []
    for _ in range(MAX_CONTINUATIONS):
        assert w.feed(frames.pack(frames.CONTINUATION, 0, second, b"")) == []
    events = w.feed(frames.pack(frames.CONTINUATION, 0, second, b""))
    assert events == [ConnectionTerminated(CALM, "over 8 CONTINUATION frames")]
    assert goaways(w.conn.data_to_send()) == [CALM]


def test_a_header_block_is_at_most_max_header_block_bytes() -> None:
    w = Wire({})
    sid = w.open()
    assert MAX_HEADER_BLOCK % FRAME == 0
    wire = frames.pack(frames.HEADERS, 0, sid, bytes(FRAME))
    wire += frames.pack(frames.CONTINUATION, 0, sid, bytes(FRAME)) * (MAX_HEADER_BLOCK // FRAME - 1)
    assert w.feed(wire) == []  # exactly at the bound, not yet over it
    events = w.feed(frames.pack(frames.CONTINUATION, frames.END_HEADERS, sid, b"\x88"))
    assert events == [ConnectionTerminated(CALM, "header block too large")]
    assert goaways(w.conn.data_to_send()) == [CALM]


# --- frames that carry nothing: a flood ends the connection --------------------------------


def _live(w: Wire) -> int:
    """A stream with its response head in: empty DATA on it carries nothing."""
    sid = w.open()
    w.feed(w.headers(sid, OK))
    return sid


def _ended_and_released(w: Wire) -> int:
    sid = w.open()
    events = w.feed(w.headers(sid, OK, end=True))
    assert [type(e) for e in events] == [ResponseReceived, StreamEnded]
    w.conn.release(sid)
    assert resets(w.conn.data_to_send()) == []  # ended: nothing to cancel
    return sid


def _released_unfinished(w: Wire) -> int:
    sid = w.open()
    w.feed(w.headers(sid, OK))
    w.conn.release(sid)
    assert resets(w.conn.data_to_send()) == [(sid, ErrorCode.CANCEL)]
    return sid


FLOODS = {
    "PING": lambda w: frames.ping(b"12345678"),
    "SETTINGS": lambda w: frames.settings({Setting.MAX_CONCURRENT_STREAMS: 100}),
    "SETTINGS ACK": lambda w: frames.settings_ack(),
    "PRIORITY": lambda w: frames.pack(frames.PRIORITY, 0, _live(w), bytes(5)),
    "WINDOW_UPDATE": lambda w: frames.window_update(0, 1),
    "stream WINDOW_UPDATE": lambda w: frames.window_update(_live(w), 1),
    "empty DATA": lambda w: data(_live(w), b""),
    "padding-only DATA": lambda w: frames.pack(
        frames.DATA, frames.PADDED, _live(w), bytes([10]) + bytes(10)
    ),
    "unknown type": lambda w: frames.pack(0xFA, 0, 0, b"x"),
    "RST_STREAM on a closed stream": lambda w: frames.rst_stream(
        _ended_and_released(w), ErrorCode.CANCEL
    ),
    "HEADERS on a closed stream": lambda w: frames.pack(
        frames.HEADERS, frames.END_HEADERS, _ended_and_released(w), b"\x88"
    ),
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_an_endless_flood_of_useless_frames_ends_the_connection(kind: str) -> None:
    w = Wire({})
    wire = FLOODS[kind](w)
    n = 0
    while w.conn.terminated is None and n < FREE_JUNK_FRAMES + 100:
        n += 1
        events = w.feed(wire)
        assert not any(isinstance(e, ConnectionTerminated) for e in events[:-1])
    assert events[-1] == ConnectionTerminated(CALM, "a flood of frames that carry nothing")
    assert FREE_JUNK_FRAMES - 5 <= n <= FREE_JUNK_FRAMES + 5
    assert goaways(w.conn.data_to_send())[-1:] == [CALM]
    assert w.feed(wire) == []  # and nothing more is read


def test_data_on_a_released_stream_is_tolerated_up_to_its_window_then_ends_it() -> None:
    # What the server had in flight when we reset the stream is no fault of its own: up to
    # the stream's window. Past that, and FREE_JUNK_BYTES more, it is a flood.
    w = Wire({})
    sid = _released_unfinished(w)
    frame = data(sid, bytes(FRAME))
    for _ in range(STREAM_WINDOW // FRAME):
        assert w.feed(frame) == []
    assert held(w.conn) == 0  # nobody reads them: given back to the connection at once
    n, events = 0, []
    while not events and n < FREE_JUNK_FRAMES:
        n += 1
        events = w.feed(frame)
    assert events == [ConnectionTerminated(CALM, "a flood of bytes that carry nothing")]
    assert FREE_JUNK_BYTES <= n * FRAME <= FREE_JUNK_BYTES + FRAME
    assert goaways(w.conn.data_to_send()) == [CALM]


def test_a_big_download_among_many_useless_frames_is_not_a_flood() -> None:
    # Several MiB under flow control, the server slipping three frames that carry nothing in
    # front of every DATA frame: more than FREE_JUNK_FRAMES in all, but in proportion.
    peer = Peer()
    total = 6 * 1024 * 1024 + 12_345
    sid = peer.open([(":status", "200"), ("content-length", str(total))])
    junk = [
        frames.ping(b"12345678"),
        frames.pack(frames.PRIORITY, 0, sid, bytes(5)),
        frames.window_update(0, 1),
        frames.pack(0xFA, 0, 0, b"x" * 100),
        frames.settings({}),
        data(sid, b""),
        frames.window_update(sid, 1),
    ]
    body = bytes(range(256)) * (total // 256) + bytes(total % 256)
    got = bytearray()
    ended = useless = 0
    sent = 0
    while sent < total:
        room = min(peer.server.local_flow_control_window(sid), FRAME, total - sent)
        assert room > 0, "the server waits for a WINDOW_UPDATE that never came"
        peer.server.send_data(sid, body[sent : sent + room], end_stream=sent + room == total)
        sent += room
        wire = b"".join(junk[(useless + i) % len(junk)] for i in range(3))
        useless += 3
        events = peer.conn.receive_data(wire + peer.server.data_to_send())
        for event in events:
            assert not isinstance(event, ConnectionTerminated), event
            if isinstance(event, DataReceived):
                got += b"".join(event.chunks)
                peer.conn.acknowledge(sid, event.size)
            ended += isinstance(event, StreamEnded)
        # Only our WINDOW_UPDATEs go to h2 (it never sent the PINGs and SETTINGS we answer).
        updates = [f for f in parse(peer.conn.data_to_send()) if f[0] == frames.WINDOW_UPDATE]
        peer.server.receive_data(b"".join(frames.pack(*f) for f in updates))
    assert useless > FREE_JUNK_FRAMES
    assert ended == 1 and bytes(got) == body and peer.conn.terminated is None


# --- frame size -------------------------------------------------------------------------------


def test_an_oversized_frame_is_refused_from_its_nine_byte_header() -> None:
    conn = Connection("origin.test")
    conn.data_to_send()
    header = frames.HEADER.pack(0xFFFF, 0xFF, frames.SETTINGS, 0, 0)  # a 16 MB SETTINGS frame
    target = conn.receive_buffer()
    target[:8] = header[:8]
    assert conn.received(8) == []  # not yet a whole frame header
    target = conn.receive_buffer()
    target[:1] = header[8:]
    del target
    events = conn.received(1)
    assert events == [
        ConnectionTerminated(ErrorCode.FRAME_SIZE_ERROR, "a 16777215-byte frame, over 16384")
    ]
    assert goaways(conn.data_to_send()) == [ErrorCode.FRAME_SIZE_ERROR]
    assert len(conn._buffer) == READ_CHUNK  # no room was made for the payload
    assert conn.receive_data(bytes(100_000)) == []  # nothing more is read


def test_frames_up_to_max_frame_size_are_accepted_and_one_byte_more_is_not() -> None:
    w = Wire({})
    sid = _live(w)
    assert MAX_FRAME_SIZE == FRAME
    events = w.feed(frames.pack(0xFA, 0, 0, bytes(FRAME)) + data(sid, bytes(FRAME)))
    assert len(events) == 1 and isinstance(events[0], DataReceived)
    assert (events[0].stream_id, events[0].size) == (sid, FRAME)
    events = w.feed(data(sid, bytes(FRAME + 1)))
    assert events == [
        ConnectionTerminated(ErrorCode.FRAME_SIZE_ERROR, "a 16385-byte frame, over 16384")
    ]


# --- streams: how many, and their ids ---------------------------------------------------------


def test_one_stream_before_the_servers_settings_then_what_they_allow() -> None:
    w = Wire(settings=None)
    conn = w.conn
    assert conn.can_open(100)
    first = w.open()
    assert not conn.can_open(100) and conn.accepting  # its limit is not known yet
    events = w.feed(frames.settings({Setting.MAX_CONCURRENT_STREAMS: 2}))
    assert events == [SettingsReceived(2)]
    assert parse(conn.data_to_send()) == [(frames.SETTINGS, frames.ACK, 0, b"")]
    assert conn.can_open(100) and not conn.can_open(1)  # ours is a limit too
    w.open()
    assert not conn.can_open(100) and conn.open_streams == 2
    conn.release(first)
    assert conn.can_open(100)
    w.open()
    # A later SETTINGS may raise the limit: it is reported too (the caller wakes its waiters).
    events = w.feed(frames.settings({Setting.MAX_CONCURRENT_STREAMS: 3}))
    assert events == [SettingsReceived(3)]
    assert conn.can_open(100)


def test_settings_without_a_stream_limit_leave_it_unbounded() -> None:
    w = Wire(settings=None)
    assert w.feed(frames.settings({})) == [SettingsReceived(frames.LAST_STREAM_ID)]
    for _ in range(200):
        w.open()
    assert w.conn.can_open(1000) and not w.conn.can_open(200)


def test_the_last_stream_id_is_used_then_the_connection_takes_no_more() -> None:
    w = Wire({})
    conn = w.conn
    conn._next_stream_id = frames.LAST_STREAM_ID - 2
    assert w.open() == frames.LAST_STREAM_ID - 2 and conn.accepting
    sid = conn.send_request(b"GET", b"/last", [])
    assert sid == frames.LAST_STREAM_ID == 2**31 - 1
    assert [(kind, s) for kind, _, s, _ in parse(conn.data_to_send())] == [
        (frames.HEADERS, frames.LAST_STREAM_ID)
    ]
    assert not conn.accepting and conn.ids_exhausted and not conn.can_open(100)
    with pytest.raises(StreamUnavailable):
        conn.send_request(b"GET", b"/", [])
    # The streams opened still finish.
    events = w.feed(w.headers(sid, OK, end=True))
    assert [type(e) for e in events] == [ResponseReceived, StreamEnded]
    assert conn.terminated is None


# --- responses: RFC 9113 8.2 and 8.3 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "trailers", "why"),
    [
        ([*OK, (b"X-Cache", b"hit")], None, "invalid field name b'X-Cache'"),
        ([*OK, (b"x cache", b"hit")], None, "invalid field name b'x cache'"),
        ([*OK, (b"", b"hit")], None, "invalid field name b''"),
        ([*OK, (b"connection", b"close")], None, "connection-specific field connection"),
        ([*OK, (b"keep-alive", b"5")], None, "connection-specific field keep-alive"),
        (
            [*OK, (b"transfer-encoding", b"chunked")],
            None,
            "connection-specific field transfer-encoding",
        ),
        ([*OK, (b"x-a", b"b\rc")], None, "invalid value for x-a"),
        ([*OK, (b"x-a", b"b\nx-b: c")], None, "invalid value for x-a"),
        ([*OK, (b"x-a", b"b\x00c")], None, "invalid value for x-a"),
        ([*OK, (b"x-a", b" b")], None, "invalid value for x-a"),
        ([*OK, (b"x-a", b"b ")], None, "invalid value for x-a"),
        ([*OK, (b"x-a", b"\tb")], None, "invalid value for x-a"),
        ([(b"server", b"x")], None, "no valid :status"),
        ([(b":status", b"20")], None, "no valid :status"),
        ([(b"server", b"x"), *OK], None, "pseudo-header b':status' out of place"),
        ([*OK, *OK], None, "pseudo-header b':status' out of place"),
        ([*OK, (b":path", b"/")], None, "pseudo-header b':path' out of place"),
        (OK, [(b":status", b"200")], "pseudo-header in trailers"),
        (OK, [(b"X-Sum", b"1")], "invalid field name b'X-Sum'"),
        (OK, [(b"x-sum", b"1\r\n")], "invalid value for x-sum"),
        (OK, [(b"te", b"trailers")], "connection-specific field te"),
    ],
)
def test_a_malformed_response_fails_its_stream_only(
    head: list[tuple[bytes, bytes]], trailers: list[tuple[bytes, bytes]] | None, why: str
) -> None:
    w = Wire({})
    bad, good = w.open(), w.open()
    wire = w.headers(bad, head)
    if trailers is not None:
        wire += data(bad, b"body") + w.headers(bad, trailers, end=True)
    wire += w.headers(good, [*OK, (b"content-length", b"2")]) + data(good, b"ok", end=True)
    wire += data(bad, b"more")  # after the reset: ignored
    events = w.feed(wire)
    failed = [e for e in events if getattr(e, "stream_id", good) == bad]
    if trailers is not None:
        assert [type(e) for e in failed[:2]] == [ResponseReceived, DataReceived]
        failed = failed[2:]
    assert failed == [StreamMalformed(bad, f"protocol error: {why}")]
    assert [type(e) for e in events if getattr(e, "stream_id", bad) == good] == [
        ResponseReceived,
        DataReceived,
        StreamEnded,
    ]
    assert resets(w.conn.data_to_send()) == [(bad, ErrorCode.PROTOCOL_ERROR)]
    assert w.conn.terminated is None and w.conn.can_open(100)


def test_well_formed_fields_pass() -> None:
    w = Wire({})
    sid = w.open()
    fields = [
        *OK,
        (b"x-token!#$%&'*+-.^_`|~09az", b"v a\tl\x80\xffue"),  # inner whitespace, obs-text
        (b"x-empty", b""),
        (b"content-length", b"0"),
    ]
    events = w.feed(w.headers(sid, fields, end=True))
    assert events == [ResponseReceived(sid, 200, fields[1:]), StreamEnded(sid)]


# --- content-length against the body ----------------------------------------------------------


def test_a_body_longer_than_its_content_length_fails_at_once() -> None:
    w = Wire({})
    sid = w.open()
    w.feed(w.headers(sid, [*OK, (b"content-length", b"5")]))
    events = w.feed(data(sid, b"abc"))
    assert [type(e) for e in events] == [DataReceived]
    events = w.feed(data(sid, b"def"))  # 6 bytes: no need to wait for the end
    assert events == [StreamMalformed(sid, "protocol error: 6 body bytes for content-length 5")]
    assert resets(w.conn.data_to_send()) == [(sid, ErrorCode.PROTOCOL_ERROR)]
    w.conn.acknowledge(sid, 3)
    assert held(w.conn) == 0  # the refused bytes went back to the connection window
    assert w.feed(data(sid, b"g", end=True)) == []  # the stream is over
    assert w.conn.terminated is None


@pytest.mark.parametrize("how", ["DATA", "trailers", "HEADERS"])
def test_a_body_shorter_than_its_content_length_fails_at_its_end(how: str) -> None:
    w = Wire({})
    sid = w.open()
    end_with_head = how == "HEADERS"
    events = w.feed(w.headers(sid, [*OK, (b"content-length", b"5")], end=end_with_head))
    if how == "DATA":
        assert [type(e) for e in w.feed(data(sid, b"ab"))] == [DataReceived]
        events = w.feed(data(sid, b"c", end=True))
        count = 3
    elif how == "trailers":
        assert [type(e) for e in w.feed(data(sid, b"abc"))] == [DataReceived]
        events = w.feed(w.headers(sid, [(b"x-sum", b"1")], end=True))
        count = 3
    else:
        events = events[1:]  # after its ResponseReceived
        count = 0
    message = f"protocol error: {count} body bytes for content-length 5"
    assert events == [StreamMalformed(sid, message, short=True)]
    assert resets(w.conn.data_to_send()) == [(sid, ErrorCode.PROTOCOL_ERROR)]


def test_a_body_as_long_as_its_content_length_ends_the_stream() -> None:
    w = Wire({})
    sid = w.open()
    w.feed(w.headers(sid, [*OK, (b"content-length", b"5")]))
    events = w.feed(data(sid, b"ab") + data(sid, b"cde", end=True))
    assert events == [DataReceived(sid, [b"ab", b"cde"], 5), StreamEnded(sid)]
    assert w.conn.data_to_send() == b""


@pytest.mark.parametrize("status", [b"204", b"304"])
def test_a_response_without_content_is_not_held_to_its_content_length(status: bytes) -> None:
    # RFC 9113 8.1.1: 204 and 304 responses contain no content; a 304's content-length is
    # that of the representation it stands for.
    w = Wire({})
    sid = w.open()
    fields = [(b":status", status), (b"content-length", b"100")]
    events = w.feed(w.headers(sid, fields, end=True))
    assert events == [ResponseReceived(sid, int(status), fields[1:]), StreamEnded(sid)]
    assert w.conn.data_to_send() == b""


# --- flow control -----------------------------------------------------------------------------


def test_no_window_update_until_acknowledged_then_half_a_stream_window_at_once() -> None:
    peer = Peer()
    sid = peer.open()
    half = STREAM_WINDOW // 2
    events = peer.send(sid, half + FRAME)
    assert delivered(events, sid) == half + FRAME
    assert window_updates(peer.flush()) == []  # delivered is not done with
    peer.conn.acknowledge(sid, half - 1)
    assert peer.flush() == b""
    peer.conn.acknowledge(sid, 1)
    assert window_updates(peer.flush()) == [(sid, half)]
    peer.conn.acknowledge(sid, FRAME)
    assert peer.flush() == b""  # the rest waits for the next half window
    assert peer.server.local_flow_control_window(sid) == STREAM_WINDOW - FRAME
    assert peer.server.outbound_flow_control_window == CONNECTION_WINDOW - half - FRAME


def test_a_quarter_of_the_connection_window_acknowledged_sends_a_connection_update() -> None:
    peer = Peer()
    streams = [peer.open() for _ in range(3)]
    per_stream = CONNECTION_WINDOW // 4 // 3 + FRAME  # a quarter, over three streams
    for sid in streams:
        assert delivered(peer.send(sid, per_stream), sid) == per_stream
    for sid in streams[:2]:
        peer.conn.acknowledge(sid, per_stream)
    assert window_updates(peer.flush()) == [(sid, per_stream) for sid in streams[:2]]
    peer.conn.acknowledge(streams[2], per_stream)
    assert window_updates(peer.flush()) == [(streams[2], per_stream), (0, 3 * per_stream)]
    assert peer.server.outbound_flow_control_window == CONNECTION_WINDOW


def test_release_cancels_an_unfinished_stream_and_returns_what_it_held_once() -> None:
    peer = Peer()
    streams = [peer.open() for _ in range(3)]
    size = 3 * 1024 * 1024  # three streams' worth passes a quarter of the connection window
    for sid in streams:
        assert delivered(peer.send(sid, size), sid) == size
    assert held(peer.conn) == 3 * size
    peer.conn.acknowledge(streams[0], 1024 * 1024)  # some of it done with before the release
    assert peer.flush() == b""
    for sid in streams[:2]:
        peer.conn.release(sid)
    assert resets(peer.flush()) == [(s, ErrorCode.CANCEL) for s in streams[:2]]
    peer.conn.release(streams[2])
    wire = peer.flush()
    assert resets(wire) == [(streams[2], ErrorCode.CANCEL)]
    assert window_updates(wire) == [(0, 3 * size)]  # each byte once: acknowledged or released
    assert held(peer.conn) == 0
    # The consumer acknowledging what it had, after the release, gives nothing back twice.
    for sid in streams:
        peer.conn.acknowledge(sid, size)
        peer.conn.release(sid)
    assert peer.flush() == b""
    assert peer.conn._window + peer.conn._to_return == CONNECTION_WINDOW
    # The server may never have more than CONNECTION_WINDOW outstanding.
    assert peer.server.outbound_flow_control_window == CONNECTION_WINDOW


def test_an_ended_stream_returns_connection_credit_only() -> None:
    peer = Peer()
    sid = peer.open()
    events = peer.send(sid, STREAM_WINDOW, end=True)
    assert delivered(events, sid) == STREAM_WINDOW and isinstance(events[-1], StreamEnded)
    peer.conn.acknowledge(sid, STREAM_WINDOW)  # no stream-level update for an ended stream
    assert window_updates(peer.conn.data_to_send()) == []
    peer.conn.release(sid)
    assert peer.conn.data_to_send() == b""  # ended: no RST_STREAM
    assert held(peer.conn) == 0


def test_a_flood_of_tiny_data_frames_ends_the_connection() -> None:
    # 1-byte DATA frames are useful bytes, but each costs a frame's work for one byte: found by
    # the hostile-peer test (tests/e2e/test_hostile_peer.py) at 100 % of a CPU. Past
    # FREE_DATA_FRAMES, DATA frames must average DATA_FRAME_AVERAGE_MIN bytes.
    w = Wire({})
    sid = w.open()
    assert [type(e) for e in w.feed(w.headers(sid, OK))] == [ResponseReceived]
    frame = data(sid, b"x")
    n, events = 0, []
    while not any(isinstance(e, ConnectionTerminated) for e in events) and n < 10_000:
        n += 1
        events = w.feed(frame)
    assert events[-1] == ConnectionTerminated(CALM, "a flood of tiny DATA frames")
    assert n <= FREE_DATA_FRAMES + FREE_DATA_FRAMES // DATA_FRAME_AVERAGE_MIN + 5, n


def test_small_data_frames_of_an_honest_server_are_not_a_flood() -> None:
    # A server that writes what its application hands it: 512-byte frames, for 4 MiB.
    w = Wire({})
    sid = w.open()
    w.feed(w.headers(sid, OK))
    frame = data(sid, b"y" * 512)
    for _ in range(STREAM_WINDOW // 512):
        events = w.feed(frame)
        assert not any(isinstance(e, ConnectionTerminated) for e in events), events
        w.conn.acknowledge(sid, 512)


def _feed_zero_copy(conn: Connection, wire: bytes, read: int) -> tuple[list[Event], set[int]]:
    """`wire` through receive_buffer/received in reads of `read` bytes, as the asyncio protocol
    feeds it; also the ids of the receive buffers used."""
    events: list[Event] = []
    buffers: set[int] = set()
    view = memoryview(wire)
    while view:
        target = conn.receive_buffer()
        buffers.add(id(target.obj))
        n = min(len(target), len(view), read)
        target[:n] = view[:n]
        del target  # as asyncio's read does: no view of ours outlives the read
        events += conn.received(n)
        view = view[n:]
    return events, buffers


def _frames_of(sid: int, first: int, count: int) -> bytes:
    """`count` full DATA frames, frame i filled with the byte i % 251."""
    return b"".join(data(sid, bytes([(first + i) % 251]) * FRAME) for i in range(count))


def test_released_receive_buffers_are_reused_and_held_chunks_never_rewritten() -> None:
    w = Wire({})
    sid = w.open()
    w.feed(w.headers(sid, OK))
    per_buffer = READ_CHUNK // (FRAME + 9)
    held_events, _ = _feed_zero_copy(w.conn, _frames_of(sid, 0, per_buffer), 60_000)
    held = [bytes(c) for e in held_events if isinstance(e, DataReceived) for c in e.chunks]
    views = [c for e in held_events if isinstance(e, DataReceived) for c in e.chunks]
    w.conn.acknowledge(sid, sum(map(len, held)))  # acknowledged, but the views are kept
    first = per_buffer
    used: set[int] = set()
    for _ in range(24):  # 24 buffers' worth, each released as soon as it is delivered
        events, buffers = _feed_zero_copy(w.conn, _frames_of(sid, first, per_buffer), 60_000)
        got = [c for e in events if isinstance(e, DataReceived) for c in e.chunks]
        assert [bytes(c[:1]) for c in got] == [
            bytes([(first + i) % 251]) for i in range(per_buffer)
        ]
        w.conn.acknowledge(sid, sum(map(len, got)))
        used |= buffers
        first += per_buffer
        del events, got
    assert [bytes(v) for v in views] == held, "a buffer that views still hold was reused"
    # Without reuse each of the 24 rounds takes one or two new buffers.
    assert len(used) <= 4, f"{len(used)} receive buffers for 24 rounds"
