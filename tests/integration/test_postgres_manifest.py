"""The PostgreSQL manifest beyond the contract (tests/contract runs that on it too): its schema
migrations, several connections at once, the counts it keeps by deltas, and its DSN's password,
which no error may show."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from ingestd.policy.extract import Record
from ingestd.policy.merge import State
from ingestd.store.base import Completion, LapsedClaim, ManifestError, NodeReport, OwnerLoad
from ingestd.store.manifest import Manifest
from ingestd.store.open import open_manifest, redact_dsn
from ingestd.store.postgres import (
    BORROW_WAIT,
    BORROW_WAIT_DOWN,
    CREDENTIAL,
    RECONNECT_WINDOW,
    SCHEMA_VERSION,
    PostgresManifest,
)
from support.postgres import PostgresCluster

URL = "https://{}.example/v/{}.mp4?expire=9999999999"
PASSWORD = "s3cr%40t-pw"  # as written in a URL; libpq reads it as "s3cr@t-pw"


def run_all(threads: list[threading.Thread], timeout: float = 120.0) -> None:
    """Start the threads and wait for them, each wait bounded: a hung one fails the test."""
    for t in threads:
        t.daemon = True  # a hung one must not keep pytest from exiting
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0))
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout} s"


def rec(aweme_id: str, host: str = "a", topic: str | None = "t") -> Record:
    return Record(aweme_id, URL.format(host, aweme_id), topic, f'{{"aweme_id":"{aweme_id}"}}')


@pytest.fixture
def manifest(postgres_url: str) -> Iterator[PostgresManifest]:
    m = PostgresManifest.open(postgres_url)
    yield m
    m.close()


def migrations(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def full_counts(url: str) -> tuple[dict[str, int], int]:
    """Items by state and bytes done, counted over the items themselves."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT state, count(*), sum(bytes) FROM items GROUP BY state")
        items = {s.value: 0 for s in State}
        done = 0
        for state, n, size in rows:
            items[state] = n
            done = int(size or 0) if state == "done" else done
    return items, done


# --- schema --------------------------------------------------------------------------------------


def test_migrations_are_recorded_and_applied_once(postgres_url: str) -> None:
    first = PostgresManifest.open(postgres_url)
    first.merge([rec("1")], "e.json", 1.0)
    first.close()
    assert migrations(postgres_url) == list(range(1, SCHEMA_VERSION + 1))
    again = PostgresManifest.open(postgres_url)
    try:
        assert again.counts().items["pending"] == 1
    finally:
        again.close()
    assert migrations(postgres_url) == list(range(1, SCHEMA_VERSION + 1))


