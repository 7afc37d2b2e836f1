"""What the HTTP/2 client raises to its callers (net.fetch translates them for the daemon)."""

from __future__ import annotations


class H2Error(Exception):
    """Base of the client's errors."""


class ConnectFailed(H2Error):
    """The TCP/TLS connection could not be made (DNS, TCP or TLS)."""


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
