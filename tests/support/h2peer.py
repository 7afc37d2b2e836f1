"""Our HTTP/2 client (net.http2's H2Protocol) wired to a server-side h2 connection, no socket.

The server is a real HTTP/2 implementation (h2), so what it sends is what a conforming peer
sends; frames it will not produce (misbehaviour, exotic orderings) are built by hand with
`frame()`.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection

from ingestd.net.http2.connection import PinBudget
from ingestd.net.http2.protocol import H2Protocol, Stream


class FakeTransport(asyncio.Transport):
    """Collects what the client writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0  # write() calls: sends, on a real socket
        self.read_upto = 0
        self.closed = False

    def new(self) -> bytes:
        """What the client wrote since the last call."""
        data = bytes(self.written[self.read_upto :])
        self.read_upto = len(self.written)
        return data

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def get_write_buffer_size(self) -> int:
        """What the server has not read yet (see new())."""
        return len(self.written) - self.read_upto


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One raw frame."""
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream_id.to_bytes(4, "big")
        + payload
    )


def data_frame(stream_id: int, payload: bytes, end: bool = False, pad: int = 0) -> bytes:
    """A DATA frame, optionally padded."""
    flags = (0x1 if end else 0) | (0x8 if pad else 0)
    body = (bytes([pad]) + payload + b"\0" * pad) if pad else payload
    return frame(0x0, flags, stream_id, body)


class Peer:
    """The client under test, its transport, and the h2 server it talks to. The handshake is
    done: the server's SETTINGS have arrived (so more than one stream may be opened)."""

    def __init__(self, *, coalesce: bool = False, pins: PinBudget | None = None) -> None:
        self.client = H2Protocol("origin.test", pins=pins, coalesce=coalesce)
        self.transport = FakeTransport()
        self.client.connection_made(self.transport)
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.server.initiate_connection()
        self.to_server()  # preface, SETTINGS, WINDOW_UPDATE
        self.to_client()

    def to_server(self) -> list[object]:
        """Deliver what the client wrote; returns the server's events."""
        return list(self.server.receive_data(self.transport.new()))

    def to_client(self, extra: bytes = b"") -> None:
        """Deliver what the server has to send, then `extra` raw bytes."""
        self.client.data_received(self.server.data_to_send() + extra)

    def request(self, path: bytes = b"/v.mp4") -> Stream:
        """Open a stream and let the server see it."""
        stream = self.client.open(b"GET", path, [])
        self.to_server()
        return stream

    def respond(
        self, stream_id: int, headers: list[tuple[str, str]] | None = None, end: bool = False
    ) -> None:
        """Response headers from the server, delivered. By default a 200 without
        content-length, so that any body length is well-formed."""
        fields = headers or [(":status", "200")]
        self.server.send_headers(stream_id, fields, end_stream=end)
        self.to_client()


async def body(client: H2Protocol, stream: Stream) -> bytes:
    """Everything the stream delivers until its end, each batch acknowledged once read (as a
    consumer does once it has written them)."""
    parts = []
    while (chunks := await client.next_chunks(stream, timeout=1)) is not None:
        batch = b"".join(bytes(c) for c in chunks)
        parts.append(batch)
        client.acknowledge(stream, len(batch))
    return b"".join(parts)


def parse(wire: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames in `wire`: (type, flags, stream id, payload)."""
    out = []
    while wire:
        length = int.from_bytes(wire[:3], "big")
        sid = int.from_bytes(wire[5:9], "big") & 0x7FFF_FFFF
        out.append((wire[3], wire[4], sid, wire[9 : 9 + length]))
        wire = wire[9 + length :]
    return out


def window_updates(wire: bytes) -> list[tuple[int, int]]:
    """(stream id, increment) of every WINDOW_UPDATE in `wire`."""
    frames = parse(wire)
    return [(sid, int.from_bytes(body, "big")) for kind, _, sid, body in frames if kind == 0x8]
