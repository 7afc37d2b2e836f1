"""`ingestd verify`'s decisions, without I/O: what a file under media_assets is, whether a copy
of a done video is intact, what a repair does, and the exit code.

Categories (README: Operator commands, "What verify checks"):
- `missing`: a done item's file, or one of its topic links, is not there as a regular file.
- `corrupt`: it is there with another size or SHA-256 than the manifest recorded.
- `orphan_part`: an `<id>.mp4.part` whose item is unknown or neither pending nor active.
- `stray`: anything else under media_assets that the manifest does not account for (any other
  name, a symlink, a folder inside a topic folder, a video of an item that is not done there).
- `unreadable`: a file that is there but could not be read (permissions, I/O error).
Strays are reported, never deleted, and do not make the exit code non-zero.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from ingestd.policy.merge import State
from ingestd.policy.naming import is_valid_id, part_name, topic_folder

VIDEO_SUFFIX = ".mp4"
PART_SUFFIX = part_name(VIDEO_SUFFIX)  # ".mp4.part"
IN_PROGRESS = frozenset({State.PENDING.value, State.ACTIVE.value})


class Problem(enum.StrEnum):
    """What is wrong with one path."""

    MISSING = "missing"
    CORRUPT = "corrupt"
    ORPHAN_PART = "orphan_part"
    STRAY = "stray"
    UNREADABLE = "unreadable"


# Problems that make `verify` exit 1 unless repaired. A stray is only reported.
BLOCKING = frozenset({Problem.MISSING, Problem.CORRUPT, Problem.ORPHAN_PART, Problem.UNREADABLE})


class Copy(enum.StrEnum):
    """The state of one copy (the main file or a topic link) of a done video."""

    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    UNREADABLE = "unreadable"


class Kind(enum.Enum):
    """What a file's name says it is."""

    VIDEO = "video"  # <id>.mp4
    PART = "part"  # <id>.mp4.part
    OTHER = "other"


def name_kind(name: str) -> tuple[Kind, str | None]:
    """A file name under a topic folder: a video or a part of which id, or anything else."""
    for kind, suffix in ((Kind.PART, PART_SUFFIX), (Kind.VIDEO, VIDEO_SUFFIX)):
        if name.endswith(suffix):
            aweme_id = name[: -len(suffix)]
            return (kind, aweme_id) if is_valid_id(aweme_id) else (Kind.OTHER, None)
    return Kind.OTHER, None


def safe_folder(name: str) -> bool:
    """True for a name that is one plain folder directly under media_assets."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\x00")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a done video must be: its main file and one link per further topic folder,
    relative to media_assets."""

    main: PurePosixPath
    links: tuple[PurePosixPath, ...]

    @property
    def paths(self) -> tuple[PurePosixPath, ...]:
        """The main file first, then the links."""
        return (self.main, *self.links)

    @property
    def folders(self) -> frozenset[str]:
        """Every folder the video appears in."""
        return frozenset(p.parent.name for p in self.paths)


def placement(aweme_id: str, path: str | None, topics: Sequence[str | None]) -> Placement | None:
    """A done item's paths from its recorded `path` and its topics, as the daemon publishes and
    links them (service/publish.py). None when the recorded path is not `<folder>/<id>.mp4`
    with one plain folder: such a path is never opened (it could lead out of the library)."""
    if path is None or not is_valid_id(aweme_id):
        return None
    main = PurePosixPath(path)
    name = f"{aweme_id}{VIDEO_SUFFIX}"
    if len(main.parts) != 2 or main.name != name or not safe_folder(main.parts[0]):
        return None
    links: list[PurePosixPath] = []
    seen = {main.parent.name}
    for topic in topics:
        folder = topic_folder(topic)
        if folder not in seen:
            seen.add(folder)
            links.append(PurePosixPath(folder) / name)
    return Placement(main, tuple(links))


