"""The manifest contract: each test here runs once per backend, on a fresh, empty store, and
uses only the methods of store.base.ManifestStore (`mypy --strict tests/contract` checks that).

A backend is an opener: given a location of the test's own (a fresh folder), it opens the store
kept there, creating it the first time; opening it again reopens the same store. A server
backend derives a fresh database or schema from the location. To add one, write its opener and
name it in BACKENDS.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestd.store.base import ManifestStore
from ingestd.store.manifest import Manifest

Opener = Callable[[Path], ManifestStore]


def open_sqlite(location: Path) -> ManifestStore:
    return Manifest.open(location / "state" / "manifest.sqlite3")


BACKENDS: dict[str, Opener] = {"sqlite": open_sqlite}


@pytest.fixture(params=list(BACKENDS))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ManifestStore]:
    """Opens this test's store, again each time it is called; the caller closes it."""
    opener = BACKENDS[request.param]
    location = tmp_path / "store"
    location.mkdir()
    return lambda: opener(location)


@pytest.fixture
def store(open_store: Callable[[], ManifestStore]) -> Iterator[ManifestStore]:
    """The test's store, open; closed after the test."""
    opened = open_store()
    yield opened
    opened.close()
