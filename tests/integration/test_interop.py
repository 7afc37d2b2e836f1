"""The HTTP/2 interop matrix's light servers, in CI: nghttpd, nginx and hypercorn.

Each runs on 127.0.0.1 on an ephemeral port (TLS from trustme, ALPN h2), with its default settings
and "stingy" ones (tests/interop/servers.py says what that is for each), serving the CI file set
(tests/interop/bodies.py). curl, the control, and the daemon, a real process, with
``http2_client = "builtin"`` and then ``"h2"``, download every file; every copy must be
byte-exact (retries are allowed; they are printed). A server whose binary is missing is skipped.
The whole matrix, 11 servers: ``python -m tests.interop.matrix --install``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from interop import bodies
from interop.clients import CLIENTS, Outcome, run_curl, run_daemon
from interop.procs import Tls, make_tls, running
from interop.servers import LIGHT, MODES, SERVERS, Mode, Server, Site, make_launches, new_site

CASES = [(name, mode) for name in LIGHT for mode in MODES]
RUN_TIMEOUT = 60.0  # seconds for one client to fetch the whole CI set


@dataclass(frozen=True)
class Material:
    root: Path
    tls: Tls
    docroot: Path
    files: list[bodies.Body]


@dataclass(frozen=True)
class Served:
    server: Server
    mode: Mode
    site: Site


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    root = tmp_path_factory.mktemp("interop")  # the light servers all read it as its owner
    files = bodies.ci_set()
    docroot = root / "files"
    bodies.write_docroot(files, docroot)
    return Material(root, make_tls(root / "tls"), docroot, files)


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{m}" for n, m in CASES])
def served(request: pytest.FixtureRequest, material: Material) -> Iterator[Served]:
    name, mode = request.param
    server = SERVERS[name]
    missing = server.missing()
    if missing:
        how = " ".join(server.packages) or " ".join(server.pip_packages)
        pytest.skip(f"{name} is not installed (missing {missing}; install {how})")
    build = material.root / "build"
    build.mkdir(exist_ok=True)
    site = new_site(server, mode, material.root, material.docroot, material.tls, build)
    with running(lambda _attempt: make_launches(server, site), material.tls, site.workdir / "logs"):
        yield Served(server, mode, site)


def explain(served: Served, outcome: Outcome) -> str:
    lines = [f"{served.server.name} {served.mode} {outcome.client}: {outcome.cell()}"]
    lines += [f"  problem: {p}" for p in outcome.problems[:20]]
    lines += [f"  event: {e}" for e in outcome.events[:20]]
    return "\n".join(lines)


def test_curl_control_is_byte_exact(served: Served, material: Material) -> None:
    """If curl fails, the server's config is wrong, not the daemon."""
    outcome = run_curl(
        material.files, served.site.port, material.tls.ca_pem, served.site.workdir, RUN_TIMEOUT
    )
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    print(explain(served, outcome))
    assert outcome.ok, explain(served, outcome)
    assert outcome.exact == len(material.files)
    if served.mode == "stingy" and served.server.goaway:
        # One request at a time, a GOAWAY every few requests means several connections (the
        # count is machine-wide, so only ever too high): the stingy config really is stingy.
        assert outcome.connections is None or outcome.connections >= 3, explain(served, outcome)


@pytest.mark.parametrize("client", CLIENTS)
def test_daemon_is_byte_exact(
    served: Served, material: Material, client: str, tmp_path: Path
) -> None:
    outcome = run_daemon(
        material.files,
        served.site.port,
        material.tls.ca_pem,
        tmp_path / f"ingestd-{client}",
        client,
        RUN_TIMEOUT,
    )
    print(explain(served, outcome))
    assert outcome.ok, explain(served, outcome)
    assert outcome.exact == len(material.files) and not outcome.problems
