"""`ingestd migrate`: a library's SQLite manifest, with items in every state, copied into a real
PostgreSQL database and read back item by item; copied again; refused when the database holds
another manifest or a daemon runs; interrupted; and the daemon's extract pipeline on the copy."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from ingestd.cli import EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, main
from ingestd.config import default_node_name, load_config
from ingestd.policy.extract import Record, parse_extract
from ingestd.policy.merge import State
from ingestd.policy.naming import topic_folder
from ingestd.policy.urls import origin_of
from ingestd.service.db import Db
from ingestd.service.ingest import Ingestor
from ingestd.store import manifest as sqlite_store
from ingestd.store.base import Completion, ExtractProgress, library_path
from ingestd.store.manifest import Manifest
from ingestd.store.postgres import PostgresManifest
from support.postgres import PostgresCluster

T0 = 1_000_000.0
PASSWORD = "Sup3r-s3cret"
DEAD = "https://{0}.cdn.example/v/{0}.mp4?expire=100"  # expired long before T0


NODE = "edge-1"  # the migrating host's node_name


def url(aweme_id: str) -> str:
    """A live URL on an origin of the item's own (a claim can pick it by skipping the others)."""
    return f"https://{aweme_id}.cdn.example/v/{aweme_id}.mp4?expire=9999999999"


def rec(aweme_id: str, topic: str | None) -> Record:
    return Record(aweme_id, url(aweme_id), topic, json.dumps({"aweme_id": aweme_id}))


