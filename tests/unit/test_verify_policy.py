"""`ingestd verify`'s decisions (policy/verify.py), without a file or a database."""

from pathlib import PurePosixPath as P

import pytest

from ingestd.policy.naming import topic_folder
from ingestd.policy.verify import (
    Action,
    Copy,
    Facts,
    Kind,
    Problem,
    classify_file,
    exit_code,
    item_folders,
    judge_copy,
    name_kind,
    placement,
    plan_repair,
    remaining,
)

SHA = "a" * 64


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("7440.mp4", (Kind.VIDEO, "7440")),
        ("7440.mp4.part", (Kind.PART, "7440")),
        ("a_b-C.mp4", (Kind.VIDEO, "a_b-C")),
        ("x" * 64 + ".mp4", (Kind.VIDEO, "x" * 64)),
        ("x" * 65 + ".mp4", (Kind.OTHER, None)),  # too long to be an id
        (".mp4", (Kind.OTHER, None)),
        (".7440.mp4.link", (Kind.OTHER, None)),  # the daemon's link in the making
        (".ingestd-probe-abc", (Kind.OTHER, None)),
        ("7440.mp4.part.part", (Kind.OTHER, None)),
        ("has space.mp4", (Kind.OTHER, None)),
        ("7440.MP4", (Kind.OTHER, None)),
        ("notes.txt", (Kind.OTHER, None)),
        ("7440.part", (Kind.OTHER, None)),  # only <id>.mp4.part is ingestd's
    ],
)
def test_name_kind(name: str, expected: tuple[Kind, str | None]) -> None:
    assert name_kind(name) == expected


def test_placement_main_and_one_link_per_further_folder() -> None:
    where = placement("42", "cats/42.mp4", ("cats", "dogs", "cats", "big cats", None))
    assert where is not None
    assert where.main == P("cats/42.mp4")
    assert where.links == (P("dogs/42.mp4"), P("big_cats/42.mp4"), P("untagged/42.mp4"))
    assert where.folders == {"cats", "dogs", "big_cats", "untagged"}
    assert where.paths[0] == where.main


def test_placement_uses_the_sanitized_folder_of_each_topic() -> None:
    where = placement("42", "a/42.mp4", ("a", "../etc", "news/today"))
    assert where is not None
    assert [p.parent.name for p in where.links] == [
        topic_folder("../etc"),
        topic_folder("news/today"),
    ]
    assert all(len(p.parts) == 2 and ".." not in p.parts for p in where.links)


@pytest.mark.parametrize(
    "path",
    [None, "42.mp4", "../42.mp4", "a/b/42.mp4", "a/43.mp4", "./42.mp4", "/42.mp4", "a\\b/42.mp4"],
)
def test_placement_refuses_a_recorded_path_that_is_not_folder_slash_id(path: str | None) -> None:
    assert placement("42", path, ("a",)) is None


def test_placement_refuses_a_bad_id() -> None:
    assert placement("../x", "a/../x.mp4", ("a",)) is None


def test_item_folders() -> None:
    assert item_folders("done", "42", "cats/42.mp4", ("cats", "dogs")) == {"cats", "dogs"}
    assert item_folders("done", "42", "../42.mp4", ("cats",)) == frozenset()
    assert item_folders("active", "42", None, ("big cats", None)) == {"big_cats", "untagged"}


DONE = Facts("done", frozenset({"cats", "dogs"}))


