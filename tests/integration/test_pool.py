"""The download pool's scheduling on a real manifest, with scripted transfers.

The pool's only contract with a transfer is `attempt(item, log) -> Published | Failure`; these
tests script that outcome to reach the pool's own failure paths (pauses, manifest errors,
stopped transfers, host probes, links) that a real server reaches only by chance. Downloads
themselves are tested end to end against real servers (tests/e2e).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import structlog

from ingestd.config import Config
from ingestd.metrics import Metrics
from ingestd.policy.extract import Record
from ingestd.policy.retry import Failure, Reason
from ingestd.service import pool as pool_module
from ingestd.service.db import Db
from ingestd.service.pool import LOW_SPACE, DownloadPool
from ingestd.service.transfer import Published
from ingestd.store.manifest import Completion, Item, ManifestError

Attempt = Callable[[Item], Awaitable[Any]]


class FlakyDb(Db):
    """The real manifest; `fail[name] = n` makes the next n calls of that method fail as a
    locked or full SQLite file would. Counts every call."""

    calls: collections.Counter[str]
    fail: dict[str, int]
    slow: dict[str, float]  # seconds a method's call waits first (a busy manifest thread)

    async def run(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(method, "__name__", str(method))
        self.calls[name] += 1
        if self.fail.get(name):
            self.fail[name] -= 1
            raise ManifestError(f"injected: {name}")
        if self.slow.get(name):
            await asyncio.sleep(self.slow[name])
        return await super().run(method, *args, **kwargs)


class Scripted:
    """Transfers whose outcome a test chooses; records what ran and what was cancelled."""

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt
        self.started: list[str] = []
        self.running: collections.Counter[str] = collections.Counter()
        self.most_at_once: collections.Counter[str] = collections.Counter()
        self.cancelled = 0

    async def attempt(self, item: Item, log: Any) -> Any:
        self.started.append(item.aweme_id)
        self.running[item.aweme_id] += 1
        self.most_at_once[item.aweme_id] = max(
            self.most_at_once[item.aweme_id], self.running[item.aweme_id]
        )
        try:
            return await self._attempt(item)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running[item.aweme_id] -= 1

    def reconfigure(self, config: Config) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.logged: list[dict[str, Any]] = []
        self.log = structlog.wrap_logger(
            None, processors=[self._keep], context_class=dict, cache_logger_on_first_use=False
        )

    def _keep(self, _: Any, __: str, event: dict[str, Any]) -> Any:
        self.names.append(str(event["event"]))
        self.logged.append(event)
        raise structlog.DropEvent

    def count(self, name: str) -> int:
        return self.names.count(name)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.logged if event["event"] == name]


def records(n: int, host: str = "cdn.example.com", prefix: int = 7) -> list[Record]:
    return [
        Record(str(prefix * 10**18 + i), f"https://{host}/v/{i}.mp4", "cats", "{}")
        for i in range(n)
    ]


async def setup(
    tmp: Path,
    recs: list[Record],
    attempt: Attempt,
    *,
    clock: Callable[[], float] = time.time,
    **config: Any,
) -> tuple[DownloadPool, FlakyDb, Scripted, Events]:
    base = await Db.open(tmp / "manifest.sqlite3")
    db = FlakyDb(base._executor, base.manifest)
    db.calls, db.fail, db.slow = collections.Counter(), {}, {}
    await db.run(db.manifest.merge, recs, "extract_1.json", time.time())
    settings = {"concurrency": 8, "min_free_bytes": 0, "backoff_base": 0.1, "backoff_max": 0.5}
    cfg = Config(data_dir=tmp, state_dir=tmp, **{**settings, **config})
    cfg.media_dir.mkdir(parents=True, exist_ok=True)
    events = Events()
    pool = DownloadPool(cfg, db, None, events.log, Metrics(), clock=clock)  # type: ignore[arg-type]
    scripted = Scripted(attempt)
    pool._transfers = scripted  # type: ignore[assignment]
    return pool, db, scripted, events


async def states(db: Db) -> dict[tuple[str, int], int]:
    def query() -> dict[tuple[str, int], int]:
        rows = db.manifest._conn.execute(
            "SELECT state, held, count(*) FROM items GROUP BY state, held"
        )
        return {(state, held): n for state, held, n in rows}

    return await asyncio.get_running_loop().run_in_executor(db._executor, query)


async def run_for(pool: DownloadPool, seconds: float) -> None:
    runner = asyncio.create_task(pool.run())
    await asyncio.sleep(seconds)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_an_error_on_one_file_fails_that_item_and_pauses_nothing(tmp_path: Path) -> None:
    bad = str(7 * 10**18)
    folder = tmp_path / "media_assets" / "cats"
    folder.mkdir(parents=True)

    async def attempt(item: Item) -> Any:
        if item.aweme_id == bad:  # a .part left by a run as another user: EACCES on it alone
            path = folder / f"{bad}.mp4.part"
            detail = f"Permission denied: {path}"
            return Failure(Reason.LOCAL_IO, detail=detail, errno=errno.EACCES, path=str(path))
        await asyncio.sleep(3600)
        return None

    pool, db, scripted, events = await setup(tmp_path, records(8), attempt, max_attempts=3)
    await run_for(pool, 3.0)
    assert events.count("downloads_paused") == 0
    assert scripted.cancelled == 0, "other transfers were stopped for one file's fault"
    assert scripted.started.count(bad) == 3
    assert (await states(db)).get(("failed", 0)) == 1  # local_io_error, after max_attempts
    await pool.shutdown()


async def test_a_manifest_error_while_starting_strands_nothing(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        await asyncio.sleep(0.05)
        return Failure(Reason.NOT_FOUND, 404)

    pool, db, _, _ = await setup(tmp_path, records(40), attempt, concurrency=4)
    db.fail["start_held"] = 1
    db.fail["release"] = 0
    runner = asyncio.create_task(pool.run())
    deadline = time.monotonic() + 20
    while (await states(db)).get(("failed", 0)) != 40 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert await states(db) == {("failed", 0): 40}
    assert {h: s.in_flight for h, s in pool._hosts._hosts.items()} == {"cdn.example.com:443": 0}


async def test_a_host_whose_slots_are_full_is_not_polled(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        await asyncio.sleep(3600)

    pool, db, scripted, _ = await setup(
        tmp_path, records(2000), attempt, concurrency=8, per_host_concurrency=2
    )
    db.calls.clear()
    await run_for(pool, 3.0)
    assert len(scripted.started) == 2
    writes = db.calls["claim"] + db.calls["release"]
    assert writes <= 12, f"{dict(db.calls)}: the queue is polled, not waited on"
    await pool.shutdown()


async def test_a_stop_never_runs_an_item_twice_and_hands_each_back(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)  # the checkpoint: fsync, manifest write
            raise

    pool, db, scripted, _ = await setup(tmp_path, records(6), attempt, concurrency=4)
    runner = asyncio.create_task(pool.run())
    await asyncio.sleep(0.5)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()
    assert max(scripted.most_at_once.values()) == 1
    assert await states(db) == {("pending", 0): 6}
    rows = await asyncio.get_running_loop().run_in_executor(
        db._executor,
        lambda: db.manifest._conn.execute("SELECT max(attempts) FROM items").fetchone(),
    )
    assert rows[0] == 0, "a clean stop cost an attempt"


async def test_requests_never_sent_say_nothing_about_a_host_that_is_down(tmp_path: Path) -> None:
    now = int(time.time())
    expired = [
        Record(
            str(6 * 10**18 + i), f"https://cdn.example.com/e{i}.mp4?x-expires={now - 10}", "c", "{}"
        )
        for i in range(6)
    ]

    async def attempt(item: Item) -> Any:
        if "x-expires" in item.url:
            return Failure(Reason.URL_EXPIRED)
        await asyncio.sleep(0.01)
        return Failure(Reason.UNREACHABLE, detail="connection refused")

    pool, _, scripted, events = await setup(
        tmp_path, expired + records(40), attempt, host_backoff_max=2.0, backoff_base=0.5
    )
    await run_for(pool, 5.0)
    assert events.count("host_unavailable") == 1
    assert events.count("host_recovered") == 0
    tries = [i for i in scripted.started if not i.startswith("6")]
    assert len(tries) <= 8 + 6, f"{len(tries)} requests to a host that is down"
    await pool.shutdown()


async def test_a_link_that_keeps_failing_does_not_hold_up_the_others(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        raise AssertionError("nothing is downloaded")

    ids = [str(7 * 10**18 + i) for i in (1, 2)]
    recs = [Record(i, f"https://cdn.example.com/{i}.mp4", "cats", "{}") for i in ids]
    pool, db, _, events = await setup(tmp_path, recs, attempt)
    now = time.time()
    await db.run(db.manifest.claim, now, 2, 0)
    done = [Completion(i, 7, "0" * 64, f"cats/{i}.mp4", ("cats",), now) for i in ids]
    await db.run(db.manifest.complete_many, done)
    dogs = [Record(i, f"https://cdn.example.com/{i}.mp4", "dogs", "{}") for i in ids]
    await db.run(db.manifest.merge, dogs, "extract_2.json", now)
    media = tmp_path / "media_assets"
    (media / "cats").mkdir(parents=True)
    (media / "cats" / f"{ids[1]}.mp4").write_bytes(b"video 2")  # video 1 was deleted by hand
    await pool.relink()
    assert (media / "dogs" / f"{ids[1]}.mp4").read_bytes() == b"video 2"
    assert events.count("link_failed") == 1 and events.count("video_linked") == 1
    await pool.relink()  # parked: not tried again before its backoff
    assert events.count("link_failed") == 1


async def test_a_busy_host_does_not_starve_another(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        if "://b.example" in item.url:
            return Failure(Reason.NOT_FOUND, 404)
        await asyncio.sleep(3600)
        return None

    recs = records(2000, "a.example") + records(10, "b.example", prefix=8)
    pool, _, scripted, _ = await setup(tmp_path, recs, attempt, per_host_concurrency=2)
    await run_for(pool, 2.0)
    assert sum(i.startswith("8") for i in scripted.started) == 10
    await pool.shutdown()


async def test_a_cooling_host_does_not_starve_another(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        if "://b.example" in item.url:
            return Failure(Reason.NOT_FOUND, 404)
        await asyncio.sleep(0.01)
        return Failure(Reason.UNREACHABLE, detail="connection refused")

    recs = records(2000, "a.example") + records(10, "b.example", prefix=8)
    pool, db, scripted, events = await setup(tmp_path, recs, attempt, host_backoff_max=60.0)
    await run_for(pool, 3.0)
    assert sum(i.startswith("8") for i in scripted.started) == 10
    assert events.count("host_unavailable") == 1
    # Its first 8, then one probe per cooldown: doubling from 0.05-0.1 s (backoff_base 0.1),
    # at least 0.05 + 0.1 + 0.2 + 0.4 + 0.8 = 1.55 s for five; a sixth would need 3.15 s.
    assert len([i for i in scripted.started if i.startswith("7")]) <= 8 + 5
    assert (await states(db)).get(("failed", 0)) == 10
    await pool.shutdown()


async def test_failures_sharing_one_folder_share_one_probe_and_pause_nothing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "media_assets" / "cats"
    folder.mkdir(parents=True)

    async def attempt(item: Item) -> Any:  # every .part is owned by another user
        path = folder / f"{item.aweme_id}.mp4.part"
        return Failure(
            Reason.LOCAL_IO, detail=f"denied: {path}", errno=errno.EACCES, path=str(path)
        )

    pool, db, _, events = await setup(tmp_path, records(16), attempt, max_attempts=2)
    await run_for(pool, 3.0)
    assert events.count("downloads_paused") == 0
    assert (await states(db)).get(("failed", 0)) == 16
    assert list(folder.iterdir()) == []  # no probe file left behind


async def test_a_stop_during_a_claim_hands_back_what_it_claimed(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        await asyncio.sleep(3600)
        return None

    pool, db, _, _ = await setup(tmp_path, records(20), attempt, concurrency=4)
    db.slow["claim"] = 0.5
    runner = asyncio.create_task(pool.run())
    await asyncio.sleep(0.2)  # the first claim is on its way
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()
    assert await states(db) == {("pending", 0): 20}


async def test_relinking_ends_however_many_links_fail_and_survives_a_manifest_error(
    tmp_path: Path,
) -> None:
    async def attempt(item: Item) -> Any:
        raise AssertionError("nothing is downloaded")

    n = 1200  # more than the parked items remembered
    recs = records(n)
    pool, db, _, events = await setup(tmp_path, recs, attempt)
    now = time.time()
    await db.run(db.manifest.claim, now, n, 0)
    done = [
        Completion(r.aweme_id, 7, "0" * 64, f"cats/{r.aweme_id}.mp4", ("cats",), now) for r in recs
    ]
    await db.run(db.manifest.complete_many, done)
    dogs = [Record(r.aweme_id, r.url, "dogs", "{}") for r in recs]
    await db.run(db.manifest.merge, dogs, "extract_2.json", now)
    media = tmp_path / "media_assets"
    (media / "cats").mkdir(parents=True)
    (media / "dogs").write_text("a file where a folder should be")
    await asyncio.wait_for(pool.relink(), 30)  # one finite pass
    assert events.count("link_failed") == n
    (media / "dogs").unlink()
    (media / "cats" / f"{recs[0].aweme_id}.mp4").write_bytes(b"v")
    pool._relink_parked.clear()
    db.fail["pending_relinks"] = 1
    pool.merged()
    await run_for(pool, 7.0)  # the failed pass is tried again, not dropped
    assert (media / "dogs" / f"{recs[0].aweme_id}.mp4").exists()


async def test_a_link_that_keeps_failing_is_tried_again_later_each_time(tmp_path: Path) -> None:
    # Each pass that finds its parked item due tries it again; a failure then counts on from
    # the last, so the wait keeps growing up to backoff_max instead of starting over.
    async def attempt(item: Item) -> Any:
        raise AssertionError("nothing is downloaded")

    (rec,) = records(1)
    pool, db, _, events = await setup(tmp_path, [rec], attempt, backoff_base=1.0, backoff_max=60)
    now = time.time()
    await db.run(db.manifest.claim, now, 1, 0)
    done = Completion(rec.aweme_id, 7, "0" * 64, f"cats/{rec.aweme_id}.mp4", ("cats",), now)
    await db.run(db.manifest.complete_many, [done])
    await db.run(db.manifest.merge, [Record(rec.aweme_id, rec.url, "dogs", "{}")], "e2.json", now)
    media = tmp_path / "media_assets"
    (media / "cats").mkdir(parents=True)
    (media / "dogs").write_text("a file where a folder should be")
    for failures in (1, 2, 3, 4):
        await asyncio.wait_for(pool.relink(), 30)
        assert pool._relink_parked[rec.aweme_id][0] == failures
        assert events.named("link_failed")[-1]["failures"] == failures
        pool._relink_parked[rec.aweme_id] = (failures, 0.0)  # its wait is over
    delays = [e["retry_in_s"] for e in events.named("link_failed")]
    assert delays[-1] >= 4.0, delays  # 1 s doubled three times, less up to half in jitter
    (media / "dogs").unlink()
    (media / "cats" / f"{rec.aweme_id}.mp4").write_bytes(b"v")
    await asyncio.wait_for(pool.relink(), 30)
    assert (media / "dogs" / f"{rec.aweme_id}.mp4").exists()
    assert pool._relink_parked == {}  # linked: nothing left to remember


def _published(item: Item) -> Published:
    return Published(PurePosixPath(f"cats/{item.aweme_id}.mp4"), 10, "ab" * 32, False, ("cats",))


async def _until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_published_file_frees_its_slot_before_its_done_is_written(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        return _published(item)

    pool, db, scripted, events = await setup(tmp_path, records(3), attempt, concurrency=1)
    db.slow["complete_many"] = 0.5  # a busy manifest thread
    runner = asyncio.create_task(pool.run())
    try:
        # With one slot, a second transfer starts while the first one's done is unwritten.
        assert await _until(lambda: len(scripted.started) >= 2, 0.4)
        assert (await states(db)).get(("done", 0), 0) == 0
        assert events.count("download_completed") == 0  # said once written, not before
        assert await _until(lambda: _done(db, 3), 10), await states(db)
        # Logged by the write's own callback, which may run a loop turn after the query saw it.
        assert await _until(lambda: events.count("download_completed") == 3, 5)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await pool.shutdown()


async def _done(db: Db, n: int) -> bool:
    return (await states(db)).get(("done", 0), 0) == n


async def test_outcomes_the_manifest_refuses_wait_bounded_and_are_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "UNRECORDED_MAX", 2)

    async def attempt(item: Item) -> Any:
        return _published(item)

    pool, db, scripted, events = await setup(tmp_path, records(20), attempt, concurrency=1)
    db.fail["complete_many"] = 10**6  # locked, as by another writer
    runner = asyncio.create_task(pool.run())
    try:
        await asyncio.sleep(2.0)
        # One in its slot, waiting; past the bound nothing more is downloaded.
        assert len(scripted.started) <= 1 + 2 + 1, scripted.started
        assert events.count("download_bookkeeping_failed") == 1
        assert events.count("download_completed") == 0
        db.fail["complete_many"] = 0  # the manifest takes writes again
        assert await _until(lambda: _done(db, 20), 30), await states(db)
        assert events.count("download_completed") == 20
        assert len(scripted.started) == 20  # nothing downloaded twice
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await pool.shutdown()


async def test_a_stop_writes_the_done_of_every_published_file(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        return _published(item)

    pool, db, scripted, _ = await setup(tmp_path, records(5), attempt, concurrency=5)
    db.slow["complete_many"] = 0.3
    runner = asyncio.create_task(pool.run())
    assert await _until(lambda: len(scripted.started) == 5, 5)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()  # within STOP_WAIT the outstanding writes go in
    assert await states(db) == {("done", 0): 5}


# --- claims and leases ------------------------------------------------------------------------


class Clock:
    """Wall time a test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def item_rows(db: Db) -> dict[str, tuple[Any, ...]]:
    """Per item: state, held, attempts, owner, lease_until."""

    def query() -> dict[str, tuple[Any, ...]]:
        rows = db.manifest._conn.execute(
            "SELECT aweme_id, state, held, attempts, owner, lease_until FROM items"
        )
        return {row[0]: tuple(row[1:]) for row in rows}

    return await asyncio.get_running_loop().run_in_executor(db._executor, query)


