"""A lean HTTP/2 client for downloads: an asyncio buffered protocol that speaks the protocol itself.

Why not h2: a download client sends header-only GET requests and reads bodies, which needs a
small part of HTTP/2, but h2 runs every frame through a general state machine (and formats a
`repr()` of each frame for a disabled debug log). On 5,000 small files its per-stream work was
22 % of the event loop, and on large bodies its per-frame work was the ceiling, so DATA was
already parsed here; driving h2 beside our own DATA handling also let the two disagree about a
stream's state (a graceful GOAWAY made h2 reject the end of streams it had let finish).

So this module owns the whole connection: framing, SETTINGS, PING, GOAWAY, RST_STREAM, header
blocks (CONTINUATION, informational responses, trailers) and flow control, which is ours:
WINDOW_UPDATE frames are sent when the consumer has taken the bytes, in batches, so memory stays
bounded by the windows. Response headers are decoded by net.headers; requests are encoded here
with static-table indexes and plain literals only. Any breach of the protocol by the server
is a connection error: every open stream fails, the server gets a GOAWAY saying why, and the
connection closes. The tests drive this against h2 in server mode as the reference peer.

This module knows nothing of httpx; net.fetch uses it for HTTPS and maps its errors.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from hpack.table import HeaderTable

from ingestd.net.headers import Decoder, HeaderBlockError

STREAM_WINDOW = 4 * 1024 * 1024  # per stream: bounds what one slow consumer can buffer
CONNECTION_WINDOW = 32 * 1024 * 1024
MAX_FRAME_SIZE = 2**24 - 1  # let servers send big frames when they are willing to
MAX_HEADER_LIST = 256 * 1024  # decoded response header list (RFC 7541 sizes), and encoded block
READ_CHUNK = 512 * 1024  # TLS decrypts straight into buffers of this size (see get_buffer)
_MIN_FREE = 64 * 1024  # a buffer with less room than this is replaced by a fresh one
# Replaced buffers that body views still pin may not exceed this: a server that slips tiny DATA
# frames between big frames we ignore would otherwise pin a whole buffer per byte of window.
MAX_PINNED = 2 * CONNECTION_WINDOW
MAX_UNSENT = 1024 * 1024  # our own output the server does not read (PING/SETTINGS floods)
MAX_INFORMATIONAL = 8  # 1xx responses before the final one
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_LAST_STREAM_ID = 2**31 - 1
_FRAME_HEADER = struct.Struct(">HBBBI")  # 24-bit length (16 + 8), type, flags, stream id
_SETTING = struct.Struct(">HI")

# Frame types (RFC 9113 section 6) and flags.
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


class ErrorCode(enum.IntEnum):
    """RFC 9113 section 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


# SETTINGS identifiers.
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
_INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE, _MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"te",
    }
)


class H2Error(Exception):
    """Base of this module's errors."""


class ConnectFailed(H2Error):
    """The TCP/TLS connection could not be made."""


class ConnectTimedOut(ConnectFailed):
    """Connecting took longer than the timeout."""


class NotHTTP2(H2Error):
    """The server did not negotiate h2 (ALPN); use HTTP/1.1 for this origin."""


class StreamTimedOut(H2Error):
    """No progress on a stream within the timeout."""


class StreamFailed(H2Error):
    """The stream was reset, or the connection died under it. `retry_safe`: it never started."""

    def __init__(self, message: str, retry_safe: bool = False) -> None:
        super().__init__(message)
        self.retry_safe = retry_safe


class ConnectionLost(StreamFailed):
    """The connection under the stream ended (closed by the peer, or found dead). `shared`:
    other streams were open on it, so it was no single response's doing."""

    def __init__(self, message: str, shared: bool = False) -> None:
        super().__init__(message)
        self.shared = shared


class MalformedResponse(StreamFailed):
    """The server sent a response that breaks RFC 9113 8.1-8.3; its stream was reset."""


