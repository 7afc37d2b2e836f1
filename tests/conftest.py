"""Fixtures for every test directory: a throwaway PostgreSQL server (tests/support/postgres.py).

The server starts the first time a test asks for ``postgres_cluster`` or ``postgres_url``, so
tests that use neither pay nothing; support.postgres (and psycopg) is imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from support.postgres import PostgresCluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the session, reachable only through its Unix socket."""
    from support.postgres import PostgresCluster, PostgresError, find_bindir

    try:
        find_bindir()
    except PostgresError as exc:
        if not os.environ.get("CI"):  # as for tmux and systemd-nspawn: CI has them installed
            pytest.skip(f"PostgreSQL's server is not installed ({exc})")
        pytest.fail(f"cannot start the test PostgreSQL server: {exc}", pytrace=False)
    error: PostgresError | None = None
    try:
        cluster = PostgresCluster()
        cluster.start()
    except PostgresError as exc:
        error = exc
    if error is not None:  # failed outside the except block: no chained traceback
        pytest.fail(f"cannot start the test PostgreSQL server: {error}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A libpq URL to a fresh, empty database of this test's own; dropped afterwards."""
    url = postgres_cluster.new_database()
    yield url
    postgres_cluster.drop_database(url)


# The suite runs in two pytest-xdist workers (pyproject's addopts: -n 2 --dist loadgroup), each
# taking one group whole, in file order: the tests that start daemons, servers and machines
# (end-to-end, system, the benchmark smoke runs) in one, everything else in the other. So two
# daemon tests never run at once, and the long waits of the outage tests overlap the unit,
# contract and integration tests instead of adding to them.
_DAEMON_TESTS = ("e2e", "system", "test_bench_smoke.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath / "tests"
    for item in items:
        top = item.path.relative_to(root).parts[0] if item.path.is_relative_to(root) else ""
        group = "daemons" if top in _DAEMON_TESTS else "rest"
        item.add_marker(pytest.mark.xdist_group(group))
