"""ingestd's own HTTP/2 client for downloads, one layer per module:

- frames: frame types, flags, error codes, settings, packing;
- hpack: the request encoder and the cached response decoder;
- connection: the protocol state of one connection, sans-IO (bytes in, events out);
- protocol: the asyncio adapter (buffers, per-stream futures, coalesced writes);
- pool: connections per origin (DNS through the caller's guarded resolver, ALPN, liveness);
- errors: what callers see.

It knows nothing of httpx; net.fetch uses it for HTTPS and translates its errors.
"""

from ingestd.net.http2.errors import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimedOut,
    H2Error,
    MalformedResponse,
    NotHTTP2,
    StreamFailed,
    StreamTimedOut,
)
from ingestd.net.http2.pool import H2Pool, Resolver, Response

__all__ = [
    "ConnectFailed",
    "ConnectTimedOut",
    "ConnectionLost",
    "H2Error",
    "H2Pool",
    "MalformedResponse",
    "NotHTTP2",
    "Resolver",
    "Response",
    "StreamFailed",
    "StreamTimedOut",
]
