"""The asyncio side of one HTTP/2 connection: a buffered protocol around a sans-IO Connection.

`H2Protocol` feeds the bytes TLS decrypts (straight into the Connection's receive buffer: no
intermediate bytes objects) to the Connection, turns its events into per-stream futures and
body queues, and writes what the Connection queues. Writes made while the loop runs the
callbacks ready now are coalesced into one (one TLS record, one send).

Invariants: a stream's body chunks wait here only until its consumer takes them; the bytes go
back to the server's windows when the consumer acknowledges them (after writing them), or when
it releases the stream. Our own output that the server leaves unread may not pass MAX_UNSENT
(a server that makes us answer PINGs without reading is flooding us): past it, the connection
ends.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Callable, Sequence
from typing import cast

from ingestd.net.http2.connection import (
    MAX_UNSENT,
    Connection,
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PinBudget,
    PingAcknowledged,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamMalformed,
    StreamReset,
    StreamUnavailable,
)
from ingestd.net.http2.errors import (
    ConnectionLost,
    H2Error,
    MalformedResponse,
    StreamFailed,
    StreamTimedOut,
)


class Stream:
    """One request's response, as the protocol delivers it."""

    __slots__ = ("chunks", "ended", "error", "head", "stream_id", "unacked", "waiter")

    def __init__(self, stream_id: int, head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]]):
        self.stream_id = stream_id
        self.head = head  # status and regular fields
        self.chunks: collections.deque[memoryview | bytes] = collections.deque()
        self.unacked = 0  # body bytes delivered here, not yet acknowledged by the consumer
        self.ended = False
        self.error: H2Error | None = None
        self.waiter: asyncio.Future[bool] | None = None  # True: woken; False: timed out

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(True)


# Timeouts are one timer per wait, set by hand: asyncio.wait_for (and the shield it needs for
# the head) costs several times as much, and runs three times per file.


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _head_late(head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]], timeout: float) -> None:
    if not head.done():
        head.set_exception(StreamTimedOut(f"no response headers for {timeout} s"))


