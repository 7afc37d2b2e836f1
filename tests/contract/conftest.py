"""The manifest contract: each test here runs once per backend, on a fresh, empty store, and
uses only the methods of store.base.ManifestStore (`mypy --strict tests/contract` checks that).

A backend gives each test an opener: given a location of the test's own (a fresh folder), it
opens the store kept there, creating it the first time; opening it again reopens the same store.
A server backend derives a fresh database or schema from the location, and gets the fixtures it
needs (its server) from the test's request, so that tests of other backends never start it. To
add one, write its opener and name it in BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ingestd.store.base import ManifestStore
from ingestd.store.manifest import Manifest

if TYPE_CHECKING:
    from support.postgres import PostgresCluster

Opener = Callable[[Path], ManifestStore]


def open_sqlite(request: pytest.FixtureRequest) -> Opener:
    return lambda location: Manifest.open(location / "state" / "manifest.sqlite3")


def open_postgresql(request: pytest.FixtureRequest) -> Opener:
    """A database of the test's own, made on the first open and named in the location (so
    that reopening the location reopens it), dropped after the test."""
    from ingestd.store.postgres import PostgresManifest

    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")

    def opener(location: Path) -> ManifestStore:
        named = location / "database-url"
        if not named.exists():
            url = cluster.new_database()
            request.addfinalizer(lambda: cluster.drop_database(url))
            named.write_text(url)
        return PostgresManifest.open(named.read_text())

    return opener


# Each makes the opener for one test (the request gives a server backend its fixtures).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Opener]] = {
    "sqlite": open_sqlite,
    "postgresql": open_postgresql,
}


@pytest.fixture(params=list(BACKENDS))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ManifestStore]:
    """Opens this test's store, again each time it is called; the caller closes it."""
    opener = BACKENDS[request.param](request)
    location = tmp_path / "store"
    location.mkdir()
    return lambda: opener(location)


@pytest.fixture
def store(open_store: Callable[[], ManifestStore]) -> Iterator[ManifestStore]:
    """The test's store, open; closed after the test."""
    opened = open_store()
    yield opened
    opened.close()
