"""Publishing with write_info_json: the info file is durable before the video has its name, and
follows the video into every further topic folder."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from ingestd.fs.files import PartFile
from ingestd.policy.info import info_document
from ingestd.service.publish import Publisher

MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100
RECORD = json.dumps({"aweme_id": "7440", "media": {"source_url": "https://h.example/v?sig=1"}})
RELATIVE = PurePosixPath("first/7440.mp4")


def info_bytes() -> bytes:
    return info_document(RECORD, "7440", None, "first")


class _CheckedPart(PartFile):
    """Fails the publish if the info file is not there when the video is renamed."""

    def publish(self, final: Path) -> str:
        info = final.with_name("7440.info.json")
        assert info.is_file(), "the video is published before its info file"
        assert json.loads(info.read_bytes())["media"]["source_url"] == "https://h.example/v"
        return super().publish(final)


def _part(media: Path) -> PartFile:
    part = _CheckedPart(media, RELATIVE, fresh=True)
    part.write([MP4])
    return part


def test_info_file_first_then_video_then_links(tmp_path: Path) -> None:
    media = tmp_path / "media"
    done = Publisher(media).publish(_part(media), [], RELATIVE, ("first", "second"), info_bytes)
    assert done.links == 1 and done.link_error is None
    for folder in ("first", "second"):
        assert (media / folder / "7440.mp4").read_bytes() == MP4
    first, second = media / "first" / "7440.info.json", media / "second" / "7440.info.json"
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_ino == second.stat().st_ino  # hard-linked like the video
    assert sorted(p.name for p in (media / "first").iterdir()) == ["7440.info.json", "7440.mp4"]


def test_without_a_record_no_info_file(tmp_path: Path) -> None:
    media = tmp_path / "media"
    part = PartFile(media, RELATIVE, fresh=True)
    part.write([MP4])
    Publisher(media).publish(part, [], RELATIVE, ("first", "second"), None)
    assert sorted(p.name for p in media.rglob("*")) == ["7440.mp4", "7440.mp4", "first", "second"]


def test_an_info_file_that_cannot_be_written_keeps_the_video_unpublished(tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "first" / "7440.info.json").mkdir(parents=True)  # the rename cannot replace it
    part = _part(media)
    with pytest.raises(OSError):
        Publisher(media).publish(part, [], RELATIVE, ("first",), info_bytes)
    assert not (media / "first" / "7440.mp4").exists()
    assert (media / "first" / "7440.mp4.part").is_file()  # kept for the next attempt
    part.close()


def test_relink_takes_the_info_file_along_when_there_is_one(tmp_path: Path) -> None:
    media = tmp_path / "media"
    publisher = Publisher(media)
    publisher.publish(_part(media), [], RELATIVE, ("first",), info_bytes)
    assert publisher.link_topics(RELATIVE, ("first", "second"), info=True) == 1
    assert (media / "second" / "7440.info.json").is_file()
    assert publisher.link_topics(RELATIVE, ("first", "third"), info=False) == 1
    assert not (media / "third" / "7440.info.json").exists()
    (media / "first" / "7440.info.json").unlink()  # published before the option was on
    assert publisher.link_topics(RELATIVE, ("first", "fourth"), info=True) == 1
    assert sorted(p.name for p in (media / "fourth").iterdir()) == ["7440.mp4"]
