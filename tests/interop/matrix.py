#!/usr/bin/env python3
"""The HTTP/2 interop matrix: the daemon (builtin and h2 clients) and curl against 11 servers.

    python -m tests.interop.matrix --install                 # everything (from the repo root)
    python tests/interop/matrix.py --servers nginx,h2o --modes stingy
    python -m tests.interop.matrix --files ci --keep          # the CI file set; keep the folder

For every server (tests/interop/servers.py) and mode (default, stingy): start the server on
127.0.0.1 on an ephemeral port, download every file with curl (the control), then with the
daemon using ``http2_client = "builtin"`` and then ``"h2"``, and stop the server. Prints a
Markdown table; exits 1 if any download that ran was not byte-exact, 2 if a server would not
start. A server whose binaries are missing is skipped (and says so in the table) unless
``--install`` is given, which apt-get installs the missing Debian packages first (and pip the
PyPI ones), without starting their packaged services. The daemon that runs is the checkout's
own code (its daemon/ folder goes first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

_TESTS = Path(__file__).resolve().parents[1]
_REPO = _TESTS.parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from interop import bodies as bodies_mod  # noqa: E402
from interop.bodies import Body  # noqa: E402
from interop.clients import CLIENTS, Outcome, curl_version, run_curl, run_daemon  # noqa: E402
from interop.procs import ServerStartError, Tls, make_tls, running  # noqa: E402
from interop.servers import (  # noqa: E402
    MODES,
    SERVERS,
    Mode,
    Server,
    make_launches,
    new_site,
)

MB = 1_000_000
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
LEGEND = (
    "A cell: byte-exact or not, seconds from the extract's drop (curl: from its start) until "
    "every file is done, retries (download_started beyond an item's first), and the TCP "
    "connections this machine accepted meanwhile: the client's connections to the server, "
    "which a GOAWAY every few requests multiplies (plus haproxy's to its backend, plus "
    "anything else on the machine)."
)


@dataclass
class Row:
    server: str
    version: str
    mode: str
    files: int
    megabytes: float
    results: dict[str, Outcome] = field(default_factory=dict)
    note: str = ""  # skipped / could not start

    @property
    def failed(self) -> bool:
        return bool(self.note.startswith("FAIL")) or any(
            not o.ok for o in self.results.values() if not o.skipped
        )

    def cells(self) -> list[str]:
        if self.note:
            return [self.server, self.version, self.mode, str(self.files), "", self.note, "", ""]
        out = [self.server, self.version, self.mode, str(self.files), f"{self.megabytes:.1f}"]
        for client in CLIENTS:
            outcome = self.results.get(client)
            out.append(outcome.cell() if outcome else "not run")
        curl = self.results.get("curl")
        out.append(curl.cell(with_retries=False) if curl else "not run")
        return out


def table(rows: list[Row]) -> str:
    head = ["server", "version", "mode", "files", "MB", "builtin", "h2", "curl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def services_not_started() -> Iterator[None]:
    """Keep the packages' own services (Apache, nginx, lighttpd, haproxy, Caddy, h2o, Tomcat on
    their standard ports, on every address) from starting while apt installs them: Debian's
    policy-rc.d answering 101, written only where there is none and removed afterwards. They
    stay installed (and, under systemd, enabled as Debian enables them) but not running."""
    if POLICY_RC_D.exists():  # a container's own, which already says 101
        yield
        return
    POLICY_RC_D.write_text(
        "#!/bin/sh\n# tests/interop/matrix.py --install; removed after\nexit 101\n"
    )
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def install(servers: list[Server]) -> None:
    """apt-get install the missing Debian packages (and pip the PyPI ones), as root."""
    debs = sorted({p for s in servers if s.missing() for p in s.packages})
    if shutil.which("curl") is None:
        debs.append("curl")
    pips = sorted({p for s in servers if s.missing() for p in s.pip_packages})
    if debs:
        if os.geteuid() != 0:
            sys.exit(f"--install needs root for: apt-get install {' '.join(debs)}")
        print(f"installing {' '.join(debs)}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        with services_not_started():
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *debs],
                check=True,
                env=env,
                timeout=1800,
            )
    if pips:
        print(f"installing {' '.join(pips)} with pip", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", *pips], check=True, timeout=600)


def run_one(
    server: Server,
    mode: Mode,
    files: list[Body],
    root: Path,
    docroot: Path,
    tls: Tls,
    build_dir: Path,
    timeout: float,
    clients: tuple[str, ...],
) -> Row:
    megabytes = bodies_mod.total_bytes(files) / MB
    row = Row(server.name, server.version(), mode, len(files), megabytes)
    site = new_site(server, mode, root, docroot, tls, build_dir)
    log = print_progress
    started = False
    try:
        with running(lambda _attempt: make_launches(server, site), tls, site.workdir / "logs"):
            started = True
            log(f"{server.name} {mode}: listening on {site.port}")
            if "curl" in clients:
                row.results["curl"] = run_curl(files, site.port, tls.ca_pem, site.workdir, timeout)
                log(f"  curl: {row.results['curl'].cell(with_retries=False)}")
            for client in CLIENTS:
                if client not in clients:
                    continue
                outcome = run_daemon(
                    files,
                    site.port,
                    tls.ca_pem,
                    site.workdir / f"ingestd-{client}",
                    client,
                    timeout,
                )
                row.results[client] = outcome
                log(f"  {client}: {outcome.cell()}")
    except (ServerStartError, RuntimeError, OSError) as exc:
        what = "error while running" if started else "could not start"
        row.note = f"FAIL: {what} ({type(exc).__name__})"
        log(f"{server.name} {mode}: {exc}")
    return row


def print_progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def details(rows: list[Row], servers: list[Server]) -> str:
    """What stingy means per server, then every problem, then the retries by kind."""
    lines = ["", "Stingy, per server:", ""]
    lines += [f"- {server.name}: {server.stingy}" for server in servers]
    problems = []
    retries = []
    for row in rows:
        for client, outcome in row.results.items():
            where = f"{row.server} {row.mode} {client}"
            problems += [f"- {where}: {problem}" for problem in outcome.problems[:20]]
            kinds = Counter(_kind(event) for event in outcome.events)
            retries += [f"- {where}: {n} x {kind}" for kind, n in kinds.most_common(8)]
    if problems:
        lines += ["", "Problems:", "", *problems]
    if retries:
        lines += ["", "Retry, failure and host events, by kind:", "", *retries]
    return "\n".join(lines)


def _kind(event_json: str) -> str:
    event = json.loads(event_json)
    detail = str(event.get("detail") or "")
    detail = re.sub(r"\d+", "N", detail)[:120]  # stream ids, ports: one kind
    return f"{event.get('event')} {event.get('reason', '')}: {detail}".rstrip(": ")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind: every server and daemon is stopped on the way out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else "")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated names")
    parser.add_argument("--modes", default=",".join(MODES), help="default,stingy")
    parser.add_argument("--install", action="store_true", help="apt-get install what is missing")
    parser.add_argument("--files", choices=("full", "ci"), default="full", help="the file set")
    parser.add_argument(
        "--clients", default="builtin,h2,curl", help="which downloaders (builtin,h2,curl)"
    )
    parser.add_argument("--timeout", type=float, default=0, help="per download run, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--output", type=Path, help="also write the table and notes here")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad_modes = [m for m in modes if m not in MODES]
    if unknown or bad_modes:
        parser.error(f"unknown servers {unknown} or modes {bad_modes}; servers: {list(SERVERS)}")
    clients = tuple(c.strip() for c in args.clients.split(",") if c.strip())
    if not set(clients) <= {*CLIENTS, "curl"}:
        parser.error(f"unknown clients in {clients}; known: {[*CLIENTS, 'curl']}")
    servers = [SERVERS[n] for n in names]

    signal.signal(signal.SIGTERM, _terminate)
    # The daemon processes run this checkout's code, whatever is installed in the venv.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_REPO / "daemon"), os.environ.get("PYTHONPATH", "")) if p
    )
    if args.install:
        install(servers)

    files = bodies_mod.full_set() if args.files == "full" else bodies_mod.ci_set()
    timeout = args.timeout or 120 + bodies_mod.total_bytes(files) / 200_000
    root = Path(tempfile.mkdtemp(prefix="ingestd-interop-"))
    os.chmod(root, 0o755)  # servers that drop root (Apache, lighttpd, h2o) read the files
    rows: list[Row] = []
    began = time.monotonic()
    try:
        tls = make_tls(root / "tls")
        docroot = root / "files"
        bodies_mod.write_docroot(files, docroot)
        build_dir = root / "build"
        build_dir.mkdir()
        for server in servers:
            missing = server.missing()
            if missing:
                for mode in modes:
                    note = f"skipped: {', '.join(missing)} not installed (--install)"
                    rows.append(Row(server.name, "-", mode, len(files), 0.0, note=note))
                print_progress(f"{server.name}: skipped, missing {missing}")
                continue
            for mode in modes:
                rows.append(
                    run_one(server, mode, files, root, docroot, tls, build_dir, timeout, clients)
                )
    finally:
        if args.keep:
            print_progress(f"work folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    report = table(rows)
    report += f"\n\ncurl {curl_version() if shutil.which('curl') else '-'}; "
    report += f"{len(files)} files; {time.monotonic() - began:.0f} s in all. {LEGEND}"
    report += "\n" + details(rows, servers)
    print(report)
    if args.output:
        args.output.write_text(report + "\n")
    if any(row.note.startswith("FAIL: could not start") for row in rows):
        return 2
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
