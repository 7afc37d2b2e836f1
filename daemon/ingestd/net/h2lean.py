"""A lean HTTP/2 client for large downloads: asyncio protocol + h2, with DATA frames on a fast path.

Why: through httpcore, every 8-16 KiB DATA frame costs several Python-level hops (anyio stream,
httpcore events, h2's state machine, even a `repr()` of the frame for a disabled debug log), and
the event loop saturates near 50-100 MB/s. Here h2 still owns everything that needs a state
machine (SETTINGS, HEADERS/CONTINUATION with HPACK, RST_STREAM, GOAWAY, PING, stream states), but
DATA frames of streams whose headers have arrived are parsed here (one struct unpack), and flow
control for them is ours: WINDOW_UPDATE frames are written when the consumer has taken the bytes,
in batches, so memory stays bounded by the windows. h2 only sees an empty END_STREAM DATA frame
when a stream ends, so its stream states stay right.

This module knows nothing of httpx; net.fetch uses it for HTTPS and maps its errors.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import Encoder, HeaderTuple
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

STREAM_WINDOW = 4 * 1024 * 1024  # per stream: bounds what one slow consumer can buffer
CONNECTION_WINDOW = 32 * 1024 * 1024
MAX_FRAME_SIZE = 2**24 - 1  # let servers send big frames when they are willing to
READ_CHUNK = 512 * 1024  # TLS decrypts straight into buffers of this size (see get_buffer)
_MIN_FREE = 64 * 1024  # a buffer with less room than this is replaced by a fresh one
_DATA, _END_STREAM, _PADDED = 0x0, 0x1, 0x8
_FRAME_HEADER = struct.Struct(">HBBBI")  # 24-bit length (16 + 8), type, flags, stream id
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


Resolver = Callable[[str, int, float | None], Awaitable[Sequence[str]]]


@dataclass
class _Stream:
    stream_id: int
    headers: asyncio.Future[list[tuple[bytes, bytes]]]
    chunks: collections.deque[memoryview] = field(default_factory=collections.deque)
    pending_credit: int = 0  # flow-controlled bytes arrived but not yet handed to the consumer
    window: int = STREAM_WINDOW  # what the server may still send before our next WINDOW_UPDATE
    ended: bool = False
    error: H2Error | None = None
    waiter: asyncio.Future[None] | None = None
    headers_done: bool = False
    finished: bool = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


_STATIC_FIELDS = {pair: i for i, pair in enumerate(HeaderTable.STATIC_TABLE, 1)}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _index)


class _LiteralEncoder(Encoder):
    """HPACK with neither the dynamic table nor Huffman coding: every field is a fixed string,
    computed once. h2's own encoder spends ~7 % of the event loop on a small-file workload
    re-encoding the same request fields with Huffman codes; the bytes saved are a few dozen
    per request. Dynamic table size updates are still sent, as the server's settings require.
    """

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[tuple[bytes, bytes], bytes] = {}

    def encode(
        self,
        headers: Iterable[
            HeaderTuple
            | tuple[bytes | str, bytes | str]
            | tuple[bytes | str, bytes | str, bool | None]
        ]
        | dict[bytes | str, bytes | str],
        huffman: bool = True,
    ) -> bytes:
        block = []
        if self.header_table.resized:
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
        pairs = headers.items() if isinstance(headers, dict) else headers
        for pair in pairs:
            name, value = _as_bytes(pair[0]), _as_bytes(pair[1])
            never = (isinstance(pair, HeaderTuple) and not pair.indexable) or (
                len(pair) > 2 and bool(pair[2])
            )
            encoded = None if never else self._fields.get((name, value))
            if encoded is None:
                encoded = _literal(name, value, never)
                if not never and name != b":path" and len(self._fields) < 256:
                    self._fields[(name, value)] = encoded
            block.append(encoded)
        return b"".join(block)


def _as_bytes(value: bytes | str | bool | None) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _literal(name: bytes, value: bytes, never_indexed: bool) -> bytes:
    """One field: indexed when the static table has it whole, else a literal that is not added
    to the dynamic table (RFC 7541 6.2.2 / 6.2.3), name indexed when the static table has it."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None and not never_indexed:
        head = encode_integer(index, 7)
        head[0] |= 0x80
        return bytes(head)
    name_index = _STATIC_NAMES.get(name, 0)
    head = encode_integer(name_index, 4)
    if never_indexed:
        head[0] |= 0x10
    parts = [bytes(head)]
    if not name_index:
        parts += [bytes(encode_integer(len(name), 7)), name]
    parts += [bytes(encode_integer(len(value), 7)), value]
    return b"".join(parts)


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/2 connection. All methods run on the event loop.

    A buffered protocol: the TLS layer decrypts straight into our buffer (no intermediate bytes
    objects), and DATA payloads reach the consumer as memoryviews of that buffer, so body bytes
    are never copied in Python between decryption and the file write. A buffer is only ever
    appended to; when it runs short a fresh one takes over (the unparsed tail is copied, a
    partial frame at most), and the old one lives on only as long as views of it do.
    """

    def __init__(self, authority: str) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # open() builds request headers itself (lower-case, no hop-by-hop fields).
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config)
        self._h2.encoder = _LiteralEncoder()
        self._authority = authority.encode("ascii")
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._buffer = bytearray(READ_CHUNK)
        self._start = 0  # first byte not yet parsed
        self._end = 0  # first byte not yet filled
        self._exported = False  # body bytes of this buffer were handed out: never rewrite it
        self._conn_credit = 0
        self._conn_window = CONNECTION_WINDOW
        self._stream_credit: dict[int, int] = {}
        self.closed = False
        self.goaway = False
        self.capacity = asyncio.Event()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,
            },
        )
        # h2 takes initial_values as already in force, so our SETTINGS ACK changes nothing and
        # its own frame-size check would stay at the 16 KiB default: any frame it parses over
        # that (a long header block, DATA off the fast path) would kill the connection.
        self._h2.max_inbound_frame_size = MAX_FRAME_SIZE
        self._h2.initiate_connection()
        # Raised once, before any DATA: h2 never sees DATA payloads afterwards (see module doc).
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
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
            self._buffer, self._start, self._end = fresh, 0, pending
            self._exported = False
        return memoryview(self._buffer)[self._end :]

    def data_received(self, data: bytes) -> None:
        """Bytes from a non-buffered source (tests): fed through the buffer."""
        view = memoryview(data)
        while view:
            target = self.get_buffer(len(view))
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        buffer = self._buffer
        view = memoryview(buffer)
        offset = self._start
        filled = self._end
        control_from = -1  # start of a run of frames for h2
        try:
            while filled - offset >= 9:
                high, low, kind, flags, sid = _FRAME_HEADER.unpack_from(buffer, offset)
                length = high << 8 | low
                end = offset + 9 + length
                if end > filled:
                    break
                stream = None
                if kind == _DATA:
                    sid &= 0x7FFFFFFF
                    stream = self._streams.get(sid)
                    if stream is None and sid != 0:
                        # A stream we gave up on: its bytes still count against the
                        # connection window, so give them back.
                        self._conn_credit += length
                        self._conn_window -= length
                        if self._conn_window < 0:
                            raise h2.exceptions.FlowControlError("DATA beyond the window")
                        offset = end
                        continue
                    if stream is not None and not stream.headers_done and control_from >= 0:
                        # Its HEADERS may be in the run not yet given to h2.
                        self._to_h2(bytes(view[control_from:offset]))
                        control_from = -1
                    if stream is not None and not stream.headers_done:
                        stream = None  # DATA before HEADERS: h2 raises the protocol error
                if stream is None:
                    if control_from < 0:
                        control_from = offset
                    offset = end
                    continue
                if control_from >= 0:
                    self._to_h2(bytes(view[control_from:offset]))
                    control_from = -1
                self._data_frame(stream, flags, view[offset + 9 : end], length)
                offset = end
            if control_from >= 0:
                self._to_h2(bytes(view[control_from:offset]))
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(StreamFailed(f"protocol error: {exc}"))
            self._close()
            return
        finally:
            view.release()
        self._start = offset
        if offset == filled and not self._exported:
            # All parsed and no body bytes handed out from this buffer: start it over.
            self._start = self._end = 0
        self._send_credit()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(StreamFailed(f"connection lost: {exc or 'closed by peer'}"))
        self.capacity.set()

    # --- frames ---------------------------------------------------------------------------

    def _data_frame(self, stream: _Stream, flags: int, payload: memoryview, length: int) -> None:
        stream.window -= length
        self._conn_window -= length
        if stream.window < 0 or self._conn_window < 0:
            # A server that ignores flow control could make us buffer without bound.
            raise h2.exceptions.FlowControlError("DATA beyond the advertised window")
        if flags & _PADDED:
            pad = payload[0] if len(payload) else 0
            payload = payload[1 : len(payload) - pad]
        if len(payload):
            stream.chunks.append(payload)
            self._exported = True
        stream.pending_credit += length
        if flags & _END_STREAM:
            # Let h2 close the stream: an empty DATA frame carrying only END_STREAM.
            self._to_h2(b"\x00\x00\x00\x00\x01" + stream.stream_id.to_bytes(4, "big"))
        stream.wake()

    def _to_h2(self, frames: bytes) -> None:
        for event in self._h2.receive_data(frames):
            self._on_event(event)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None and not stream.headers.done():
                # h2 checks Content-Length against the DATA it saw, and it sees none of ours:
                # the caller checks the length instead (net.fetch users do, byte for byte).
                h2_stream = self._h2.streams.get(stream.stream_id)
                if h2_stream is not None:
                    h2_stream._expected_content_length = None
                stream.headers_done = True
                stream.headers.set_result(list(event.headers or []))
        elif isinstance(event, h2.events.DataReceived):  # not on the fast path (rare)
            stream = self._streams.get(event.stream_id or 0)
            if stream is None:
                self._conn_credit += event.flow_controlled_length or 0
            else:
                if event.data:
                    stream.chunks.append(memoryview(event.data))
                stream.pending_credit += event.flow_controlled_length or 0
                stream.wake()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream.ended = True
                stream.wake()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                self._fail(stream, StreamFailed(f"stream reset ({event.error_code!r})", refused))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id or 0
            for stream in list(self._streams.values()):
                if stream.stream_id > last:  # never processed by the server: safe to retry
                    self._fail(stream, StreamFailed("GOAWAY before processing", retry_safe=True))
            if not self._streams:
                self._close()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.capacity.set()

    def _fail(self, stream: _Stream, error: H2Error) -> None:
        stream.error = error
        if not stream.headers.done():
            stream.headers.set_exception(error)
        stream.wake()

    def _fail_all(self, error: H2Error) -> None:
        for stream in list(self._streams.values()):
            if not stream.ended:
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
        frames = []
        for sid, amount in list(self._stream_credit.items()):
            if amount >= STREAM_WINDOW // 2:
                frames.append(_window_update(sid, amount))
                del self._stream_credit[sid]
                stream = self._streams.get(sid)
                if stream is not None:
                    stream.window += amount
        if self._conn_credit >= CONNECTION_WINDOW // 4:
            frames.append(_window_update(0, self._conn_credit))
            self._conn_window += self._conn_credit
            self._conn_credit = 0
        if frames:
            self._flush()
            self._transport.write(b"".join(frames))

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self.closed:
            self._transport.write(data)

    def _close(self) -> None:
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
        if self.closed or self.goaway:
            return False
        remote = self._h2.remote_settings.max_concurrent_streams
        return self.open_streams < min(limit, remote) and self._h2.highest_outbound_stream_id < (
            2**31 - 1000
        )

    def open(self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> _Stream:
        """Send a request without a body; returns the stream to read the response from."""
        sid = self._h2.get_next_available_stream_id()
        request = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", path),
            *((k.lower(), v) for k, v in headers if k.lower() not in _HOP_BY_HOP),
        ]
        stream = _Stream(sid, asyncio.get_running_loop().create_future())
        self._streams[sid] = stream
        self._h2.send_headers(sid, request, end_stream=True)
        self._flush()
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
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
        self._send_credit()
        self._flush()
        self.capacity.set()
        if self.goaway and not self._streams:
            self._close()

    async def next_chunks(self, stream: _Stream, timeout: float | None) -> list[memoryview] | None:
        """The body bytes that arrived since the last call; None at the end of the body."""
        while not stream.chunks:
            if stream.error is not None:
                raise stream.error
            if stream.ended:
                return None
            stream.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(stream.waiter, timeout)
            except TimeoutError:
                raise StreamTimedOut(f"no data for {timeout} s") from None
            finally:
                stream.waiter = None
        taken = list(stream.chunks)
        stream.chunks.clear()
        credit, stream.pending_credit = stream.pending_credit, 0
        self.credit(stream, credit)
        self._send_credit()
        return taken

    def close(self) -> None:
        """Close the connection now."""
        self._fail_all(StreamFailed("connection closed"))
        self._close()


def _authority(host: str, port: int) -> str:
    """The :authority of a request: host (an IPv6 literal in brackets), and the port unless 443."""
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


def _window_update(stream_id: int, increment: int) -> bytes:
    return b"\x00\x00\x04\x08\x00" + stream_id.to_bytes(4, "big") + increment.to_bytes(4, "big")


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
        error: Exception = ConnectFailed(f"no address for {host}")
        for address in addresses:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Connection(authority),
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
        key = (host, port)
        lock = self._connecting.setdefault(key, asyncio.Lock())
        while True:
            pool = self._pools.setdefault(key, [])
            pool[:] = [c for c in pool if not c.closed and not (c.goaway and not c.open_streams)]
            ready = [c for c in pool if c.can_open(self._streams_per_connection)]
            if ready:
                return min(ready, key=lambda c: c.open_streams)
            if len([c for c in pool if not c.goaway]) < self._per_origin:
                async with lock:
                    if len([c for c in pool if not c.goaway]) < self._per_origin:
                        connection = await self._connect(host, port, timeout)
                        pool.append(connection)
                        return connection
                continue
            waiters = [asyncio.ensure_future(c.capacity.wait()) for c in pool]
            for c in pool:
                c.capacity.clear()
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
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
            stream = connection.open(method, path, headers)
            try:
                raw = await asyncio.wait_for(asyncio.shield(stream.headers), read_timeout)
            except TimeoutError:
                connection.finish(stream)
                raise StreamTimedOut(f"no response headers for {read_timeout} s") from None
            except StreamFailed as exc:
                connection.finish(stream)
                if exc.retry_safe:
                    continue
                raise
            except BaseException:
                connection.finish(stream)
                raise
            status = 0
            fields = []
            for name, value in raw:
                if name == b":status":
                    status = int(value)
                elif not name.startswith(b":"):
                    fields.append((name, value))
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

    async def aclose(self) -> None:
        """Close every connection."""
        for pool in self._pools.values():
            for connection in pool:
                connection.close()
        self._pools.clear()
