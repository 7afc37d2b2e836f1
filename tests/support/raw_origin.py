"""A scriptable HTTPS HTTP/2 origin for hostile-server tests.

hypercorn (support.origin) cannot send a malformed response: h2 refuses upper-case names,
repeated Content-Length fields, values that are not ASCII, and so on. This origin sends any
header list verbatim, and can end a response any way a broken or overloaded server does.

How it speaks HTTP/2: h2 (server side) runs each connection: preface, SETTINGS, PING, request
parsing, RST_STREAM both ways, WINDOW_UPDATE accounting, and it writes the DATA frames, so the
client's flow-control windows are honoured by h2's own `local_flow_control_window`. Only the
response HEADERS (and CONTINUATION) frames are written by hand, encoded with the connection's
own hpack Encoder (`H2Connection.encoder`: h2 keeps its table size in step with the client's
SETTINGS, and h2 never encodes a header block itself here, so the client's HPACK table stays in
sync). This relies on one property of h2 4.x: on a server stream (half-closed remote) it allows
DATA without having sent HEADERS, so after hand-written HEADERS `send_data`, `end_stream` and
`reset_stream` work as usual. A HEADERS frame that carries END_STREAM is reported to h2 by
calling `end_stream()` and discarding the 9-byte empty DATA frame it queues (h2's output was
flushed just before). No private h2 attribute is touched. `start()` serves one real request
through this path, so an h2 release that breaks it fails at once.

Runs in a background thread with its own event loop (synchronous e2e tests can use it), on
127.0.0.1 and an ephemeral port, certificate from a throw-away trustme CA (`ca_pem_path`), ALPN
h2 only. The accept loop is ours, so the server can change mode on the same port while running:
`refuse()` closes the listening socket (the kernel refuses connections), `blackhole()` accepts
TCP but never answers the TLS handshake, `restore()` serves again; the first two also abort the
connections being served unless `drop=False`. `accepts` counts accepted TCP connections per
mode. A blackholed connection stays unanswered until `stop()`, even after
`restore()` (a real black hole would let it complete later); the client's timeout ends it.

URLs: `/v/<name>.mp4?size=N&expire=...&signature=abc`. By default a name gets
`support.origin.content(name, size)` with a strong ETag, honouring Range/If-Range (206, or 416
past the end). `script(name, [Reply(...), ...])` scripts the next requests for a name, one Reply
each, in order; then the default applies again. Every request is recorded (`requests_for`).
For example::

    origin.script("a", [Reply(limit=1000, end="reset")])  # the real slice's start, then RST
    origin.script("b", [Reply(override=[("Content-Length", "1")])])  # default, one field changed
    origin.script("c", [Reply(limit=10)])  # 10 bytes of the default body, then END_STREAM
    origin.script("d", [Reply(bytes_per_second=1)])  # 1-byte frames, 1 s apart, until it leaves
    origin.script("e", [Reply(status=503, headers=[("retry-after", "1")], body=b"")])

`raw_get` is a small blocking HTTP/2 client that reads raw frames and decodes header blocks with
hpack, so a test sees exactly what went over the wire.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack

from support.loop_server import LoopServer
from support.origin import DEFAULT_SIZE, LAST_MODIFIED, content, etag, stop_loop_thread

Field = tuple[str | bytes, str | bytes]
Header = tuple[bytes, bytes]
End = Literal["end", "reset", "hang", "close"]
Body = bytes | Callable[[int], bytes]
Mode = Literal["serve", "refuse", "blackhole"]

DATA_FRAME = 16 * 1024  # DATA payload per frame unless a Reply says otherwise
INTERNAL_ERROR, CANCEL = 0x2, 0x8
_DATA, _HEADERS, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x3, 0x4
_PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_NAME_RE = re.compile(r"/v/([A-Za-z0-9._-]+)\.mp4")
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One raw HTTP/2 frame."""
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags])
    return head + stream_id.to_bytes(4, "big") + payload


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@dataclass(frozen=True)
class Reply:
    """One scripted response. Fields left at their defaults give the default response.

    status:   the `:status` value (an int, or any str verbatim); None: the default's status.
    headers:  the header list sent verbatim after `:status` instead of the default list; if it
              names `:status` itself, no `:status` is prepended (pseudo-header order tests).
    override: fields replacing every same-named (case-insensitive) field of the list, in place
              of the first one; appended when there is none. Values may repeat a name.
    extra:    fields appended verbatim. drop: names removed (case-insensitive).
    body:     bytes, or a callable given the request's Range start (0 without one) returning
              bytes; None: the default body for the request (its range's slice).
    limit:    send only the first `limit` bytes of the body.
    end:      "end" (END_STREAM, on HEADERS when there is no body), "reset" (RST_STREAM with
              `reset_code`), "hang" (never end: wait until the client resets or goes away),
              "close" (close the connection, without GOAWAY).
    delay:    seconds before the HEADERS (math.inf: never answer); cut short if the client goes.
    bytes_per_second: pace the body at this rate, in DATA frames of `frame_size` bytes
              (default a tenth of a second's worth), until the body ends or the client goes.
    frame_size: DATA payload per frame (default 16 KiB, or as above when paced).
    """

    status: int | str | None = None
    headers: Sequence[Field] | None = None
    override: Sequence[Field] = ()
    extra: Sequence[Field] = ()
    drop: Sequence[str] = ()
    body: Body | None = None
    limit: int | None = None
    end: End = "end"
    reset_code: int = INTERNAL_ERROR
    delay: float = 0.0
    bytes_per_second: float | None = None
    frame_size: int | None = None

    def __post_init__(self) -> None:
        if self.end not in ("end", "reset", "hang", "close"):
            raise ValueError(f"unknown end {self.end!r}")
        if self.bytes_per_second is not None and self.bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")

    def compose(self, default: list[Header]) -> list[Header]:
        """The fields sent for a default list (`:status` is prepended by the origin)."""
        fields = default if self.headers is None else [(_b(k), _b(v)) for k, v in self.headers]
        overrides = [(_b(k), _b(v)) for k, v in self.override]
        replaced = {k.lower() for k, _ in overrides}
        dropped = {_b(n).lower() for n in self.drop}
        out: list[Header] = []
        placed: set[bytes] = set()
        for k, v in fields:
            low = k.lower()
            if low in replaced:
                if low not in placed:
                    placed.add(low)
                    out += [f for f in overrides if f[0].lower() == low]
            elif low not in dropped:
                out.append((k, v))
        out += [f for f in overrides if f[0].lower() not in placed]
        out += [(_b(k), _b(v)) for k, v in self.extra]
        return out