class H2Protocol(asyncio.BufferedProtocol):
    """One HTTP/2 connection on an asyncio transport. All methods run on the event loop."""

    def __init__(
        self,
        authority: str,
        on_lost: Callable[[H2Protocol], None] | None = None,
        *,
        pins: PinBudget | None = None,
        coalesce: bool = False,
    ) -> None:
        self.h2 = Connection(authority, pins)
        self._on_lost = on_lost
        # Off, each call writes at once (what the frame-level tests read back).
        self._coalesce = coalesce
        self._flush_due = False
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, Stream] = {}
        self.closed = False
        self.capacity = asyncio.Event()  # set when a stream may have become free
        self.last_received = time.monotonic()  # when the server last sent anything
        self.idle_since: float | None = time.monotonic()  # last stream released; None: busy
        self._pings: dict[bytes, asyncio.Future[None]] = {}  # PINGs sent, by payload

    # --- asyncio.BufferedProtocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self._flush()
        self.capacity.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.h2.receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        self.last_received = time.monotonic()
        self._dispatch(self.h2.received(nbytes))

    def data_received(self, data: bytes) -> None:
        """Bytes from a non-buffered source (tests)."""
        if self.closed:
            return
        self.last_received = time.monotonic()
        self._dispatch(self.h2.receive_data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for waiter in self._pings.values():
            waiter.cancel()
        self._pings.clear()
        self._fail_all(
            ConnectionLost(f"connection lost: {exc or 'closed by peer'}", self._shared())
        )
        self.capacity.set()
        # A daemon meets many CDN hosts over weeks: a dead connection keeps no read buffer
        # (views already handed out keep theirs alive on their own), and leaves its pool.
        self.h2.forget_buffers()
        if self._on_lost is not None:
            self._on_lost(self)

    # --- events ---------------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        streams = self._streams
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                data = cast(DataReceived, event)
                stream = streams.get(data.stream_id)
                if stream is None:
                    self.h2.acknowledge(data.stream_id, data.size)
                    continue
                stream.chunks.extend(data.chunks)
                stream.unacked += data.size
                stream.wake()
            elif kind is ResponseReceived:
                head = cast(ResponseReceived, event)
                stream = streams.get(head.stream_id)
                if stream is not None and not stream.head.done():
                    stream.head.set_result((head.status, head.headers))
            elif kind is StreamEnded:
                stream = streams.get(cast(StreamEnded, event).stream_id)
                if stream is not None:
                    stream.ended = True
                    stream.wake()
            elif kind is StreamReset:
                reset = cast(StreamReset, event)
                stream = streams.get(reset.stream_id)
                if stream is not None:
                    self._fail(stream, StreamFailed(reset.message, reset.retry_safe))
            elif kind is StreamMalformed:
                malformed = cast(StreamMalformed, event)
                stream = streams.get(malformed.stream_id)
                if stream is not None:
                    # Cut short of its content-length, a body is truncated: what came is kept.
                    error = StreamFailed if malformed.short else MalformedResponse
                    self._fail(stream, error(malformed.message))
            elif kind is SettingsReceived or kind is GoAwayReceived:
                self.capacity.set()
            elif kind is PingAcknowledged:
                waiter = self._pings.pop(cast(PingAcknowledged, event).payload, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif kind is ConnectionTerminated:
                terminated = cast(ConnectionTerminated, event)
                self._flush()  # our GOAWAY says why
                self._fail_all(StreamFailed(f"protocol error: {terminated.message}"))
                self._shut()
                return
        self._flush()
        if not self.h2.accepting and not self.h2.open_streams:
            self._shut()  # GOAWAY, or ids run out, and nothing left to finish

    def _fail(self, stream: Stream, error: H2Error) -> None:
        stream.error = error
        if not stream.head.done():
            stream.head.set_exception(error)
            stream.head.exception()  # retrieved: nobody may be waiting any more
        stream.wake()

    def _fail_all(self, error: H2Error) -> None:
        for stream in list(self._streams.values()):
            if not stream.ended and stream.error is None:
                self._fail(stream, error)

    def _shared(self) -> bool:
        """Other streams were live on the connection: its loss was no one response's doing."""
        return sum(not s.ended and s.error is None for s in self._streams.values()) > 1

    # --- writing --------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        if not self._coalesce:
            self._flush()
        elif (
            not self._flush_due and self.h2.has_data_to_send
        ):  # most acks and releases send nothing
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        data = self.h2.data_to_send()
        if not data or self._transport is None or self.closed:
            return
        self._transport.write(data)
        if self._transport.get_write_buffer_size() > MAX_UNSENT:
            # Our output is a few small frames per request: a server that leaves this much
            # unread while making us answer (PING, SETTINGS) is flooding us.
            self._fail_all(StreamFailed("protocol error: the server does not read"))
            self._shut()

    def _shut(self) -> None:
        """Close the transport (after what is queued), failing nothing: callers did that."""
        if self._flush_due:
            self._flush()  # what was queued (a last RST_STREAM, say) goes out before the close
        self.closed = True
        for waiter in self._pings.values():
            waiter.cancel()
        self._pings.clear()
        self.capacity.set()
        if self._transport is not None:
            self._transport.close()

    # --- requests -------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams opened and not yet released."""
        return len(self._streams)

    @property
    def accepting(self) -> bool:
        """Whether new streams may ever be opened here again."""
        return not self.closed and self.h2.accepting

    def can_open(self, limit: int) -> bool:
        """Room for one more stream now."""
        return not self.closed and self.h2.can_open(limit)

    def open(self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Stream:
        """Send a request without a body; returns the stream to read the response from.
        Raises StreamFailed (retry_safe) when the connection can take no new stream."""
        if self.closed:
            raise StreamFailed("connection closed before the request", retry_safe=True)
        try:
            sid = self.h2.send_request(method, path, headers)
        except StreamUnavailable as exc:
            raise StreamFailed(str(exc), retry_safe=True) from None
        stream = Stream(sid, asyncio.get_running_loop().create_future())
        self._streams[sid] = stream
        self.idle_since = None
        self._flush_soon()
        return stream

    async def response_head(
        self, stream: Stream, timeout: float | None
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The stream's response head: status and regular fields. Raises StreamTimedOut when
        none arrives within `timeout` (the stream stays the caller's to release), and the
        stream's error if it failed first."""
        head = stream.head
        if head.done() or timeout is None:
            return await head
        timer = asyncio.get_running_loop().call_later(timeout, _head_late, head, timeout)
        try:
            return await head
        finally:
            timer.cancel()

    async def next_chunks(
        self, stream: Stream, timeout: float | None
    ) -> list[memoryview | bytes] | None:
        """The body bytes that arrived since the last call; None at the end of the body.
        Raises StreamTimedOut when no body byte arrives within `timeout`. The caller
        acknowledges them (`acknowledge`) once written."""
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
            stream.waiter = waiter = loop.create_future()
            timer = None if remaining is None else loop.call_later(remaining, _expire, waiter)
            try:
                woken = await waiter
            finally:
                stream.waiter = None
                if timer is not None:
                    timer.cancel()
            if not woken:
                self.timed_out(timeout)
                raise StreamTimedOut(f"no data for {timeout} s")
        taken = list(stream.chunks)
        stream.chunks.clear()
        return taken

    def acknowledge(self, stream: Stream, size: int) -> None:
        """The consumer is done with `size` body bytes: the server may send as many again."""
        size = min(size, stream.unacked)
        if size and not self.closed:
            stream.unacked -= size
            self.h2.acknowledge(stream.stream_id, size)
            self._flush_soon()

    def release(self, stream: Stream) -> None:
        """The consumer is done with a stream: reset it if unfinished, free its slot."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        if not self.closed:
            self.h2.release(stream.stream_id)
            self._flush_soon()
        self.capacity.set()
        if not self._streams:
            self.idle_since = time.monotonic()
            if not self.h2.accepting:
                self._shut()  # drained

    def ping(self) -> asyncio.Future[None]:
        """Send a PING; the future is done when the server answers it (cancelled if the
        connection ends first)."""
        payload = os.urandom(8)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[payload] = waiter
        self.h2.ping(payload)
        self._flush_soon()
        return waiter

    def timed_out(self, timeout: float | None) -> None:
        """A stream waited `timeout` in vain. If nothing at all came from the server in that
        time, the connection is presumed dead (half-open) and closed, so that the next request
        does not wait on it too."""
        idle = time.monotonic() - self.last_received
        if timeout is not None and idle >= timeout and not self.closed:
            self.abort("connection silent")

    def abort(self, reason: str = "connection closed") -> None:
        """Close the connection now, failing every stream still open."""
        self._fail_all(ConnectionLost(reason, self._shared()))
        if not self.closed:
            self.h2.close()
        self._shut()
