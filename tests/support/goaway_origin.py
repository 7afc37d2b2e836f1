"""An HTTPS HTTP/2 origin that ends every connection with a graceful GOAWAY, as nginx does.

nginx (keepalive_requests, 1,000 by default) and most CDNs stop taking new streams on a busy
connection with a GOAWAY naming the last stream they accepted, then finish the streams they
accepted before closing. hypercorn cannot stand in here: after its GOAWAY, h2's server state
machine refuses to send the rest of the bodies. This server uses h2 for everything else but
writes the GOAWAY frame itself, so the accepted streams go on.

Bodies are sent a slice at a time, round robin, so several streams are mid-body when the
GOAWAY goes out. Streams opened after it are never served; the client must send those again
on a new connection. Runs on the caller's event loop, on 127.0.0.1 and an ephemeral port.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import trustme

from support.origin import content

SLICE = 16 * 1024


class _Connection(asyncio.Protocol):
    def __init__(self, origin: GoawayOrigin) -> None:
        self._origin = origin
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self._transport: asyncio.Transport | None = None
        self._bodies: collections.OrderedDict[int, memoryview] = collections.OrderedDict()
        self._accepted = 0
        self._goaway_sent = False
        self._pumping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._origin.connections += 1
        self._h2.initiate_connection()
        transport.write(self._h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self._h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                self._request(event.stream_id, {str(k): str(v) for k, v in event.headers or []})
            elif isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
                self._bodies.pop(event.stream_id, None)
        self._flush()
        if not self._pumping and self._bodies:
            self._pumping = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _request(self, stream_id: int, headers: dict[str, str]) -> None:
        if self._goaway_sent:
            return  # above the GOAWAY's last stream id: never processed, never answered
        self._origin.requests += 1
        if self._origin.max_requests == 0:  # a host that takes nothing: GOAWAY, then close
            assert self._transport is not None
            self._flush()
            self._transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8))
            self._goaway_sent = True
            self._origin.goaways += 1
            self._transport.close()
            return
        self._accepted += 1
        name, _, size = headers[":path"].lstrip("/").partition("?size=")
        body = content(name, int(size))
        self._origin.served[name] += 1
        self._h2.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(body)))])
        self._bodies[stream_id] = memoryview(body)
        if self._accepted >= self._origin.max_requests:
            # Written by hand: h2 would close its state machine and refuse the bodies still due.
            self._flush()
            assert self._transport is not None
            last = stream_id.to_bytes(4, "big")
            self._transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + last + bytes(4))
            self._goaway_sent = True
            self._origin.goaways += 1

    def _pump(self) -> None:
        """One slice of every body that has window for it, then again on the next loop pass."""
        for stream_id, rest in list(self._bodies.items()):
            room = min(SLICE, self._h2.local_flow_control_window(stream_id), len(rest))
            if room or not rest:
                end = room == len(rest)
                self._h2.send_data(stream_id, rest[:room].tobytes(), end_stream=end)
                if end:
                    del self._bodies[stream_id]
                else:
                    self._bodies[stream_id] = rest[room:]
        self._flush()
        if self._goaway_sent and not self._bodies and self._transport is not None:
            self._transport.close()
        if self._bodies and self._transport is not None and not self._transport.is_closing():
            asyncio.get_running_loop().call_soon(self._pump)
        else:
            self._pumping = False

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class GoawayOrigin:
    """Serves `/<name>?size=N` (the bytes of support.origin.content) and ends each connection
    after `max_requests` accepted streams."""

    def __init__(self, workdir: Path, max_requests: int) -> None:
        """`max_requests` 0: every request gets a GOAWAY that takes none, and the close."""
        self.max_requests = max_requests
        self.requests = 0  # received, answered or not
        self.served: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.goaways = 0
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_path = workdir / "goaway-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(self._context)
        self._context.set_alpn_protocols(["h2"])
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> GoawayOrigin:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), "127.0.0.1", 0, ssl=self._context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def url(self, name: str, size: int) -> str:
        return f"https://localhost:{self.port}/{name}?size={size}"
