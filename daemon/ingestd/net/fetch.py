"""HTTP fetching: the only code that imports httpx/httpcore. Foreign exceptions stop here.

HTTPS goes over the lean HTTP/2 pool (net.h2lean); plain http, origins without h2 and http2 = false
go through one `httpx.AsyncClient`. Both live as long as the daemon. Redirects are followed
by hand so that every hop passes the URL policy, and a network backend checks the resolved
addresses at connect time, so a host cannot pass the check and then resolve somewhere else.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import h2.exceptions
import httpcore
import httpx

from ingestd.net import h2lean
from ingestd.policy.retry import Reason
from ingestd.policy.urls import address_is_public, check_url, host_matches

MAX_REDIRECTS = 5
Chunk = bytes | memoryview  # a piece of a response body
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(Exception):
    """A request or its body failed; `reason` classifies it for the retry policy."""

    def __init__(
        self, reason: Reason, detail: str = "", status: int | None = None, host_fault: bool = False
    ) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.host_fault = host_fault  # the connection died under several requests at once


class SetupError(Exception):
    """The HTTP client cannot be built (bad CA bundle...)."""


class _UnsafeDestination(Exception):
    pass


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """What the client needs from the config."""

    http2: bool
    timeout: float
    user_agent: str
    referer: str
    ca_bundle: Path | None
    max_connections: int
    allowed_hosts: tuple[str, ...]
    connections_per_host: int = 2


class _HostPolicy:
    """Shared, replaceable view of the allowed hosts (a reload swaps the tuple)."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self.allowed_hosts = allowed_hosts


async def _permitted_addresses(
    policy: _HostPolicy, host: str, port: int, timeout: float | None
) -> list[str]:
    """Where a connection to `host` may go: the name itself for an allowed host (it may resolve
    anywhere), else its resolved addresses, all of which must be public. Raises
    _UnsafeDestination, or OSError when the name does not resolve."""
    allowed = policy.allowed_hosts
    if allowed:
        if not host_matches(host, allowed):
            raise _UnsafeDestination(f"host {host} is not in allowed_hosts")
        return [host]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except TimeoutError as exc:
        raise OSError(f"resolving {host} timed out") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses or not all(address_is_public(a) for a in addresses):
        raise _UnsafeDestination(f"{host} resolves to a non-public address")
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself and connects only to addresses the policy permits."""

    def __init__(self, policy: _HostPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await _permitted_addresses(self._policy, host, port, timeout)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Transport(httpx.AsyncHTTPTransport):
    """httpx's transport with the guarded network backend under its connection pool."""

    def __init__(self, ssl_context: ssl.SSLContext, settings: HttpSettings, policy: _HostPolicy):
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        )
        super().__init__(verify=ssl_context, http2=settings.http2, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=settings.http2,
            network_backend=_GuardedBackend(policy),
        )


def _translate_lean(exc: h2lean.H2Error, *, in_body: bool) -> FetchFailed:
    if isinstance(exc, h2lean.ConnectFailed):  # DNS, TCP or TLS: the host's fault
        return FetchFailed(Reason.UNREACHABLE, _describe(exc))
    if isinstance(exc, h2lean.StreamTimedOut):
        return FetchFailed(Reason.TIMEOUT, type(exc).__name__)
    if isinstance(exc, h2lean.MalformedResponse):
        return FetchFailed(Reason.MALFORMED, _describe(exc))
    if isinstance(exc, h2lean.ConnectionLost):  # the host's, unless it died mid-body, alone
        return FetchFailed(
            Reason.CONNECTION_ERROR, _describe(exc), host_fault=exc.shared or not in_body
        )
    if not in_body:
        return FetchFailed(Reason.CONNECTION_ERROR, _describe(exc))
    return FetchFailed(Reason.TRUNCATED, _describe(exc))


# A request target that can go on the wire as it is; anything else is normalized by httpx.
_PLAIN_TARGET = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")


