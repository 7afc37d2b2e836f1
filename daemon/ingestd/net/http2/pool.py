"""HTTP/2 connections per origin: made through the caller's guarded resolver, kept, checked
and retired.

Invariants:
- Every connection made is in `_all` until it is lost, so `aclose` closes each one, whatever
  happened to its origin's entry meanwhile.
- At most `connections_per_origin` accepting connections per origin; streams go to an idle one
  first, then to the least busy, and a new connection is made only when every one is busy.
- A connection that takes no new streams (GOAWAY, ids run out) is drained and closed by its
  protocol; one idle (no stream) for `idle_timeout` is closed; one that has received nothing
  for LIVENESS_AFTER seconds must answer a PING within LIVENESS_WAIT before it gets a stream
  (a NAT may have dropped it silently).
- One ALPN-negotiated TLS context of our own: nothing else may change its protocols.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ingestd.net.http2.connection import PinBudget
from ingestd.net.http2.errors import (
    ConnectFailed,
    ConnectTimedOut,
    NotHTTP2,
    StreamFailed,
    StreamTimedOut,
)
from ingestd.net.http2.protocol import H2Protocol, Stream

Resolver = Callable[[str, int, float | None], Awaitable[Sequence[str]]]

IDLE_TIMEOUT = 60.0  # seconds a connection without streams is kept
LIVENESS_AFTER = 5.0  # a connection silent this long is pinged before it gets a stream
LIVENESS_WAIT = 2.0  # ... and dropped if it does not answer within this
SWEEP_EVERY = 1.0  # seconds between looks for idle connections to close
MAX_FRESH_FAILURES = 3  # new connections of an origin ending before a stream: it sheds load


def authority(host: str, port: int) -> str:
    """The :authority of a request: host (an IPv6 literal in brackets), and the port unless 443."""
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


@dataclass
class Response:
    """Status and headers of a response, and its body: batches of the bytes that arrived,
    as views of the connection's buffers (see protocol.py). `acknowledge(n)` once `n` body
    bytes are written; `close()` when done with it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[list[memoryview | bytes]]
    acknowledge: Callable[[int], None]
    close: Callable[[], None]


@dataclass
class _Origin:
    connections: list[H2Protocol] = field(default_factory=list)
    connecting: asyncio.Lock = field(default_factory=asyncio.Lock)


