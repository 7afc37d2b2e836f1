"""What the scripted test origins share: a server on an event loop of its own thread, its
unexpected errors collected, its records changed under one condition that waiters watch."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Any

import trustme


class LoopServer:
    """Base of RawOrigin and FloodOrigin. A subclass sets up `_cond`, `loop_errors`, `_ready`,
    `_error` and `_tasks` in its __init__, and defines `start`, `stop` and `async _main`."""

    _cond: threading.Condition
    loop_errors: list[str]
    _ready: threading.Event
    _error: BaseException | None
    _tasks: set[asyncio.Task[Any]]

    def _tls(self, workdir: Path, ca_name: str) -> None:
        """A fresh CA (its PEM at `ca_pem_path`, for the daemon's ca_bundle) and a server
        context for localhost and 127.0.0.1 that offers h2."""
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_pem_path = str(workdir / ca_name)
        ca.cert_pem.write_to_path(self.ca_pem_path)
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(self._server_ssl)
        self._server_ssl.set_alpn_protocols(["h2"])

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    async def _main(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        with self._cond:
            self.loop_errors.append(str(context.get("exception") or context.get("message")))

    def _update(self, record: Any, **changes: Any) -> None:
        """Change a record the test thread may be waiting on."""
        with self._cond:
            for key, value in changes.items():
                setattr(record, key, value)
            self._cond.notify_all()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            with self._cond:
                self.loop_errors.append(repr(task.exception()))
