"""A local HTTPS origin (HTTP/2 and HTTP/1.1) standing in for the video CDN in e2e tests.

The server is hypercorn (asyncio worker) running a raw ASGI app in a background thread with its
own event loop. Its certificate comes from a throw-away trustme CA; ``ca_pem_path`` is what a
client must trust. The listening socket is bound and listening on ``127.0.0.1:<ephemeral>``
before the thread even starts, and :meth:`OriginServer.start` returns only after a real request
has been answered, so no test ever sleeps to wait for readiness.

URLs look like signed CDN URLs::

    https://localhost:<port>/v/<name>.mp4?a=1988&...&expire=<epoch>&signature=<hex>&mode=ok&size=N

Bodies are deterministic and MP4-shaped (``ftyp`` at offset 4), see :func:`content`. The query
string selects a fault mode (``mode=``) and its parameters; every request is recorded in a
thread-safe log.

Modes (``k`` = how many of the first requests for that name misbehave before it behaves):

``ok``          200 (or 206 for a satisfiable ``Range``), always with Content-Length, strong ETag.
``429``         first ``k`` (default 1) requests: 429 with ``Retry-After: ra`` (default 1).
``503``         first ``k`` (default 1) requests: 503 (``Retry-After`` only when ``ra`` is given).
``500``         first ``k`` (default 1) requests: 500, then ok.
``403``/``404``/``410``  always that status.
``truncated``   first ``k`` (default 1) responses declare the full Content-Length but deliver
                half of it. Over HTTP/2 the stream is then reset (RST_STREAM), or with
                ``how=short`` ended short (END_STREAM); over HTTP/1.1 the connection is closed.
``stall``       first ``k`` (default 1) responses send ``stall_after`` bytes (default 16 KiB),
                then nothing for ``stall_s`` seconds (default 30) or until the client goes away.
``html``        200 ``text/html`` page (a login/captcha page served instead of the video).
``big``         a ``size``-byte MP4-shaped body; ``cl=0`` omits Content-Length (chunked on h1).
``redirect``    302 to the URL in ``to`` (default: ``<name>-target`` on ``127.0.0.1``, mode ok);
                ``to=self`` redirects to the very same URL (a loop); ``set_cookie=V`` adds
                ``Set-Cookie: server_set=V; Path=/``.
``slow``        ok, streamed in ``chunk``-byte pieces (default 16 KiB) with ``delay`` seconds
                (default 0.05) between them; supports ``Range``.

A URL whose ``expire`` is in the past is answered 403, as a CDN would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config

FTYP_HEADER = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
LAST_MODIFIED = "Wed, 25 Nov 2026 08:00:00 GMT"
DEFAULT_SIZE = 128 * 1024
HTML_BODY = (
    b"<!DOCTYPE html><html><head><title>Verify you are human</title></head>"
    b"<body><p>Please complete the security check to continue.</p></body></html>\n"
)
_NAME_RE = re.compile(r"/v/([A-Za-z0-9._-]+)\.mp4")
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@functools.lru_cache(maxsize=512)
def content(name: str, size: int) -> bytes:
    """The exact bytes the origin serves for ``name`` at ``size`` (deterministic, MP4-shaped)."""
    head = FTYP_HEADER[:size]
    rest = random.Random(f"{name}/{size}").randbytes(size - len(head))
    return head + rest


@functools.lru_cache(maxsize=512)
def etag(name: str, size: int) -> str:
    """The strong ETag the origin sends for ``name`` at ``size``."""
    return '"' + hashlib.sha1(content(name, size)).hexdigest() + '"'


def sha256_of(name: str, size: int) -> str:
    return hashlib.sha256(content(name, size)).hexdigest()


@dataclass
class RequestRecord:
    """One request as the origin saw it."""

    name: str | None
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    http_version: str
    host: str
    time: float
    monotonic: float
    status: int | None = None
    bytes_sent: int = 0
    finished: bool = False
    finished_at: float = 0.0  # time.monotonic() when the last byte was sent
    disconnected: bool = False
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def if_range(self) -> str | None:
        return self.headers.get("if-range")


class _Disconnect:
    """Watches ``receive`` for ``http.disconnect`` so streaming loops can stop early."""

    def __init__(self, receive: Receive) -> None:
        self.event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.event.set()
                return

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; return True (early) if the client went away."""
        if seconds <= 0:
            return self.event.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)
        return self.event.is_set()

    def close(self) -> None:
        self._task.cancel()


