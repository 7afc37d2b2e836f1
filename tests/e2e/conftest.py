"""Fixtures for the ingestd e2e suite: a local HTTPS/HTTP2 origin and real daemon processes."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS_DIR = Path(__file__).resolve().parents[1]
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

from support.daemon import Daemon  # noqa: E402
from support.origin import OriginServer  # noqa: E402

DaemonFactory = Callable[..., Daemon]


def pytest_configure(config: pytest.Config) -> None:
    # hypercorn leaves this coroutine behind when a client vanishes mid-connection (SIGKILL tests).
    config.addinivalue_line(
        "filterwarnings",
        "ignore:coroutine 'TCPServer._idle_timeout' was never awaited:RuntimeWarning",
    )


@pytest.fixture(scope="session")
def ingestd_available() -> None:
    if importlib.util.find_spec("ingestd") is None:
        pytest.fail(
            f"the ingestd package is not importable by {sys.executable}; "
            "install the project first (pip install -e .)"
        )


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    server = OriginServer(tmp_path_factory.mktemp("origin"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Modules that set BOTH_HTTP2_CLIENTS run each test on ours and on httpx's HTTP/2 stack
    # (but those marked `builtin_only`); tests marked `also_workers` run once more with
    # `workers = 2` (on ours). E2E_WORKERS=N runs every test with `workers = N` (the
    # whole suite on worker processes: not in CI, which runs the marked ones; not INGESTD_*,
    # which the daemons read as config).
    if "http2_client" not in metafunc.fixturenames:
        return
    every = int(os.environ.get("E2E_WORKERS", "1"))
    runs = [("builtin", every)]
    marked = metafunc.definition.get_closest_marker
    if getattr(metafunc.module, "BOTH_HTTP2_CLIENTS", False) and marked("builtin_only") is None:
        runs.append(("h2", every))
    if marked("also_workers") is not None and every == 1:
        runs.append(("builtin", 2))
    if len(runs) > 1 or every != 1:
        ids = [client if workers == 1 else f"{client}-workers{workers}" for client, workers in runs]
        metafunc.parametrize(("http2_client", "workers"), runs, indirect=True, ids=ids)


@pytest.fixture
def http2_client(request: pytest.FixtureRequest) -> str:
    """The `http2_client` the daemons of a test use (see pytest_generate_tests)."""
    return str(getattr(request, "param", "builtin"))


@pytest.fixture
def workers(request: pytest.FixtureRequest) -> int:
    """The `workers` the daemons of a test run (see pytest_generate_tests)."""
    return int(getattr(request, "param", 1))


@pytest.fixture
def daemon_factory(
    tmp_path: Path,
    origin: OriginServer,
    ingestd_available: None,
    http2_client: str,
    workers: int,
) -> Iterator[DaemonFactory]:
    """``daemon_factory(**config_overrides)`` -> a configured, not yet started ``Daemon``."""
    made: list[Daemon] = []

    def factory(**config: Any) -> Daemon:
        config.setdefault("ca_bundle", origin.ca_pem_path)
        config.setdefault("http2_client", http2_client)
        if workers != 1:
            config.setdefault("workers", workers)
        daemon = Daemon(tmp_path / f"ingestd{len(made)}", **config)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.cleanup()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A short unique origin-name prefix for this test (fault counters are per name)."""
    base = re.sub(r"[^A-Za-z0-9]+", "", request.node.name)[-16:]
    return f"{base}{uuid.uuid4().hex[:6]}"
