"""Ports, certificates, child processes and readiness for the interop servers.

Every server is a child process in a process group of its own (``start_new_session``), so that
stopping it stops whatever it forked (nginx and Apache workers, a JVM, a backend); the group is
always killed when its block ends, also on failure. Readiness is a TLS handshake with ALPN h2
polled until a deadline, never a sleep. Ports are picked by binding port 0 and releasing it; the
rare collision (another process takes the port in between) shows as the server exiting before it
is ready, and the whole start is retried with fresh ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import trustme

LOOPBACK = "127.0.0.1"
HOST = "localhost"  # in URLs; the certificate names it and 127.0.0.1
START_ATTEMPTS = 3
STOP_GRACE = 5.0


class ServerStartError(RuntimeError):
    """A server did not become ready; ``early_exit`` if it exited first (a port collision?)."""

    def __init__(self, message: str, early_exit: bool = False) -> None:
        super().__init__(message)
        self.early_exit = early_exit


def free_port() -> int:
    """A port nobody listens on right now (bound to 0 on loopback, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    """A throw-away CA and one server certificate for ``localhost`` and ``127.0.0.1``."""

    ca_pem: Path
    cert_pem: Path  # the leaf and its chain
    key_pem: Path
    combined_pem: Path  # chain then key, for servers that take one file (haproxy)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        context.set_alpn_protocols(["h2"])
        return context


def make_tls(directory: Path) -> Tls:
    """RSA keys: every server here reads them (Tomcat's PEM reader included)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert(HOST, LOOPBACK, key_type=trustme.KeyType.RSA)
    tls = Tls(
        ca_pem=directory / "ca.pem",
        cert_pem=directory / "server-chain.pem",
        key_pem=directory / "server-key.pem",
        combined_pem=directory / "server-combined.pem",
    )
    ca.cert_pem.write_to_path(str(tls.ca_pem))
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    tls.cert_pem.write_bytes(chain)
    tls.key_pem.write_bytes(leaf.private_key_pem.bytes())
    tls.combined_pem.write_bytes(chain + leaf.private_key_pem.bytes())
    for path in (tls.ca_pem, tls.cert_pem, tls.key_pem, tls.combined_pem):
        os.chmod(path, 0o644)  # a throw-away key; servers that drop root read it too
    return tls


@dataclass
class Launch:
    """One process to start and how to know it is ready.

    ``probe`` is ``"tls"`` (a handshake that must negotiate h2) or ``"tcp"`` (a backend)."""

    label: str
    argv: list[str]
    port: int
    probe: str = "tls"
    env: dict[str, str] | None = None
    cwd: Path | None = None
    ready_timeout: float = 30.0


@dataclass
class Child:
    """A started Launch: its process (the leader of its own process group) and its log."""

    launch: Launch
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: BinaryIO | None = field(default=None, repr=False)

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.launch.env or {})
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.launch.cwd,
            env=env,
            start_new_session=True,
        )

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after STOP_GRACE; never raises."""
        proc = self.proc
        if proc is not None:
            pgid = proc.pid  # the leader of its own session: its pid is the group id
            if proc.poll() is None:
                _killpg(pgid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE)
            _killpg(pgid, signal.SIGKILL)  # stragglers (workers, a forked backend)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE)
        if self._log is not None:
            self._log.close()
        self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_ready(child: Child, tls: Tls) -> None:
    """Poll until the child accepts a connection (and, for ``tls``, negotiates h2)."""
    launch = child.launch
    deadline = time.monotonic() + launch.ready_timeout
    context = tls.client_context()
    last_error = "no attempt"
    while True:
        if child.exited:
            code = child.proc.returncode if child.proc else None
            raise ServerStartError(
                f"{launch.label} exited with {code} before it was ready:\n{child.log_tail()}",
                early_exit=True,
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerStartError(
                f"{launch.label} not ready on port {launch.port} within {launch.ready_timeout}s "
                f"({last_error}):\n{child.log_tail()}"
            )
        try:
            with socket.create_connection(
                (LOOPBACK, launch.port), timeout=min(2.0, remaining)
            ) as s:
                if launch.probe != "tls":
                    return
                with context.wrap_socket(s, server_hostname=HOST) as tls_sock:
                    alpn = tls_sock.selected_alpn_protocol()
                    if alpn != "h2":
                        raise ServerStartError(
                            f"{launch.label} answers TLS but negotiated {alpn!r}, not h2:\n"
                            + child.log_tail()
                        )
                    return
        except (OSError, ssl.SSLError) as exc:  # not listening yet, or mid-start
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)  # between two probes; readiness itself is the probe


@contextlib.contextmanager
def running(
    make_launches: Callable[[int], list[Launch]], tls: Tls, log_dir: Path
) -> Iterator[list[Child]]:
    """Start what ``make_launches(attempt)`` returns (in order, each ready before the next),
    retrying with its fresh ports when a process exits before it is ready; stop them all when
    the block ends, whatever happens."""
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            launches = make_launches(attempt)
            children = []
            try:
                for launch in launches:
                    child = Child(launch, log_dir / f"{launch.label}.{attempt}.log")
                    children.append(child)
                    child.start()
                    wait_ready(child, tls)
                break
            except ServerStartError as exc:
                for child in reversed(children):
                    child.stop()
                if not exc.early_exit or attempt == START_ATTEMPTS:
                    raise
        yield children
    finally:
        for child in reversed(children):
            child.stop()