async def until_started(scripted: Scripted, n: int) -> None:
    async with asyncio.timeout(10):
        while sum(scripted.running.values()) < n:
            await asyncio.sleep(0.01)


async def leased_pool(
    tmp_path: Path, n: int, attempt: Attempt
) -> tuple[DownloadPool, FlakyDb, Scripted, Events, Clock, asyncio.Task[None]]:
    clock = Clock()
    pool, db, scripted, events = await setup(
        tmp_path, records(n), attempt, clock=clock, concurrency=2, node_name="n1", lease_seconds=30
    )
    runner = asyncio.create_task(pool.run())
    await until_started(scripted, 2)
    return pool, db, scripted, events, clock, runner


async def test_claims_carry_the_node_and_are_renewed_while_they_run(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def attempt(item: Item) -> Any:
        await gate.wait()
        return Failure(Reason.NOT_FOUND, 404)

    pool, db, _, events, clock, runner = await leased_pool(tmp_path, 4, attempt)
    claimed_at = clock.now
    rows = await item_rows(db)
    running = sorted(i for i, row in rows.items() if row[0] == "active")
    ahead = sorted(i for i, row in rows.items() if row[1] == 1)
    assert len(running) == 2 and len(ahead) == 2  # two run, two claimed ahead
    assert {rows[i][3:] for i in running + ahead} == {("n1", claimed_at + 30)}
    clock.now += 11
    await pool.renew_claims()
    rows = await item_rows(db)
    assert {rows[i][3:] for i in running + ahead} == {("n1", clock.now + 30)}
    assert events.count("claims_lost") == events.count("claims_reclaimed") == 0
    gate.set()
    async with asyncio.timeout(10):
        while any(row[0] in ("pending", "active") for row in (await item_rows(db)).values()):
            await asyncio.sleep(0.02)
    assert {row[3:] for row in (await item_rows(db)).values()} == {(None, None)}
    assert pool._leases == {}, "leases kept for items no longer claimed"
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()


async def test_a_claim_another_node_took_stops_its_transfer_and_writes_nothing(
    tmp_path: Path,
) -> None:
    async def attempt(item: Item) -> Any:
        await asyncio.sleep(3600)

    pool, db, scripted, events, clock, runner = await leased_pool(tmp_path, 2, attempt)
    first = scripted.started[0]
    # This node stalled past its lease: another reclaimed the item and claimed it.
    lapsed = await db.run(db.manifest.reclaim_lapsed, clock.now + 31)
    assert {c.aweme_id for c in lapsed} == set(scripted.started)
    taken = await db.run(db.manifest.claim, clock.now + 31, 1, 0, owner="n2", lease_until=1e12)
    assert [i.aweme_id for i in taken[0]] == [first]
    clock.now += 10
    await pool.renew_claims()
    async with asyncio.timeout(10):
        while scripted.cancelled < 2:
            await asyncio.sleep(0.01)
    (lost,) = events.named("claims_lost")
    assert (lost["count"], lost["stopped"], lost["owner"]) == (2, 2, "n1")
    rows = await item_rows(db)
    assert rows[first][0] == "active" and rows[first][3:] == ("n2", 1e12), "n2's claim changed"
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()
    assert (await item_rows(db))[first][3] == "n2"


async def test_a_dead_nodes_lapsed_claims_come_back_to_the_queue(tmp_path: Path) -> None:
    async def attempt(item: Item) -> Any:
        await asyncio.sleep(3600)

    pool, db, scripted, events, clock, runner = await leased_pool(tmp_path, 2, attempt)
    others = [
        Record(str(9 * 10**18 + i), f"https://cdn.example.com/w/{i}.mp4", "dogs", "{}")
        for i in range(2)
    ]
    await db.run(db.manifest.merge, others, "extract_2.json", clock.now)
    await db.run(db.manifest.claim, clock.now, 1, 1, owner="dead", lease_until=clock.now - 1)
    await pool.renew_claims()
    (reclaimed,) = events.named("claims_reclaimed")
    assert (reclaimed["count"], reclaimed["in_flight"], reclaimed["owners"]) == (2, 1, {"dead": 2})
    rows = await item_rows(db)
    assert sorted(rows[r.aweme_id][:4] for r in others) == [
        ("pending", 0, 0, None),  # held: no attempt was spent
        ("pending", 0, 1, None),  # running when its node died: as after a crash
    ]
    assert events.count("claims_lost") == 0 and scripted.cancelled == 0
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()


async def test_without_the_manifest_transfers_run_until_their_leases_are_at_risk(
    tmp_path: Path,
) -> None:
    async def attempt(item: Item) -> Any:
        await asyncio.sleep(3600)

    pool, db, scripted, events, clock, runner = await leased_pool(tmp_path, 2, attempt)
    db.fail["renew_leases"] = 3
    clock.now += 10  # 20 s of lease left, a renewal every 10 s: nothing is at risk yet
    await pool.renew_claims()
    assert scripted.cancelled == 0 and events.count("lease_renewal_failed") == 1
    clock.now += 10  # 10 s left: the lease could end before the next pass
    await pool.renew_claims()
    async with asyncio.timeout(10):
        while scripted.cancelled < 2:
            await asyncio.sleep(0.01)
    (risk,) = events.named("claims_at_risk")
    assert (risk["count"], risk["stopped"]) == (2, 2)
    clock.now += 1
    await pool.renew_claims()  # still failing: logged once per outage, stopped once
    assert events.count("lease_renewal_failed") == 1 and events.count("claims_at_risk") == 1
    await pool.renew_claims()  # the manifest is back
    assert events.count("leases_renewed") == 1
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()
    # Handed back as the transfers stopped (the manifest took that write): no attempt spent.
    assert {row[:4] for row in (await item_rows(db)).values()} == {("pending", 0, 0, None)}


async def test_an_outcome_for_a_claim_lost_meanwhile_is_not_written(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def attempt(item: Item) -> Any:
        await gate.wait()
        if item.aweme_id == scripted.started[0]:
            return Published(
                PurePosixPath(f"cats/{item.aweme_id}.mp4"), 10, "0" * 64, False, ("cats",)
            )
        return Failure(Reason.NOT_FOUND, 404)

    pool, db, scripted, events, clock, runner = await leased_pool(tmp_path, 2, attempt)
    await db.run(db.manifest.reclaim_lapsed, clock.now + 31)
    taken, _ = await db.run(db.manifest.claim, clock.now + 31, 2, 0, owner="n2", lease_until=1e12)
    assert len(taken) == 2
    gate.set()
    async with asyncio.timeout(10):
        while events.count("claim_lost") < 2:
            await asyncio.sleep(0.01)
    assert sorted(e["outcome"] for e in events.named("claim_lost")) == ["completed", "failed"]
    # n1's lapsed attempt stays spent, n2's is the second: nothing of n1's outcome is written.
    assert {row[:4] for row in (await item_rows(db)).values()} == {("active", 0, 2, "n2")}
    assert events.count("download_completed") == events.count("download_failed") == 0
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await pool.shutdown()


@pytest.mark.parametrize(("reason", "stops_transfers"), [("disk_full", True), (LOW_SPACE, False)])
async def test_a_pause_another_worker_met_pauses_this_pool_until_its_own_look_clears_it(
    tmp_path: Path, reason: str, stops_transfers: bool
) -> None:
    # workers = N: the main process passes one worker's pause on to the others (pool.pause).
    async def attempt(item: Item) -> Any:
        await asyncio.sleep(3600)

    pool, db, scripted, events = await setup(tmp_path, records(6), attempt, concurrency=2)
    runner = asyncio.create_task(pool.run())
    try:
        await until_started(scripted, 2)
        await pool.pause(reason, "told by the node")
        (paused,) = events.named("downloads_paused")
        assert (paused["reason"], paused["detail"]) == (reason, "told by the node")
        assert scripted.cancelled == (2 if stops_transfers else 0)
        # The media folder takes files: this pool's own look (after 1 s) ends the pause.
        async with asyncio.timeout(10):
            while not events.count("downloads_resumed"):
                await asyncio.sleep(0.05)
        await until_started(scripted, 2)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await pool.shutdown()
    rows = await asyncio.get_running_loop().run_in_executor(
        db._executor,
        lambda: db.manifest._conn.execute("SELECT max(attempts) FROM items").fetchone(),
    )
    assert rows[0] == 0, "a pause cost an attempt"


async def test_a_cooling_host_is_probed_when_its_cooldown_ends(tmp_path: Path) -> None:
    # Cooldowns of 0.05-0.8 s (backoff_base 0.1, doubling): each probe goes out when the
    # cooldown before it ends, not at the pool's next look a PROBE_WAIT later.
    host = "a.example:443"
    starts: list[float] = []
    ends: list[float] = []  # when the cooldown that a failure started or grew ends

    async def attempt(item: Item) -> Any:
        starts.append(time.monotonic())
        await asyncio.sleep(0.01)
        return Failure(Reason.UNREACHABLE, detail="connection refused")

    pool, _, _, _ = await setup(tmp_path, records(200, "a.example"), attempt, concurrency=1)
    finished = pool._hosts.finished

    def noted(*args: Any, **kwargs: Any) -> Any:
        event = finished(*args, **kwargs)
        ends.append(time.monotonic() + max(pool._hosts.cooling_until(host) - time.time(), 0.0))
        return event

    pool._hosts.finished = noted  # type: ignore[method-assign]
    await run_for(pool, 2.5)
    await pool.shutdown()
    # One transfer at a time: failure k is followed by start k + 1; the second one cools.
    probes = list(zip(ends[1:], starts[2:], strict=False))
    assert len(probes) >= 3, (starts, ends)
    late = [round(start - end, 3) for end, start in probes if start - end > 0.25]
    assert not late, f"probes this late after their cooldown ended: {late}"