def item_folders(
    state: str, aweme_id: str, path: str | None, topics: Sequence[str | None]
) -> frozenset[str]:
    """The topic folders where a file of this item is expected: a done item's placement, or,
    for any other state, every topic's folder (where a download being published lands)."""
    if state == State.DONE.value:
        where = placement(aweme_id, path, topics)
        return where.folders if where is not None else frozenset()
    return frozenset(topic_folder(t) for t in topics)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the manifest says about the item a file is named after."""

    state: str
    folders: frozenset[str]  # see item_folders


def classify_file(kind: Kind, folder: str, facts: Facts | None) -> Problem | None:
    """A regular file in a topic folder, given what the manifest says about its id (None:
    unknown id). None means it is accounted for: a done item's file or link (checked with
    its item), a video being published (active), or the `.part` of a pending or active item,
    which the daemon may be writing and which is never touched."""
    if kind is Kind.OTHER:
        return Problem.STRAY
    if kind is Kind.PART:
        return None if facts is not None and facts.state in IN_PROGRESS else Problem.ORPHAN_PART
    if facts is None or folder not in facts.folders:
        return Problem.STRAY
    if facts.state in (State.DONE.value, State.ACTIVE.value):
        return None  # active: published, its `done` not written yet (group commit)
    return Problem.STRAY


def judge_copy(
    expected_size: int | None, expected_sha256: str | None, size: int, sha256: str | None
) -> Copy:
    """A copy that is there and was read: OK when size and SHA-256 are the recorded ones
    (`sha256` is None when the size alone already differs and the file was not hashed). A
    manifest value that is not recorded is not compared."""
    if expected_size is not None and size != expected_size:
        return Copy.CORRUPT
    if expected_sha256 is not None and sha256 != expected_sha256:
        return Copy.CORRUPT
    return Copy.OK


class Action(enum.Enum):
    """What `--repair` does for one done item."""

    NONE = "none"  # every copy is fine
    RELINK = "relink"  # link the broken or missing paths to a good copy, no download
    REQUEUE = "requeue"  # remove the broken copies, back to pending: downloaded again
    LEAVE = "leave"  # a copy could not be read and none is good: nothing is touched


@dataclass(frozen=True, slots=True)
class Repair:
    """The repair of one item: `source` (a good copy) for RELINK, `targets` to link from it
    or (REQUEUE) to remove before the item is queued again."""

    action: Action
    source: PurePosixPath | None = None
    targets: tuple[PurePosixPath, ...] = ()


def plan_repair(copies: Sequence[tuple[PurePosixPath, Copy]]) -> Repair:
    """Decide the repair of an item from the state of its copies (main file first). One good
    copy is enough to restore the others by hard link; with none, the corrupt copies are
    removed (nothing broken stays published) and the item is downloaded again. A copy that
    could not be read may be fine: with no good copy, nothing is done."""
    good = [path for path, state in copies if state is Copy.OK]
    broken = [path for path, state in copies if state in (Copy.MISSING, Copy.CORRUPT)]
    if not broken:
        return Repair(Action.NONE)
    if good:
        return Repair(Action.RELINK, good[0], tuple(broken))
    if any(state is Copy.UNREADABLE for _, state in copies):
        return Repair(Action.LEAVE)
    return Repair(Action.REQUEUE, None, tuple(p for p, s in copies if s is Copy.CORRUPT))


def remaining(problems: Iterable[tuple[Problem, bool]]) -> dict[str, int]:
    """Counts of the blocking problems not repaired, per category, from (problem, repaired)."""
    counts = {p.value: 0 for p in Problem if p in BLOCKING}
    for problem, repaired in problems:
        if problem in BLOCKING and not repaired:
            counts[problem.value] += 1
    return counts


def exit_code(left: Mapping[str, int]) -> int:
    """0 when nothing blocking is left (strays do not count), else 1."""
    return 1 if any(left.values()) else 0
