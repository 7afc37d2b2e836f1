"""Publishing: the last bytes, fsync, the atomic rename, and the links into further topic folders.

Blocking: called from worker threads only. A file is published once; a link that fails is not
a reason to download it again, so the links are made after the rename and their failure is
returned, for the relink path to retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd.fs.files import PartFile, ensure_dir, link_into
from ingestd.policy.naming import topic_folder

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
    ) -> Done:
        """Write `tail`, publish the part at `relative`, link it under every further topic."""
        if tail:
            part.write(tail)
        sha256 = part.publish(self.media_dir / relative)
        if len(topics) <= 1:
            return Done(sha256, topics, 0)
        try:
            links = self.link_topics(relative, topics)
        except OSError as exc:
            error = f"{exc.strerror or exc}: {exc.filename or relative}"
            return Done(sha256, topics[:1], 0, error)  # the rest is left to the relink path
        return Done(sha256, topics, links)

    def link_topics(self, relative: PurePosixPath, topics: Sequence[str | None]) -> int:
        """Hard-link a published file into every further topic folder; returns links made."""
        source = self.media_dir / relative
        made = 0
        for topic in topics:
            folder = topic_folder(topic)
            if folder == relative.parent.name:
                continue
            directory = ensure_dir(self.media_dir, Path(folder))
            if link_into(source, directory / relative.name):
                made += 1
        return made