class _ConnectionError(Exception):
    """The server broke the protocol: the whole connection ends with this code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


Resolver = Callable[[str, int, float | None], Awaitable[Sequence[str]]]


@dataclass
class _Stream:
    stream_id: int
    headers: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]]  # status, regular fields
    chunks: collections.deque[memoryview] = field(default_factory=collections.deque)
    pending_credit: int = 0  # flow-controlled bytes arrived but not yet handed to the consumer
    window: int = STREAM_WINDOW  # what the server may still send before our next WINDOW_UPDATE
    ended: bool = False  # the server sent END_STREAM
    error: H2Error | None = None  # set: the stream is over for the server too (reset, GOAWAY...)
    waiter: asyncio.Future[None] | None = None
    headers_done: bool = False  # the final (non-1xx) response headers arrived
    informational: int = 0  # 1xx responses so far
    finished: bool = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


_STATIC_FIELDS = {pair: i for i, pair in enumerate(HeaderTable.STATIC_TABLE, 1)}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _index)


def _integer(value: int, prefix_bits: int) -> bytearray:
    """An HPACK integer (RFC 7541 5.1), the first byte's free high bits left zero."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytearray([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return out


def _literal(name: bytes, value: bytes) -> bytes:
    """One field: indexed when the static table has it whole, else a literal that is not added
    to the dynamic table (RFC 7541 6.1 / 6.2.2), its name indexed when the static table has it."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        head = _integer(index, 7)
        head[0] |= 0x80
        return bytes(head)
    name_index = _STATIC_NAMES.get(name, 0)
    parts = [bytes(_integer(name_index, 4))]
    if not name_index:
        parts += [bytes(_integer(len(name), 7)), name]
    parts += [bytes(_integer(len(value), 7)), value]
    return b"".join(parts)


class _RequestEncoder:
    """HPACK for requests with neither the dynamic table nor Huffman coding: every field is a
    fixed string, computed once (re-encoding the same fields with Huffman codes cost ~7 % of the
    event loop on small files, to save a few dozen bytes). Since nothing is ever inserted, the
    server's table for us stays empty; a smaller table size it asks for is still acknowledged
    by a size update at the start of the next block, as RFC 7541 4.2 requires."""

    def __init__(self) -> None:
        self._fields: dict[tuple[bytes, bytes], bytes] = {}
        self._table_size = 4096
        self._size_update: int | None = None

    def resize(self, size: int) -> None:
        """The server's SETTINGS_HEADER_TABLE_SIZE."""
        if size < self._table_size:
            self._table_size = size
            self._size_update = size

    def encode(self, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        block = []
        if self._size_update is not None:
            head = _integer(self._size_update, 5)
            head[0] |= 0x20
            block.append(bytes(head))
            self._size_update = None
        for name, value in headers:
            encoded = self._fields.get((name, value))
            if encoded is None:
                encoded = _literal(name, value)
                if name != b":path" and len(self._fields) < 256:
                    self._fields[(name, value)] = encoded
            block.append(encoded)
        return b"".join(block)


def _unexported(buffer: bytearray) -> bool:
    """True when no memoryview of `buffer` is alive: only then may it shrink (and grow back)."""
    try:
        last = buffer.pop()
    except BufferError:
        return False
    buffer.append(last)
    return True


def _response_head(
    headers: list[tuple[bytes, bytes]],
) -> tuple[int, list[tuple[bytes, bytes]]] | None:
    """Status and regular fields of a response header list; None when malformed (RFC 9113
    8.3: exactly one :status, no other pseudo-header, pseudo-headers first; 8.2.1: no
    upper-case field names, which would slip past every lower-case lookup)."""
    status = None
    fields: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name != b":status" or status is not None or fields:
                return None
            status = value
        elif name.islower() or name == name.lower():
            fields.append((name, value))
        else:
            return None
    if status is None or len(status) != 3 or not status.isdigit():
        return None
    return int(status), fields


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _FRAME_HEADER.pack(len(payload) >> 8, len(payload) & 0xFF, kind, flags, stream_id) + (
        payload
    )


def _window_update(stream_id: int, increment: int) -> bytes:
    return _frame(_WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/2 connection. All methods run on the event loop.

    A buffered protocol: the TLS layer decrypts straight into our buffer (no intermediate bytes
    objects), and DATA payloads reach the consumer as memoryviews of that buffer, so body bytes
    are never copied in Python between decryption and the file write. A buffer is only ever
    appended to; when it runs short a fresh one takes over (the unparsed tail is copied, a
    partial frame at most), and the old one lives on only as long as views of it do.
    """

    def __init__(
        self,
        authority: str,
        on_lost: Callable[[_Connection], None] | None = None,
        *,
        coalesce: bool = False,
    ) -> None:
        self._authority = authority.encode("ascii")
        self._on_lost = on_lost
        # Requests and window updates queued in one loop iteration leave in one write (one
        # TLS record, one send): halves the sends of a pool of small files. Off, each call
        # writes at once (what the frame-level tests read back).
        self._coalesce = coalesce
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._encoder = _RequestEncoder()
        self._decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._header_block: tuple[int, int, bytearray] | None = None  # (stream, flags, so far)
        self._max_concurrent = _LAST_STREAM_ID  # the server's, until its SETTINGS say
        self._max_send_frame = 16_384
        self._buffer = bytearray(READ_CHUNK)
        self._start = 0  # first byte not yet parsed
        self._end = 0  # first byte not yet filled
        self._exported = False  # body bytes of this buffer were handed out: never rewrite it
        self._pinned: list[bytearray] = []  # replaced buffers that body views may still use
        self.last_received = time.monotonic()  # when the server last sent anything
        self._conn_credit = 0
        self._conn_window = CONNECTION_WINDOW
        self._stream_credit: dict[int, int] = {}
        self._outbox: list[bytes] = []
        self._flush_due = False  # a flush is scheduled for the end of this loop iteration
        self.closed = False
        self.goaway = False
        self.capacity = asyncio.Event()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        settings = b"".join(
            _SETTING.pack(key, value)
            for key, value in (
                (_ENABLE_PUSH, 0),
                (_MAX_CONCURRENT_STREAMS, 0),  # we accept no streams from the server
                (_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (_MAX_FRAME_SIZE, MAX_FRAME_SIZE),
                (_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            )
        )
        self._outbox += [
            _PREFACE,
            _frame(_SETTINGS, 0, 0, settings),
            _window_update(0, CONNECTION_WINDOW - 65_535),
        ]
        self._flush()
        self.capacity.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        free = len(self._buffer) - self._end
        if free < _MIN_FREE:
            pending = self._end - self._start
            need = pending + _MIN_FREE
            if pending >= 9:  # a partial frame: make room for all of it
                need = max(need, 9 + int.from_bytes(self._buffer[self._start : self._start + 3]))
            fresh = bytearray(max(READ_CHUNK, need))
            fresh[:pending] = self._buffer[self._start : self._end]
            if self._exported:
                self._pin(self._buffer)
            self._buffer, self._start, self._end = fresh, 0, pending
            self._exported = False
        return memoryview(self._buffer)[self._end :]

    def _pin(self, buffer: bytearray) -> None:
        """Keep count of replaced buffers still pinned by body views; too many ends it all."""
        self._pinned = [b for b in self._pinned if not _unexported(b)]
        self._pinned.append(buffer)
        if sum(len(b) for b in self._pinned) > MAX_PINNED:
            self._connection_error(
                ErrorCode.ENHANCE_YOUR_CALM, "tiny DATA frames pin too many buffers"
            )

    def data_received(self, data: bytes) -> None:
        """Bytes from a non-buffered source (tests): fed through the buffer."""
        view = memoryview(data)
        while view and not self.closed:
            target = self.get_buffer(len(view))
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        self._end += nbytes
        self.last_received = time.monotonic()
        buffer = self._buffer
        view = memoryview(buffer)
        offset = self._start
        filled = self._end
        try:
            while filled - offset >= 9:
                high, low, kind, flags, sid = _FRAME_HEADER.unpack_from(buffer, offset)
                length = high << 8 | low
                end = offset + 9 + length
                if end > filled:
                    break
                sid &= _LAST_STREAM_ID
                if self._header_block is not None and kind != _CONTINUATION:
                    raise _ConnectionError(
                        ErrorCode.PROTOCOL_ERROR, "a frame inside a header block"
                    )
                if kind == _DATA:
                    self._data_frame(sid, flags, view[offset + 9 : end], length)
                else:
                    self._control_frame(kind, flags, sid, view[offset + 9 : end])
                offset = end
                if self.closed:
                    return
        except _ConnectionError as exc:
            self._connection_error(exc.code, str(exc))
            return
        finally:
            view.release()
        self._start = offset
        if offset == filled and not self._exported:
            # All parsed and no body bytes handed out from this buffer: start it over.
            self._start = self._end = 0
        self._send_credit()  # and flush what the frames made us write

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(
            ConnectionLost(f"connection lost: {exc or 'closed by peer'}", self._shared())
        )
        self.capacity.set()
        # A daemon meets many CDN hosts over weeks: a dead connection keeps no read buffer
        # (views already handed out keep theirs alive on their own), and leaves its pool.
        self._buffer = bytearray()
        self._start = self._end = 0
        self._pinned.clear()
        if self._on_lost is not None:
            self._on_lost(self)

    # --- frames ---------------------------------------------------------------------------

    def _data_frame(self, sid: int, flags: int, payload: memoryview, length: int) -> None:
        if sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        self._conn_window -= length
        if self._conn_window < 0:
            # A server that ignores flow control could make us buffer without bound.
            raise _ConnectionError(
                ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window"
            )
        if flags & _PADDED:
            pad = payload[0] if length else 0
            if pad >= length:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "more padding than payload")
            payload = payload[1 : length - pad]
        stream = self._streams.get(sid)
        if stream is None or stream.error is not None:
            self._check_known(sid)
            # A stream we gave up on: its bytes still count against the connection window,
            # so give them back.
            self._conn_credit += length
            return
        if stream.ended:
            raise _ConnectionError(ErrorCode.STREAM_CLOSED, "DATA after the end of the stream")
        if not stream.headers_done:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA before the response headers")
        stream.window -= length
        if stream.window < 0:
            raise _ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        if len(payload):
            stream.chunks.append(payload)
            self._exported = True
        stream.pending_credit += len(payload)
        if length > len(payload):  # padding: nobody will consume it, so it is returned now
            self.credit(stream, length - len(payload))
        if flags & _END_STREAM:
            stream.ended = True
        stream.wake()

    def _control_frame(self, kind: int, flags: int, sid: int, payload: memoryview) -> None:
        length = len(payload)
        if kind == _HEADERS:
            if sid == 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
            start, stop = 0, length
            if flags & _PADDED:
                start, stop = 1, length - (payload[0] if length else length + 1)
            if flags & _PRIORITY_FLAG:
                start += 5
            if start > stop:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "more padding than payload")
            self._header_block = (sid, flags, bytearray(payload[start:stop]))
            self._header_fragment_done(flags)
        elif kind == _CONTINUATION:
            if self._header_block is None or self._header_block[0] != sid:
                raise _ConnectionError(
                    ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block"
                )
            self._header_block[2].extend(payload)
            self._header_fragment_done(flags)
        elif kind == _SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == _PING:
            if sid != 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if length != 8:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING is not 8 bytes")
            if not flags & _ACK:
                self._outbox.append(_frame(_PING, _ACK, 0, bytes(payload)))
        elif kind == _RST_STREAM:
            if sid == 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if length != 4:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
            self._check_known(sid)
            code = int.from_bytes(payload, "big")
            stream = self._streams.get(sid)
            if stream is not None and stream.error is None and not stream.ended:
                known = code in ErrorCode._value2member_map_
                name = ErrorCode(code).name if known else hex(code)
                self._fail(
                    stream, StreamFailed(f"stream reset ({name})", code == ErrorCode.REFUSED_STREAM)
                )
        elif kind == _GOAWAY:
            if sid != 0:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            if length < 8:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            last = int.from_bytes(payload[:4], "big") & _LAST_STREAM_ID
            self.goaway = True
            for stream in list(self._streams.values()):
                if stream.stream_id > last and stream.error is None and not stream.ended:
                    # Never processed by the server: safe to send again, elsewhere.
                    self._fail(stream, StreamFailed("GOAWAY before processing", retry_safe=True))
            self.capacity.set()
            if not self._streams:
                self._close()
        elif kind == _WINDOW_UPDATE:
            if length != 4:
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
            if sid == 0 and not int.from_bytes(payload, "big") & _LAST_STREAM_ID:
                raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of zero")
            # We send no DATA: the server's windows for us do not matter.
        elif kind == _PUSH_PROMISE:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        elif kind == _PRIORITY and sid == 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        # Frames of unknown types are ignored (RFC 9113 5.5).

    def _check_known(self, sid: int) -> None:
        """Frames on a stream we never opened (idle, or a server-initiated id) are an error."""
        if sid % 2 == 0 or sid >= self._next_stream_id:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"frame on idle stream {sid}")

    def _header_fragment_done(self, flags: int) -> None:
        assert self._header_block is not None
        sid, first_flags, block = self._header_block
        if len(block) > MAX_HEADER_LIST:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "header block too large")
        if not flags & _END_HEADERS:
            return
        self._header_block = None
        self._check_known(sid)
        try:
            # Decoded even for streams we gave up on: the HPACK table is per connection.
            headers = self._decoder.decode(bytes(block))
        except HeaderBlockError as exc:
            raise _ConnectionError(ErrorCode.COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self._streams.get(sid)
        if stream is None or stream.error is not None:
            return
        end_stream = bool(first_flags & _END_STREAM)
        if stream.ended:
            raise _ConnectionError(ErrorCode.STREAM_CLOSED, "HEADERS after the end of the stream")
        if stream.headers_done:  # trailers: only the end of the stream matters
            if not end_stream:
                self._stream_error(stream, ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
                return
        else:
            response = _response_head(headers)
            if response is None:
                self._stream_error(stream, ErrorCode.PROTOCOL_ERROR, "malformed response headers")
                return
            if 100 <= response[0] < 200:
                stream.informational += 1
                if end_stream or response[0] == 101 or stream.informational > MAX_INFORMATIONAL:
                    self._stream_error(
                        stream, ErrorCode.PROTOCOL_ERROR, "bad informational response"
                    )
                return  # 1xx: the final response follows
            stream.headers_done = True
            if not stream.headers.done():
                stream.headers.set_result(response)
        if end_stream:
            stream.ended = True
        stream.wake()

    def _settings(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid != 0:
            raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            if len(payload):
                raise _ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(
                ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6"
            )
        for key, value in _SETTING.iter_unpack(payload):
            if key == _HEADER_TABLE_SIZE:
                self._encoder.resize(value)
            elif key == _ENABLE_PUSH:
                if value != 0:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, "a server may not enable push")
            elif key == _MAX_CONCURRENT_STREAMS:
                self._max_concurrent = value
            elif key == _INITIAL_WINDOW_SIZE:
                if value > _LAST_STREAM_ID:
                    raise _ConnectionError(
                        ErrorCode.FLOW_CONTROL_ERROR, "initial window over 2^31-1"
                    )
            elif key == _MAX_FRAME_SIZE:
                if not 16_384 <= value <= MAX_FRAME_SIZE:
                    raise _ConnectionError(ErrorCode.PROTOCOL_ERROR, f"max frame size {value}")
                self._max_send_frame = value
        self._outbox.append(_frame(_SETTINGS, _ACK, 0))
        self.capacity.set()

    def _stream_error(self, stream: _Stream, code: int, message: str) -> None:
        """A malformed response: that stream alone is reset and fails."""
        self._outbox.append(_frame(_RST_STREAM, 0, stream.stream_id, code.to_bytes(4, "big")))
        self._fail(stream, MalformedResponse(f"protocol error: {message}"))

    def _connection_error(self, code: int, message: str) -> None:
        if self._transport is not None and not self.closed:
            self._outbox.append(
                _frame(_GOAWAY, 0, 0, (0).to_bytes(4, "big") + code.to_bytes(4, "big"))
            )
            self._flush()
        self._fail_all(StreamFailed(f"protocol error: {message}"))
        self._close()

    def _fail(self, stream: _Stream, error: H2Error) -> None:
        stream.error = error
        if not stream.headers.done():
            stream.headers.set_exception(error)
        stream.wake()

    def _shared(self) -> bool:
        return sum(not s.ended and s.error is None for s in self._streams.values()) > 1

    def _fail_all(self, error: H2Error) -> None:
        for stream in list(self._streams.values()):
            if not stream.ended and stream.error is None:
                self._fail(stream, error)

    # --- flow control -----------------------------------------------------------------------

    def credit(self, stream: _Stream, amount: int) -> None:
        """The consumer took `amount` flow-controlled bytes: open the windows again, batched."""
        self._conn_credit += amount
        if not stream.ended and stream.error is None:
            total = self._stream_credit.get(stream.stream_id, 0) + amount
            self._stream_credit[stream.stream_id] = total

    def _send_credit(self) -> None:
        if self._transport is None or self.closed:
            return
        for sid, amount in list(self._stream_credit.items()):
            if amount >= STREAM_WINDOW // 2:
                self._outbox.append(_window_update(sid, amount))
                del self._stream_credit[sid]
                stream = self._streams.get(sid)
                if stream is not None:
                    stream.window += amount
        if self._conn_credit >= CONNECTION_WINDOW // 4:
            self._outbox.append(_window_update(0, self._conn_credit))
            self._conn_window += self._conn_credit
            self._conn_credit = 0
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush once the callbacks ready now have run: requests and window updates that many
        streams queue in one loop iteration go out in one TLS record and one send."""
        if not self._coalesce:
            self._flush()
        elif not self._flush_due and self._outbox:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        if self._outbox and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._outbox))
            if self._transport.get_write_buffer_size() > MAX_UNSENT:
                # Our output is a few small frames per request: a server that leaves this much
                # unread while making us answer (PING, SETTINGS) is flooding us.
                self._outbox.clear()
                self._fail_all(StreamFailed("protocol error: the server does not read"))
                self._close()
                return
        self._outbox.clear()

    def _close(self) -> None:
        if self._flush_due:
            self._flush()  # what was queued (a last RST_STREAM, say) goes out before the close
        self.closed = True
        self.capacity.set()
        if self._transport is not None:
            self._transport.close()

    # --- requests ---------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def can_open(self, limit: int) -> bool:
        """Room for one more stream on this connection."""
        if self._next_stream_id >= _LAST_STREAM_ID - 1000:
            self.goaway = True  # ids run out: no new streams here, a new connection takes over
        if self.closed or self.goaway:
            return False
        return self.open_streams < min(limit, self._max_concurrent)

    def open(self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> _Stream:
        """Send a request without a body; returns the stream to read the response from.
        Raises StreamFailed (retry_safe) when the connection can take no new stream."""
        if self.closed or self.goaway:
            raise StreamFailed("connection closed before the request", retry_safe=True)
        sid = self._next_stream_id
        self._next_stream_id += 2
        request = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", path),
            *((k.lower(), v) for k, v in headers if k.lower() not in _HOP_BY_HOP),
        ]
        block = self._encoder.encode(request)
        stream = _Stream(sid, asyncio.get_running_loop().create_future())
        self._streams[sid] = stream
        size = self._max_send_frame
        first, rest = block[:size], block[size:]
        self._outbox.append(
            _frame(_HEADERS, _END_STREAM | (0 if rest else _END_HEADERS), sid, first)
        )
        while rest:
            piece, rest = rest[:size], rest[size:]
            self._outbox.append(_frame(_CONTINUATION, 0 if rest else _END_HEADERS, sid, piece))
        self._flush_soon()
        return stream

    def finish(self, stream: _Stream) -> None:
        """The consumer is done with a stream: reset it if unfinished, return its credit."""
        if stream.finished:
            return
        stream.finished = True
        self._streams.pop(stream.stream_id, None)
        self._stream_credit.pop(stream.stream_id, None)  # stream-level credit dies with it
        self._conn_credit += stream.pending_credit
        stream.pending_credit = 0
        if not stream.ended and stream.error is None and not self.closed:
            self._outbox.append(
                _frame(_RST_STREAM, 0, stream.stream_id, ErrorCode.CANCEL.to_bytes(4, "big"))
            )
        self._send_credit()
        self.capacity.set()
        if self.goaway and not self._streams:
            self._close()

    async def next_chunks(self, stream: _Stream, timeout: float | None) -> list[memoryview] | None:
        """The body bytes that arrived since the last call; None at the end of the body.
        Raises StreamTimedOut when no body byte arrives within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not stream.chunks:
            if stream.error is not None:
                raise stream.error
            if stream.ended:
                return None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                self.timed_out(timeout)
                raise StreamTimedOut(f"no data for {timeout} s")
            stream.waiter = loop.create_future()
            try:
                await asyncio.wait_for(stream.waiter, remaining)
            except TimeoutError:
                self.timed_out(timeout)
                raise StreamTimedOut(f"no data for {timeout} s") from None
            finally:
                stream.waiter = None
        taken = list(stream.chunks)
        stream.chunks.clear()
        credit, stream.pending_credit = stream.pending_credit, 0
        self.credit(stream, credit)
        self._send_credit()
        return taken

    def timed_out(self, timeout: float | None) -> None:
        """A stream waited `timeout` in vain. If nothing at all came from the server in that
        time, the connection is presumed dead (half-open) and closed, so that the next request
        does not wait on it too."""
        idle = time.monotonic() - self.last_received
        if timeout is not None and idle >= timeout and not self.closed:
            self.close()

    def close(self) -> None:
        """Close the connection now."""
        self._fail_all(ConnectionLost("connection closed", self._shared()))
        self._close()


def _authority(host: str, port: int) -> str:
    """The :authority of a request: host (an IPv6 literal in brackets), and the port unless 443."""
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


@dataclass
class Response:
    """Status and headers of a response, and its body: batches of the bytes that arrived,
    as views of the connection's buffers (see _Connection)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[list[memoryview]]
    close: Callable[[], None]


