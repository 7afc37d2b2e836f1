"""The data dir (library) a store belongs to: recorded by the first run, checked by every
reader, changed only by `ingestd rebind`."""

from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.store.base import Completion, ManifestStore, WrongLibrary
from support.store import done, r


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


def test_each_node_binds_a_data_dir_of_its_own(tmp_path: Path, store: ManifestStore) -> None:
    # Several hosts on one manifest, each publishing into its own data dir (often the same
    # path on each host: a path names a folder of that host only).
    a, b = tmp_path / "a", tmp_path / "b"
    assert store.bind_data_dir(a, node="edge-a") is None
    assert store.bind_data_dir(b, node="edge-b") is None
    assert store.bind_data_dir(a, node="edge-c") is None  # the same path on a third host
    assert store.recorded_data_dir(node="edge-b") == str(b)
    assert store.recorded_data_dir() is None  # no library-wide record
    store.check_data_dir(b, node="edge-b")
    with pytest.raises(WrongLibrary):
        store.check_data_dir(b, node="edge-a")
    with pytest.raises(WrongLibrary):
        store.bind_data_dir(b, node="edge-a")
    assert store.bind_data_dir(b, node="edge-a", replace=True) == str(a)  # its rebind
    assert store.recorded_data_dir(node="edge-a") == str(b)


def test_the_first_node_takes_over_a_single_daemons_library_and_its_files(
    tmp_path: Path, store: ManifestStore
) -> None:
    library = tmp_path / "library"
    store.merge([r("1"), r("2"), r("3")], "e.json", now=1.0)
    store.claim(now=2.0, start=3, hold=0)
    done(store, "1", 10, "00" * 32, "a/1.mp4", ("a",), 3.0)  # a completion without an owner
    assert store.bind_data_dir(library) is None  # the daemon of one host, before nodes
    assert store.item("1")["node"] is None  # type: ignore[index]
    # A node naming another folder is another host's library: nothing to check it against.
    store.check_data_dir(tmp_path / "elsewhere", node="edge-a")
    assert store.bind_data_dir(library, node="edge-a") == str(library)
    assert store.recorded_data_dir() is None and store.recorded_data_dir("edge-a") == str(library)
    assert store.item("1")["node"] == "edge-a"  # type: ignore[index]
    assert [d.aweme_id for d in store.done_items(node="edge-a")] == ["1"]
    # A second node has a library of its own: nothing to take over any more.
    assert store.bind_data_dir(library, node="edge-b") is None
    assert store.done_items(node="edge-b") == []


def test_a_done_item_records_the_node_holding_its_file(store: ManifestStore) -> None:
    store.merge([r("1"), r("2"), r("3")], "e.json", now=1.0)
    store.claim(now=2.0, start=3, hold=0, owner="edge-a/2", lease_until=99.0)
    store.complete_many(
        [
            Completion("1", 10, "00" * 32, "a/1.mp4", ("a",), 3.0, "edge-a/2"),
            Completion("2", 10, "00" * 32, "a/2.mp4", ("a",), 3.0),
        ]
    )
    assert [store.item(i)["node"] for i in "12"] == ["edge-a", None]  # type: ignore[index]
    assert [d.aweme_id for d in store.done_items(node="edge-a")] == ["1"]
    assert [d.aweme_id for d in store.done_items()] == ["1", "2"]
    store.merge([r("1", topic="b"), r("2", topic="b")], "f.json", now=4.0)  # new topics
    assert [x.aweme_id for x in store.pending_relinks(10, node="edge-a")] == ["1"]
    assert [x.aweme_id for x in store.pending_relinks(10)] == ["1", "2"]
    assert store.requeue_done("1", "00" * 32, "missing", 5.0, lambda: None)
    assert store.item("1")["node"] is None  # type: ignore[index]
    assert store.done_items(node="edge-a") == []