def build_ssl_context(
    ca_bundle: Path | None, env: Mapping[str, str] = os.environ
) -> ssl.SSLContext:
    """Trust certifi's roots, plus SSL_CERT_FILE / SSL_CERT_DIR, plus `ca_bundle`."""
    try:
        context = ssl.create_default_context(cafile=certifi.where())
        if env.get("SSL_CERT_FILE"):
            context.load_verify_locations(cafile=env["SSL_CERT_FILE"])
        if env.get("SSL_CERT_DIR"):
            context.load_verify_locations(capath=env["SSL_CERT_DIR"])
        if ca_bundle is not None:
            context.load_verify_locations(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"cannot load CA certificates: {exc}") from exc
    return context


_QUERY = re.compile(r"(https?://[^\s?#'\"]*)[?#][^\s'\"]*", re.IGNORECASE)


def _describe(exc: BaseException) -> str:
    """A short message for logs, with any URL's signed query string cut off."""
    return _QUERY.sub(r"\1", f"{type(exc).__name__}: {exc}")[:200]


def _translate(exc: BaseException, *, in_body: bool) -> FetchFailed:
    if isinstance(exc, _UnsafeDestination):
        return FetchFailed(Reason.UNSAFE_URL, str(exc))
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):  # DNS, TCP or TLS
        return FetchFailed(Reason.UNREACHABLE, _describe(exc))
    if isinstance(exc, httpx.TimeoutException):
        return FetchFailed(Reason.TIMEOUT, type(exc).__name__)
    if isinstance(exc, (httpx.RemoteProtocolError, h2.exceptions.ProtocolError)) and in_body:
        return FetchFailed(Reason.TRUNCATED, _describe(exc))
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return FetchFailed(Reason.UNSAFE_URL, _describe(exc))
    return FetchFailed(Reason.CONNECTION_ERROR, _describe(exc))


# What may escape httpx: its own errors, and h2 protocol errors that httpcore does not wrap
# (an HTTP/2 body shorter than its content-length raises h2's InvalidBodyLengthError).
_FOREIGN = (httpx.HTTPError, httpx.StreamError, h2.exceptions.ProtocolError, _UnsafeDestination)


