"""The downloaders: the real daemon (tests/support/daemon.py) and curl, the control.

``run_daemon`` starts ingestd as a process with the trustme CA as ``ca_bundle``, ``localhost``
allowed and the given ``http2_client``, drops one extract naming every file, waits (bounded) until
every item has a terminal event, stops the daemon, and compares every published file's SHA-256
with the source. A run is byte-exact only if every file is published and matches. Retries are
allowed but counted: every ``download_started`` beyond an item's first is one, and the retry,
failure and host events are kept for the report.

``run_curl`` fetches the same URLs with one ``curl --http2`` (one connection reused, a new one after
each GOAWAY), checks each transfer said HTTP/2 and 200, and compares the files the same way. Not
``--parallel``: curl 7.88.1 (Debian 12) loses multiplexed transfers around a graceful GOAWAY
(streams past last-stream-id retried once, then "Error in the HTTP2 framing layer", or "stream N
was not closed cleanly"), against Caddy's GOAWAY as against Go's, while the same server
configuration serves one request at a time byte-exact. The daemon's two clients multiplex.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interop.bodies import Body
from interop.procs import HOST, LOOPBACK
from support.daemon import Daemon, DaemonError
from support.extracts import make_record

TOPIC = "interop"
EXTRACT = "extract_20261126T090000.json"
FIRST_ID = 7_440_000_000_000_000_000
NOTABLE = (
    "download_retry_scheduled",
    "download_failed",
    "download_expired",
    "download_crashed",
    "host_unavailable",
    "host_recovered",
)
CLIENTS = ("builtin", "h2")


@dataclass
class Outcome:
    """What one downloader did with one server configuration."""

    client: str
    files: int
    exact: int = 0
    seconds: float = 0.0
    retries: int = 0
    connections: int | None = None  # TCP connections accepted meanwhile (passive_opens)
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # retries, failures, host events (JSON)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.problems and self.exact == self.files

    def cell(self, with_retries: bool = True) -> str:
        if self.skipped:
            return "skipped"
        word = "ok" if self.ok else "FAIL"
        text = f"{word}, {self.seconds:.1f} s"
        if with_retries:
            text += f", {self.retries} retr{'y' if self.retries == 1 else 'ies'}"
        if self.connections is not None:
            text += f", {self.connections} conn{'' if self.connections == 1 else 's'}"
        if not self.ok:
            text += f" ({self.exact}/{self.files} exact)"
        return text


def url_for(port: int, body: Body) -> str:
    return f"https://{HOST}:{port}/{body.name}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _compare(outcome: Outcome, body: Body, path: Path) -> None:
    if not path.is_file():
        outcome.problems.append(f"{body.name}: not published")
        return
    size = path.stat().st_size
    if size != body.size:
        outcome.problems.append(f"{body.name}: {size} bytes, expected {body.size}")
    elif sha256_file(path) != body.sha256:
        outcome.problems.append(f"{body.name}: SHA-256 differs")
    else:
        outcome.exact += 1


def passive_opens() -> int | None:
    """TCP connections this network namespace has accepted so far (``PassiveOpens`` in
    /proc/net/snmp), or None where it cannot be read. The difference over a run counts the
    connections the client opened to the server: how a server's GOAWAY every few requests shows
    up. Machine-wide, so another process accepting connections at the same time adds to it (a
    port-based count cannot be had: on loopback Linux reuses ports still in TIME-WAIT)."""
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return None
    tcp = [line.split() for line in lines if line.startswith("Tcp:")]
    if len(tcp) < 2 or "PassiveOpens" not in tcp[0]:
        return None
    return int(tcp[1][tcp[0].index("PassiveOpens")])


def _new_connections(before: int | None, after: int | None) -> int | None:
    if before is None or after is None:
        return None
    return after - before


def _brief(event: dict[str, Any]) -> str:
    keep = {k: v for k, v in event.items() if not k.startswith("_") and k != "timestamp"}
    return json.dumps(keep, sort_keys=True)


def run_daemon(
    bodies: list[Body],
    port: int,
    ca_pem: Path,
    workdir: Path,
    http2_client: str,
    timeout: float,
    **config: Any,
) -> Outcome:
    """The daemon downloads every body from ``https://localhost:<port>/<name>``."""
    outcome = Outcome(http2_client, len(bodies))
    ids = {str(FIRST_ID + i): body for i, body in enumerate(bodies)}
    settings: dict[str, Any] = {
        "ca_bundle": str(ca_pem),
        "allowed_hosts": [HOST],
        "http2_client": http2_client,
        "concurrency": 8,
        "timeout": 15.0,
        "max_attempts": 6,
        "backoff_base": 0.05,  # retries are counted, not waited for
        "backoff_max": 1.0,
        "host_backoff_max": 1.0,
        "max_file_bytes": 64 * 1024 * 1024,
        "min_rate": 0,
    }
    settings.update(config)
    daemon = Daemon(workdir, **settings)
    terminal = ("download_completed", "download_failed", "download_expired")

    def finished() -> set[str]:
        return {
            str(e.get("aweme_id"))
            for e in daemon.events()
            if e.get("event") in terminal and str(e.get("aweme_id")) in ids
        }

    opens_before = passive_opens()
    try:
        daemon.start(timeout=30)
        records = [make_record(i, url_for(port, b), TOPIC, b.size) for i, b in ids.items()]
        began = time.monotonic()
        daemon.drop_atomic(EXTRACT, records)
        try:
            daemon.wait_until(
                lambda: len(finished()) >= len(ids), "every item finished", timeout=timeout
            )
        except DaemonError as exc:
            outcome.problems.append(
                f"{len(finished())} of {len(ids)} items finished: {str(exc).splitlines()[0]}"
            )
        outcome.seconds = time.monotonic() - began
    except DaemonError as exc:
        outcome.problems.append(f"daemon: {str(exc).splitlines()[0]}")
    finally:
        try:
            if daemon.running:
                daemon.terminate(timeout=15)
        except DaemonError as exc:
            outcome.problems.append(f"daemon stop: {str(exc).splitlines()[0]}")
        daemon.cleanup()
    outcome.connections = _new_connections(opens_before, passive_opens())

    events = daemon.events()
    started: dict[str, int] = {}
    for event in events:
        name = event.get("event")
        if name == "download_started":
            key = str(event.get("aweme_id"))
            started[key] = started.get(key, 0) + 1
        elif name in NOTABLE:
            outcome.events.append(_brief(event))
        elif name in ("daemon_failed", "download_bookkeeping_failed"):
            outcome.problems.append(_brief(event))
    outcome.retries = sum(n - 1 for n in started.values())
    for aweme_id, body in ids.items():
        _compare(outcome, body, daemon.media_path(TOPIC, aweme_id))
    for part in daemon.part_files():
        outcome.problems.append(f"left behind: {part.name}")
    return outcome


