"""The client side of one HTTP/2 connection, sans-IO: bytes in, events out, bytes to send.

`Connection` owns the protocol state of one connection and does no I/O: the caller puts
received bytes in (`receive_data`, or zero-copy through `receive_buffer` and `received`), gets
events back, and sends what `data_to_send` returns. The asyncio adapter is protocol.py; the
tests drive this class directly, and fuzz it against h2's client.

A download client sends header-only requests and reads bodies, so this is a small part of
HTTP/2, owned whole: framing, SETTINGS, PING, GOAWAY, RST_STREAM, header blocks (CONTINUATION,
informational responses, trailers) and receive flow control. Why not h2: it runs every frame
through a general state machine; on 5,000 small files its per-stream work was 22 % of the event
loop, and on large bodies its per-frame work was the ceiling.

Invariants, each held against a server that tries to break it:
- Memory. A frame is at most MAX_FRAME_SIZE bytes (what we advertise; anything larger is a
  FRAME_SIZE_ERROR), so a partial frame never needs more buffer than that. Body bytes are
  handed out as views of the receive buffer, and the windows are given back only when the
  consumer `acknowledge`s what it has written: the server can never have more than
  STREAM_WINDOW per stream and CONNECTION_WINDOW per connection outstanding. Buffers that views
  still pin count against a PinBudget shared by all connections; past it, payloads are copied
  instead of pinning another buffer. Buffers no view holds any more are reused, SPARE_BUFFERS
  of them kept across those connections.
- CPU. DATA frames must average DATA_FRAME_AVERAGE_MIN bytes past the first FREE_DATA_FRAMES.
  Frames that carry nothing for us (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, empty DATA,
  unknown types, padding, anything on a stream we gave up on) are useless work the server
  chooses; they may not exceed FREE_JUNK_FRAMES plus one per JUNK_ALLOWANCE_BYTES of useful
  bytes (bodies and response headers of live streams), and their bytes not FREE_JUNK_BYTES
  plus the useful bytes. Past either, the connection ends with ENHANCE_YOUR_CALM, as nghttp2
  and h2o end floods. A header block spans at most MAX_CONTINUATIONS CONTINUATION frames and
  MAX_HEADER_BLOCK bytes.
- Streams. At most one stream is opened before the server's first SETTINGS arrive (so a
  server's MAX_CONCURRENT_STREAMS is never exceeded); when stream ids run out the connection
  takes no new stream and is drained.
- Responses. RFC 9113 8.1-8.3: one :status first, no other pseudo-header, lower-case valid field
  names, no connection-specific field, no CR, LF or NUL and no surrounding whitespace in a
  value, no pseudo-header in trailers, and a body exactly as long as its content-length. A
  response that breaks them is that stream's error (StreamMalformed; the stream is reset), not
  the connection's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ingestd.net.http2 import frames
from ingestd.net.http2.frames import ErrorCode, Setting
from ingestd.net.http2.hpack import Decoder, HeaderBlockError, RequestEncoder

STREAM_WINDOW = 4 * 1024 * 1024  # per stream: what one slow consumer can have outstanding
CONNECTION_WINDOW = 32 * 1024 * 1024
# Advertised, and the largest frame accepted. 16,384 is the RFC default: nginx sends 8 KiB
# DATA frames whatever we say, and lighttpd 1.4.69 stalls with data queued when allowed 16 MiB
# frames (../shared/HTTP2-PEERS.md); a larger one only lets a server make us buffer more.
MAX_FRAME_SIZE = frames.DEFAULT_MAX_FRAME_SIZE
MAX_HEADER_LIST = 64 * 1024  # decoded response header list (RFC 7541 sizes)
MAX_HEADER_BLOCK = 64 * 1024  # encoded header block, HEADERS plus its CONTINUATIONs
MAX_CONTINUATIONS = 8  # CONTINUATION frames in one header block (nghttp2's default)
MAX_INFORMATIONAL = 8  # 1xx responses before the final one
# Useless frames a server may send: this many, plus one per JUNK_ALLOWANCE_BYTES of useful
# bytes; their bytes: FREE_JUNK_BYTES plus the useful bytes.
FREE_JUNK_FRAMES = 1000
JUNK_ALLOWANCE_BYTES = 4096
FREE_JUNK_BYTES = 1024 * 1024
# DATA frames are useful, but each costs a frame's work however small: past FREE_DATA_FRAMES
# they must carry DATA_FRAME_AVERAGE_MIN bytes on average (1-byte frames kept a CPU busy).
FREE_DATA_FRAMES = 1000
DATA_FRAME_AVERAGE_MIN = 256
READ_CHUNK = 512 * 1024  # receive buffers are this big (TLS decrypts straight into them)
# A buffer with less room than this is replaced: room for a whole frame, and for TLS reads
# big enough that each costs little (smaller reads cost more Python per byte).
MIN_FREE = max(64 * 1024, MAX_FRAME_SIZE + frames.HEADER_SIZE)
COPY_BELOW = 1024  # DATA payloads smaller than this are copied, never pinning a buffer
# Released receive buffers kept to reuse, across the connections sharing a PinBudget: a new one
# is zero-filled and faulted in page by page, a tenth of the event loop's time on large bodies.
# On workload (b) (8 streams) 1 buffer change in 25 still needed a new one; 1 in 3 with 2 spares.
SPARE_BUFFERS = 8
PIN_BUDGET = 64 * 1024 * 1024  # default for all connections sharing one PinBudget
MAX_UNSENT = 1024 * 1024  # our own output a server leaves unread (PING/SETTINGS floods)

# The parser's hot path reads these per frame.
_UNPACK_HEADER = frames.HEADER.unpack_from
_LAST_STREAM_ID = frames.LAST_STREAM_ID
_DATA, _CONTINUATION = frames.DATA, frames.CONTINUATION
_END_STREAM, _PADDED = frames.END_STREAM, frames.PADDED

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_REQUEST_DROPPED = _HOP_BY_HOP | {b"host"}
# RFC 9110 5.6.2 token characters, lower case only (RFC 9113 8.2.1).
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_SPACE = (0x20, 0x09)  # no value starts or ends with SP or HTAB (RFC 9113 8.2.1)
# Field names found valid, so that each is checked once per process (bounded: names are chosen
# by servers).
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_MAX = 1024


# --- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class ResponseReceived:
    """The final response head of a stream: status and regular fields (names lower case)."""

    stream_id: int
    status: int
    headers: list[tuple[bytes, bytes]]


@dataclass(slots=True)
class DataReceived:
    """Body bytes of a stream, in the order they came. `size` bytes, to `acknowledge` once
    the consumer is done with them. Chunks may be views of a receive buffer: valid for as
    long as they are referenced, never rewritten."""

    stream_id: int
    chunks: list[memoryview | bytes]
    size: int


@dataclass(slots=True)
class StreamEnded:
    """The server ended the stream (END_STREAM): the body is whole."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is over without its end: reset by the server, or not processed before a
    GOAWAY. `retry_safe`: the server never acted on it, so it may be sent again."""

    stream_id: int
    code: int
    retry_safe: bool
    message: str


@dataclass(slots=True)
class StreamMalformed:
    """The response broke RFC 9113 8.1-8.3; the stream has been reset. `short`: only in
    ending before its content-length (the bytes that came are a sound prefix)."""

    stream_id: int
    message: str
    short: bool = False


@dataclass(slots=True)
class SettingsReceived:
    """A SETTINGS frame from the server arrived (acknowledged in data_to_send), the first or a
    later one; `max_concurrent_streams` is the server's limit now."""

    max_concurrent_streams: int