@dataclass
class RequestRecord:
    """One request as the origin saw it, and what it sent back."""

    name: str | None
    path: str  # the whole :path, query included
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated field joined with ", "
    raw_headers: list[Header]
    time: float  # time.monotonic() when the request arrived
    stream_id: int
    connection: int  # served connections numbered from 1 (start()'s own check took 1)
    script_index: int | None  # which Reply of the name's script (0-based); None: the default
    status: str | None = None  # the :status sent, None until HEADERS went out
    response_headers: list[Header] = field(default_factory=list)
    bytes_sent: int = 0  # DATA payload bytes
    ended: Literal["end", "reset", "close"] | None = None  # how the origin ended it, if it did
    client_reset: bool = False  # the client sent RST_STREAM before the origin ended the stream
    reset_code: int | None = None  # its error code
    disconnected: bool = False  # the connection went away before the origin ended the stream
    done: bool = False  # the origin has finished with this request

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def if_range(self) -> str | None:
        return self.headers.get("if-range")


@dataclass
class _Default:
    status: int
    headers: list[Header]
    body: bytes


def default_response(name: str | None, size: int, headers: dict[str, str]) -> _Default:
    """What the origin sends when nothing is scripted."""
    if name is None:
        return _Default(
            404, [(b"content-type", b"text/plain"), (b"content-length", b"8")], b"no such\n"
        )
    data, tag = content(name, size), etag(name, size)
    fields = [
        (b"content-type", b"video/mp4"),
        (b"etag", tag.encode()),
        (b"last-modified", LAST_MODIFIED.encode()),
        (b"accept-ranges", b"bytes"),
    ]
    match = _RANGE_RE.fullmatch(headers.get("range", "").strip())
    if match and headers.get("if-range", tag) in (tag, LAST_MODIFIED):
        start = int(match.group(1))
        last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        if start >= size or last < start:
            return _Default(
                416,
                [(b"content-range", f"bytes */{size}".encode()), (b"content-length", b"0")],
                b"",
            )
        piece = data[start : last + 1]
        fields += [
            (b"content-length", str(len(piece)).encode()),
            (b"content-range", f"bytes {start}-{last}/{size}".encode()),
        ]
        return _Default(206, fields, piece)
    return _Default(200, [*fields, (b"content-length", str(size).encode())], data)


