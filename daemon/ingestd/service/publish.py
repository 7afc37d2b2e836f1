"""Publishing: the last bytes, fsync, the atomic rename, and the links into further topic folders.

Blocking: called from worker threads only. A file is published once; a link that fails is not
a reason to download it again, so the links are made after the rename and their failure is
returned, for the relink path to retry.

With write_info_json, the video's `<id>.info.json` is written (atomically, fsynced) before the
video takes its name, and linked into each further topic folder before the video is: a video
never appears without its info file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd.fs.files import PartFile, describe_os_error, ensure_dir, link_into, write_file_atomic
from ingestd.policy.naming import info_path, topic_folder

Chunk = bytes | memoryview


@dataclass(frozen=True, slots=True)
class Done:
    """A published file: its digest, the topics it now appears under, and a link error if any."""

    sha256: str
    linked_topics: tuple[str | None, ...]
    links: int
    link_error: str | None = None


class Publisher:
    """Publishes part files under one media folder."""

    def __init__(self, media_dir: Path) -> None:
        self.media_dir = media_dir

    def publish(
        self,
        part: PartFile,
        tail: Sequence[Chunk],
        relative: PurePosixPath,
        topics: tuple[str | None, ...],
        info: Callable[[], bytes] | None = None,
    ) -> Done:
        """Write `tail`, publish the part at `relative`, link it under every further topic.
        With `info` (what gives the info file's bytes), the info file is written first."""
        if tail:
            part.write(tail)
        if info is not None:
            write_file_atomic(self.media_dir / info_path(relative), info())
        sha256 = part.publish(self.media_dir / relative)
        if len(topics) <= 1:
            return Done(sha256, topics, 0)
        try:
            links = self.link_topics(relative, topics, info=info is not None)
        except OSError as exc:
            error = describe_os_error(exc, self.media_dir / relative)
            return Done(sha256, topics[:1], 0, error)  # the rest is left to the relink path
        return Done(sha256, topics, links)

    def link_topics(
        self, relative: PurePosixPath, topics: Sequence[str | None], *, info: bool = False
    ) -> int:
        """Hard-link a published file into every further topic folder; returns links made.
        With `info`, its info file goes along, first (when it has one: a video published
        while write_info_json was off has none)."""
        source = self.media_dir / relative
        info_source = self.media_dir / info_path(relative)
        with_info = info and info_source.is_file()
        made = 0
        for topic in topics:
            folder = topic_folder(topic)
            if folder == relative.parent.name:
                continue
            directory = ensure_dir(self.media_dir, Path(folder))
            if with_info:
                link_into(info_source, directory / info_source.name)
            if link_into(source, directory / relative.name):
                made += 1
        return made