class Response:
    """A streaming response: status, headers, and the body in raw chunks."""

    def __init__(
        self,
        status: int,
        http_version: str,
        headers: Mapping[str, str],
        body: AsyncIterator[Sequence[Chunk]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.status = status
        self.http_version = http_version
        self._headers = headers
        self._body = body
        self._close = close

    @classmethod
    def from_httpx(cls, response: httpx.Response) -> Response:
        """Wrap a streaming httpx response."""

        async def body() -> AsyncIterator[Sequence[Chunk]]:
            async for chunk in response.aiter_raw():
                yield (chunk,)

        return cls(
            response.status_code, response.http_version, response.headers, body(), response.aclose
        )

    @classmethod
    def from_lean(cls, response: h2lean.Response) -> Response:
        """Wrap a response of the lean HTTP/2 pool."""

        async def close() -> None:
            response.close()

        headers: dict[str, str] = {}
        for raw_name, raw_value in response.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            # A repeated field reads as its values joined, as through httpx.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return cls(response.status, "HTTP/2", headers, response.body, close)

    def header(self, name: str) -> str | None:
        """A response header (name in lower case), or None."""
        return self._headers.get(name)

    @property
    def framed(self) -> bool:
        """The protocol marks the body's end (HTTP/2 END_STREAM, HTTP/1.1 chunked), so a body
        without Content-Length is known to be whole when it ends; a body ended by the
        connection's close is not."""
        if self.http_version == "HTTP/2":
            return True
        return "chunked" in (self.header("transfer-encoding") or "").lower()

    async def batches(self) -> AsyncIterator[Sequence[Chunk]]:
        """The body as it arrives, undecoded, in batches of chunks. Raises FetchFailed.

        Chunks may be views of the connection's buffers: valid as long as they are referenced,
        never rewritten; keeping many of them pins their buffers (bounded by the windows).
        """
        try:
            async for batch in self._body:
                yield batch
        except h2lean.H2Error as exc:
            raise _translate_lean(exc, in_body=True) from exc
        except _FOREIGN as exc:
            raise _translate(exc, in_body=True) from exc

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The body chunk by chunk (see `batches`)."""
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    async def aclose(self) -> None:
        """Release the stream or connection."""
        await self._close()


class Fetcher:
    """GETs URLs, enforcing the URL policy on every hop.

    HTTPS goes over the lean HTTP/2 pool (net.h2lean) when http2 is on; plain http, origins that
    do not negotiate h2, and http2 = false go through one httpx client.
    """

    def __init__(self, settings: HttpSettings) -> None:
        self._policy = _HostPolicy(settings.allowed_hosts)
        context = build_ssl_context(settings.ca_bundle)
        self._lean: h2lean.H2Pool | None = None
        if settings.http2:
            context.set_alpn_protocols(["h2", "http/1.1"])
            self._lean = _lean_pool(context, self._policy, settings.connections_per_host)
        self._client = httpx.AsyncClient(
            transport=_Transport(context, settings, self._policy),
            follow_redirects=False,
            trust_env=False,
        )
        self.reconfigure(settings)

    def reconfigure(self, settings: HttpSettings) -> None:
        """Apply a reloaded config to later requests: timeout, headers, allowed hosts.

        http2, the CA bundle and the connection limit belong to the transport and need a restart.
        """
        self._policy.allowed_hosts = settings.allowed_hosts
        self._timeout = settings.timeout
        self._client.timeout = httpx.Timeout(settings.timeout)
        self._client.headers = httpx.Headers(
            {
                "User-Agent": settings.user_agent,
                "Referer": settings.referer,
                "Accept": "*/*",
                "Accept-Encoding": "identity",
            }
        )
        self._lean_headers = [(k.lower(), v) for k, v in self._client.headers.raw]

    @asynccontextmanager
    async def get(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[Response]:
        """Open a streaming GET, following at most MAX_REDIRECTS checked redirects."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            verdict = check_url(current, self._policy.allowed_hosts)
            if not verdict.allowed:
                raise FetchFailed(Reason.UNSAFE_URL, verdict.reason)
            response = await self._open(current, headers)
            try:
                location = response.header("location")
                if response.status in _REDIRECTS and location:
                    try:
                        current = str(httpx.URL(current).join(location))
                    except (httpx.InvalidURL, ValueError) as exc:
                        raise FetchFailed(Reason.UNSAFE_URL, "malformed redirect") from exc
                    continue
                yield response
                return
            finally:
                await response.aclose()
        raise FetchFailed(Reason.TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS}")

    async def _open(self, url: str, headers: Mapping[str, str]) -> Response:
        lean = self._lean
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or 443
        if (
            lean is not None
            and parts.scheme.lower() == "https"
            and (host, port) not in lean.not_h2
            and host.isascii()
        ):
            target = parts.path or "/"
            if parts.query:
                target = f"{target}?{parts.query}"
            if not _PLAIN_TARGET.fullmatch(target):
                target = httpx.URL(url).raw_path.decode("ascii")
            fields = self._lean_headers + [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            ]
            try:
                response = await lean.request(
                    host,
                    port,
                    b"GET",
                    target.encode("ascii"),
                    fields,
                    self._timeout,
                    self._timeout,
                )
            except h2lean.NotHTTP2:
                pass  # remembered in lean.not_h2: httpx from now on
            except h2lean.H2Error as exc:
                raise _translate_lean(exc, in_body=False) from exc
            except _UnsafeDestination as exc:
                raise _translate(exc, in_body=False) from exc
            else:
                return Response.from_lean(response)
        try:
            request = self._client.build_request("GET", url, headers=dict(headers))
            return Response.from_httpx(await self._client.send(request, stream=True))
        except _FOREIGN as exc:
            raise _translate(exc, in_body=False) from exc

    async def aclose(self) -> None:
        """Close every connection."""
        if self._lean is not None:
            await self._lean.aclose()
        await self._client.aclose()


def _lean_pool(
    context: ssl.SSLContext, policy: _HostPolicy, connections_per_host: int
) -> h2lean.H2Pool:
    async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
        try:
            return await _permitted_addresses(policy, host, port, timeout)
        except OSError as exc:
            raise h2lean.ConnectFailed(f"cannot resolve {host}: {exc}") from exc

    return h2lean.H2Pool(context, resolve, connections_per_host)


__all__: typing.Final = [
    "Chunk",
    "FetchFailed",
    "Fetcher",
    "HttpSettings",
    "Response",
    "SetupError",
]