@pytest.mark.parametrize(
    ("kind", "folder", "facts", "expected"),
    [
        (Kind.OTHER, "cats", DONE, Problem.STRAY),
        # a done item's file or link: checked with its item
        (Kind.VIDEO, "cats", DONE, None),
        (Kind.VIDEO, "dogs", DONE, None),
        (Kind.VIDEO, "birds", DONE, Problem.STRAY),
        (Kind.VIDEO, "cats", None, Problem.STRAY),
        # published, `done` not yet written (group commit)
        (Kind.VIDEO, "cats", Facts("active", frozenset({"cats"})), None),
        (Kind.VIDEO, "cats", Facts("pending", frozenset({"cats"})), Problem.STRAY),
        (Kind.VIDEO, "cats", Facts("failed", frozenset({"cats"})), Problem.STRAY),
        # a .part is the daemon's while its item is pending or active, wherever it is
        (Kind.PART, "cats", Facts("pending", frozenset({"cats"})), None),
        (Kind.PART, "birds", Facts("active", frozenset({"cats"})), None),
        (Kind.PART, "cats", DONE, Problem.ORPHAN_PART),
        (Kind.PART, "cats", Facts("expired", frozenset({"cats"})), Problem.ORPHAN_PART),
        (Kind.PART, "cats", Facts("failed", frozenset({"cats"})), Problem.ORPHAN_PART),
        (Kind.PART, "cats", None, Problem.ORPHAN_PART),
    ],
)
def test_classify_file(
    kind: Kind, folder: str, facts: Facts | None, expected: Problem | None
) -> None:
    assert classify_file(kind, folder, facts) is expected


@pytest.mark.parametrize(
    ("size", "sha", "expected"),
    [
        (10, SHA, Copy.OK),
        (11, None, Copy.CORRUPT),  # not hashed: the size already differs
        (10, "b" * 64, Copy.CORRUPT),
    ],
)
def test_judge_copy(size: int, sha: str | None, expected: Copy) -> None:
    assert judge_copy(10, SHA, size, sha) is expected


def test_judge_copy_compares_only_what_is_recorded() -> None:
    assert judge_copy(None, SHA, 99, SHA) is Copy.OK
    assert judge_copy(10, None, 10, "c" * 64) is Copy.OK


MAIN, LINK, LINK2 = P("a/1.mp4"), P("b/1.mp4"), P("c/1.mp4")


def test_plan_repair_nothing_to_do() -> None:
    assert plan_repair([(MAIN, Copy.OK), (LINK, Copy.OK)]).action is Action.NONE


def test_plan_repair_relinks_from_the_first_good_copy() -> None:
    plan = plan_repair([(MAIN, Copy.OK), (LINK, Copy.MISSING), (LINK2, Copy.CORRUPT)])
    assert (plan.action, plan.source, plan.targets) == (Action.RELINK, MAIN, (LINK, LINK2))
    # the main file itself comes back from a good link, no download
    plan = plan_repair([(MAIN, Copy.MISSING), (LINK, Copy.OK)])
    assert (plan.action, plan.source, plan.targets) == (Action.RELINK, LINK, (MAIN,))


def test_plan_repair_requeues_and_removes_the_corrupt_copies() -> None:
    plan = plan_repair([(MAIN, Copy.CORRUPT), (LINK, Copy.CORRUPT), (LINK2, Copy.MISSING)])
    assert (plan.action, plan.targets) == (Action.REQUEUE, (MAIN, LINK))
    plan = plan_repair([(MAIN, Copy.MISSING)])
    assert (plan.action, plan.targets) == (Action.REQUEUE, ())


def test_plan_repair_leaves_an_item_with_an_unreadable_copy_and_no_good_one() -> None:
    assert plan_repair([(MAIN, Copy.UNREADABLE), (LINK, Copy.MISSING)]).action is Action.LEAVE
    # with a good copy, the unreadable one is left and the missing one is linked
    plan = plan_repair([(MAIN, Copy.OK), (LINK, Copy.UNREADABLE), (LINK2, Copy.MISSING)])
    assert (plan.action, plan.targets) == (Action.RELINK, (LINK2,))
    assert plan_repair([(MAIN, Copy.UNREADABLE)]).action is Action.NONE


def test_remaining_and_exit_code_ignore_strays_and_repaired_problems() -> None:
    left = remaining([(Problem.STRAY, False), (Problem.MISSING, True), (Problem.CORRUPT, True)])
    assert left == {"missing": 0, "corrupt": 0, "orphan_part": 0, "unreadable": 0}
    assert exit_code(left) == 0
    left = remaining([(Problem.ORPHAN_PART, False), (Problem.STRAY, False)])
    assert left["orphan_part"] == 1 and "stray" not in left
    assert exit_code(left) == 1
    assert exit_code(remaining([(Problem.UNREADABLE, False)])) == 1