def curl_available() -> bool:
    return shutil.which("curl") is not None


def curl_version() -> str:
    result = subprocess.run(
        ["curl", "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    first = result.stdout.split("\n", 1)[0].split()
    return first[1] if len(first) > 1 else "?"


def run_curl(bodies: list[Body], port: int, ca_pem: Path, workdir: Path, timeout: float) -> Outcome:
    """One curl for every URL, one at a time; the control (it must be byte-exact too)."""
    outcome = Outcome("curl", len(bodies))
    if not curl_available():
        outcome.skipped = "curl is not installed"
        return outcome
    out = workdir / "curl"
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        "curl",
        "--http2",
        "--silent",
        "--show-error",
        "--fail",
        "--cacert",
        str(ca_pem),
        "--resolve",
        f"{HOST}:{port}:{LOOPBACK}",
        "--max-time",
        str(int(timeout)),
        "--write-out",
        "%{http_version} %{response_code} %{url_effective}\\n",
    ]
    for body in bodies:
        argv += ["--output", str(out / body.name), url_for(port, body)]
    opens_before = passive_opens()
    began = time.monotonic()
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout + 30, check=False
        )
    except subprocess.TimeoutExpired:
        outcome.problems.append(f"curl did not finish within {timeout + 30:.0f} s")
        return outcome
    outcome.seconds = time.monotonic() - began
    outcome.connections = _new_connections(opens_before, passive_opens())
    (workdir / "curl.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        stderr = " | ".join(result.stderr.strip().splitlines()[-5:])
        outcome.problems.append(f"curl exited {result.returncode}: {stderr}")
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and (parts[0] != "2" or parts[1] != "200"):
            outcome.problems.append(f"curl: HTTP/{parts[0]} {parts[1]} for {parts[2]}")
    for body in bodies:
        _compare(outcome, body, out / body.name)
    return outcome