class OriginServer:
    """Background HTTPS origin. Use as a context manager or call start()/stop()."""

    def __init__(self, workdir: Path, *, graceful_timeout: float = 1.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._graceful_timeout = graceful_timeout
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._loop_ready = threading.Event()
        self._error: BaseException | None = None
        self._sock: socket.socket | None = None
        self.loop_errors: list[str] = []

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_pem_path = str(self.workdir / "origin-ca.pem")
        self.cert_path = str(self.workdir / "origin-cert.pem")
        self.key_path = str(self.workdir / "origin-key.pem")
        ca.cert_pem.write_to_path(self.ca_pem_path)
        leaf.private_key_pem.write_to_path(self.key_path)
        with open(self.cert_path, "wb") as fh:
            for blob in leaf.cert_chain_pems:
                fh.write(blob.bytes())
        self.port = 0

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> OriginServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this origin's CA."""
        return ssl.create_default_context(cafile=self.ca_pem_path)

    def start(self, timeout: float = 15.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]

        config = Config()
        # hypercorn wraps the fd in its own socket object and closes it on shutdown, so hand it a
        # duplicate and keep ours until stop().
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
        config.certfile = self.cert_path
        config.keyfile = self.key_path
        config.alpn_protocols = ["h2", "http/1.1"]
        config.graceful_timeout = self._graceful_timeout
        config.keep_alive_timeout = 30
        config.accesslog = None
        config.errorlog = None
        config.include_server_header = True

        self._thread = threading.Thread(
            target=self._thread_main, args=(config,), name="origin-server", daemon=True
        )
        self._thread.start()
        if not self._loop_ready.wait(timeout):
            raise RuntimeError("origin event loop did not start")
        self._check_alive()
        self._health_check(timeout)

    def _thread_main(self, config: Config) -> None:
        try:
            asyncio.run(self._serve(config))
        except BaseException as exc:  # surfaced by _check_alive / stop
            self._error = exc
            self._loop_ready.set()

    async def _serve(self, config: Config) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        self._stop_event = asyncio.Event()
        self._loop_ready.set()
        await serve(self, config, shutdown_trigger=self._stop_event.wait)  # type: ignore[arg-type]

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Clients that vanish mid-response (SIGKILLed daemons, timeouts) make hypercorn's
        # connection tasks fail noisily; keep the messages for inspection instead of stderr.
        with self._lock:
            self.loop_errors.append(str(context.get("exception") or context.get("message")))

    def _check_alive(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"origin server thread failed: {self._error!r}") from self._error

    def _health_check(self, timeout: float) -> None:
        """One real TLS request answered proves the server is serving (readiness without sleeps)."""
        ctx = self.ssl_context()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls,
                ):
                    tls.sendall(
                        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    )
                    reply = b""
                    while chunk := tls.recv(4096):
                        reply += chunk
                if reply.startswith(b"HTTP/1.1 200"):
                    return
                last = RuntimeError(f"unexpected health reply {reply[:80]!r}")
            except OSError as exc:  # e.g. the server accepted before its loop was serving
                last = exc
            # bounded retry of a failed real request, not a readiness sleep
            time.sleep(0.05)
        raise RuntimeError(f"origin did not become healthy within {timeout}s: {last!r}")

    def stop(self, timeout: float = 10.0) -> None:
        """Bounded shutdown: graceful first, then cancel whatever is still running."""
        if self._loop is not None and self._thread is not None and self._stop_event is not None:
            stop_loop_thread(self._loop, self._thread, self._stop_event, timeout, "origin server")
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ test API

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def url(
        self,
        name: str,
        mode: str = "ok",
        size: int = DEFAULT_SIZE,
        expire: int | None = None,
        host: str = "localhost",
        **params: object,
    ) -> str:
        """A signed-CDN-shaped URL for ``name`` served in ``mode`` with a ``size``-byte body."""
        if expire is None:
            expire = int(time.time()) + 3600
        signature = hashlib.md5(f"{name}/{expire}".encode()).hexdigest()
        query: list[tuple[str, str]] = [
            ("a", "1988"),
            ("bti", "NEBzNTY6QGo6OjZALnAjNDQuYCMxNDNg"),
            ("br", "1130"),
            ("mime_type", "video_mp4"),
            ("expire", str(expire)),
            ("l", "2026112673282469267770"),
            ("policy", "2"),
            ("signature", signature),
            ("tk", "tt_chain_token"),
            ("mode", mode),
            ("size", str(size)),
        ]
        query += [(k, str(v)) for k, v in params.items()]
        return f"https://{host}:{self.port}/v/{name}.mp4?{urllib.parse.urlencode(query)}"

    def localize(
        self,
        source_url: str,
        name: str,
        mode: str = "ok",
        size: int = DEFAULT_SIZE,
        expire: int | None = None,
        **params: object,
    ) -> str:
        """Point a real CDN URL at this origin, keeping its query string with a new ``expire``."""
        if expire is None:
            expire = int(time.time()) + 3600
        parts = urllib.parse.urlsplit(source_url)
        query = [
            (k, str(expire) if k == "expire" else v)
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k not in {"mode", "size"}
        ]
        query += [("mode", mode), ("size", str(size))]
        query += [(k, str(v)) for k, v in params.items()]
        return f"https://localhost:{self.port}/v/{name}.mp4?{urllib.parse.urlencode(query)}"

    @staticmethod
    def content(name: str, size: int = DEFAULT_SIZE) -> bytes:
        return content(name, size)

    @staticmethod
    def etag(name: str, size: int = DEFAULT_SIZE) -> str:
        return etag(name, size)

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def requests_for(self, name: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._log if r.name == name]

    def request_count(self, name: str) -> int:
        return len(self.requests_for(name))

    # ----------------------------------------------------------------- ASGI app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return

        path: str = scope["path"]
        if path == "/healthz":
            await _simple(send, 200, b"ok\n", "text/plain")
            return

        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            k, v = key.decode("latin-1").lower(), value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode("latin-1")))
        match = _NAME_RE.fullmatch(path)
        name = match.group(1) if match else None
        record = RequestRecord(
            name=name,
            method=scope["method"],
            path=path,
            query=query,
            headers=headers,
            http_version=scope["http_version"],
            host=headers.get("host", headers.get(":authority", "")),
            time=time.time(),
            monotonic=time.monotonic(),
        )
        nth = 0
        with self._lock:
            self._log.append(record)
            if name is not None:
                self._counts[name] += 1
                nth = self._counts[name]

        disconnect = _Disconnect(receive)
        try:
            if name is None:
                await self._reply(send, record, 404, b"no such path\n", "text/plain")
            else:
                await self._dispatch(send, record, name, query, nth, disconnect)
        finally:
            disconnect.close()

    async def _dispatch(
        self,
        send: Send,
        record: RequestRecord,
        name: str,
        q: dict[str, str],
        nth: int,
        disconnect: _Disconnect,
    ) -> None:
        mode = q.get("mode", "ok")
        size = int(q.get("size", DEFAULT_SIZE))
        k = int(q.get("k", "1"))
        failing = nth <= k
        expire = q.get("expire")
        if expire is not None and expire.isdigit() and int(expire) < time.time():
            await self._reply(send, record, 403, b"expired\n", "text/plain")
            return

        if mode in {"403", "404", "410"}:
            await self._reply(send, record, int(mode), b"no\n", "text/plain")
        elif mode == "429" and failing:
            extra = [("retry-after", q.get("ra", "1"))]
            await self._reply(send, record, 429, b"slow down\n", "text/plain", extra)
        elif mode == "503" and failing:
            extra = [("retry-after", q["ra"])] if "ra" in q else []
            await self._reply(send, record, 503, b"unavailable\n", "text/plain", extra)
        elif mode == "500" and failing:
            await self._reply(send, record, 500, b"boom\n", "text/plain")
        elif mode == "html":
            await self._reply(send, record, 200, HTML_BODY, "text/html; charset=utf-8")
        elif mode == "redirect":
            target = q.get("to") or self.url(name + "-target", host="127.0.0.1")
            if target == "self":  # a redirect loop
                target = f"https://{record.host}{record.path}?{urllib.parse.urlencode(q)}"
            extra = [("location", target)]
            if "set_cookie" in q:  # a cookie a client must not keep (ingestd stores none)
                extra.append(("set-cookie", f"server_set={q['set_cookie']}; Path=/"))
            await self._reply(send, record, 302, b"", "text/plain", extra)
        elif mode == "big":
            await self._serve_content(
                send, record, name, size, disconnect, with_length=q.get("cl", "1") != "0"
            )
        elif mode == "truncated" and failing:
            await self._serve_content(
                send, record, name, size, disconnect, cut_fraction=0.5, how=q.get("how", "reset")
            )
        elif mode == "stall" and failing:
            await self._serve_content(
                send,
                record,
                name,
                size,
                disconnect,
                stall_after=int(q.get("stall_after", str(16 * 1024))),
                stall_s=float(q.get("stall_s", "30")),
            )
        elif mode == "slow":
            await self._serve_content(
                send,
                record,
                name,
                size,
                disconnect,
                chunk=int(q.get("chunk", str(16 * 1024))),
                delay=float(q.get("delay", "0.05")),
            )
        else:  # ok, and the fault modes once their first k requests are used up
            await self._serve_content(send, record, name, size, disconnect)

    async def _reply(
        self,
        send: Send,
        record: RequestRecord,
        status: int,
        body: bytes,
        content_type: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        hdrs = [("content-type", content_type), ("content-length", str(len(body)))]
        hdrs += extra or []
        record.status = status
        record.response_headers = dict(hdrs)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(a.encode(), b.encode()) for a, b in hdrs],
            }
        )
        if record.method != "HEAD":
            await send({"type": "http.response.body", "body": body, "more_body": False})
            record.bytes_sent = len(body)
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        record.finished = True
        record.finished_at = time.monotonic()

    async def _serve_content(
        self,
        send: Send,
        record: RequestRecord,
        name: str,
        size: int,
        disconnect: _Disconnect,
        *,
        chunk: int = 64 * 1024,
        delay: float = 0.0,
        with_length: bool = True,
        cut_fraction: float | None = None,
        how: str = "reset",
        stall_after: int | None = None,
        stall_s: float = 0.0,
    ) -> None:
        data = content(name, size)
        tag = etag(name, size)
        start = 0
        partial = False
        range_header = record.headers.get("range")
        if range_header:
            m = _RANGE_RE.fullmatch(range_header.strip())
            if_range = record.headers.get("if-range")
            if m and (if_range is None or if_range in {tag, LAST_MODIFIED}):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
                if start >= size or end < start:
                    await self._reply(
                        send, record, 416, b"", "text/plain", [("content-range", f"bytes */{size}")]
                    )
                    return
                data = data[start : min(end, size - 1) + 1]
                partial = True
        hdrs = [
            ("content-type", "video/mp4"),
            ("etag", tag),
            ("last-modified", LAST_MODIFIED),
            ("accept-ranges", "bytes"),
        ]
        if with_length:
            hdrs.append(("content-length", str(len(data))))
        if partial:
            hdrs.append(("content-range", f"bytes {start}-{start + len(data) - 1}/{size}"))
        status = 206 if partial else 200
        record.status = status
        record.response_headers = dict(hdrs)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(a.encode(), b.encode()) for a, b in hdrs],
            }
        )
        if record.method == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            record.finished = True
            record.finished_at = time.monotonic()
            return

        limit = len(data)
        if cut_fraction is not None:
            limit = int(len(data) * cut_fraction)
        if stall_after is not None:
            limit = min(stall_after, len(data))

        offset = 0
        while offset < limit:
            if disconnect.event.is_set():
                record.disconnected = True
                return
            piece = data[offset : min(offset + chunk, limit)]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            offset += len(piece)
            record.bytes_sent = offset
            if delay and offset < limit and await disconnect.pause(delay):
                record.disconnected = True
                return

        if stall_after is not None:
            # Go silent; the client's progress timeout should fire and it should go away.
            record.disconnected = await disconnect.pause(stall_s)
            return  # never finish this response
        if cut_fraction is not None:
            if record.http_version == "2" and (how == "short" or not await _reset_h2_stream(send)):
                # END_STREAM before Content-Length bytes: the h2 stream ends short.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            # HTTP/1.1: returning mid-body makes hypercorn close the connection.
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        record.finished = True
        record.finished_at = time.monotonic()