class H2Pool:
    """HTTP/2 connections per origin (at most `connections_per_origin`), streams multiplexed."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        resolve: Resolver,
        connections_per_origin: int = 1,
        streams_per_connection: int = 100,
        idle_timeout: float = IDLE_TIMEOUT,
        pins: PinBudget | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._resolve = resolve
        self._per_origin = connections_per_origin
        self._streams_per_connection = streams_per_connection
        self._idle_timeout = idle_timeout
        self._pins = pins if pins is not None else PinBudget()
        self._origins: dict[tuple[str, int], _Origin] = {}
        self._all: set[H2Protocol] = set()
        self._swept_at = time.monotonic()
        self.not_h2: set[tuple[str, int]] = set()

    @property
    def connections(self) -> int:
        """Connections open now, over every origin."""
        return len(self._all)

    async def _connect(self, host: str, port: int, timeout: float | None) -> H2Protocol:
        loop = asyncio.get_running_loop()
        addresses = await self._resolve(host, port, timeout)
        name = authority(host, port)
        error: Exception = ConnectFailed(f"no address for {host}")
        for address in addresses:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: H2Protocol(
                            name,
                            functools.partial(self._forget, (host, port)),
                            pins=self._pins,
                            coalesce=True,
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
                error.__cause__ = exc  # raised after the loop: keep what it was (a TLS verify)
                continue
            transport = protocol._transport
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                protocol.abort("not h2")
                self.not_h2.add((host, port))
                raise NotHTTP2(f"{host}:{port} did not negotiate h2")
            self._all.add(protocol)
            return protocol
        raise error

    def _origin(self, key: tuple[str, int]) -> _Origin:
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        return origin

    async def _connection(self, host: str, port: int, timeout: float | None) -> H2Protocol:
        """A connection with room for a stream, made if need be; waits at most `timeout` for
        room (ConnectTimedOut), and gives up on an origin whose new connections die at once."""
        key = (host, port)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        fresh_failures = 0
        limit = self._streams_per_connection
        self._sweep()
        while True:
            origin = self._origin(key)  # looked up each time: a lost origin entry is remade
            pool = origin.connections
            # One pass (this runs per request): drop the connections that are done, count
            # those that take streams, and find the ready one with the fewest open.
            kept: list[H2Protocol] = []
            accepting = 0
            chosen: H2Protocol | None = None
            for c in pool:
                if c.accepting:
                    accepting += 1
                elif c.closed or not c.open_streams:
                    continue
                kept.append(c)
                if c.can_open(limit) and (chosen is None or c.open_streams < chosen.open_streams):
                    chosen = c
            if len(kept) != len(pool):
                pool[:] = kept
            spare = accepting < self._per_origin
            # Streams are spread over up to `connections_per_origin` connections (over a lossy
            # path each TCP connection backs off on its own), a new one made only when every
            # ready one is busy; while one is being made, the others carry on.
            if chosen is not None and (
                not chosen.open_streams or not spare or origin.connecting.locked()
            ):
                recent = time.monotonic() - chosen.last_received < LIVENESS_AFTER
                if recent or await self._answers_ping(chosen):
                    return chosen
                continue
            if spare:
                async with origin.connecting:
                    if sum(c.accepting for c in pool) < self._per_origin:
                        connection = await self._connect(host, port, timeout)
                        self._origin(key).connections.append(connection)
                        if connection.can_open(limit):
                            return connection
                        # Closed, or GOAWAY, during the handshake (a server shedding load).
                        fresh_failures += 1
                        if fresh_failures >= MAX_FRESH_FAILURES:
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

    async def _answers_ping(self, connection: H2Protocol) -> bool:
        """Whether a connection silent for LIVENESS_AFTER answers a PING in time; one that
        does not is dropped (its streams fail as lost)."""
        try:
            await asyncio.wait_for(connection.ping(), LIVENESS_WAIT)
            return True
        except (TimeoutError, asyncio.CancelledError):
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # our caller is being stopped: not the connection's doing
        connection.abort("no answer to a PING after being idle")
        return False

    def _sweep(self) -> None:
        """Close connections that have had no stream for `idle_timeout` (at most once a
        second, over every origin)."""
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        for connection in list(self._all):
            since = connection.idle_since
            if since is not None and now - since >= self._idle_timeout:
                connection.abort("idle")

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
        """Send a GET-like request (no body) and wait for the response head."""
        for _ in range(3):  # a stream refused or never processed (GOAWAY) may go elsewhere
            connection = await self._connection(host, port, connect_timeout)
            try:
                stream = connection.open(method, path, headers)
            except StreamFailed:
                continue  # closed between the choice and the request: retry_safe by nature
            try:
                status, fields = await connection.response_head(stream, read_timeout)
            except StreamTimedOut:
                connection.release(stream)
                connection.timed_out(read_timeout)
                raise
            except StreamFailed as exc:
                connection.release(stream)
                if exc.retry_safe:
                    continue
                raise
            except BaseException:
                connection.release(stream)
                raise
            return Response(
                status,
                fields,
                self._body(connection, stream, read_timeout),
                functools.partial(connection.acknowledge, stream),
                functools.partial(connection.release, stream),
            )
        raise StreamFailed("refused repeatedly")

    async def _body(
        self, connection: H2Protocol, stream: Stream, timeout: float | None
    ) -> AsyncIterator[list[memoryview | bytes]]:
        try:
            while (chunks := await connection.next_chunks(stream, timeout)) is not None:
                yield chunks
        finally:
            connection.release(stream)

    def _forget(self, key: tuple[str, int], connection: H2Protocol) -> None:
        """A connection ended: drop it, and the origin's entry once nothing else is there."""
        self._all.discard(connection)
        origin = self._origins.get(key)
        if origin is None:
            return
        if connection in origin.connections:
            origin.connections.remove(connection)
        if not origin.connections and not origin.connecting.locked():
            del self._origins[key]

    async def aclose(self) -> None:
        """Close every connection."""
        for connection in list(self._all):
            connection.abort("pool closed")
        self._all.clear()
        self._origins.clear()
