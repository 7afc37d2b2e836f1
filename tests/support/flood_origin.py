"""An HTTPS HTTP/2 origin that answers each request by flooding its connection with junk.

For process-level hostile-peer tests: the daemon's HTTP/2 client must bound the CPU and memory
a server can make it spend (net/http2/connection.py: the junk-frame budget, MAX_FRAME_SIZE,
MAX_CONTINUATIONS, MAX_HEADER_BLOCK, MAX_UNSENT). h2 (server side) does the handshake, SETTINGS,
PING answers and request parsing; the flood frames are built by hand (9-byte header) and written
straight to the transport, since h2 refuses to send most of them.

Kinds (FLOOD_KINDS), chosen per origin (`kind=`) or per URL, `/flood/<kind>/<name>?...`:
continuation, empty_continuation, ping (and stop reading the connection), settings,
window_update, empty_data, priority, rst_closed, unknown, tiny_data, big_settings.
One flood per connection (the first request starts it; later requests on it get nothing),
for up to `seconds` or until the client closes the connection; then the origin closes it.
Writes respect backpressure (pause_writing/resume_writing), so the origin stays bounded.
`floods` records what each flood sent.

Runs its own event loop in a background thread (start()/stop()), on 127.0.0.1 and an ephemeral
port, certificate from a throw-away trustme CA (`ca_pem_path`), ALPN h2 only, as
support.raw_origin does. `/healthz` answers 200 "ok\\n" (start() checks it with raw_get).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from support.loop_server import LoopServer
from support.origin import stop_loop_thread
from support.raw_origin import frame, raw_get

FLOOD_KINDS = (
    "continuation",
    "empty_continuation",
    "ping",
    "settings",
    "window_update",
    "empty_data",
    "priority",
    "rst_closed",
    "unknown",
    "tiny_data",
    "big_settings",
)

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PING, _WINDOW_UPDATE, _CONTINUATION, _UNKNOWN = 0x6, 0x8, 0x9, 0xFA
_END_HEADERS = 0x4
_CANCEL = 0x8
_PATH_RE = re.compile(r"/flood/([a-z_]+)/([A-Za-z0-9._-]+)")
BATCH_BYTES = 64 * 1024  # bytes written per loop turn
WRITE_HIGH_WATER = 256 * 1024  # transport buffer above which the flood waits (pause_writing)
# 16 MiB, as close as the 24-bit length field gets, in whole 6-byte settings.
BIG_SETTINGS_LENGTH = (2**24 - 1) // 6 * 6


@dataclass
class Flood:
    """What one flood did."""

    kind: str
    name: str | None
    connection: int
    stream_id: int
    started: float  # time.monotonic()
    ended: float | None = None
    frames: int = 0
    bytes: int = 0
    ended_by: str | None = None  # "client" (connection went away) or "deadline"

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


def _plan(kind: str, stream_id: int, head: bytes) -> tuple[bytes, bytes, float]:
    """(sent once first, repeated unit, pause between units in seconds: 0 for a full flood).

    `head` is an encoded response header block (:status 200, no content-length)."""
    sid = stream_id
    if kind == "continuation":
        return frame(_HEADERS, 0, sid, head), frame(_CONTINUATION, 0, sid, b"\x88" * 4096), 0.0
    if kind == "empty_continuation":
        return frame(_HEADERS, 0, sid, head), frame(_CONTINUATION, 0, sid), 0.0
    if kind == "ping":
        return b"", frame(_PING, 0, 0, b"floodpng"), 0.0
    if kind == "settings":
        # SETTINGS_MAX_CONCURRENT_STREAMS = 100, again and again (each one needs an ACK).
        return b"", frame(_SETTINGS, 0, 0, (3).to_bytes(2, "big") + (100).to_bytes(4, "big")), 0.0
    if kind == "window_update":
        one = (1).to_bytes(4, "big")
        return b"", frame(_WINDOW_UPDATE, 0, 0, one) + frame(_WINDOW_UPDATE, 0, sid, one), 0.0
    if kind == "empty_data":
        return frame(_HEADERS, _END_HEADERS, sid, head), frame(_DATA, 0, sid), 0.0
    if kind == "priority":
        # Depends on stream 0, weight 16: legal on any stream, and useless to a client.
        return b"", frame(_PRIORITY, 0, sid, bytes(4) + b"\x0f"), 0.0
    if kind == "rst_closed":
        # The first one closes the request's stream; every other one is on a closed stream.
        return b"", frame(_RST_STREAM, 0, sid, _CANCEL.to_bytes(4, "big")), 0.0
    if kind == "unknown":
        return b"", frame(_UNKNOWN, 0, 0, bytes(16384)), 0.0
    if kind == "tiny_data":
        return frame(_HEADERS, _END_HEADERS, sid, head), frame(_DATA, 0, sid, b"x"), 0.0
    if kind == "big_settings":
        header = BIG_SETTINGS_LENGTH.to_bytes(3, "big") + bytes([_SETTINGS, 0]) + bytes(4)
        return header, bytes(6), 0.01
    raise ValueError(f"unknown flood kind {kind!r}")


class _Connection(asyncio.Protocol):
    def __init__(self, origin: FloodOrigin, number: int) -> None:
        self._origin = origin
        self.number = number
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._h2_ok = True  # False once h2 gave up on what the client sends (flood replies)
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._flooding = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._origin._live.add(self)
        self._h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._origin._live.discard(self)
        self.closed.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if not self._h2_ok:
            return  # read and dropped: the flood goes on until the client leaves
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            if not self._flooding:
                self._flush()
                self.abort()
            self._h2_ok = False
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id:
                self._request(event.stream_id, event.headers or [])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self._h2.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id
                    )
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush()
                if self.transport is not None:
                    self.transport.close()  # the client's GOAWAY: it is done with us
                return
        self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        if not self._h2_ok:
            return
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _request(self, stream_id: int, headers: list[Any]) -> None:
        fields = {bytes(k): bytes(v) for k, v in headers}
        path = urllib.parse.urlsplit(fields.get(b":path", b"").decode("latin-1")).path
        if path == "/healthz":
            self._h2.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"3")])
            self._h2.send_data(stream_id, b"ok\n", end_stream=True)
            return
        if self._flooding:
            return  # one flood per connection; this request just waits
        match = _PATH_RE.fullmatch(path)
        kind = match.group(1) if match else self._origin.kind
        name = match.group(2) if match else None
        if kind is None or kind not in FLOOD_KINDS:
            self._h2.send_headers(stream_id, [(b":status", b"404"), (b"content-length", b"0")])
            self._h2.end_stream(stream_id)
            return
        self._flooding = True
        self._flush()
        # Encoded with h2's own encoder (h2 never encodes a block itself after this: it is the
        # only block sent on this connection), so the client's HPACK table stays in step.
        head = self._h2.encoder.encode([(b":status", b"200"), (b"content-type", b"video/mp4")])
        flood = Flood(kind, name, self.number, stream_id, time.monotonic())
        self._origin._add(flood)
        self._origin._spawn(self._flood(flood, *_plan(kind, stream_id, head)))

    async def _flood(self, flood: Flood, first: bytes, unit: bytes, pause: float) -> None:
        assert self.transport is not None
        transport = self.transport
        deadline = flood.started + self._origin.seconds
        units = max(1, BATCH_BYTES // len(unit)) if not pause else 1
        batch = unit * units
        limit = BIG_SETTINGS_LENGTH + 9 if flood.kind == "big_settings" else None
        try:
            if flood.kind == "ping":
                transport.pause_reading()  # the client's PING ACKs pile up on its side
            if first:
                transport.write(first)
                flood.frames += 1
                flood.bytes += len(first)
            while not self.closed.is_set() and not transport.is_closing():
                now = time.monotonic()
                if now >= deadline:
                    flood.ended_by = "deadline"
                    break
                if not self._writable.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._writable.wait(), deadline - now)
                    continue
                if limit is not None and flood.bytes >= limit:
                    await asyncio.sleep(min(0.1, deadline - now))
                    continue
                transport.write(batch)
                flood.frames += 0 if flood.kind == "big_settings" else units
                flood.bytes += len(batch)
                await asyncio.sleep(pause)  # 0: let reads and the other connections run
        finally:
            if flood.ended_by is None:
                flood.ended_by = "client"
            self._origin._update(flood, ended=time.monotonic())
            transport.close()


class FloodOrigin(LoopServer):
    """The origin. Use as a context manager, or call start() and stop()."""

    def __init__(self, workdir: Path, kind: str | None = None, seconds: float = 5.0) -> None:
        if kind is not None and kind not in FLOOD_KINDS:
            raise ValueError(f"unknown flood kind {kind!r}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.seconds = seconds
        self._tls(self.workdir, "flood-origin-ca.pem")
        self.port = 0
        self.loop_errors: list[str] = []
        self._cond = threading.Condition()
        self._floods: list[Flood] = []
        self._connections = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # Loop-thread only:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live: set[_Connection] = set()

    def start(self, timeout: float = 10.0) -> None:
        """Listen, run the loop thread, and return once /healthz was served over TLS + h2."""
        self._thread = threading.Thread(target=self._thread_main, name="flood-origin", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"flood origin did not start: {self._error!r}")
        reply = raw_get(self.port, "/healthz", ca_pem_path=self.ca_pem_path, timeout=timeout)
        if reply.status != "200" or reply.body != b"ok\n":
            raise RuntimeError(f"flood origin health check failed: {reply}")

    def stop(self, timeout: float = 5.0) -> None:
        """Bounded: close every connection, then cancel whatever still runs."""
        if self._loop is not None and self._thread is not None and self._stopping is not None:
            stop_loop_thread(self._loop, self._thread, self._stopping, timeout, "flood origin")

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        loop.set_exception_handler(self._on_loop_error)
        self._stopping = asyncio.Event()
        server = await loop.create_server(
            self._new_connection, "127.0.0.1", 0, ssl=self._server_ssl, backlog=128
        )
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for connection in list(self._live):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    def _new_connection(self) -> _Connection:
        with self._cond:
            self._connections += 1
            return _Connection(self, self._connections)

    # ------------------------------------------------------------------ test API

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def url(self, name: str, kind: str | None = None) -> str:
        """A signed-CDN-shaped URL whose request floods with `kind` (default: the origin's)."""
        kind = kind or self.kind
        if kind not in FLOOD_KINDS:
            raise ValueError(f"unknown flood kind {kind!r}")
        expire = int(time.time()) + 3600
        return f"{self.base}/flood/{kind}/{name}?expire={expire}&signature=abc"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (the health check's included)."""
        with self._cond:
            return self._connections

    def floods(self) -> list[Flood]:
        """Snapshots of every flood so far, in start order."""
        with self._cond:
            return [dataclasses.replace(f) for f in self._floods]

    def wait_until(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Wait until `predicate()` holds (checked as floods start and end); False on timeout."""
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout))

    # ------------------------------------------------------------ loop-thread side

    def _add(self, flood: Flood) -> None:
        with self._cond:
            self._floods.append(flood)
            self._cond.notify_all()