def test_daemons_starting_together_migrate_once(postgres_url: str) -> None:
    opened: list[PostgresManifest] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgresManifest.open(postgres_url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    run_all(threads)
    for m in opened:
        m.close()
    assert failures == [] and len(opened) == 6
    assert migrations(postgres_url) == list(range(1, SCHEMA_VERSION + 1))


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    PostgresManifest.open(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    for readonly in (False, True):
        with pytest.raises(ManifestError, match="newer than this ingestd"):
            PostgresManifest.open(postgres_url, readonly=readonly)


def test_a_reader_neither_creates_nor_writes(postgres_url: str) -> None:
    with pytest.raises(ManifestError, match="no manifest in this database"):
        PostgresManifest.open(postgres_url, readonly=True)
    writer = PostgresManifest.open(postgres_url)
    writer.merge([rec("1"), rec("2")], "e.json", 1.0)
    writer.close()
    reader = open_manifest(postgres_url, readonly=True)
    try:
        assert reader.counts().items["pending"] == 2
        assert [i.aweme_id for i in reader.iter_items(limit=None)] in (["1", "2"], ["2", "1"])
        with pytest.raises(ManifestError, match="read-only"):
            reader.claim_due(now=2.0, limit=1)
        assert reader.counts().items["active"] == 0
    finally:
        reader.close()


def test_the_backend_is_chosen_by_the_location(tmp_path: Path, postgres_url: str) -> None:
    sqlite = open_manifest(tmp_path / "state" / "manifest.sqlite3")
    server = open_manifest(postgres_url)
    try:
        assert isinstance(sqlite, Manifest) and isinstance(server, PostgresManifest)
    finally:
        sqlite.close()
        server.close()
    # A path, even one spelled like a URL, is a SQLite file.
    odd = open_manifest(tmp_path / "postgresql:" / "x.sqlite3")
    odd.close()
    assert (tmp_path / "postgresql:" / "x.sqlite3").exists()


def test_the_sqlite_side_never_imports_psycopg() -> None:
    code = (
        "import sys, ingestd.cli, ingestd.service.daemon, ingestd.store.open;"
        " assert not [m for m in sys.modules if m.startswith('psycopg')], 'psycopg imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- several connections -------------------------------------------------------------------------


def test_concurrent_claims_never_hand_out_an_item_twice(postgres_url: str) -> None:
    setup = PostgresManifest.open(postgres_url)
    setup.merge([rec(f"{i:05d}", host="abcd"[i % 4]) for i in range(2_000)], "e.json", 1.0)
    setup.close()
    started: list[list[str]] = [[] for _ in range(4)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        rng = random.Random(n)
        m = PostgresManifest.open(postgres_url)
        try:
            barrier.wait()
            held: list[str] = []
            while True:
                # Start some of what this worker holds with its next claim, as the pool does.
                k = rng.randrange(3)
                mark, held = held[:k], held[k:]
                skip = rng.sample(["a.example:443", "b.example:443"], rng.randrange(2))
                now, hold = 10.0, rng.randrange(4)
                go, ahead = m.claim(now, start=rng.randrange(1, 6), hold=hold, skip=skip, mark=mark)
                started[n] += mark + [i.aweme_id for i in go]
                held += [i.aweme_id for i in ahead]
                if not go and not ahead and not skip:
                    break
            for aweme_id, attempt in zip(held, m.start_held(held, 11.0), strict=True):
                assert attempt == 1, aweme_id
                started[n].append(aweme_id)
        except BaseException as exc:
            failures.append(exc)
        finally:
            m.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    run_all(threads)
    assert failures == []
    claims = Counter(aweme_id for ids in started for aweme_id in ids)
    assert len(claims) == 2_000 and set(claims.values()) == {1}, claims.most_common(3)
    assert all(started), "every worker got some"
    check = PostgresManifest.open(postgres_url)
    try:
        assert check.counts().items["active"] == 2_000
        assert full_counts(postgres_url)[0]["active"] == 2_000
    finally:
        check.close()


def test_a_claim_passes_over_items_locked_elsewhere(
    manifest: PostgresManifest, postgres_url: str
) -> None:
    manifest.merge([rec("1"), rec("2")], "e.json", 1.0)
    with psycopg.connect(postgres_url) as other, other.transaction():
        other.execute("SELECT 1 FROM items WHERE aweme_id = '1' FOR UPDATE")
        assert [i.aweme_id for i in manifest.claim_due(2.0, 2)] == ["2"], "without waiting"
    assert [i.aweme_id for i in manifest.claim_due(2.0, 2)] == ["1"]


def test_a_deadlock_victim_runs_again_unless_it_ran_a_callback(
    manifest: PostgresManifest,
) -> None:
    runs: list[int] = []

    def body(cur: psycopg.Cursor[tuple[object, ...]]) -> int:
        runs.append(1)
        if len(runs) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return len(runs)

    assert manifest._write(body) == 2
    runs.clear()
    with pytest.raises(ManifestError, match="deadlock"):
        manifest._write(body, retry=False)
    assert runs == [1]


def test_counts_stay_exact_under_concurrent_writers(postgres_url: str) -> None:
    setup = PostgresManifest.open(postgres_url)
    setup.merge([rec(str(i)) for i in range(600)], "e1.json", 1.0, "sha-1")
    setup.record_extract("e1.json", "sha-1", 1, "merged", 1.0)
    setup.close()
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        m = PostgresManifest.open(postgres_url)
        try:
            for step in range(60):
                m._fold_due = 0.0  # fold after every write: folds race with writers
                now = 10.0 + step
                for item in m.claim_due(now, rng.randrange(1, 8)):
                    outcome = rng.random()
                    if outcome < 0.4:
                        completion = Completion(item.aweme_id, 10, "x", "p", ["t"], now)
                        m.complete_many([completion])
                    elif outcome < 0.7:
                        state = rng.choice([State.PENDING, State.FAILED, State.EXPIRED])
                        m.finish_failed(item.aweme_id, item.url, state, "e", 500, now, False, now)
                    else:
                        m.release([item.aweme_id], now)
                if rng.random() < 0.2:
                    m.retry(["failed"], [], now)
                if rng.random() < 0.2:
                    m.merge([rec(str(rng.randrange(700)), topic="u")], f"w{n}.json", now)
        except BaseException as exc:
            failures.append(exc)
        finally:
            m.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    run_all(threads)
    assert failures == []
    check = PostgresManifest.open(postgres_url)
    try:
        counts = check.counts()
        assert (counts.items, counts.bytes_done) == full_counts(postgres_url)
        progress = check.extract_progress("e1.json", "sha-1")
        assert progress is not None
        with psycopg.connect(postgres_url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state IN ('pending', 'active')),"
                " count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed')"
                " FROM items WHERE aweme_id::int < 600"
            ).fetchone()
        assert (progress.items, progress.outstanding, progress.done, progress.failed) == (
            600,
            *(row or ()),
        )
    finally:
        check.close()


def test_folding_moves_no_count(manifest: PostgresManifest, postgres_url: str) -> None:
    manifest.merge([rec(str(i)) for i in range(20)], "e1.json", 1.0, "sha-1")
    manifest.record_extract("e1.json", "sha-1", 1, "merged", 1.0)
    manifest.merge([rec(str(i)) for i in range(10, 30)], "e2.json", 1.0, "sha-2")
    for step, item in enumerate(manifest.claim_due(2.0, 25)):
        if step % 3 == 0:
            manifest.complete_many([Completion(item.aweme_id, step, "x", "p", ["t"], 3.0)])
        elif step % 3 == 1:
            manifest.finish_failed(item.aweme_id, item.url, State.FAILED, "e", 404, 0, False, 3.0)

    def seen() -> tuple[object, ...]:
        return (
            manifest.extract_progress("e1.json", "sha-1"),
            manifest.extract_progress("e2.json", "sha-2"),
            manifest.settled_extracts(),
        )

    counts, before = manifest.counts(), seen()
    assert (counts.items, counts.bytes_done) == full_counts(postgres_url)
    manifest._fold()
    assert (manifest.counts(), seen()) == (counts, before)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM item_totals").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM extract_moves").fetchone() == (0,)


def test_a_deleted_item_leaves_the_counts(manifest: PostgresManifest, postgres_url: str) -> None:
    # The store never deletes an item; the trigger covers it anyway, as SQLite's does.
    manifest.merge([rec("1"), rec("2"), rec("3")], "e1.json", 1.0, "sha-1")
    manifest.claim_due(2.0, 1)
    manifest.complete_many([Completion("1", 7, "x", "p", ["t"], 3.0)])
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DELETE FROM items WHERE aweme_id IN ('1', '2')")
    counts = manifest.counts()
    assert (counts.items, counts.bytes_done) == full_counts(postgres_url)
    progress = manifest.extract_progress("e1.json", "sha-1")
    assert progress is not None
    assert (progress.items, progress.outstanding, progress.done, progress.bytes) == (1, 1, 0, 0)


def test_a_listing_streams_while_the_store_is_written(manifest: PostgresManifest) -> None:
    manifest.merge([rec(f"{i:04d}") for i in range(1_200)], "e.json", 1.0)
    listed = manifest.iter_items(limit=None)
    first = [next(listed).aweme_id for _ in range(600)]
    manifest.claim_due(2.0, 1_200)  # between two reads of the listing
    rest = [i.aweme_id for i in listed]
    assert sorted(first + rest) == [f"{i:04d}" for i in range(1_200)]


def _terminate_sessions(url: str) -> int:
    """End every other session on `url`'s database, as a server restart or an administrator
    would; returns once they are gone."""
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_a_connection_the_server_closed_is_replaced_before_a_call_uses_it(
    manifest: PostgresManifest, postgres_url: str
) -> None:
    # The server ends the session (terminate, restart, idle timeout): the next call takes a
    # new connection instead of failing on the dead one.
    manifest.merge([rec("1")], "e.json", 1.0)
    assert _terminate_sessions(postgres_url) >= 1
    assert manifest.counts().items["pending"] == 1
    assert [i.aweme_id for i in manifest.claim_due(2.0, 1)] == ["1"]


@pytest.fixture
def private_cluster() -> Iterator[PostgresCluster]:
    """A server of this test's own, to stop and start: stopping the session's would fail
    other tests."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def halted(
    private_cluster: PostgresCluster, capfd: pytest.CaptureFixture[str]
) -> Iterator[PostgresManifest]:
    """A store holding one pending item, whose server has just stopped. Nothing may reach
    stderr meanwhile (the pool's own log lines)."""
    store = PostgresManifest.open(private_cluster.new_database())
    try:
        store.merge([rec("1")], "e.json", 1.0)
        private_cluster.halt()
        yield store
    finally:
        store.close()
    assert capfd.readouterr().err == "", "the pool's own log lines reached stderr"


def test_a_call_during_a_restart_waits_for_the_database(
    private_cluster: PostgresCluster, halted: PostgresManifest
) -> None:
    back = threading.Timer(1.5, private_cluster.resume)
    back.start()
    started = time.monotonic()
    try:
        assert halted.counts().items["pending"] == 1
    finally:
        back.join(60)
    assert 1.0 < time.monotonic() - started < BORROW_WAIT


def test_an_outage_fails_calls_quickly_once_known_and_ends_by_itself(
    private_cluster: PostgresCluster, halted: PostgresManifest
) -> None:
    timings = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(ManifestError) as raised:
            halted.counts()
        timings.append(time.monotonic() - started)
    # The first call rode out what might have been a restart; the others fail at once.
    assert BORROW_WAIT - 0.5 < timings[0] < BORROW_WAIT + 5, timings
    assert all(t < BORROW_WAIT_DOWN + 1 for t in timings[1:]), timings
    assert "no connection" in str(raised.value), raised.value
    assert "No such file" in str(raised.value) or "refused" in str(raised.value)
    private_cluster.resume()
    deadline = time.monotonic() + RECONNECT_WINDOW + 5
    while True:  # the pool reconnects by itself; a call gets through within its backoff
        try:
            assert halted.counts().items["pending"] == 1
            break
        except ManifestError:
            assert time.monotonic() < deadline, "no reconnection after the outage"
            time.sleep(0.2)


@dataclass
class Claimed:
    """One claim of an item by an owner, as that owner saw it."""

    owner: str
    at: float  # the claim's now
    until: float  # the latest lease end the store granted it (claim or renewal)


def test_an_owner_that_stops_renewing_loses_its_claims_to_the_other(postgres_url: str) -> None:
    # Two owners on two connections claim one queue with leases, on a shared logical clock.
    # "a" stops after a few rounds, its items claimed; "b" renews its own every round and
    # reclaims what lapsed, so it gets a's items once their leases end, and finishes all.
    # When a wakes, every outcome it writes is refused. No claim of an item begins before the
    # last lease granted to the previous one ended: never two owners at once.
    total, lease = 200, 30.0
    setup = PostgresManifest.open(postgres_url)
    setup.merge([rec(f"{i:04d}", host="abcd"[i % 4]) for i in range(total)], "e.json", 1.0)
    setup.close()
    ticks = itertools.count(2)
    clock = threading.Lock()
    record = threading.Lock()
    history: dict[str, list[Claimed]] = defaultdict(list)
    completed: Counter[str] = Counter()
    reclaimed: list[LapsedClaim] = []
    stalled: dict[str, Claimed] = {}
    b_done = threading.Event()
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def tick() -> float:
        with clock:
            return float(next(ticks))

    def work(owner: str, rounds: int | None) -> None:
        m = PostgresManifest.open(postgres_url)
        mine: dict[str, Claimed] = {}  # claimed, as far as this owner knows
        held: list[str] = []
        try:
            barrier.wait()
            for step in itertools.count():
                if rounds is not None and step == rounds:
                    stalled.update(mine)
                    b_done.wait(120)
                    break
                assert step < 5_000, "never finished"
                now = tick()
                if owner == "b":
                    lapsed = m.reclaim_lapsed(now)
                    reclaimed.extend(lapsed)
                    for gone in lapsed:
                        mine.pop(gone.aweme_id, None)
                for aweme_id in set(mine) - set(m.renew_leases(owner, list(mine), now + lease)):
                    del mine[aweme_id]  # lost
                for claim in mine.values():
                    claim.until = now + lease
                held = [i for i in held if i in mine]
                started, ahead = m.claim(
                    now, start=1, hold=1, mark=held, owner=owner, lease_until=now + lease
                )
                held = [i.aweme_id for i in ahead]
                with record:
                    for item in started + ahead:
                        mine[item.aweme_id] = Claimed(owner, now, now + lease)
                        history[item.aweme_id].append(mine[item.aweme_id])
                # "a" finishes one item every other round: it keeps some claimed.
                running = [i for i in mine if i not in held]
                if running and (owner == "b" or step % 2 == 0):
                    aweme_id = running[0]
                    (flag,) = m.complete_many(
                        [Completion(aweme_id, 1, "x", "p", ["t"], now, owner)]
                    )
                    del mine[aweme_id]
                    if flag is not None:
                        with record:
                            completed[aweme_id] += 1
                if owner == "b" and not mine and m.counts().items["done"] == total:
                    b_done.set()
                    return
            # "a" wakes up: what it had is someone else's now, or done.
            stale = list(mine)
            assert stale and m.renew_leases(owner, stale, tick() + lease) == []
            now = tick()
            flags = m.complete_many([Completion(i, 1, "x", "p", ["t"], now, owner) for i in stale])
            assert flags == [None] * len(stale)
            assert m.release(stale, now, owner=owner) == []
            assert (
                m.finish_failed(stale[0], "u", State.FAILED, "e", 1, 0, False, now, owner=owner)
                is None
            )
        except BaseException as exc:
            failures.append(exc)
            b_done.set()
        finally:
            m.close()

    threads = [
        threading.Thread(target=work, args=("a", 12)),
        threading.Thread(target=work, args=("b", None)),
    ]
    run_all(threads)
    assert failures == []
    assert set(completed) == {f"{i:04d}" for i in range(total)}
    assert set(completed.values()) == {1}, "each item completed once, by its owner then"
    assert stalled and {c.aweme_id for c in reclaimed if c.owner == "a"} >= set(stalled)
    for aweme_id in stalled:
        assert history[aweme_id][-1].owner == "b", aweme_id
    for aweme_id, claims in history.items():
        for before, after in itertools.pairwise(sorted(claims, key=lambda c: c.at)):
            assert after.at > before.until, (aweme_id, claims)
    check = PostgresManifest.open(postgres_url)
    try:
        assert check.in_flight_by_owner() == {}
        assert check.counts().items["done"] == total
    finally:
        check.close()


def test_owners_and_leases_come_with_schema_2(postgres_url: str) -> None:
    # A database of schema 1 (as the first release made it) is migrated with its claims; a
    # reader that finds it still at 1 shows no owners rather than failing.
    from ingestd.store import postgres

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(postgres._MIGRATIONS_TABLE)
        conn.execute(postgres._MIGRATIONS[1])
        conn.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        conn.execute(
            "INSERT INTO items (aweme_id, url, origin, topics, folders, state, held, sources,"
            " record, created_at, updated_at) VALUES"
            " ('1', 'u', 'h:443', '{}', '{}', 'active', false, '[]', '{}', 1, 1),"
            " ('2', 'u', 'h:443', '{}', '{}', 'pending', true, '[]', '{}', 1, 1)"
        )
    reader = PostgresManifest.open(postgres_url, readonly=True)
    try:
        assert reader.in_flight_by_owner() == {"": OwnerLoad(active=1, held=1)}
        assert reader.node_reports() == []  # none before migration 4
        item = reader.item("1")
        assert item is not None and "owner" not in item
    finally:
        reader.close()
    m = PostgresManifest.open(postgres_url)
    try:
        assert migrations(postgres_url) == list(range(1, SCHEMA_VERSION + 1))
        item = m.item("1")
        assert item is not None and (item["owner"], item["lease_until"]) == (None, None)
        assert m.reclaim_lapsed(now=1e12) == []
        assert m.reset_active(now=2.0, owner="") == 1
        assert m.in_flight_by_owner() == {}
    finally:
        m.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SET enable_seqscan = off")  # two rows: the index must serve, not win
        plan = conn.execute(
            "EXPLAIN SELECT aweme_id FROM items WHERE held AND lease_until < 5"
        ).fetchall()
        assert "items_held" in str(plan)


# --- the password --------------------------------------------------------------------------------


def with_password(cluster: PostgresCluster, dbname: str) -> str:
    return cluster.url(dbname).replace("postgres@", f"postgres:{PASSWORD}@", 1)


def shown(exc: BaseException) -> str:
    """All a log would show of an error: its message and its traceback, chained ones too."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda c: with_password(c, "nope"), id="unknown-database"),
        pytest.param(lambda c: f"postgresql://u:{PASSWORD}@[::1/db", id="malformed-url"),
        pytest.param(
            lambda c: f"postgresql://u:{PASSWORD}@/db?host={c.dir}/nowhere&port=1",
            id="no-server",
        ),
        pytest.param(
            lambda c: f"postgresql:///nope?host={c.dir}&password={PASSWORD}&bogus=1",
            id="query-password",
        ),
        pytest.param(
            lambda c: f"host={c.dir} dbname=nope password='{PASSWORD} x' oops", id="keywords"
        ),
    ],
)
def test_the_password_never_appears_in_an_error(
    postgres_cluster: PostgresCluster, make: object
) -> None:
    dsn = make(postgres_cluster)  # type: ignore[operator]
    with pytest.raises(ManifestError) as raised:
        PostgresManifest.open(dsn)
    text = shown(raised.value)
    for secret in (PASSWORD, "s3cr@t-pw", "s3cr"):
        assert secret not in text, text
    assert "***" in text or "password" not in dsn


def test_the_password_never_appears_in_a_later_error(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.new_database()
    try:
        m = PostgresManifest.open(with_password(postgres_cluster, url.split("/")[3].split("?")[0]))
        try:
            _terminate_sessions(url)
            with psycopg.connect(url) as admin:
                admin.execute("DROP TABLE items, item_totals CASCADE")
            calls = (m.counts, m.counts, lambda: m.claim_due(1.0, 1), lambda: m.item("1"))
            for call in calls:
                with pytest.raises(ManifestError) as raised:
                    call()
                assert "s3cr" not in shown(raised.value)
        finally:
            m.close()
    finally:
        postgres_cluster.drop_database(url)


def test_the_password_may_come_from_a_systemd_credential(
    private_cluster: PostgresCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under systemd, LoadCredential=manifest_password:FILE puts the password in
    # $CREDENTIALS_DIRECTORY/manifest_password; the URL then needs none.
    url = private_cluster.new_password_user("ingestd_node", "cred-s3cr@t")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ManifestError, match="password"):
        PostgresManifest.open(url)  # none given: refused
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    (credentials / CREDENTIAL).write_text("wrong-s3cr@t\n")
    with pytest.raises(ManifestError) as raised:
        PostgresManifest.open(url)
    assert "password authentication failed" in str(raised.value)
    assert "wrong-s3cr" not in shown(raised.value)
    (credentials / CREDENTIAL).write_text("cred-s3cr@t\n")  # systemd keeps a trailing newline
    store = PostgresManifest.open(url)
    try:
        store.merge([rec("1")], "e.json", 1.0)
        _terminate_sessions(private_cluster.url(url.split("/")[3].split("?")[0]))
        assert store.counts().items["pending"] == 1  # the pool's new connections use it too
    finally:
        store.close()
    (credentials / CREDENTIAL).write_text("")
    with pytest.raises(ManifestError, match=f"credential {CREDENTIAL} is empty"):
        PostgresManifest.open(url)


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:p%40ss@h:5/db?sslmode=require") == (
        "postgresql://u:***@h:5/db?sslmode=require"
    )
    assert redact_dsn("postgres://h/db?user=u&password=x&port=5") == (
        "postgres://h/db?user=u&password=***&port=5"
    )
    assert redact_dsn("host=h password='a b\\' c' user=u") == "host=h password=*** user=u"
    assert redact_dsn("host=h password = secret user=u") == "host=h password = *** user=u"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_dsn("postgresql://h:5432/db") == "postgresql://h:5432/db"


# --- the queue's listeners -------------------------------------------------------------------


def test_other_connections_hear_of_items_made_due(postgres_url: str) -> None:
    # A node listens; another merges, retries, hands back, and reclaims: each wakes it, and a
    # claim or an outcome (which makes nothing due) does not.
    listener, writer = PostgresManifest.open(postgres_url), PostgresManifest.open(postgres_url)
    heard: list[float] = []
    woken = threading.Event()
    stop = threading.Event()

    def changed() -> None:
        heard.append(time.monotonic())
        woken.set()

    thread = threading.Thread(
        target=listener.watch_queue, args=(changed, stop), name="listen", daemon=True
    )
    thread.start()
    try:
        assert woken.wait(10), "no call on connecting"  # for what came while not listening

        def wakes(action: Callable[[], object], within: float = 5.0) -> bool:
            woken.clear()
            action()
            return woken.wait(within)

        url = "https://h.example/v/{}.mp4?expire=9999999999"
        records = [Record(str(i), url.format(i), "a", "{}") for i in range(4)]
        assert wakes(lambda: writer.merge(records, "e.json", 1.0))
        assert not wakes(lambda: writer.claim(2.0, 2, 0, owner="n", lease_until=3.0), 1.0)
        assert wakes(lambda: writer.reclaim_lapsed(4.0))
        started, _ = writer.claim(5.0, 2, 0, owner="n", lease_until=99.0)
        assert wakes(lambda: writer.release([started[0].aweme_id], 6.0, owner="n"))
        failed = started[1].aweme_id
        assert not wakes(
            lambda: writer.finish_failed(
                failed, url.format(failed), State.FAILED, "x", 404, 0.0, False, 7.0, owner="n"
            ),
            1.0,
        )
        assert wakes(lambda: writer.retry(["failed"], [], 8.0))
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        writer.close()
    assert not thread.is_alive(), "the listener did not stop"


def test_node_reports_of_migration_4_are_read_before_and_after_instances_come(
    postgres_url: str,
) -> None:
    from ingestd.store import postgres

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(postgres._MIGRATIONS_TABLE)
        for version in range(1, 5):
            conn.execute(postgres._MIGRATIONS[version])
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        conn.execute("INSERT INTO nodes VALUES ('edge-a', 100.0, 'running', 1, 10, 2.0)")
    old = NodeReport("edge-a", 100.0, "running", 1, 10, 2.0, "")
    reader = PostgresManifest.open(postgres_url, readonly=True)
    try:
        assert reader.node_reports() == [old]
    finally:
        reader.close()
    m = PostgresManifest.open(postgres_url)  # migrated: the report of an older daemon is free
    try:
        assert m.node_reports() == [old]
        assert m.report_node(NodeReport("edge-a", 101.0, "running", 0, 0, 0.0, "run-1")) is None
    finally:
        m.close()
