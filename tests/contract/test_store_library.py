"""The data dir (library) a store belongs to: recorded by the first run, checked by every
reader, changed only by `ingestd rebind`."""

from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.store.base import ManifestStore, WrongLibrary


def test_the_first_bind_records_the_data_dir_and_another_is_refused(
    tmp_path: Path, store: ManifestStore
) -> None:
    library, other = tmp_path / "library", tmp_path / "other"
    library.mkdir()
    (tmp_path / "alias").symlink_to(library)
    assert store.recorded_data_dir() is None
    store.check_data_dir(other)  # nothing recorded: any data dir may read it
    assert store.bind_data_dir(library) is None
    assert store.recorded_data_dir() == str(library.resolve())
    assert store.bind_data_dir(tmp_path / "alias") == str(library.resolve())  # the same folder
    store.check_data_dir(tmp_path / "." / "library")
    with pytest.raises(WrongLibrary) as refused:
        store.bind_data_dir(other)
    assert (refused.value.recorded, refused.value.wanted) == (str(library), str(other))
    assert str(library) in str(refused.value) and str(other) in str(refused.value)
    with pytest.raises(WrongLibrary):
        store.check_data_dir(other)
    assert store.recorded_data_dir() == str(library), "a refused bind changes nothing"
    assert store.bind_data_dir(other, replace=True) == str(library)  # `ingestd rebind`
    assert store.recorded_data_dir() == str(other)


def test_the_recorded_data_dir_outlives_the_store(
    tmp_path: Path, open_store: Callable[[], ManifestStore]
) -> None:
    library = tmp_path / "library"
    first = open_store()
    first.bind_data_dir(library)
    first.close()
    again = open_store()
    try:
        assert again.recorded_data_dir() == str(library)
        again.check_data_dir(library)
        with pytest.raises(WrongLibrary):
            again.check_data_dir(tmp_path / "other")
        assert again.bind_data_dir(library) == str(library)
    finally:
        again.close()
