"""sd_notify(3) over $NOTIFY_SOCKET: readiness, status, watchdog, reload and stop notifications.

A small implementation of our own: one datagram per message on a unix socket (abstract when the
path starts with `@`). Without NOTIFY_SOCKET every call is a no-op; a send error is never fatal.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Sends sd_notify messages to the service manager, if there is one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self.watchdog_usec = watchdog_usec
        self.errors = 0
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, pid: int | None = None) -> Notifier:
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (which must name us)."""
        pid = os.getpid() if pid is None else pid
        watchdog: int | None = None
        usec = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not owner or owner == str(pid)):
            watchdog = int(usec)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening."""
        return self._socket is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the manager's timeout), or None."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def send(self, **fields: str | int) -> bool:
        """Send one message of KEY=value lines. Returns False if it could not be sent."""
        if self._socket is None or self._address is None:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            self._socket.sendto(message.encode("utf-8", errors="replace"), self._address)
        except OSError:
            self.errors += 1
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1, optionally with a STATUS line."""
        return self.send(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        """STATUS=<one line shown by systemctl status>."""
        return self.send(status=text.replace("\n", " "))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the event loop is alive."""
        return self.send(watchdog=1)

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload expects."""
        return self.send(
            reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self) -> bool:
        """STOPPING=1: a clean shutdown has begun."""
        return self.send(stopping=1)

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
