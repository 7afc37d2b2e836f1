"""Topic folders and file names: every output is one safe path component."""

from pathlib import PurePosixPath

import pytest

from ingestd.policy.naming import (
    MAX_FOLDER_BYTES,
    UNTAGGED,
    is_valid_id,
    relative_video_path,
    topic_folder,
)

HOSTILE = [
    "..",
    ".",
    "../../etc",
    "a/b",
    "a\\b",
    "nul\x00byte",
    "line\nbreak",
    "tab\there",
    "\u202eevil",  # right-to-left override
    "-rf",
    ".hidden",
    "x" * 300,
    "日本語" * 40,
    "\ud800",  # lone surrogate
    "/",
    "\u2028",
]


def test_plain_topics_keep_the_original_pipeline_naming() -> None:
    assert topic_folder("cooking tips") == "cooking_tips"
    assert topic_folder("street food") == "street_food"
    assert topic_folder("café") == "café"


@pytest.mark.parametrize("topic", [None, "", "   ", 42, ["a"]])
def test_missing_topics_are_untagged(topic: object) -> None:
    assert topic_folder(topic) == UNTAGGED


@pytest.mark.parametrize("topic", HOSTILE)
def test_hostile_topics_become_one_safe_component(topic: str) -> None:
    folder = topic_folder(topic)
    assert folder not in ("", ".", "..")
    assert "/" not in folder and "\\" not in folder and "\x00" not in folder
    assert not folder.startswith((".", "-"))
    assert all(ch.isprintable() for ch in folder)
    assert len(folder.encode("utf-8", errors="surrogatepass")) <= MAX_FOLDER_BYTES
    assert PurePosixPath(folder).parts == (folder,)


def test_sanitized_topics_do_not_collide() -> None:
    names = {topic_folder(t) for t in HOSTILE}
    assert len(names) == len(HOSTILE)
    assert topic_folder("a/b") != topic_folder("a\\b")
    assert topic_folder("x" * 300) != topic_folder("x" * 301)


def test_ids_and_paths() -> None:
    assert is_valid_id("7440359704022656025")
    assert is_valid_id("abc_DEF-1")
    for bad in ("", "a" * 65, "../x", "a.b", "a b", "ä"):
        assert not is_valid_id(bad)
    assert relative_video_path("cooking tips", "123") == PurePosixPath("cooking_tips/123.mp4")
    with pytest.raises(ValueError):
        relative_video_path("t", "../123")
