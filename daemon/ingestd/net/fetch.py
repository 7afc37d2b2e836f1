"""HTTP fetching: the only code that imports httpx/httpcore. Foreign exceptions stop here.

HTTPS goes over our HTTP/2 pool (net.http2); plain http, origins without h2 and http2 = false
go through one `httpx.AsyncClient`. Both live as long as the daemon. Redirects are followed
by hand so that every hop passes the URL policy, and a network backend checks the resolved
addresses at connect time, so a host cannot pass the check and then resolve somewhere else.
Each hop carries the cookies of `cookies_file` that the jar's policy gives its URL (net.cookies);
no Set-Cookie is ever stored, on either path.
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
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import h2.errors
import h2.events
import h2.exceptions
import httpcore
import httpx

from ingestd.net import http2
from ingestd.net.cookies import cookie_header
from ingestd.policy.retry import HINT_CA_BUNDLE, Reason, refusal_hint
from ingestd.policy.urls import address_is_public, check_url, host_matches

if typing.TYPE_CHECKING:
    from ingestd.config import Config

MAX_REDIRECTS = 5
Chunk = bytes | memoryview  # a piece of a response body
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(Exception):
    """A request or its body failed; `reason` classifies it for the retry policy."""

    def __init__(
        self,
        reason: Reason,
        detail: str = "",
        status: int | None = None,
        host_fault: bool = False,
        hint: str = "",
        goaway: bool = False,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.host_fault = host_fault  # the connection died under several requests at once
        self.hint = hint  # what the operator can change (policy.retry HINTS)
        # The server closed the connection gracefully (GOAWAY, NO_ERROR) under this request:
        # nothing of the item's; the request (or the rest of the body) may go again at once.
        self.goaway = goaway


class SetupError(Exception):
    """The HTTP client cannot be built (bad CA bundle...)."""


class _UnsafeDestination(Exception):
    """The connect-time guard refused a host; `verdict` as policy.urls names refusals."""

    def __init__(self, verdict: str, message: str) -> None:
        super().__init__(f"{verdict}: {message}")
        self.verdict = verdict


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
    idle_timeout: float = 60.0  # seconds an unused connection is kept
    http2_client: str = "builtin"  # or "h2": HTTPS through httpx's own HTTP/2 stack

    @classmethod
    def of(cls, config: Config) -> HttpSettings:
        """The slice of the config the client needs."""
        return cls(
            http2=config.http2,
            http2_client=config.http2_client,
            timeout=config.timeout,
            user_agent=config.user_agent,
            referer=config.referer,
            ca_bundle=config.ca_bundle,
            max_connections=max(config.concurrency, 64),
            allowed_hosts=config.allowed_hosts,
            connections_per_host=config.connections_per_host,
            idle_timeout=config.idle_timeout,
        )


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
            raise _UnsafeDestination("host_not_allowed", f"host {host} is not in allowed_hosts")
        return [host]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except TimeoutError as exc:
        raise OSError(f"resolving {host} timed out") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    refused = [a for a in addresses if not address_is_public(a)]
    if not addresses or refused:
        raise _UnsafeDestination(
            "non_public_address",
            f"{host} resolves to a non-public address ({', '.join(refused[:3]) or 'none'})",
        )
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


class _GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over an httpcore pool whose network backend is guarded.
    httpcore's exceptions come through as they are; _translate maps them."""

    def __init__(self, ssl_context: ssl.SSLContext, settings: HttpSettings, policy: _HostPolicy):
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=settings.idle_timeout,
            http1=True,
            http2=settings.http2,
            network_backend=_GuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        response = await self._pool.handle_async_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CoreBody(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _CoreBody(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


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


# OpenSSL's verify results that a CA of one's own in `ca_bundle` cures: the chain ends at a
# certificate nobody trusts (X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, DEPTH_ZERO_SELF_SIGNED_CERT,
# SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE).
# An expired certificate or a name mismatch is not cured by it, and gets no such hint.
_UNTRUSTED_ISSUER = frozenset({2, 18, 19, 20, 21})


def _untrusted_certificate(exc: BaseException) -> bool:
    """Whether a connect error was a TLS verification failure at an untrusted issuer (the
    stacks chain the ssl error as the cause or context of their own)."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_code in _UNTRUSTED_ISSUER
        current = current.__cause__ or current.__context__
    return False


def _translate(exc: BaseException, *, in_body: bool) -> FetchFailed:
    """The one translation of the HTTP stacks' errors (ours, httpx's, httpcore's, h2's)."""
    if isinstance(exc, _UnsafeDestination):
        return FetchFailed(Reason.UNSAFE_URL, str(exc), hint=refusal_hint(exc.verdict))
    if isinstance(exc, _UNREACHABLE):  # DNS, TCP or TLS: the host's fault
        hint = HINT_CA_BUNDLE if _untrusted_certificate(exc) else ""
        return FetchFailed(Reason.UNREACHABLE, _describe(exc), hint=hint)
    if isinstance(exc, _TIMEOUTS):
        return FetchFailed(Reason.TIMEOUT, type(exc).__name__)
    if isinstance(exc, http2.MalformedResponse):
        return FetchFailed(Reason.MALFORMED, _describe(exc))
    if isinstance(exc, http2.ConnectionLost):  # the host's, unless it died mid-body, alone
        return FetchFailed(
            Reason.CONNECTION_ERROR, _describe(exc), host_fault=exc.shared or not in_body
        )
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol, httpcore.UnsupportedProtocol)):
        return FetchFailed(Reason.UNSAFE_URL, _describe(exc))
    if _graceful_goaway(exc):
        return FetchFailed(Reason.CONNECTION_ERROR, _describe(exc), goaway=True)
    if isinstance(exc, _LOST_CONNECTION):
        # httpcore met the end of a connection the server closed after its GOAWAY before it
        # read the GOAWAY (writing a request or a WINDOW_UPDATE, or reading): recycled like
        # the above, and what came is kept. A host that keeps doing it: MAX_RECYCLED.
        return FetchFailed(Reason.CONNECTION_ERROR, _describe(exc), goaway=True)
    if in_body and isinstance(exc, _CUT_SHORT):
        return FetchFailed(Reason.TRUNCATED, _describe(exc))
    return FetchFailed(Reason.CONNECTION_ERROR, _describe(exc))


def _graceful_goaway(exc: BaseException) -> bool:
    """Whether httpcore failed this request because the server sent a NO_ERROR GOAWAY: it fails
    every stream still reading then, even those the server accepted and would finish, so a
    server that recycles its connections (nginx's keepalive_requests) cuts bodies short."""
    error: BaseException | None = exc
    for _ in range(3):  # httpx's error, raised from httpcore's
        if error is None:
            return False
        event = error.args[0] if error.args else None
        if isinstance(event, h2.events.ConnectionTerminated):
            return event.error_code == h2.errors.ErrorCodes.NO_ERROR
        error = error.__cause__
    return False


_UNREACHABLE = (
    http2.ConnectFailed,
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpcore.ConnectError,
    httpcore.ConnectTimeout,
)
_TIMEOUTS = (http2.StreamTimedOut, httpx.TimeoutException, httpcore.TimeoutException)
_LOST_CONNECTION = (httpx.WriteError, httpx.ReadError, httpcore.WriteError, httpcore.ReadError)
# A body that ended before its end: an HTTP/2 stream reset or lost, an HTTP/1.1 framing error
# (an HTTP/2 body shorter than its content-length raises h2's InvalidBodyLengthError).
_CUT_SHORT = (
    http2.StreamFailed,
    httpx.RemoteProtocolError,
    httpcore.RemoteProtocolError,
    h2.exceptions.ProtocolError,
)
# What may escape the HTTP stacks; everything else is a bug of ours.
_FOREIGN = (
    http2.H2Error,
    httpx.HTTPError,
    httpx.StreamError,
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    h2.exceptions.ProtocolError,
    _UnsafeDestination,
)


class Response:
    """A streaming response: status, headers, and the body in raw chunks."""

    def __init__(
        self,
        status: int,
        http_version: str,
        headers: Mapping[str, str],
        body: AsyncIterator[Sequence[Chunk]],
        close: Callable[[], Awaitable[None]],
        acknowledge: Callable[[int], None] | None = None,
    ) -> None:
        self.status = status
        self.http_version = http_version
        self._headers = headers
        self._body = body
        self._close = close
        self._acknowledge = acknowledge

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
    def from_http2(cls, response: http2.Response) -> Response:
        """Wrap a response of our HTTP/2 pool."""

        async def close() -> None:
            response.close()

        headers: dict[str, str] = {}
        for raw_name, raw_value in response.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            # A repeated field reads as its values joined, as through httpx.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return cls(response.status, "HTTP/2", headers, response.body, close, response.acknowledge)

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
        never rewritten. Call `consumed(n)` once `n` of these bytes are written: only then may
        the server send as many again, so what waits in memory is bounded by the windows.
        """
        try:
            async for batch in self._body:
                yield batch
        except _FOREIGN as exc:
            raise _translate(exc, in_body=True) from exc

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The body chunk by chunk, each consumed once the caller takes the next."""
        async for batch in self.batches():
            for chunk in batch:
                yield chunk
                self.consumed(len(chunk))

    def consumed(self, size: int) -> None:
        """`size` body bytes are written (or otherwise done with)."""
        if self._acknowledge is not None:
            self._acknowledge(size)

    async def aclose(self) -> None:
        """Release the stream or connection."""
        await self._close()


class Fetcher:
    """GETs URLs, enforcing the URL policy on every hop.

    HTTPS goes over our HTTP/2 pool (net.http2) when http2 is on; plain http, origins that
    do not negotiate h2, http2 = false and http2_client = "h2" go through one httpx client
    (with h2, over httpcore's own HTTP/2).
    """

    def __init__(self, settings: HttpSettings, cookies: CookieJar | None = None) -> None:
        self._policy = _HostPolicy(settings.allowed_hosts)
        self._cookies = cookies
        self._http2: http2.H2Pool | None = None
        if settings.http2 and settings.http2_client == "builtin":
            # A context of its own: httpcore sets the ALPN list of the one it is given.
            context = build_ssl_context(settings.ca_bundle)
            context.set_alpn_protocols(["h2", "http/1.1"])
            self._http2 = _http2_pool(context, self._policy, settings)
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(
                build_ssl_context(settings.ca_bundle), settings, self._policy
            ),
            follow_redirects=False,
            trust_env=False,
            # httpx keeps every Set-Cookie and sends it back; ours (net.http2) never does. A
            # jar whose policy refuses every domain keeps both paths the same: cookies come
            # from cookies_file only.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=())),
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
        self._request_fields = [(k.lower(), v) for k, v in self._client.headers.raw]

    def set_cookies(self, cookies: CookieJar | None) -> None:
        """Use these cookies (a reloaded cookies_file) from the next request on."""
        self._cookies = cookies

    @asynccontextmanager
    async def get(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[Response]:
        """Open a streaming GET, following at most MAX_REDIRECTS checked redirects."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            verdict = check_url(current, self._policy.allowed_hosts)
            if not verdict.allowed:
                raise FetchFailed(
                    Reason.UNSAFE_URL, verdict.reason, hint=refusal_hint(verdict.reason)
                )
            hop_headers = headers
            if self._cookies is not None:  # each hop: the cookies of its own URL only
                cookie = cookie_header(self._cookies, current)
                if cookie:
                    hop_headers = {**headers, "Cookie": cookie}
            response = await self._open(current, hop_headers)
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
        pool = self._http2
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or 443
        if (
            pool is not None
            and parts.scheme.lower() == "https"
            and (host, port) not in pool.not_h2
            and host.isascii()
        ):
            target = parts.path or "/"
            if parts.query:
                target = f"{target}?{parts.query}"
            if not _PLAIN_TARGET.fullmatch(target):
                target = httpx.URL(url).raw_path.decode("ascii")
            fields = self._request_fields + [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            ]
            try:
                response = await pool.request(
                    host,
                    port,
                    b"GET",
                    target.encode("ascii"),
                    fields,
                    self._timeout,
                    self._timeout,
                )
            except http2.NotHTTP2:
                pass  # remembered in not_h2: httpx from now on
            except _FOREIGN as exc:
                raise _translate(exc, in_body=False) from exc
            else:
                return Response.from_http2(response)
        try:
            request = self._client.build_request("GET", url, headers=dict(headers))
            return Response.from_httpx(await self._client.send(request, stream=True))
        except _FOREIGN as exc:
            raise _translate(exc, in_body=False) from exc

    async def aclose(self) -> None:
        """Close every connection."""
        if self._http2 is not None:
            await self._http2.aclose()
        await self._client.aclose()


def _http2_pool(
    context: ssl.SSLContext, policy: _HostPolicy, settings: HttpSettings
) -> http2.H2Pool:
    async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
        try:
            return await _permitted_addresses(policy, host, port, timeout)
        except OSError as exc:
            raise http2.ConnectFailed(f"cannot resolve {host}: {exc}") from exc

    return http2.H2Pool(
        context,
        resolve,
        settings.connections_per_host,
        idle_timeout=settings.idle_timeout,
    )


__all__: typing.Final = [
    "Chunk",
    "FetchFailed",
    "Fetcher",
    "HttpSettings",
    "Response",
    "SetupError",
]