@dataclass(slots=True)
class GoAwayReceived:
    """The server takes no new streams; those above `last_stream_id` were reset (retry_safe)."""

    last_stream_id: int
    code: int


@dataclass(slots=True)
class PingAcknowledged:
    """The answer to a PING we sent."""

    payload: bytes


@dataclass(slots=True)
class ConnectionTerminated:
    """The connection is over: the server broke the protocol (our GOAWAY is in data_to_send)
    or we closed it. Every stream not ended is lost."""

    code: int
    message: str


Event = (
    ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | StreamMalformed
    | SettingsReceived
    | GoAwayReceived
    | PingAcknowledged
    | ConnectionTerminated
)


class ProtocolError(Exception):
    """The server broke the protocol: the connection ends with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamUnavailable(Exception):
    """No new stream can be opened on this connection now (closed, draining, or full)."""


# --- memory shared by connections ---------------------------------------------------------


class PinBudget:
    """Receive buffers that body views still pin, across every connection that shares this
    budget. A connection over budget copies payloads instead of pinning one more buffer.
    Also the buffers no view holds any more, kept to reuse (at most SPARE_BUFFERS)."""

    def __init__(self, limit: int = PIN_BUDGET) -> None:
        self.limit = limit
        self.pinned = 0
        self.spares: list[bytearray] = []


def _unexported(buffer: bytearray) -> bool:
    """True when no memoryview of `buffer` is alive (a bytearray cannot resize while one is)."""
    try:
        last = buffer.pop()
    except BufferError:
        return False
    buffer.append(last)
    return True


# --- streams --------------------------------------------------------------------------------


class _Stream:
    __slots__ = (
        "ended",
        "expected_length",
        "head_done",
        "informational",
        "over",
        "received",
        "stream_id",
        "to_return",
        "unacked",
        "window",
    )

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.window = STREAM_WINDOW  # what the server may still send before a WINDOW_UPDATE
        self.unacked = 0  # handed to the consumer, not acknowledged yet
        self.to_return = 0  # acknowledged, not yet given back in a WINDOW_UPDATE
        self.head_done = False  # the final (non-1xx) response head arrived
        self.informational = 0
        self.ended = False  # END_STREAM arrived
        self.over = False  # reset, malformed, or cancelled: its frames are ignored
        self.expected_length: int | None = None  # the response's content-length
        self.received = 0  # body bytes so far


# --- the connection -------------------------------------------------------------------------


class Connection:
    """One client connection's HTTP/2 state. Feed it what the server sends; send what
    `data_to_send` returns, after every call."""

    def __init__(self, authority: str, pins: PinBudget | None = None) -> None:
        self._authority = authority.encode("ascii")
        self._pins = pins if pins is not None else PinBudget()
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._encoder = RequestEncoder()
        self._decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._block: bytearray | None = None  # a header block being assembled
        self._block_stream = 0
        self._block_flags = 0
        self._continuations = 0
        self._max_concurrent = frames.LAST_STREAM_ID  # the server's, once its SETTINGS say
        self._max_send_frame = frames.DEFAULT_MAX_FRAME_SIZE
        self._window = CONNECTION_WINDOW  # what the server may still send on the connection
        self._to_return = 0  # acknowledged on the connection, not yet given back
        self._outbox: list[bytes] = []
        self._useful = 0
        self._data_frames = 0  # on live streams
        self._tolerated = 0
        self._junk_frames = 0
        self._junk_bytes = 0
        self._buffer = bytearray(READ_CHUNK)
        self._start = 0  # first byte not parsed yet
        self._end = 0  # first byte not filled yet
        self._exported = False  # views of the current buffer were handed out
        self._pinned: list[bytearray] = []  # replaced buffers that views may still hold
        self._pinned_bytes = 0  # ours in the budget: those, and the current one once exported
        self.settings_received = False
        self.goaway_received = False
        self.ids_exhausted = False
        self.terminated: ConnectionTerminated | None = None
        self._outbox += [
            frames.PREFACE,
            frames.settings(
                {
                    Setting.ENABLE_PUSH: 0,
                    Setting.MAX_CONCURRENT_STREAMS: 0,  # we accept no streams from the server
                    Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    Setting.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                    Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                }
            ),
            frames.window_update(0, CONNECTION_WINDOW - frames.DEFAULT_WINDOW),
        ]

    # --- what the caller asks ---------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams opened and not yet released."""
        return len(self._streams)

    @property
    def accepting(self) -> bool:
        """Whether new streams may ever be opened here again."""
        return self.terminated is None and not self.goaway_received and not self.ids_exhausted

    def can_open(self, limit: int) -> bool:
        """Room for one more stream now (at most `limit` at once, and the server's limit;
        one until the server's SETTINGS say what its limit is)."""
        if not self.accepting:
            return False
        if not self.settings_received:
            return not self._streams
        return len(self._streams) < min(limit, self._max_concurrent)

    def send_request(
        self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> int:
        """Queue a request without a body; returns its stream id. Raises StreamUnavailable."""
        if not self.accepting:
            raise StreamUnavailable("the connection takes no new streams")
        sid = self._next_stream_id
        self._next_stream_id += 2
        if self._next_stream_id > frames.LAST_STREAM_ID:
            self.ids_exhausted = True  # this one is the last: drained, then closed
        block = self._encoder.encode(
            [
                (b":method", method),
                (b":scheme", b"https"),
                (b":authority", self._authority),
                (b":path", path),
                *((k.lower(), v) for k, v in headers if k.lower() not in _REQUEST_DROPPED),
            ]
        )
        self._streams[sid] = _Stream(sid)
        size = self._max_send_frame
        first, rest = block[:size], block[size:]
        flags = frames.END_STREAM | (0 if rest else frames.END_HEADERS)
        self._outbox.append(frames.pack(frames.HEADERS, flags, sid, first))
        while rest:
            piece, rest = rest[:size], rest[size:]
            flags = 0 if rest else frames.END_HEADERS
            self._outbox.append(frames.pack(frames.CONTINUATION, flags, sid, piece))
        return sid

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The consumer is done with `size` body bytes of a stream: the server may send as
        many again (WINDOW_UPDATEs are batched: half a stream window, a quarter of the
        connection's)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # released: what it held went back then
        size = min(size, stream.unacked)
        stream.unacked -= size
        if not stream.ended and not stream.over:
            stream.to_return += size
            if stream.to_return >= STREAM_WINDOW // 2:
                self._outbox.append(frames.window_update(stream_id, stream.to_return))
                stream.window += stream.to_return
                stream.to_return = 0
        self._return_to_connection(size)

    def release(self, stream_id: int) -> None:
        """The consumer is done with a stream: reset it if the server has not ended it, and
        give its unacknowledged bytes back to the connection."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.ended and not stream.over and self.terminated is None:
            self._outbox.append(frames.rst_stream(stream_id, ErrorCode.CANCEL))
            self._tolerate(stream)
        self._return_to_connection(stream.unacked)

    def ping(self, payload: bytes) -> None:
        """Ask the server for a sign of life (PingAcknowledged answers)."""
        self._outbox.append(frames.ping(payload))

    def close(self, code: int = ErrorCode.NO_ERROR, message: str = "closed") -> None:
        """End the connection: a GOAWAY is queued and nothing more is read."""
        if self.terminated is None:
            self._outbox.append(frames.goaway(0, code))
            self.terminated = ConnectionTerminated(code, message)

    @property
    def has_data_to_send(self) -> bool:
        """Whether data_to_send would return anything."""
        return bool(self._outbox)

    def data_to_send(self) -> bytes:
        """Everything queued for the server, once."""
        if not self._outbox:
            return b""
        data = b"".join(self._outbox)
        self._outbox.clear()
        return data

    # --- receiving ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """What `data` from the server means. (Copies it into the receive buffer; an asyncio
        protocol uses receive_buffer and received instead.)"""
        events: list[Event] = []
        view = memoryview(data)
        while view and self.terminated is None:
            target = self.receive_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            events += self.received(n)
            view = view[n:]
        return events

    def receive_buffer(self) -> memoryview:
        """Where the next received bytes go (then call `received`)."""
        if len(self._buffer) - self._end < MIN_FREE:
            pending = self._end - self._start
            spares = self._pins.spares
            if not spares and self._pinned:
                self._unpin()  # views released since: their buffers can be reused
            if spares and pending + MIN_FREE <= READ_CHUNK:
                fresh = spares.pop()
            else:
                fresh = bytearray(max(READ_CHUNK, pending + MIN_FREE))
            fresh[:pending] = self._buffer[self._start : self._end]
            if self._exported:
                self._pin(self._buffer)
            else:
                self._spare(self._buffer)
            self._buffer, self._start, self._end = fresh, 0, pending
            self._exported = False
        return memoryview(self._buffer)[self._end :]

    def received(self, size: int) -> list[Event]:
        """`size` bytes were written at `receive_buffer()`: parse every whole frame."""
        events: list[Event] = []
        if self.terminated is not None:
            return events
        self._end += size
        buffer = self._buffer
        view = memoryview(buffer)
        offset, filled = self._start, self._end
        unpack, data = _UNPACK_HEADER, self._data  # looked up once: this runs per frame
        try:
            while filled - offset >= 9:
                high, low, kind, flags, sid = unpack(buffer, offset)
                length = high << 8 | low
                if length > MAX_FRAME_SIZE:
                    raise ProtocolError(
                        ErrorCode.FRAME_SIZE_ERROR, f"a {length}-byte frame, over {MAX_FRAME_SIZE}"
                    )
                end = offset + 9 + length
                if end > filled:
                    break
                sid &= _LAST_STREAM_ID
                if self._block is not None and kind != _CONTINUATION:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a frame inside a header block")
                if kind == _DATA:
                    data(events, sid, flags, view[offset + 9 : end], length)
                else:
                    self._control(events, kind, flags, sid, view[offset + 9 : end])
                offset = end
        except ProtocolError as exc:
            self.close(exc.code, str(exc))
            assert self.terminated is not None
            events.append(self.terminated)
        finally:
            view.release()
        self._start = offset
        if offset == filled and not self._exported:
            self._start = self._end = 0  # all parsed, no view handed out: start it over
        return events

    # --- frames ---------------------------------------------------------------------------

    def _data(
        self, events: list[Event], sid: int, flags: int, payload: memoryview, length: int
    ) -> None:
        if sid == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        self._window -= length
        if self._window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if flags & _PADDED:
            pad = payload[0] if length else 0
            if pad >= length:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "more padding than payload")
            payload = payload[1 : length - pad]
        size = len(payload)
        stream = self._streams.get(sid)
        if stream is None or stream.over:
            self._check_opened(sid)
            # A stream we gave up on: nobody consumes its bytes; the connection gets them back.
            # What was in flight when we reset it is tolerated (see _tolerate).
            self._junk(length, frames=0 if length else 1)
            self._return_to_connection(length)
            return
        if stream.ended:
            raise ProtocolError(ErrorCode.STREAM_CLOSED, "DATA after the end of the stream")
        if not stream.head_done:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA before the response head")
        stream.window -= length
        if stream.window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        if length > size:  # padding: nobody will consume it, so it goes back at once
            self._junk(length - size, frames=0)
            self._return_padding(stream, length - size)
        end = flags & _END_STREAM
        if not size and not end:
            self._junk(0)
        stream.received += size
        expected = stream.expected_length
        if expected is not None and (
            stream.received > expected or (end and stream.received != expected)
        ):
            message = f"{stream.received} body bytes for content-length {expected}"
            self._malformed(events, stream, message, short=stream.received < expected)
            self._return_to_connection(size)
            return
        self._data_frames += 1
        if self._data_frames > FREE_DATA_FRAMES + self._useful // DATA_FRAME_AVERAGE_MIN:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "a flood of tiny DATA frames")
        if size:
            self._useful += size
            stream.unacked += size
            chunk: memoryview | bytes = payload
            if size < COPY_BELOW or (not self._exported and not self._may_export()):
                chunk = bytes(payload)
            else:
                self._exported = True
            last = events[-1] if events else None
            if type(last) is DataReceived and last.stream_id == sid:
                last.chunks.append(chunk)
                last.size += size
            else:
                events.append(DataReceived(sid, [chunk], size))
        if end:
            stream.ended = True
            events.append(StreamEnded(sid))

    def _control(
        self, events: list[Event], kind: int, flags: int, sid: int, payload: memoryview
    ) -> None:
        length = len(payload)
        if kind == frames.HEADERS:
            if sid == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
            start, stop = 0, length
            if flags & frames.PADDED:
                start, stop = 1, length - (payload[0] if length else length + 1)
            if flags & frames.PRIORITY_FLAG:
                start += 5
            if start > stop:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "more padding than payload")
            self._block = bytearray(payload[start:stop])
            self._block_stream, self._block_flags, self._continuations = sid, flags, 0
            self._header_fragment(events, flags)
        elif kind == frames.CONTINUATION:
            if self._block is None or self._block_stream != sid:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block")
            self._continuations += 1
            if self._continuations > MAX_CONTINUATIONS:
                raise ProtocolError(
                    ErrorCode.ENHANCE_YOUR_CALM, f"over {MAX_CONTINUATIONS} CONTINUATION frames"
                )
            self._block += payload
            self._header_fragment(events, flags)
        elif kind == frames.SETTINGS:
            self._settings(events, flags, sid, payload)
        elif kind == frames.PING:
            if sid != 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if length != 8:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING is not 8 bytes")
            self._junk(length)
            if flags & frames.ACK:
                events.append(PingAcknowledged(bytes(payload)))
            else:
                self._outbox.append(frames.ping(bytes(payload), ack=True))
        elif kind == frames.RST_STREAM:
            if sid == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if length != 4:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
            self._check_opened(sid)
            code = int.from_bytes(payload, "big")
            stream = self._streams.get(sid)
            if stream is None or stream.over or stream.ended:
                self._junk(length)
                return
            stream.over = True
            stream.to_return = 0
            message = f"stream reset ({frames.error_name(code)})"
            events.append(StreamReset(sid, code, code == ErrorCode.REFUSED_STREAM, message))
        elif kind == frames.GOAWAY:
            if sid != 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            if length < 8:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            last = int.from_bytes(payload[:4], "big") & frames.LAST_STREAM_ID
            code = int.from_bytes(payload[4:8], "big")
            if self.goaway_received:
                self._junk(length)
            self.goaway_received = True
            events.append(GoAwayReceived(last, code))
            for stream in self._streams.values():
                if stream.stream_id > last and not stream.over and not stream.ended:
                    stream.over = True  # never processed: safe to send again, elsewhere
                    events.append(
                        StreamReset(stream.stream_id, code, True, "GOAWAY before processing")
                    )
        elif kind == frames.WINDOW_UPDATE:
            if length != 4:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
            if sid:
                self._check_opened(sid)  # RFC 9113 5.1: not on an idle stream
            increment = int.from_bytes(payload, "big") & frames.MAX_WINDOW
            if not increment:
                if sid == 0:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of zero")
                stream = self._streams.get(sid)
                if stream is not None and not stream.over and not stream.ended:
                    self._malformed(events, stream, "WINDOW_UPDATE of zero")
            self._junk(length)  # we send no DATA: the server's windows for us do not matter
        elif kind == frames.PUSH_PROMISE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        elif kind == frames.PRIORITY:
            if sid == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if length != 5:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY is not 5 bytes")
            self._junk(length)
        else:
            self._junk(length)  # a frame of an unknown type is ignored (RFC 9113 5.5)

    def _check_opened(self, sid: int) -> None:
        """Frames on a stream we never opened (idle, or a server-initiated id) are an error."""
        if sid % 2 == 0 or sid >= self._next_stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"frame on idle stream {sid}")

    def _header_fragment(self, events: list[Event], flags: int) -> None:
        block = self._block
        assert block is not None
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if not flags & frames.END_HEADERS:
            return
        sid, first_flags = self._block_stream, self._block_flags
        self._block = None
        self._check_opened(sid)
        try:
            # Decoded even for streams we gave up on: the HPACK table is per connection.
            fields = self._decoder.decode(bytes(block))
        except HeaderBlockError as exc:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self._streams.get(sid)
        if stream is None or stream.over:
            self._junk(len(block))
            return
        end_stream = bool(first_flags & frames.END_STREAM)
        if stream.ended:
            raise ProtocolError(ErrorCode.STREAM_CLOSED, "HEADERS after the end of the stream")
        if stream.head_done:  # trailers: checked, then only the end of the stream matters
            problem = _trailers_problem(fields, end_stream)
            if problem:
                self._malformed(events, stream, problem)
                return
            self._useful += len(block)
        else:
            head = _response_head(fields)
            if isinstance(head, str):
                self._malformed(events, stream, head)
                return
            status, regular, expected = head
            if status < 200:
                stream.informational += 1
                if end_stream or status == 101 or stream.informational > MAX_INFORMATIONAL:
                    self._malformed(events, stream, "bad informational response")
                return  # 1xx: the final response follows
            self._useful += len(block)
            stream.head_done = True
            # 204 and 304 have no content, whatever their content-length says (RFC 9113 8.1.1).
            stream.expected_length = 0 if status in (204, 304) else expected
            events.append(ResponseReceived(sid, status, regular))
        if end_stream:
            expected = stream.expected_length
            if expected is not None and stream.received != expected:
                message = f"{stream.received} body bytes for content-length {expected}"
                self._malformed(events, stream, message, short=stream.received < expected)
                return
            stream.ended = True
            events.append(StreamEnded(sid))

    def _settings(self, events: list[Event], flags: int, sid: int, payload: memoryview) -> None:
        if sid != 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & frames.ACK:
            if len(payload):
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._junk(0)
            return
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        self._junk(len(payload))
        for key, value in frames.SETTING.iter_unpack(payload):
            if key == Setting.HEADER_TABLE_SIZE:
                self._encoder.resize(value)
            elif key == Setting.ENABLE_PUSH:
                if value > 1:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
                if value != 0:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a server may not enable push")
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                self._max_concurrent = value
            elif key == Setting.INITIAL_WINDOW_SIZE:
                if value > frames.MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "initial window over 2^31-1")
            elif key == Setting.MAX_FRAME_SIZE:
                if not frames.DEFAULT_MAX_FRAME_SIZE <= value <= frames.MAX_ALLOWED_FRAME_SIZE:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"max frame size {value}")
                self._max_send_frame = value
        self._outbox.append(frames.settings_ack())
        # Every SETTINGS, not only the first: a raised MAX_CONCURRENT_STREAMS must wake the
        # callers waiting for a stream.
        self.settings_received = True
        events.append(SettingsReceived(self._max_concurrent))

    def _malformed(
        self, events: list[Event], stream: _Stream, message: str, *, short: bool = False
    ) -> None:
        """A malformed response: that stream alone is reset and fails."""
        stream.over = True
        self._outbox.append(frames.rst_stream(stream.stream_id, ErrorCode.PROTOCOL_ERROR))
        self._tolerate(stream)
        events.append(StreamMalformed(stream.stream_id, f"protocol error: {message}", short))

    # --- budgets and windows ------------------------------------------------------------------

    def _junk(self, size: int, frames: int = 1) -> None:
        """Count useless work the server made us do; a flood ends the connection."""
        self._junk_frames += frames
        self._junk_bytes += size
        allowance = self._useful + self._tolerated
        if self._junk_frames > FREE_JUNK_FRAMES + allowance // JUNK_ALLOWANCE_BYTES:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "a flood of frames that carry nothing")
        if self._junk_bytes > FREE_JUNK_BYTES + allowance:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "a flood of bytes that carry nothing")

    def _tolerate(self, stream: _Stream) -> None:
        """We reset a stream the server may still be sending: up to its window of DATA (and
        the frames it takes) may arrive for it, through no fault of the server's."""
        self._tolerated += max(stream.window, 0)

    def _return_padding(self, stream: _Stream, size: int) -> None:
        stream.to_return += size
        if stream.to_return >= STREAM_WINDOW // 2:
            self._outbox.append(frames.window_update(stream.stream_id, stream.to_return))
            stream.window += stream.to_return
            stream.to_return = 0
        self._return_to_connection(size)

    def _return_to_connection(self, size: int) -> None:
        self._to_return += size
        if self._to_return >= CONNECTION_WINDOW // 4:
            self._outbox.append(frames.window_update(0, self._to_return))
            self._window += self._to_return
            self._to_return = 0

    def _may_export(self) -> bool:
        """Whether a view of the current buffer may be handed out: it already was, or pinning
        it stays within the budget shared by all connections. It counts from its first view
        on: counted only once replaced, each connection's current buffer could go over."""
        if self._exported:
            return True
        pins, size = self._pins, len(self._buffer)
        if pins.pinned + size > pins.limit:
            self._unpin()  # views released since: look again
            if pins.pinned + size > pins.limit:
                return False
        pins.pinned += size
        self._pinned_bytes += size
        return True

    def _pin(self, buffer: bytearray) -> None:
        """A replaced buffer that views were taken of (counted since the first)."""
        self._unpin()
        self._pinned.append(buffer)

    def _unpin(self) -> None:
        kept, freed = [], 0
        for buffer in self._pinned:
            if _unexported(buffer):
                freed += len(buffer)
                self._spare(buffer)
            else:
                kept.append(buffer)
        self._pinned, self._pinned_bytes = kept, self._pinned_bytes - freed
        self._pins.pinned -= freed

    def _spare(self, buffer: bytearray) -> None:
        """Keep a buffer to reuse (up to SPARE_BUFFERS), if no view holds it any more."""
        spares = self._pins.spares
        if len(buffer) == READ_CHUNK and len(spares) < SPARE_BUFFERS and _unexported(buffer):
            spares.append(buffer)

    def forget_buffers(self) -> None:
        """The connection is gone: keep no buffer (views handed out keep theirs alive on their
        own) and give its pins back to the shared budget."""
        self._pins.pinned -= self._pinned_bytes
        self._pinned, self._pinned_bytes = [], 0
        self._spare(self._buffer)
        self._buffer = bytearray()
        self._start = self._end = 0
        self._exported = False


def _response_head(
    fields: list[tuple[bytes, bytes]],
) -> tuple[int, list[tuple[bytes, bytes]], int | None] | str:
    """Status, regular fields and declared body length of a response head; or what makes it
    malformed (RFC 9113 8.3: exactly one :status, first; 8.2: valid fields)."""
    status = None
    regular: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for name, value in fields:
        if name[:1] == b":":
            if name != b":status" or status is not None or regular:
                return f"pseudo-header {name[:40]!r} out of place"
            status = value
            continue
        problem = _field_problem(name, value)
        if problem:
            return problem
        if name == b"content-length":
            if not value.isdigit() or len(value) > 19:
                length = None  # not a length (the response checks say so, with a detail)
            elif length is not None and length != int(value):
                return "conflicting content-length fields"
            else:
                length = int(value)
        regular.append((name, value))
    if status is None or len(status) != 3 or not status.isdigit() or status[:1] == b"0":
        return "no valid :status"  # three digits, 100 to 999 (RFC 9110 15)
    return int(status), regular, length


def _field_problem(name: bytes, value: bytes) -> str:
    if name not in _GOOD_NAMES:
        if not _FIELD_NAME.fullmatch(name):
            return f"invalid field name {name[:40]!r}"
        if name in _HOP_BY_HOP:
            return f"connection-specific field {name.decode()}"
        if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
            _GOOD_NAMES.add(name)  # a server sends the same few names again and again
    if b"\r" in value or b"\n" in value or b"\0" in value:
        return f"invalid value for {name.decode()}"
    if value and (value[0] in _SPACE or value[-1] in _SPACE):
        return f"invalid value for {name.decode()}"
    return ""


def _trailers_problem(fields: list[tuple[bytes, bytes]], end_stream: bool) -> str:
    if not end_stream:
        return "trailers without END_STREAM"
    for name, value in fields:
        if name[:1] == b":":
            return "pseudo-header in trailers"
        problem = _field_problem(name, value)
        if problem:
            return problem
    return ""
