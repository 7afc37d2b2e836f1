"""`ingestd verify` on libraries the real daemon built from a real HTTPS origin: damage found
exactly, repaired, and healed by the daemon; and a repair while the daemon is downloading."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

from support.daemon import Daemon, sha256_file
from support.extracts import make_record, new_id
from support.origin import OriginServer

SIZE = 40_000
ONE, TWO = "verify one", "verify two"
DIR_ONE, DIR_TWO = "verify_one", "verify_two"
UNKNOWN = "7449999999999999999"


def _run(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (
        f"{result.args[3:]} exited {result.returncode}, expected {code}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr
    return result.stdout


def _json(result: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    doc = json.loads(_run(result, code))
    assert isinstance(doc, dict)
    return doc


def _flip(path: Path, offset: int = 1000) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _problems(doc: dict[str, Any]) -> set[tuple[str, str | None, str]]:
    return {(p["problem"], p["aweme_id"], p["path"]) for p in doc["problems"]}


class Library:
    """Items downloaded by the daemon: id -> (origin name, topics)."""

    def __init__(self, daemon: Daemon, origin: OriginServer, prefix: str, seed: str) -> None:
        self.daemon, self.origin, self.prefix = daemon, origin, prefix
        self.rng = random.Random(seed)
        self.names: dict[str, str] = {}
        self.sizes: dict[str, int] = {}

    def records(self, topics: tuple[str, ...], size: int = SIZE, **mode: Any) -> tuple[str, list]:
        aweme_id = new_id(self.rng)
        name = f"{self.prefix}-{aweme_id}"
        url = self.origin.url(name, size=size, **mode)
        self.names[aweme_id], self.sizes[aweme_id] = name, size
        return aweme_id, [make_record(aweme_id, url, topic, size) for topic in topics]

    def content(self, aweme_id: str) -> bytes:
        return OriginServer.content(self.names[aweme_id], self.sizes[aweme_id])

    def sha256(self, aweme_id: str) -> str:
        return hashlib.sha256(self.content(aweme_id)).hexdigest()

    def path(self, folder: str, aweme_id: str) -> Path:
        return self.daemon.media_dir / folder / f"{aweme_id}.mp4"

    def assert_intact(self, aweme_id: str, *folders: str) -> None:
        first = self.path(folders[0], aweme_id)
        for folder in folders:
            path = self.path(folder, aweme_id)
            assert path.read_bytes() == self.content(aweme_id), f"{path} differs"
            assert sha256_file(path) == self.sha256(aweme_id)
            assert os.path.samefile(path, first), f"{path} is not one file with {first}"


def test_verify_finds_each_problem_repairs_and_the_daemon_heals(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    daemon: Daemon = daemon_factory()
    lib = Library(daemon, origin, prefix, prefix)
    ids: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    for key, topics in {
        "gone": (ONE,),  # its file deleted: downloaded again
        "flipped": (ONE,),  # a byte flipped: removed, downloaded again
        "unlinked": (ONE, TWO),  # its link removed: linked again from the good file
        "flipped_linked": (ONE, TWO),  # a byte flipped in the one inode: both paths corrupt
        "main_gone": (ONE, TWO),  # its main file deleted: linked back from the good link
        "with_part": (ONE,),  # fine, with an orphan .part beside it
        "fine": (TWO,),
    }.items():
        ids[key], more = lib.records(topics)
        records += more
    daemon.start()
    daemon.drop_atomic("extract_20261201T090000.json", records)
    daemon.wait_for_count("download_completed", len(ids))
    daemon.terminate()
    for key in ("unlinked", "flipped_linked", "main_gone"):
        lib.assert_intact(ids[key], DIR_ONE, DIR_TWO)

    # The damage.
    lib.path(DIR_ONE, ids["gone"]).unlink()
    _flip(lib.path(DIR_ONE, ids["flipped"]))
    lib.path(DIR_TWO, ids["unlinked"]).unlink()
    _flip(lib.path(DIR_ONE, ids["flipped_linked"]))
    lib.path(DIR_ONE, ids["main_gone"]).unlink()
    orphan_done = daemon.media_dir / DIR_ONE / f"{ids['with_part']}.mp4.part"
    orphan_done.write_bytes(lib.content(ids["with_part"])[:5000])
    orphan_unknown = daemon.media_dir / DIR_TWO / f"{UNKNOWN}.mp4.part"
    orphan_unknown.write_bytes(b"\x00" * 3000)
    stray = daemon.media_dir / DIR_ONE / "notes.txt"
    stray.write_text("not a video\n")
    outside = daemon.root / "outside.mp4"
    outside.write_bytes(b"outside the library")
    stray_link = daemon.media_dir / DIR_TWO / "elsewhere.mp4"
    stray_link.symlink_to(outside)

    expected = {
        ("missing", ids["gone"], f"{DIR_ONE}/{ids['gone']}.mp4"),
        ("corrupt", ids["flipped"], f"{DIR_ONE}/{ids['flipped']}.mp4"),
        ("missing", ids["unlinked"], f"{DIR_TWO}/{ids['unlinked']}.mp4"),
        ("corrupt", ids["flipped_linked"], f"{DIR_ONE}/{ids['flipped_linked']}.mp4"),
        ("corrupt", ids["flipped_linked"], f"{DIR_TWO}/{ids['flipped_linked']}.mp4"),
        ("missing", ids["main_gone"], f"{DIR_ONE}/{ids['main_gone']}.mp4"),
        ("orphan_part", ids["with_part"], f"{DIR_ONE}/{ids['with_part']}.mp4.part"),
        ("orphan_part", UNKNOWN, f"{DIR_TWO}/{UNKNOWN}.mp4.part"),
        ("stray", None, f"{DIR_ONE}/notes.txt"),
        ("stray", None, f"{DIR_TWO}/elsewhere.mp4"),
    }

    # Human output: a summary, then exactly one line per problem naming its category.
    text = _run(daemon.cli("verify"), 1)
    assert "\x1b[" not in text
    for problem, aweme_id, path in expected:
        lines = [line for line in text.splitlines() if line.rstrip().split("  (")[0].endswith(path)]
        assert len(lines) == 1, f"{path}: {lines}\n{text}"
        assert lines[0].split()[:2] == [problem, aweme_id or "-"], lines[0]
    assert "verify --repair" in text

    doc = _json(daemon.cli("verify", "--json"), 1)
    assert _problems(doc) == expected
    assert doc["counts"] == {
        "missing": 3,
        "corrupt": 3,
        "orphan_part": 2,
        "stray": 2,
        "unreadable": 0,
    }
    assert doc["ok"] is False and doc["repair"] is False
    assert doc["checked"]["items"] == len(ids)
    by_path = {p["path"]: p for p in doc["problems"]}
    flipped = by_path[f"{DIR_ONE}/{ids['flipped']}.mp4"]
    assert (flipped["expected_size"], flipped["actual_size"]) == (SIZE, SIZE)
    assert flipped["detail"] == "sha256 differs"
    gone = by_path[f"{DIR_ONE}/{ids['gone']}.mp4"]
    assert (gone["expected_size"], gone["actual_size"]) == (SIZE, None)
    assert all(p["repair"] is None and not p["repaired"] for p in doc["problems"])
    # Without --repair nothing changed.
    assert orphan_done.exists() and orphan_unknown.exists()
    assert lib.path(DIR_ONE, ids["flipped"]).exists()
    assert daemon.status_json()["items"]["done"] == len(ids)

    repaired = _json(daemon.cli("verify", "--repair", "--json"), 0)
    assert _problems(repaired) == expected
    assert repaired["ok"] is True and repaired["remaining"] == {
        "missing": 0,
        "corrupt": 0,
        "orphan_part": 0,
        "unreadable": 0,
    }
    requeue = sorted([ids["gone"], ids["flipped"], ids["flipped_linked"]])
    assert sorted(repaired["repaired"]["requeued"]) == requeue
    assert sorted(repaired["repaired"]["relinked"]) == sorted(
        [f"{DIR_TWO}/{ids['unlinked']}.mp4", f"{DIR_ONE}/{ids['main_gone']}.mp4"]
    )
    assert sorted(repaired["repaired"]["removed"]) == sorted(
        [
            f"{DIR_ONE}/{ids['flipped']}.mp4",
            f"{DIR_ONE}/{ids['flipped_linked']}.mp4",
            f"{DIR_TWO}/{ids['flipped_linked']}.mp4",
            f"{DIR_ONE}/{ids['with_part']}.mp4.part",
            f"{DIR_TWO}/{UNKNOWN}.mp4.part",
        ]
    )
    strays = [p for p in repaired["problems"] if p["problem"] == "stray"]
    assert all(p["repair"] == "kept" and not p["repaired"] for p in strays)
    # Nothing broken stays published; strays stay; links are back without a download.
    for key in ("flipped", "flipped_linked"):
        assert not lib.path(DIR_ONE, ids[key]).exists()
    assert not lib.path(DIR_TWO, ids["flipped_linked"]).exists()
    assert not orphan_done.exists() and not orphan_unknown.exists()
    assert stray.read_text() == "not a video\n" and stray_link.is_symlink()
    assert outside.read_bytes() == b"outside the library"
    lib.assert_intact(ids["unlinked"], DIR_ONE, DIR_TWO)
    lib.assert_intact(ids["main_gone"], DIR_TWO, DIR_ONE)

    pending = json.loads(_run(daemon.cli("list", "--state", "pending", "--json"), 0))
    reasons = {item["aweme_id"]: (item["reason"], item["attempts"]) for item in pending}
    assert reasons == {
        ids["gone"]: ("verify_missing", 0),
        ids["flipped"]: ("verify_corrupt", 0),
        ids["flipped_linked"]: ("verify_corrupt", 0),
    }

    # The daemon downloads the re-queued items again, with their usual events.
    daemon.start()
    completed = daemon.wait_for_count("download_completed", len(requeue))
    assert sorted(str(e["aweme_id"]) for e in completed) == requeue
    daemon.wait_until(lambda: not daemon.part_files(), "no .part left")
    lib.assert_intact(ids["gone"], DIR_ONE)
    lib.assert_intact(ids["flipped"], DIR_ONE)
    lib.assert_intact(ids["flipped_linked"], DIR_ONE, DIR_TWO)
    for key, aweme_id in ids.items():
        expected_requests = 2 if aweme_id in requeue else 1
        assert origin.request_count(lib.names[aweme_id]) == expected_requests, key
    daemon.terminate()

    healed = _json(daemon.cli("verify", "--json"), 0)
    assert healed["counts"] == {
        "missing": 0,
        "corrupt": 0,
        "orphan_part": 0,
        "stray": 2,
        "unreadable": 0,
    }
    assert healed["ok"] is True and healed["checked"]["items"] == len(ids)
    assert _run(daemon.cli("verify"), 0).rstrip().endswith("ok")


def test_verify_repair_while_the_daemon_downloads(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    daemon: Daemon = daemon_factory()
    lib = Library(daemon, origin, prefix, prefix)
    gone, first = lib.records((ONE,))
    flipped, second = lib.records((ONE,))
    daemon.start()
    daemon.drop_atomic("extract_20261201T090000.json", first + second)
    daemon.wait_for_count("download_completed", 2)

    # A slow download: 640 KiB in 16 KiB pieces, 0.1 s apart (about 4 s).
    slow, records = lib.records((ONE,), size=640 * 1024, mode="slow", chunk=16384, delay=0.1)
    since = daemon.event_count()
    daemon.drop_atomic("extract_20261201T100000.json", records)
    daemon.wait_for("download_started", lambda e: str(e["aweme_id"]) == slow, since=since)
    part = daemon.media_dir / DIR_ONE / f"{slow}.mp4.part"
    daemon.wait_until(lambda: part.exists() and part.stat().st_size > 0, "the slow .part grows")
    inode = part.stat().st_ino

    lib.path(DIR_ONE, gone).unlink()
    _flip(lib.path(DIR_ONE, flipped))
    orphan = daemon.media_dir / DIR_ONE / f"{UNKNOWN}.mp4.part"
    orphan.write_bytes(b"\x00" * 100)

    doc = _json(daemon.cli("verify", "--repair", "--json"), 0)
    assert not daemon.events("download_completed", lambda e: str(e["aweme_id"]) == slow), (
        "the slow download should still be running while verify ran"
    )
    assert _problems(doc) == {
        ("missing", gone, f"{DIR_ONE}/{gone}.mp4"),
        ("corrupt", flipped, f"{DIR_ONE}/{flipped}.mp4"),
        ("orphan_part", UNKNOWN, f"{DIR_ONE}/{UNKNOWN}.mp4.part"),
    }, "the active item's .part is not a problem"
    assert sorted(doc["repaired"]["requeued"]) == sorted([gone, flipped])
    assert part.exists() and part.stat().st_ino == inode, "the active .part was touched"
    assert not orphan.exists()

    # The daemon goes on: the slow file completes in its first attempt, the re-queued ones
    # are picked up while it runs (README: within 5 s), all byte-exact.
    done = daemon.wait_for_count(
        "download_completed", 3, lambda e: str(e["aweme_id"]) in {slow, gone, flipped}, since=since
    )
    by_id = {str(e["aweme_id"]): e for e in done}
    assert by_id[slow]["attempt"] == 1 and not by_id[slow]["resumed"], by_id[slow]
    for aweme_id in (slow, gone, flipped):
        lib.assert_intact(aweme_id, DIR_ONE)
    trouble = [
        e
        for e in daemon.events()
        if e["event"]
        in (
            "download_retry_scheduled",
            "download_failed",
            "download_crashed",
            "download_bookkeeping_failed",
            "manifest_error",
            "checkpoint_failed",
        )
    ]
    assert not trouble, trouble
    assert _json(daemon.cli("verify", "--json"), 0)["counts"]["missing"] == 0
    daemon.terminate()