def _range_start(headers: dict[str, str]) -> int:
    match = _RANGE_RE.fullmatch(headers.get("range", "").strip())
    return int(match.group(1)) if match else 0


class _Stream:
    def __init__(self, stream_id: int, record: RequestRecord) -> None:
        self.id = stream_id
        self.record = record
        self.wake = asyncio.Event()  # window opened, or the client went away
        self.gone = asyncio.Event()  # the client reset the stream or the connection ended


class _Connection(asyncio.Protocol):
    """One served TLS connection: h2 for the machinery, HEADERS by hand (module docstring)."""

    def __init__(self, origin: RawOrigin, number: int, drops: int) -> None:
        self._origin = origin
        self.number = number
        self._drops = drops  # the origin's drop count when its TCP connection was accepted
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.silent = False  # reads and answers nothing (a flow a NAT dropped)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._origin._drops != self._drops:  # dropped while its TLS handshake ran
            transport.abort()
            return
        self._origin._live.add(self)
        self._h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._origin._live.discard(self)
        for stream in self._streams.values():
            self._origin._update(stream.record, disconnected=True)
            stream.gone.set()
            stream.wake.set()

    def data_received(self, data: bytes) -> None:
        if self.silent:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()  # h2's GOAWAY
            self.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id:
                self._request(event.stream_id, [(_b(k), _b(v)) for k, v in event.headers or []])
            elif isinstance(event, h2.events.StreamReset) and event.stream_id:
                stream = self._streams.get(event.stream_id)
                if stream is not None and stream.record.ended is None:
                    self._origin._update(
                        stream.record, client_reset=True, reset_code=int(event.error_code)
                    )
                    stream.gone.set()
                    stream.wake.set()
            elif isinstance(event, h2.events.DataReceived) and event.stream_id:
                self._h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                for stream in self._streams.values():
                    stream.wake.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush()
                self.abort()
        self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _request(self, stream_id: int, fields: list[Header]) -> None:
        pseudo = {k: v for k, v in fields if k.startswith(b":")}
        headers: dict[str, str] = {}
        for k, v in fields:
            if not k.startswith(b":"):
                key, value = k.decode("latin-1").lower(), v.decode("latin-1")
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        path = pseudo.get(b":path", b"").decode("latin-1")
        parts = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        match = _NAME_RE.fullmatch(parts.path)
        name = match.group(1) if match else None
        reply, index = self._origin._next_reply(name)
        record = RequestRecord(
            name, path, query, headers, fields, time.monotonic(), stream_id, self.number, index
        )
        stream = _Stream(stream_id, record)
        self._streams[stream_id] = stream
        if parts.path == "/healthz":
            default = _Default(200, [(b"content-length", b"3")], b"ok\n")
        else:
            self._origin._add(record)
            size = int(query.get("size", DEFAULT_SIZE))
            default = default_response(name, size, headers)
        self._origin._spawn(self._respond(stream, reply or Reply(), default))

    async def _respond(self, stream: _Stream, reply: Reply, default: _Default) -> None:
        try:
            await self._serve(stream, reply, default)
        except h2.exceptions.StreamClosedError:
            pass  # the client reset it between two of our steps
        finally:
            self._streams.pop(stream.id, None)
            self._origin._update(stream.record, done=True)

    async def _serve(self, stream: _Stream, reply: Reply, default: _Default) -> None:
        if reply.delay and await _wait(stream.gone, reply.delay):
            return
        fields = reply.compose(default.headers)
        if not any(k == b":status" for k, _ in fields):
            status = default.status if reply.status is None else reply.status
            fields = [(b":status", str(status).encode()), *fields]
        body = default.body
        if reply.body is not None:
            body = (
                reply.body(_range_start(stream.record.headers))
                if callable(reply.body)
                else reply.body
            )
        if reply.limit is not None:
            body = body[: reply.limit]
        if self.closed or stream.gone.is_set():
            return
        end_on_headers = not body and reply.end == "end"
        self._send_headers(stream.id, fields, end_on_headers)
        status_sent = next((v for k, v in fields if k == b":status"), b"").decode("latin-1")
        self._origin._update(stream.record, status=status_sent, response_headers=fields)
        if end_on_headers:
            self._origin._update(stream.record, ended="end")
            return
        if not await self._send_body(stream, body, reply) or reply.end == "end":
            return
        if reply.end == "reset":
            self._h2.reset_stream(stream.id, reply.reset_code)
            self._flush()
            self._origin._update(stream.record, ended="reset")
        elif reply.end == "close":
            self._origin._update(stream.record, ended="close")
            assert self.transport is not None
            self.transport.close()
        else:  # hang
            await stream.gone.wait()

    def _send_headers(self, stream_id: int, fields: list[Header], end_stream: bool) -> None:
        """HEADERS (+ CONTINUATION) written by hand: the fields go out exactly as given."""
        self._flush()  # whatever h2 queued goes first
        block = self._h2.encoder.encode(fields)
        size = self._h2.max_outbound_frame_size
        pieces = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
        out = bytearray()
        for i, piece in enumerate(pieces):
            last = _END_HEADERS if i == len(pieces) - 1 else 0
            if i == 0:
                out += frame(_HEADERS, last | (_END_STREAM if end_stream else 0), stream_id, piece)
            else:
                out += frame(_CONTINUATION, last, stream_id, piece)
        assert self.transport is not None
        self.transport.write(bytes(out))
        if end_stream:
            # Tell h2 the stream is closed on our side; the empty DATA frame it queues is dropped.
            self._h2.end_stream(stream_id)
            self._h2.data_to_send()

    async def _send_body(self, stream: _Stream, body: bytes, reply: Reply) -> bool:
        """Send the body within the client's windows; False if the client went away first."""
        rate = reply.bytes_per_second
        size = reply.frame_size or (
            DATA_FRAME if rate is None else max(1, min(DATA_FRAME, int(rate / 10)))
        )
        view = memoryview(body)
        sent = 0
        while sent < len(body):
            if self.closed or stream.gone.is_set():
                return False
            window = self._h2.local_flow_control_window(stream.id)
            room = min(size, len(body) - sent, window, self._h2.max_outbound_frame_size)
            if room <= 0:
                stream.wake.clear()
                await stream.wake.wait()
                continue
            end = reply.end == "end" and sent + room == len(body)
            self._h2.send_data(stream.id, view[sent : sent + room].tobytes(), end_stream=end)
            self._flush()
            sent += room
            self._origin._update(
                stream.record, bytes_sent=sent, **({"ended": "end"} if end else {})
            )
            if rate is not None and not end:
                if await _wait(stream.gone, room / rate):
                    return False
            else:
                await asyncio.sleep(0)  # let other streams, and the client's frames, in
        return not (self.closed or stream.gone.is_set())


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` (math.inf: for ever) for `event`; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), None if math.isinf(seconds) else seconds)
    return event.is_set()


class _Blackhole(asyncio.Protocol):
    """Reads and discards; never writes."""

    def __init__(self, origin: RawOrigin) -> None:
        self._origin = origin
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._origin._holes.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._origin._holes.discard(self)

    def data_received(self, data: bytes) -> None:
        pass


class RawOrigin(LoopServer):
    """The origin. Use as a context manager, or call start() and stop()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._tls(self.workdir, "raw-origin-ca.pem")
        self.port = 0
        self.loop_errors: list[str] = []
        self._cond = threading.Condition()
        self._log: list[RequestRecord] = []
        self._scripts: dict[str, collections.deque[Reply]] = {}
        self._script_used: collections.Counter[str] = collections.Counter()
        self._accepts: collections.Counter[str] = collections.Counter()
        self._connections = 0
        self._mode: Mode = "serve"
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # Loop-thread only:
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live: set[_Connection] = set()
        self._drops = 0  # how many times the served connections were dropped
        self._holes: set[_Blackhole] = set()

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> None:
        """Listen, run the loop thread, and return once one real TLS + h2 request was served."""
        self._listener = _listen(0)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._thread_main, name="raw-origin", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"raw origin did not start: {self._error!r}")
        reply = raw_get(self.port, "/healthz", ca_pem_path=self.ca_pem_path, timeout=timeout)
        if reply.status != "200" or reply.body != b"ok\n":
            raise RuntimeError(f"raw origin health check failed: {reply}")
        with self._cond:
            self._accepts.clear()  # count only what the test's clients do

    def stop(self, timeout: float = 5.0) -> None:
        """Bounded: close everything, then cancel whatever still runs."""
        if self._loop is not None and self._thread is not None and self._stopping is not None:
            stop_loop_thread(self._loop, self._thread, self._stopping, timeout, "raw origin")
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        loop.set_exception_handler(self._on_loop_error)
        self._stopping = asyncio.Event()
        self._start_accepting()
        self._ready.set()
        await self._stopping.wait()
        await self._stop_accepting()
        for connection in list(self._live):
            connection.abort()
        for hole in list(self._holes):
            if hole.transport is not None:
                hole.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    # ------------------------------------------------------------ accept, modes

    def _start_accepting(self) -> None:
        if self._listener is None:
            self._listener = _listen(self.port)
        self._accept_task = asyncio.get_running_loop().create_task(self._accept(self._listener))

    async def _stop_accepting(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            mode = self._mode
            with self._cond:
                self._accepts[mode] += 1
                if mode == "serve":
                    self._connections += 1
                number = self._connections
                self._cond.notify_all()
            if mode == "blackhole":
                await loop.connect_accepted_socket(lambda: _Blackhole(self), sock)
            else:
                self._spawn(self._handshake(sock, number, self._drops))

    async def _handshake(self, sock: socket.socket, number: int, drops: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: _Connection(self, number, drops),
                sock,
                ssl=self._server_ssl,
                ssl_handshake_timeout=10,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            sock.close()
            with self._cond:
                self.loop_errors.append(f"handshake: {exc!r}")

    async def _switch(self, mode: Mode, drop: bool) -> None:
        # The new mode first, then the drop: a client reconnecting at once after the drop
        # must find the new mode, not a connection accepted and served in the old one.
        self._mode = mode
        if mode == "refuse":
            await self._stop_accepting()
        elif self._accept_task is None:
            self._start_accepting()
        if drop:  # those still in their TLS handshake too (they see the count change)
            self._drops += 1
            for connection in list(self._live):
                connection.abort()

    def _run(self, coro: Any, timeout: float = 5.0) -> None:
        assert self._loop is not None, "not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def refuse(self, drop: bool = True) -> None:
        """Close the listening socket: connections are refused. `drop`: abort served ones too."""
        self._run(self._switch("refuse", drop))

    def blackhole(self, drop: bool = True) -> None:
        """Accept TCP on the same port but never answer TLS. `drop`: abort served ones too."""
        self._run(self._switch("blackhole", drop))

    def silence(self) -> None:
        """The connections served so far go silent, still open: nothing is read or answered
        on them (a NAT that dropped the flow). New connections are served as before."""

        async def silence() -> None:
            for connection in self._live:
                connection.silent = True

        self._run(silence())

    def restore(self) -> None:
        """Serve normally again, on the same port."""
        self._run(self._switch("serve", drop=False))

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def accepts(self) -> dict[str, int]:
        """Accepted TCP connections per mode ("serve", "blackhole") since start() returned."""
        with self._cond:
            return dict(self._accepts)

    # ------------------------------------------------------------------ test API

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def url(self, name: str, size: int = DEFAULT_SIZE) -> str:
        """A signed-CDN-shaped URL for `name` with a `size`-byte body."""
        expire = int(time.time()) + 3600
        return f"{self.base}/v/{name}.mp4?size={size}&expire={expire}&signature=abc"

    def path(self, name: str, size: int = DEFAULT_SIZE) -> str:
        """The :path of url(name, size)."""
        return self.url(name, size).removeprefix(self.base)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this origin's CA, offering h2."""
        context = ssl.create_default_context(cafile=self.ca_pem_path)
        context.set_alpn_protocols(["h2"])
        return context

    @staticmethod
    def content(name: str, size: int = DEFAULT_SIZE) -> bytes:
        return content(name, size)

    @staticmethod
    def etag(name: str, size: int = DEFAULT_SIZE) -> str:
        return etag(name, size)

    def script(self, name: str, replies: Sequence[Reply]) -> None:
        """The next requests for `name` get these replies, one each; then the default again."""
        with self._cond:
            self._scripts.setdefault(name, collections.deque()).extend(replies)

    def unscript(self) -> None:
        """Drop the scripted replies not used yet: every name gets the default again."""
        with self._cond:
            self._scripts.clear()

    def requests(self) -> list[RequestRecord]:
        """Snapshots of every recorded request (not /healthz), in arrival order."""
        with self._cond:
            return [dataclasses.replace(r) for r in self._log]

    def requests_for(self, name: str) -> list[RequestRecord]:
        with self._cond:
            return [dataclasses.replace(r) for r in self._log if r.name == name]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds (checked at each request or accept change)."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout} s")

    # ------------------------------------------------------------ loop-thread side

    def _next_reply(self, name: str | None) -> tuple[Reply | None, int | None]:
        with self._cond:
            queue = self._scripts.get(name) if name is not None else None
            if not queue or name is None:
                return None, None
            index = self._script_used[name]
            self._script_used[name] += 1
            return queue.popleft(), index

    def _add(self, record: RequestRecord) -> None:
        with self._cond:
            self._log.append(record)
            self._cond.notify_all()


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


# ------------------------------------------------------------------------ raw client


@dataclass
class RawFrame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass
class RawResponse:
    """What a raw_get saw: header blocks decoded verbatim, the body, every frame received."""

    blocks: list[list[Header]]  # the response header block, then any trailers
    body: bytes
    frames: list[RawFrame]
    ended: Literal["end", "reset", "closed", "stopped", "quiet"]
    reset_code: int | None = None

    @property
    def headers(self) -> list[Header]:
        return self.blocks[0] if self.blocks else []

    @property
    def status(self) -> str | None:
        values = self.values(b":status")
        return values[0].decode("latin-1") if values else None

    def values(self, name: bytes) -> list[bytes]:
        """Every value of the field named exactly `name` (case-sensitive), in order."""
        return [v for k, v in self.headers if k == name]


def raw_get(
    port: int,
    path: str,
    headers: Sequence[Header] = (),
    *,
    ca_pem_path: str,
    timeout: float = 2.0,
    stop_after: int | None = None,
    quiet: float | None = None,
    host: str = "localhost",
) -> RawResponse:
    """One GET on a fresh connection to 127.0.0.1:`port`, read frame by frame.

    Windows stay at the protocol's 65,535 bytes, replenished as DATA arrives, and a DATA frame
    beyond them fails the call (AssertionError). `stop_after`: once that many body bytes
    arrived, send RST_STREAM(CANCEL) and return ("stopped"). `quiet`: after the response
    headers, return ("quiet") when no frame arrives for that long. Any other silence of
    `timeout` seconds raises TimeoutError.
    """
    context = ssl.create_default_context(cafile=ca_pem_path)
    context.set_alpn_protocols(["h2"])
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    request = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", f"{host}:{port}".encode()),
        (b":path", path.encode()),
        *headers,
    ]
    blocks: list[list[Header]] = []
    frames: list[RawFrame] = []
    body = bytearray()
    windows = {0: 65_535, 1: 65_535}
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        tls.sendall(
            _PREFACE
            + frame(_SETTINGS, 0, 0)
            + frame(_HEADERS, _END_STREAM | _END_HEADERS, 1, encoder.encode(request))
        )
        reader = _FrameReader(tls)
        fragment = b""
        while True:
            if quiet is not None and blocks:
                tls.settimeout(quiet)
            try:
                got = reader.next()
            except TimeoutError:
                if quiet is not None and blocks:
                    return RawResponse(blocks, bytes(body), frames, "quiet")
                raise
            if got is None:
                return RawResponse(blocks, bytes(body), frames, "closed")
            frames.append(got)
            kind, flags, sid, payload = got.kind, got.flags, got.stream_id, got.payload
            if kind == _SETTINGS and not flags & _ACK:
                tls.sendall(frame(_SETTINGS, _ACK, 0))
            elif kind == _PING and not flags & _ACK:
                tls.sendall(frame(_PING, _ACK, 0, payload))
            elif kind == _GOAWAY:
                return RawResponse(blocks, bytes(body), frames, "closed")
            elif kind == _RST_STREAM and sid == 1:
                code = int.from_bytes(payload, "big")
                return RawResponse(blocks, bytes(body), frames, "reset", code)
            elif kind in (_HEADERS, _CONTINUATION) and sid == 1:
                fragment += payload  # no padding or priority from this origin
                if flags & _END_HEADERS:
                    blocks.append(
                        [(bytes(k), bytes(v)) for k, v in decoder.decode(fragment, raw=True)]
                    )
                    fragment = b""
                    if stop_after == 0 and len(blocks) == 1 and not flags & _END_STREAM:
                        tls.sendall(frame(_RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")))
                        return RawResponse(blocks, bytes(body), frames, "stopped")
                if kind == _HEADERS and flags & _END_STREAM:
                    return RawResponse(blocks, bytes(body), frames, "end")
            elif kind == _DATA and sid == 1:
                windows[0] -= len(payload)
                windows[1] -= len(payload)
                assert min(windows.values()) >= 0, f"flow control window overrun: {windows}"
                if flags & _PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                body += payload
                if got.payload:
                    n = len(got.payload).to_bytes(4, "big")
                    tls.sendall(frame(_WINDOW_UPDATE, 0, 0, n) + frame(_WINDOW_UPDATE, 0, 1, n))
                    windows[0] += len(got.payload)
                    windows[1] += len(got.payload)
                if flags & _END_STREAM:
                    return RawResponse(blocks, bytes(body), frames, "end")
                if stop_after is not None and len(body) >= stop_after:
                    tls.sendall(frame(_RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")))
                    return RawResponse(blocks, bytes(body), frames, "stopped")


class _FrameReader:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _exactly(self, n: int) -> bytes | None:
        while len(self._buffer) < n:
            chunk = self._sock.recv(65_536)
            if not chunk:
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def next(self) -> RawFrame | None:
        """The next frame; None when the connection ended."""
        head = self._exactly(9)
        if head is None:
            return None
        length = int.from_bytes(head[:3], "big")
        payload = self._exactly(length) if length else b""
        if payload is None:
            return None
        sid = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
        return RawFrame(head[3], head[4], sid, payload)
