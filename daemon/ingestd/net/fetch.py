"""HTTP fetching: the only code that imports httpx/httpcore. Foreign exceptions stop here.

One `httpx.AsyncClient` (HTTP/2 when enabled) lives as long as the daemon. Redirects are followed
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
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import certifi
import h2.exceptions
import httpcore
import httpx

from ingestd.net import h2lean
from ingestd.policy.retry import Reason
from ingestd.policy.urls import address_is_public, check_url, host_matches

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(Exception):
    """A request or its body failed; `reason` classifies it for the retry policy."""

    def __init__(self, reason: Reason, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.status = status


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
    connections_per_host: int = 1


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


class _LeanBody(httpx.AsyncByteStream):
    def __init__(self, response: h2lean.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.body:
                yield chunk
        except h2lean.H2Error as exc:
            raise _to_httpx(exc) from exc

    async def aclose(self) -> None:
        self._response.close()


def _to_httpx(exc: h2lean.H2Error) -> httpx.HTTPError:
    if isinstance(exc, h2lean.ConnectTimedOut):
        return httpx.ConnectTimeout(str(exc))
    if isinstance(exc, h2lean.ConnectFailed):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, h2lean.StreamTimedOut):
        return httpx.ReadTimeout(str(exc))
    return httpx.RemoteProtocolError(str(exc))


class _LeanTransport(httpx.AsyncBaseTransport):
    """HTTPS requests go over the lean HTTP/2 pool; origins without h2, and plain http, go
    through httpx's own transport (`fallback`)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        policy: _HostPolicy,
        fallback: httpx.AsyncBaseTransport,
        connections_per_host: int,
    ) -> None:
        async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
            try:
                return await _permitted_addresses(policy, host, port, timeout)
            except OSError as exc:
                raise h2lean.ConnectFailed(f"cannot resolve {host}: {exc}") from exc

        self._pool = h2lean.H2Pool(ssl_context, resolve, connections_per_host)
        self._fallback = fallback

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or 443
        if url.scheme != "https" or (url.host, port) in self._pool.not_h2:
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        try:
            response = await self._pool.request(
                url.host,
                port,
                request.method.encode("ascii"),
                url.raw_path,
                request.headers.raw,
                timeouts.get("connect"),
                timeouts.get("read"),
            )
        except h2lean.NotHTTP2:
            return await self._fallback.handle_async_request(request)
        except h2lean.H2Error as exc:
            raise _to_httpx(exc) from exc
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_LeanBody(response),
            extensions={"http_version": b"HTTP/2"},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
        await self._fallback.aclose()


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
    """A streaming response: status, a few headers, and the body in raw chunks."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.http_version = response.http_version

    def header(self, name: str) -> str | None:
        """A response header, or None."""
        value: str | None = self._response.headers.get(name)
        return value

    @property
    def content_length(self) -> int | None:
        """The declared body length, or None when absent or malformed."""
        value = self.header("content-length")
        if value is None or not value.strip().isdigit():
            return None
        return int(value)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, undecoded. Raises FetchFailed."""
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except _FOREIGN as exc:
            raise _translate(exc, in_body=True) from exc


class Fetcher:
    """GETs URLs through one shared HTTP/2 client, enforcing the URL policy on every hop."""

    def __init__(self, settings: HttpSettings) -> None:
        self._policy = _HostPolicy(settings.allowed_hosts)
        context = build_ssl_context(settings.ca_bundle)
        transport: httpx.AsyncBaseTransport = _Transport(context, settings, self._policy)
        if settings.http2:
            context.set_alpn_protocols(["h2", "http/1.1"])
            transport = _LeanTransport(
                context, self._policy, transport, settings.connections_per_host
            )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,
            trust_env=False,
            headers={
                "User-Agent": settings.user_agent,
                "Referer": settings.referer,
                "Accept": "*/*",
                "Accept-Encoding": "identity",
            },
        )

    def reconfigure(self, settings: HttpSettings) -> None:
        """Apply a reloaded config to later requests: timeout, headers, allowed hosts.

        http2, the CA bundle and the connection limit belong to the transport and need a restart.
        """
        self._policy.allowed_hosts = settings.allowed_hosts
        self._client.timeout = httpx.Timeout(settings.timeout)
        self._client.headers.update(
            {"User-Agent": settings.user_agent, "Referer": settings.referer}
        )

    @asynccontextmanager
    async def get(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[Response]:
        """Open a streaming GET, following at most MAX_REDIRECTS checked redirects."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            verdict = check_url(current, self._policy.allowed_hosts)
            if not verdict.allowed:
                raise FetchFailed(Reason.UNSAFE_URL, verdict.reason)
            try:
                request = self._client.build_request("GET", current, headers=dict(headers))
                response = await self._client.send(request, stream=True)
            except _FOREIGN as exc:
                raise _translate(exc, in_body=False) from exc
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    try:
                        current = str(response.url.join(location))
                    except (httpx.InvalidURL, ValueError) as exc:
                        raise FetchFailed(Reason.UNSAFE_URL, "malformed redirect") from exc
                    continue
                yield Response(response)
                return
            finally:
                await response.aclose()
        raise FetchFailed(Reason.TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS}")

    async def aclose(self) -> None:
        """Close every connection."""
        await self._client.aclose()


__all__: typing.Final = ["FetchFailed", "Fetcher", "HttpSettings", "Response", "SetupError"]
