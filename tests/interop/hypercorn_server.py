"""The interop matrix's hypercorn server: a tiny ASGI app serving a folder over HTTP/2 and TLS.

    python hypercorn_server.py --port=N --host=127.0.0.1 --root=DIR --cert=PEM --key=PEM \
        --mode=default|stingy [--streams=2 --goaway=3 --chunk=4096]

``default``: hypercorn's defaults, the body sent in 64 KiB messages. ``stingy``:
``h2_max_concurrent_streams`` ``--streams``, and two things hypercorn has no option for, done on
each H2Protocol's h2 connection after its constructor: SETTINGS_INITIAL_WINDOW_SIZE 16384, and
DATA frames of at most ``--chunk`` bytes (hypercorn buffers a stream's body and sends it in frames
as large as the client allows, whatever the app's message sizes, so its view of the outbound frame
size is capped).

No GOAWAY every few requests: hypercorn's ``keep_alive_max_requests`` sends one over HTTP/2 with
h2's ``close_connection()``, after which h2 refuses to send anything more (its connection state is
CLOSED), so the stream that crossed the limit (which last-stream-id covers) is never answered and
the TCP connection closes under it. curl fails on it too (one request at a time, the 4th of a
connection with the limit at 3: "Error in the HTTP2 framing layer"; hypercorn 0.18.0, h2 4.x), so
it is a server bug, not a stingy setting, and is left out. ``--goaway`` is accepted and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.connection
import h2.settings
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.protocol import h2 as hypercorn_h2

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
DEFAULT_CHUNK = 64 * 1024
STINGY_WINDOW = 16384


def files_app(root: Path, chunk: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
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
        name = str(scope["path"]).lstrip("/")
        path = root / name
        if "/" in name or name.startswith(".") or not path.is_file():
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        size = path.stat().st_size
        headers = [(b"content-type", b"video/mp4"), (b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(path, "rb") as fh:
            while data := fh.read(chunk):
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


class SmallFrames(h2.connection.H2Connection):
    """An h2 connection that never sends a frame larger than ``cap`` bytes: h2 assigns
    ``max_outbound_frame_size`` from the peer's SETTINGS, and hypercorn sizes DATA frames by it."""

    cap = 16384
    _max_outbound = 16384

    @property
    def max_outbound_frame_size(self) -> int:
        return min(self._max_outbound, self.cap)

    @max_outbound_frame_size.setter
    def max_outbound_frame_size(self, value: int) -> None:
        self._max_outbound = value


def stingy_connections(frame_cap: int) -> None:
    """Every HTTP/2 connection: SETTINGS_INITIAL_WINDOW_SIZE = STINGY_WINDOW, small frames."""
    original = hypercorn_h2.H2Protocol.__init__
    SmallFrames.cap = frame_cap

    def init(self: hypercorn_h2.H2Protocol, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        connection = self.connection
        codes = h2.settings.SettingCodes
        values = {
            codes(code): connection.local_settings[code] for code in connection.local_settings
        }
        values[codes.INITIAL_WINDOW_SIZE] = STINGY_WINDOW
        connection.local_settings = h2.settings.Settings(client=False, initial_values=values)
        peer_max = connection.__dict__.pop("max_outbound_frame_size", 16384)
        connection.__class__ = SmallFrames
        connection.max_outbound_frame_size = peer_max

    hypercorn_h2.H2Protocol.__init__ = init  # type: ignore[method-assign]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--mode", choices=("default", "stingy"), default="default")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--goaway", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args()

    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.certfile = args.cert
    config.keyfile = args.key
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = "-"
    chunk = DEFAULT_CHUNK
    if args.mode == "stingy":
        config.h2_max_concurrent_streams = args.streams
        chunk = args.chunk
        stingy_connections(args.chunk)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = files_app(args.root.resolve(), chunk)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(main())