def stop_loop_thread(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    stop: asyncio.Event,
    timeout: float,
    what: str,
) -> None:
    """Stop a server running on its own loop in `thread`: set `stop`, then cancel every task
    if it has not ended within `timeout`; bounded either way."""
    if not thread.is_alive():
        return
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout)
    if thread.is_alive():

        def cancel_all() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(cancel_all)
        thread.join(timeout)
    if thread.is_alive():
        raise RuntimeError(f"{what} thread did not stop")


async def _simple(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _reset_h2_stream(send: Send) -> bool:
    """Send RST_STREAM(INTERNAL_ERROR) for this response's h2 stream, after the data queued so far.

    ASGI has no way to abort a response, so this reaches into hypercorn: ``send`` is the bound
    ``HTTPStream.app_send`` whose ``send`` is the bound ``H2Protocol.stream_send``. Returns False
    (and does nothing) when that shape is not found, e.g. after a hypercorn upgrade."""
    stream = getattr(send, "__self__", None)
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    stream_id = getattr(stream, "stream_id", None)
    connection = getattr(protocol, "connection", None)
    buffers = getattr(protocol, "stream_buffers", None)
    if stream_id is None or connection is None or not isinstance(buffers, dict):
        return False
    buffer = buffers.get(stream_id)
    if buffer is not None:
        await asyncio.wait_for(buffer.drain(), 10)  # let the partial body go out first
    connection.reset_stream(stream_id, error_code=2)  # INTERNAL_ERROR
    await protocol._flush()
    if buffer is not None:
        await buffer.close()
    return True