class Library:
    """A data dir, a state dir and a config naming both; `build` fills its SQLite manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.raw = self.data / "raw"
        self.media = self.data / "media_assets"
        self.state = root / "state"
        self.path = self.state / "manifest.sqlite3"
        self.raw.mkdir(parents=True)
        self.media.mkdir()
        self.config = self.write_config("config.toml")
        self.sha_a = ""  # of raw/extract_a.json

    def write_config(self, name: str, **more: str) -> Path:
        values = {"data_dir": str(self.data), "state_dir": str(self.state), "node_name": NODE}
        values.update(more)
        path = self.root / name
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        return path

    def migrate(self, to: str, config: Path | None = None) -> int:
        return main(["migrate", "--config", str(config or self.config), "--to", to])

    def publish(self, m: Manifest, aweme_id: str, topics: list[str]) -> None:
        """Complete an item as the daemon does: its file in its first topic's folder, linked
        into the others."""
        body = b"\x00\x00\x00\x18ftyp" + hashlib.sha256(aweme_id.encode()).digest() * 64
        first = self.media / topic_folder(topics[0]) / f"{aweme_id}.mp4"
        first.parent.mkdir(exist_ok=True)
        first.write_bytes(body)
        for topic in topics[1:]:
            (self.media / topic_folder(topic)).mkdir(exist_ok=True)
            os.link(first, self.media / topic_folder(topic) / first.name)
        sha = hashlib.sha256(body).hexdigest()
        relative = f"{topic_folder(topics[0])}/{aweme_id}.mp4"
        m.complete_many([Completion(aweme_id, len(body), sha, relative, topics, T0 + 2)])


def take(m: Manifest, aweme_id: str, hold: bool = False, owner: str = "", lease: float = 0) -> None:
    """Claim this one item (every other pending one's origin skipped): started, or held."""
    others = [s.aweme_id for s in m.list_items("pending", limit=None) if s.aweme_id != aweme_id]
    skip = [origin_of(url(i)) for i in others]
    started, held = m.claim(
        T0 + 1, int(not hold), int(hold), skip, owner=owner, lease_until=lease or None
    )
    assert [i.aweme_id for i in started + held] == [aweme_id]


def build(lib: Library) -> None:
    """Items in every state, made by the calls the daemon makes:
    extract A (a real file, merged as the daemon merges it): a1 and a2 done with files, a3
    expired at the merge, a4 failed; all final, so A completed and was reported.
    extract B, merged, on its way: b1 pending after a retryable failure, b2 held and b3 active
    (owned, leased, b3 with a resume point: the daemon died), b4 failed; a1 gains a topic
    through it (a relink is due).
    extract C, whose merge was not recorded yet: c1 pending, c2 expired on a 403.
    A rejected version, a duplicate one, and one merged before extracts were followed."""
    m = Manifest.open(lib.path)
    try:
        m.bind_data_dir(lib.data)
        elements = [
            {"aweme_id": "a1", "media": {"source_url": url("a1")}, "query_context": "cats"},
            {"aweme_id": "a2", "media": {"source_url": url("a2")}, "query_context": "cats"},
            {"aweme_id": "a2", "media": {"source_url": url("a2")}, "query_context": "dogs"},
            {"aweme_id": "a3", "media": {"source_url": DEAD.format("a3")}, "query_context": "x"},
            {"aweme_id": "a4", "media": {"source_url": url("a4")}},
        ]
        data = json.dumps(elements).encode()
        (lib.raw / "extract_a.json").write_bytes(data)
        lib.sha_a = hashlib.sha256(data).hexdigest()
        parsed = parse_extract(data)
        merged = m.merge(parsed.records, "extract_a.json", T0, lib.sha_a)
        counts = (parsed.total, merged.new, merged.updated, parsed.unusable)
        m.record_extract("extract_a.json", lib.sha_a, len(data), "merged", T0, None, counts)
        take(m, "a1")
        lib.publish(m, "a1", ["cats"])
        take(m, "a2")
        lib.publish(m, "a2", ["cats", "dogs"])
        take(m, "a4")
        m.finish_failed("a4", url("a4"), State.FAILED, "not_found", 404, 0.0, False, T0 + 2)
        settled = m.settled_extracts()
        assert [s.path for s in settled] == ["extract_a.json"]
        m.close_extracts([s.id for s in settled], T0 + 3)

        b = [rec("b1", "猫 videos"), rec("b2", "../etc"), rec("b3", "dogs"), rec("b4", None)]
        m.merge([*b, rec("a1", "birds")], "extract_b.json", T0 + 4, "sha-b")
        m.record_extract("extract_b.json", "sha-b", 100, "merged", T0 + 4, None, (5, 4, 1, 0))
        take(m, "b4")
        m.finish_failed("b4", url("b4"), State.FAILED, "not_video", None, 0.0, False, T0 + 5)
        take(m, "b1")
        m.finish_failed("b1", url("b1"), State.PENDING, "server_error", 503, T0 + 600, False, T0)
        take(m, "b3", owner="node/1", lease=T0 + 100)
        m.set_part("b3", '"etag-b3"', 5000, 1024)
        take(m, "b2", hold=True, owner="node/2", lease=T0 + 100)

        m.merge([rec("c1", "cats"), rec("c2", "cats")], "extract_c.json", T0 + 6, "sha-c")
        take(m, "c2")
        m.finish_failed("c2", url("c2"), State.EXPIRED, "url_expired", 403, 0.0, False, T0 + 7)

        m.record_extract("extract_r.json", "invalid_json:9:1", 9, "rejected", T0 + 8, "invalid")
        m.record_extract("extract_a_copy.json", lib.sha_a, len(data), "duplicate", T0 + 8)
    finally:
        m.close()
    with contextlib.closing(sqlite3.connect(lib.path)) as db, db:
        # As SQLite's migration 6 left an extract merged before it: a progress row, no counts.
        db.execute(
            "INSERT INTO extracts (path, sha256, size, status, processed_at)"
            " VALUES ('extract_0.json', 'sha-0', 1, 'merged', 5.0)"
        )
        db.execute(
            "INSERT INTO extract_progress (path, sha256, started_at, merged_at, completed_at,"
            " items, outstanding, done, expired, failed, bytes)"
            " VALUES ('extract_0.json', 'sha-0', 5.0, 5.0, 5.0, NULL, NULL, NULL, NULL, NULL, NULL)"
        )


def dump(url: str) -> dict[str, Any]:
    """Everything a copy writes, as the database holds it."""
    tables = {
        "items": "SELECT * FROM items ORDER BY aweme_id",
        "extracts": "SELECT * FROM extracts ORDER BY id",
        "progress": "SELECT * FROM extract_progress ORDER BY id",
        "moves": "SELECT * FROM extract_moves",
        "meta": "SELECT key, value FROM meta ORDER BY key",
        "totals": "SELECT sum(pending), sum(active), sum(done), sum(expired), sum(failed),"
        " sum(done_bytes) FROM item_totals",
        "sequences": "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1",
    }
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('items')").fetchone() == (None,):
            return {}
        return {name: conn.execute(query).fetchall() for name, query in tables.items()}


@pytest.fixture(autouse=True)
def own_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No INGESTD_* setting or user config of the machine's: only the test's config file."""
    for name in list(os.environ):
        if name.startswith("INGESTD_") or name.endswith("_DIRECTORY"):
            monkeypatch.delenv(name)
    for name in ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "home" / name))


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    made = Library(tmp_path / "lib")
    build(made)
    return made


@pytest.fixture
def source(lib: Library) -> Iterator[Manifest]:
    m = Manifest.open(lib.path, readonly=True)
    yield m
    m.close()


@pytest.fixture
def target(postgres_url: str) -> Iterator[Callable[[], PostgresManifest]]:
    """Opens the test's PostgreSQL manifest (after the migration); closed after the test."""
    opened: list[PostgresManifest] = []

    def open_it() -> PostgresManifest:
        opened.append(PostgresManifest.open(postgres_url))
        return opened[-1]

    yield open_it
    for m in opened:
        m.close()


def test_every_item_extract_and_the_binding_go_over(
    lib: Library,
    source: Manifest,
    target: Callable[[], PostgresManifest],
    postgres_url: str,
) -> None:
    assert lib.migrate(postgres_url) == EXIT_OK
    copy = target()
    ids = sorted(s.aweme_id for s in source.iter_items(limit=None))
    assert ids == ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4", "c1", "c2"]
    for aweme_id in ids:
        before = source.item(aweme_id)
        assert before is not None
        # Every column, as it was; the claim gone (as a restart leaves it), the origin derived,
        # the done files held by the node that migrated them.
        expected = {
            **before,
            "state": "pending" if before["state"] == "active" else before["state"],
            "held": 0,
            "owner": None,
            "lease_until": None,
            "origin": origin_of(str(before["url"])),
            "node": NODE if before["state"] == "done" else None,
        }
        assert copy.item(aweme_id) == expected, aweme_id
        assert copy.record(aweme_id) == source.record(aweme_id)
    b2, b3 = source.item("b2"), copy.item("b3")
    assert b2 is not None and (b2["held"], b2["owner"]) == (1, "node/2"), "held in the source"
    assert b3 is not None
    assert (b3["state"], b3["attempts"], b3["validator"], b3["total_bytes"]) == (
        "pending",
        1,  # the attempt it was charged stays spent, as after a crash
        '"etag-b3"',
        5000,
    )

    counts = copy.counts()
    assert counts.items == {"pending": 4, "active": 0, "done": 2, "expired": 2, "failed": 2}
    assert counts.bytes_done == source.counts().bytes_done > 0
    assert counts.extracts == {"merged": 3, "rejected": 1, "duplicate": 1}
    assert copy.recorded_data_dir(NODE) == library_path(lib.data)
    assert copy.in_flight_by_owner() == {}
    assert copy.extract_status("extract_a.json", lib.sha_a) == "merged"
    assert copy.content_merged(lib.sha_a) and copy.content_merged("sha-b")
    assert copy.extract_status("extract_r.json", "invalid_json:9:1") == "rejected"
    assert copy.extract_status("extract_a_copy.json", lib.sha_a) == "duplicate"
    for path, sha in (("extract_a.json", lib.sha_a), ("extract_b.json", "sha-b")):
        assert copy.extract_progress(path, sha) == source.extract_progress(path, sha)
    c = copy.extract_progress("extract_c.json", "sha-c")
    assert c is not None and c == source.extract_progress("extract_c.json", "sha-c")
    assert (c.items, c.outstanding, c.merged_at) == (2, 1, None), "still open to its merge"
    old = source.extract_progress("extract_0.json", "sha-0")
    assert old is not None and old.items is None
    assert copy.extract_progress("extract_0.json", "sha-0") == ExtractProgress(
        old.id, old.path, old.sha256, 0, 0, 0, 0, 0, 0, old.merged_at, old.completed_at
    )
    assert copy.settled_extracts() == source.settled_extracts()
    assert [r.aweme_id for r in copy.pending_relinks(10)] == ["a1"]
    assert copy.done_items() == source.done_items()

    # The queue goes on where it stopped: b3 resumes its .part; b1 waits for its retry time.
    claimed = {i.aweme_id: i for i in copy.claim_due(T0 + 10, 10)}
    assert sorted(claimed) == ["b2", "b3", "c1"]
    assert (claimed["b3"].attempts, claimed["b3"].durable, claimed["b3"].total) == (2, 1024, 5000)
    # New extracts and their progress take ids after the copied ones.
    copy.merge([rec("e1", "cats")], "extract_e.json", T0 + 20, "sha-e")
    e = copy.extract_progress("extract_e.json", "sha-e")
    assert e is not None and e.id == 1 + max(
        p.id
        for p in (
            source.extract_progress(*key)
            for key in (
                ("extract_a.json", lib.sha_a),
                ("extract_b.json", "sha-b"),
                ("extract_c.json", "sha-c"),
                ("extract_0.json", "sha-0"),
            )
        )
        if p is not None
    )
    copy.record_extract("extract_e.json", "sha-e", 1, "merged", T0 + 20)
    assert copy.counts().extracts["merged"] == 4


def test_migrating_again_gives_the_same_copy_and_carries_later_changes(
    lib: Library, postgres_url: str
) -> None:
    assert lib.migrate(postgres_url) == EXIT_OK
    first = dump(postgres_url)
    assert len(first["items"]) == 10 and len(first["extracts"]) == 5
    assert len(first["progress"]) == 4 and first["moves"] == []
    assert lib.migrate(postgres_url) == EXIT_OK
    assert dump(postgres_url) == first, "nothing duplicated, nothing changed"
    # The source changed before the switch (retry): a new copy replaces the old one.
    m = Manifest.open(lib.path)
    try:
        assert sorted(m.retry(["failed"], [], T0 + 30)[0]) == ["a4", "b4"]
    finally:
        m.close()
    assert lib.migrate(postgres_url) == EXIT_OK
    again = dump(postgres_url)
    assert len(again["items"]) == 10
    assert again["totals"] == [(6, 0, 2, 2, 0, first["totals"][0][5])]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("how", ["keyboard", "connection_lost"])
def test_an_interrupted_copy_changes_nothing_and_the_next_one_completes(
    lib: Library, postgres_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    assert lib.migrate(postgres_url) == EXIT_OK
    first = dump(postgres_url)
    m = Manifest.open(lib.path)
    try:
        m.retry(["failed"], [], T0 + 30)  # a change the interrupted copy does not bring
    finally:
        m.close()
    read = Manifest._export_items

    def cut(self: Manifest) -> Iterator[list[Any]]:
        """The first chunks, then the interruption: mid-COPY."""
        for n, chunk in enumerate(read(self)):
            if n == 2:
                if how == "keyboard":
                    raise KeyboardInterrupt
                with psycopg.connect(postgres_url, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
            yield chunk

    monkeypatch.setattr(sqlite_store, "_CHUNK", 3)
    monkeypatch.setattr(Manifest, "_export_items", cut)
    assert lib.migrate(postgres_url) == EXIT_FAILURE
    assert dump(postgres_url) == first
    monkeypatch.setattr(Manifest, "_export_items", read)
    assert lib.migrate(postgres_url) == EXIT_OK
    assert dump(postgres_url)["totals"] == [(6, 0, 2, 2, 0, first["totals"][0][5])]


def _bound_elsewhere(lib: Library, url: str) -> str:
    other = lib.root / "other"
    other.mkdir()
    m = PostgresManifest.open(url)
    m.bind_data_dir(other)
    m.merge([rec("x1", "t")], "extract_x.json", T0)
    m.close()
    return f"it holds the manifest of the data dir {library_path(other)}, not {lib.data}"


def _its_own(lib: Library, url: str) -> str:
    m = PostgresManifest.open(url)  # as `ingestd run` with manifest_url, before any migrate
    m.bind_data_dir(lib.data)
    m.record_extract("extract_r.json", "invalid_json:1:1", 1, "rejected", T0, "invalid")
    m.close()
    return f"it holds a manifest of its own, not a copy of {lib.path}"


def _written_since(lib: Library, url: str) -> str:
    assert lib.migrate(url) == EXIT_OK
    m = PostgresManifest.open(url)  # the daemon ran on the copy
    assert m.claim_due(T0 + 10, 1)
    m.close()
    return f"it was written since it was copied from {lib.path} (a daemon ran on it)"


def _copy_of_another_file(lib: Library, url: str) -> str:
    assert lib.migrate(url) == EXIT_OK
    moved = lib.root / "state2"
    moved.mkdir()
    for name in os.listdir(lib.state):
        if name.startswith("manifest.sqlite3"):
            os.link(lib.state / name, moved / name)
    lib.config = lib.write_config("moved.toml", state_dir=str(moved))
    return f"it holds a copy of {lib.path}, not of {moved / 'manifest.sqlite3'}"


@pytest.mark.parametrize(
    "setup", [_bound_elsewhere, _its_own, _written_since, _copy_of_another_file]
)
def test_a_database_holding_another_manifest_is_refused_and_left_unchanged(
    lib: Library,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
    setup: Callable[[Library, str], str],
) -> None:
    why = setup(lib, postgres_url)
    before = dump(postgres_url)
    capsys.readouterr()
    assert lib.migrate(postgres_url) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"ingestd: {postgres_url} cannot take this library's manifest: {why}")
    assert "Nothing was changed" in err
    assert dump(postgres_url) == before


HOLDER = """
import sys
from ingestd.cli import _library_locked
from ingestd.config import default_node_name, load_config

with _library_locked(load_config(sys.argv[1])):  # as `ingestd run` takes them
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_running_daemon_keeps_migrate_out(
    lib: Library, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    daemon = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lib.config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "locked\n"
        assert lib.migrate(postgres_url) == EXIT_LOCKED
    finally:
        daemon.communicate("", timeout=30)
    lock = lib.data / ".ingestd.lock"
    expected = f"ingestd: another ingestd (pid {daemon.pid}) is running on {lib.data} (lock {lock})"
    assert capsys.readouterr().err.strip() == expected
    assert dump(postgres_url) == {}, "the database was not even opened"
    assert lib.migrate(postgres_url) == EXIT_OK  # once it has stopped


def test_a_database_that_cannot_be_used_is_named_without_its_password(
    lib: Library, postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    unreachable = f"postgresql://ingestd:{PASSWORD}@127.0.0.1:1/library"
    assert lib.migrate(unreachable) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("ingestd: cannot use the manifest: postgresql://ingestd:***@127.0.0.1:1")
    missing = postgres_cluster.url("no_such_db").replace("postgres@", f"postgres:{PASSWORD}@")
    assert lib.migrate(missing) == EXIT_FAILURE
    err += capsys.readouterr().err
    assert 'database "no_such_db" does not exist' in err
    assert lib.migrate(str(lib.root / "copy.sqlite3")) == EXIT_USAGE
    err += capsys.readouterr().err
    assert "--to takes a postgresql:// URL" in err
    assert PASSWORD not in err and "Traceback" not in err


def test_without_psycopg_the_message_names_the_extra(
    lib: Library, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    monkeypatch.delitem(sys.modules, "ingestd.store.postgres")
    assert lib.migrate(f"postgresql://u:{PASSWORD}@db.example/x") == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "needs psycopg (install ingestd[postgres])" in err and PASSWORD not in err


def test_counts_that_differ_fail_the_migration(
    lib: Library, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with contextlib.closing(sqlite3.connect(lib.path)) as db, db:
        db.execute("UPDATE item_totals SET items = items + 1 WHERE state = 'done'")  # drifted
    assert lib.migrate(postgres_url) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"ingestd: the copy in {postgres_url} does not match its source:" in err
    assert "done items: 3 expected from the source, 2 in the copy" in err


async def test_the_daemon_does_not_merge_a_migrated_extract_again(
    lib: Library, postgres_url: str
) -> None:
    assert lib.migrate(postgres_url) == EXIT_OK
    before = dump(postgres_url)
    events: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: dict[str, Any]) -> Any:
        events.append(dict(event))
        raise structlog.DropEvent

    log = structlog.wrap_logger(
        None, processors=[keep], context_class=dict, cache_logger_on_first_use=False
    )
    config = replace(load_config(lib.config), manifest_url=postgres_url)
    db = await Db.open(postgres_url)
    try:
        ingestor = Ingestor(config, db, log, on_merged=lambda: None)
        await ingestor.process(lib.raw / "extract_a.json")  # the same file, after a restart
        again = lib.raw / "extract_a_again.json"  # the same content under another name
        again.write_bytes((lib.raw / "extract_a.json").read_bytes())
        await ingestor.process(again)
    finally:
        await db.close()
    assert [(e["event"], e.get("reason")) for e in events] == [
        ("extract_skipped", "duplicate_content")
    ]
    after = dump(postgres_url)
    assert after["items"] == before["items"] and after["progress"] == before["progress"]
    added = [row for row in after["extracts"] if row not in before["extracts"]]
    assert [(r[1], r[2], r[4]) for r in added] == [("extract_a_again.json", lib.sha_a, "duplicate")]


def test_the_command_end_to_end(
    lib: Library, postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_cluster.new_database()
    try:
        # The server trusts the socket: the password is never asked for, and never shown.
        with_password = url.replace("postgres@", f"postgres:{PASSWORD}@")
        shown = url.replace("postgres@", "postgres:***@")
        assert main(["status", "--json", "--config", str(lib.config)]) == EXIT_OK
        assert main(["verify", "--json", "--config", str(lib.config)]) == EXIT_FAILURE
        sqlite_status, sqlite_verify = capsys.readouterr().out.splitlines()

        dirs = ["--data-dir", str(lib.data), "--state-dir", str(lib.state)]
        code = main(["migrate", "--to", with_password, *dirs])
        out, err = capsys.readouterr()
        assert code == EXIT_OK, err
        lines = out.splitlines()
        assert lines[0].startswith(f"copied {lib.path} to {shown} in ")
        assert lines[1:3] == [
            "  items      10: 4 pending, 2 done, 2 expired, 2 failed",
            "             (1 active and 1 held before: pending and unclaimed now, as after a"
            " restart)",
        ]
        assert lines[3].startswith("  downloaded ")
        assert lines[4] == (
            "  extracts   5: 3 merged, 1 rejected, 1 duplicate (4 followed to their completion)"
        )
        assert lines[5].startswith(f'next: set manifest_url = "{shown}" in the config')
        assert lines[6:] == ["counts checked: the copy matches its source"]
        assert PASSWORD not in out + err

        # As the node migrate ran as (no config file: the host's name), which holds the files.
        host = default_node_name(socket.gethostname())
        on_postgres = str(lib.write_config("postgres.toml", manifest_url=url, node_name=host))
        assert main(["status", "--json", "--config", on_postgres]) == EXIT_OK
        status = json.loads(capsys.readouterr().out)
        expected = json.loads(sqlite_status)
        expected["items"]["pending"] += expected["items"].pop("active")
        expected["items"] = {**expected["items"], "active": 0}
        expected["nodes"] = {}  # no claim goes over
        assert status == expected
        # verify finds the same on both (a1's link into birds/ is due: not made yet).
        assert main(["verify", "--json", "--config", on_postgres]) == EXIT_FAILURE
        found = json.loads(capsys.readouterr().out)
        assert found["problems"] == json.loads(sqlite_verify)["problems"] != []
    finally:
        postgres_cluster.drop_database(url)