class H2Pool:
    """HTTP/2 connections per origin (at most `connections_per_origin`), streams multiplexed."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        resolve: Resolver,
        connections_per_origin: int = 1,
        streams_per_connection: int = 100,
    ) -> None:
        self._ssl = ssl_context
        self._resolve = resolve
        self._per_origin = connections_per_origin
        self._streams_per_connection = streams_per_connection
        self._pools: dict[tuple[str, int], list[_Connection]] = {}
        self._connecting: dict[tuple[str, int], asyncio.Lock] = {}
        self.not_h2: set[tuple[str, int]] = set()

    async def _connect(self, host: str, port: int, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = await self._resolve(host, port, timeout)
        authority = _authority(host, port)
        key = (host, port)
        error: Exception = ConnectFailed(f"no address for {host}")
        for address in addresses:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Connection(
                            authority, functools.partial(self._forget, key), coalesce=True
                        ),
                        address,
                        port,
                        ssl=self._ssl,
                        server_hostname=host,
                    ),
                    timeout,
                )
            except TimeoutError:
                error = ConnectTimedOut(f"connecting to {host}:{port} timed out")
                continue
            except (OSError, ssl.SSLError) as exc:
                error = ConnectFailed(f"{type(exc).__name__}: {exc}")
                continue
            transport = protocol._transport
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                protocol.close()
                self.not_h2.add((host, port))
                raise NotHTTP2(f"{host}:{port} did not negotiate h2")
            return protocol
        raise error

    async def _connection(self, host: str, port: int, timeout: float | None) -> _Connection:
        """A connection with room for a stream, made if need be; waits at most `timeout` for
        room (ConnectTimedOut), and gives up on an origin whose new connections die at once."""
        key = (host, port)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        fresh_failures = 0
        while True:
            # Looked up each time round: an origin whose connections all ended is forgotten.
            lock = self._connecting.setdefault(key, asyncio.Lock())
            pool = self._pools.setdefault(key, [])
            pool[:] = [c for c in pool if not c.closed and not (c.goaway and not c.open_streams)]
            ready = [c for c in pool if c.can_open(self._streams_per_connection)]
            spare = len([c for c in pool if not c.goaway]) < self._per_origin
            # Streams are spread over up to `connections_per_origin` connections (over a lossy
            # path each TCP connection backs off on its own), a new one made only when every
            # ready one is busy; while one is being made, the others carry on.
            idle = [c for c in ready if not c.open_streams]
            if idle or (ready and (not spare or lock.locked())):
                return min(idle or ready, key=lambda c: c.open_streams)
            if spare:
                async with lock:
                    if len([c for c in pool if not c.goaway]) < self._per_origin:
                        connection = await self._connect(host, port, timeout)
                        pool.append(connection)
                        if connection.can_open(self._streams_per_connection):
                            return connection
                        # Closed, or GOAWAY, during the handshake (a server shedding load).
                        fresh_failures += 1
                        if fresh_failures >= 3:
                            raise ConnectFailed(f"{host}:{port} ends every new connection")
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise ConnectTimedOut(f"no stream free on {host}:{port} within {timeout} s")
            waiters = [asyncio.ensure_future(c.capacity.wait()) for c in pool]
            for c in pool:
                c.capacity.clear()
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def request(
        self,
        host: str,
        port: int,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> Response:
        """Send a GET-like request (no body) and wait for the response headers."""
        for _ in range(3):  # a stream refused or never processed (GOAWAY) may go elsewhere
            connection = await self._connection(host, port, connect_timeout)
            try:
                stream = connection.open(method, path, headers)
            except StreamFailed:
                continue  # closed between the choice and the request: retry_safe by nature
            try:
                status, fields = await asyncio.wait_for(
                    asyncio.shield(stream.headers), read_timeout
                )
            except TimeoutError:
                connection.finish(stream)
                connection.timed_out(read_timeout)
                raise StreamTimedOut(f"no response headers for {read_timeout} s") from None
            except StreamFailed as exc:
                connection.finish(stream)
                if exc.retry_safe:
                    continue
                raise
            except BaseException:
                connection.finish(stream)
                raise
            return Response(
                status,
                fields,
                self._body(connection, stream, read_timeout),
                lambda c=connection, s=stream: c.finish(s),  # type: ignore[misc]
            )
        raise StreamFailed("refused repeatedly")

    async def _body(
        self, connection: _Connection, stream: _Stream, timeout: float | None
    ) -> AsyncIterator[list[memoryview]]:
        try:
            while (chunks := await connection.next_chunks(stream, timeout)) is not None:
                yield chunks
        finally:
            connection.finish(stream)

    def _forget(self, key: tuple[str, int], connection: _Connection) -> None:
        """A connection ended: drop it, and the origin's entry once nothing else is there."""
        pool = self._pools.get(key)
        if pool is not None and connection in pool:
            pool.remove(connection)
        lock = self._connecting.get(key)
        if not pool and (lock is None or not lock.locked()):
            self._pools.pop(key, None)
            self._connecting.pop(key, None)

    async def aclose(self) -> None:
        """Close every connection."""
        for pool in self._pools.values():
            for connection in pool:
                connection.close()
        self._pools.clear()
