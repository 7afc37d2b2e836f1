"""Several nodes (real daemon processes, each with its own data and state dir and node name)
drain one PostgreSQL manifest: every item is fetched by exactly one of them, each publishes
into its own data dir, and the manifest says which node holds each file."""

from __future__ import annotations

import collections
import datetime
import glob
import random
import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from ingestd.policy.lease import renewal_interval
from ingestd.store.base import NODE_SILENT_S
from ingestd.store.postgres import PostgresManifest
from support.extracts import make_record, new_id, origin_records
from support.origin import OriginServer
from support.postgres import PostgresCluster

ITEMS = 3000
SIZE = 64 * 1024  # "slow": 16 KiB every 50 ms, so that a killed node has items in flight
DB_OUTAGE_S = 30.0  # how long the database is down under a running node, as issue 12 asks
# A stop in an outage must end well within systemd's TimeoutStopSec (20 s in systemd/).
STOP_BUDGET_S = 12.0
FLEET_SIZE = 4 * 1024  # at full speed: 3,000 of them keep three nodes busy for seconds
SKEW_S = 90  # how far behind the other node's clock is: far past a third of any lease here


def test_three_nodes_fetch_every_item_exactly_once(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    records, names = origin_records(origin, prefix, random.Random(3), ITEMS, "cats", FLEET_SIZE)
    nodes = [
        daemon_factory(manifest_url=postgres_url, node_name=f"edge-{n}", concurrency=16)
        for n in "abc"
    ]
    for node in nodes:
        node.start()
    nodes[0].drop_atomic("extract_fleet.json", records)  # one node's raw/ folder only
    merged = nodes[0].wait_for("extract_merged", timeout=30)
    for node in nodes[1:]:  # woken by the merge's notification, not by their idle look (5 s)
        started = node.wait_for("download_started", timeout=30)
        assert _seconds(started) - _seconds(merged) < 2.5, (merged, started)
    store = PostgresManifest.open(postgres_url)
    try:
        deadline = time.monotonic() + 60
        while store.counts().items.get("done", 0) < ITEMS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.counts().items.get("done") == ITEMS
    finally:
        store.close()
    with psycopg.connect(postgres_url) as db:  # aweme_id: the node holding its file
        done = dict(db.execute("SELECT aweme_id, node FROM items").fetchall())
    assert set(done) == set(names)
    for node in nodes:
        node.terminate()
    # Answers, not finished sends: the origin may still be sending its END_STREAM when a
    # node, holding all the bytes, has published the file and been stopped.
    wanted = set(names.values())  # the origin is the session's: other tests' names too
    gets = collections.Counter(
        r.name for r in origin.requests() if r.status == 200 and r.name in wanted
    )
    assert set(gets) == wanted, "an item was never fetched"
    assert set(gets.values()) == {1}, "an item was fetched twice"
    by_node = {f"edge-{n}": node for n, node in zip("abc", nodes, strict=True)}
    assert set(done.values()) <= set(by_node)
    for aweme_id, holder in done.items():
        for name, node in by_node.items():
            path = node.media_path("cats", aweme_id)
            assert path.exists() == (name == holder), (aweme_id, holder, name)
        assert by_node[holder].media_path("cats", aweme_id).read_bytes() == origin.content(
            names[aweme_id], FLEET_SIZE
        )
    # Each node logged completions for the files it holds, and only those.
    for name, node in by_node.items():
        logged = {e["aweme_id"] for e in node.events("download_completed")}
        assert logged == {i for i, holder in done.items() if holder == name}
    assert len(set(done.values())) == 3, "a node did no work"


def test_the_end_of_a_queue_goes_to_free_slots_not_held_ahead_by_one_node(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    # Ten items of about a second each for two nodes of four slots: the first to claim
    # starts four; were it to hold a whole round more ahead, the other would get two and
    # idle while those four waited for the first one's slots.
    rng = random.Random(6)
    records = []
    for _ in range(10):
        aweme_id = new_id(rng)
        url = origin.url(f"{prefix}-{aweme_id}", mode="slow", size=SIZE, delay=0.25)
        records.append(make_record(aweme_id, url, "cats", SIZE))
    nodes = _two_nodes(daemon_factory, postgres_url, concurrency=4)
    nodes[0].drop_atomic("extract_tail.json", records)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = db.execute("SELECT node, count(*) FROM items WHERE state = 'done' GROUP BY node")
            shares = dict(done.fetchall())
            if sum(shares.values()) == len(records):
                break
            time.sleep(0.2)
    assert sum(shares.values()) == len(records), shares
    assert max(shares.values()) <= 6, shares


def test_status_shows_each_node_its_transfers_and_bytes_and_which_stopped(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    # Transfers of about 10 s each keep both nodes busy past a report or two (every 5 s).
    records, _ = origin_records(origin, prefix, random.Random(8), 8, "cats", 50 * SIZE, mode="slow")
    nodes = _two_nodes(daemon_factory, postgres_url, concurrency=2)
    nodes[0].drop_atomic("extract_fleet.json", records)

    def busy(fleet: dict[str, Any]) -> bool:
        return all(
            fleet.get(f"edge-{n}", {}).get("state") == "running"
            and fleet[f"edge-{n}"]["in_flight"] == 2
            and fleet[f"edge-{n}"]["bytes_in_flight"] > 0
            for n in "ab"
        )

    fleet = _fleet_until(nodes[1], busy, "both nodes reported two transfers with bytes")
    assert all(f["rate_bytes_per_s"] > 0 for f in fleet.values()), fleet
    nodes[1].terminate()
    fleet = _fleet_until(nodes[0], lambda f: f["edge-b"]["state"] == "stopped", "edge-b stopped")
    assert fleet["edge-b"]["in_flight"] == 0 and fleet["edge-a"]["state"] == "running"
    table = nodes[0].cli("status")
    assert table.returncode == 0, table.stderr
    assert re.search(r"edge-a +running .* 2 +[0-9.]+ [KM]iB", table.stdout), table.stdout
    assert re.search(r"edge-b +stopped", table.stdout), table.stdout
    nodes[0].terminate()


def _two_nodes(daemon_factory: Any, postgres_url: str, concurrency: int) -> list[Any]:
    """Nodes edge-a and edge-b on one database, started."""
    nodes = [
        daemon_factory(manifest_url=postgres_url, node_name=f"edge-{n}", concurrency=concurrency)
        for n in "ab"
    ]
    for node in nodes:
        node.start()
    return nodes


def _fleet_until(node: Any, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """`status --json`'s fleet, read again until `done` holds of it (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        fleet: dict[str, Any] = node.status_json()["fleet"]
        if done(fleet):
            return fleet
        assert time.monotonic() < deadline, f"not seen in status: {what}: {fleet}"
        time.sleep(0.5)


@pytest.mark.also_workers
def test_a_node_killed_midway_its_items_are_taken_over_and_only_they_fetched_twice(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    # Three nodes of four slots, 36 transfers of 2 s: three rounds. edge-a is killed (kill -9,
    # workers too, as when its host dies) in the middle of its first round.
    size = 10 * SIZE
    records, names = origin_records(origin, prefix, random.Random(4), 36, "cats", size, "slow")
    lease = 3.0
    nodes = [
        daemon_factory(
            manifest_url=postgres_url, node_name=f"edge-{n}", concurrency=4, lease_seconds=lease
        )
        for n in "abc"
    ]
    for node in nodes:
        node.start()
    victim, survivors = nodes[0], nodes[1:]
    victim.drop_atomic("extract_kill.json", records)
    with psycopg.connect(postgres_url, autocommit=True) as db:

        def victims() -> set[str]:
            query = "SELECT aweme_id FROM items WHERE state = 'active' AND owner ^@ 'edge-a'"
            return {aweme_id for (aweme_id,) in db.execute(query).fetchall()}

        def receiving() -> bool:  # edge-a's four transfers have bytes coming, not just started
            ids = victims()
            sent = [[r.bytes_sent for r in origin.requests_for(names[i])] for i in ids]
            return len(ids) == 4 and all(any(sent_) for sent_ in sent)

        victim.wait_until(receiving, "edge-a's four transfers under way", timeout=30)
        victim.kill(whole_node=True)
        killed_at = time.time()  # as the events' timestamps
        in_flight = victims()  # as edge-a left them
    assert in_flight, "nothing was in flight on the killed node"

    def reclaimed() -> list[dict[str, Any]]:
        return [e for node in survivors for e in node.events("claims_reclaimed")]

    survivors[0].wait_until(
        lambda: sum(e["in_flight"] for e in reclaimed()) >= len(in_flight),
        "the killed node's transfers taken over",
        timeout=lease + renewal_interval(lease) + 5.0,  # the lease, its last renewal, and a few s
        detail=reclaimed,
    )
    taken_over = min(_seconds(e) for e in reclaimed()) - killed_at
    assert taken_over >= lease - renewal_interval(lease) - 0.5, "before the lease could end"
    # The node's, or its workers' (edge-a/1, edge-a/2); an attempt for each one in flight.
    assert {o.split("/")[0] for e in reclaimed() for o in e["owners"]} == {"edge-a"}
    assert sum(e["in_flight"] for e in reclaimed()) == len(in_flight), (reclaimed(), in_flight)
    survivors[0].wait_until(
        lambda: sum(len(n.events("download_completed")) for n in nodes) >= len(records),
        "every item completed",
        timeout=60,
    )
    store = PostgresManifest.open(postgres_url)
    try:
        assert store.counts().items.get("done") == len(records)
        assert store.in_flight_by_owner() == {}
        for aweme_id in in_flight:  # the killed attempt counts, as after a crash
            item = store.item(aweme_id)
            assert item is not None and item["attempts"] == 2, item
            assert item["node"] in ("edge-b", "edge-c"), item
    finally:
        store.close()
    for node in survivors:
        node.terminate()
    answers = collections.Counter(
        r.name for r in origin.requests() if r.status == 200 and r.name in set(names.values())
    )
    twice = {i for i, name in names.items() if answers[name] == 2}
    assert {answers[name] for name in names.values()} <= {1, 2}, answers
    assert twice and twice <= in_flight, (twice, in_flight)
    holders = {f"edge-{n}": node for n, node in zip("abc", nodes, strict=True)}
    with psycopg.connect(postgres_url) as db:
        for aweme_id, holder in db.execute("SELECT aweme_id, node FROM items").fetchall():
            body = holders[holder].media_path("cats", aweme_id).read_bytes()
            assert body == origin.content(names[aweme_id], size), (aweme_id, holder)


def test_nodes_whose_clocks_disagree_still_agree_on_leases(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    # edge-a's clock is SKEW_S behind (libfaketime): a lease it writes in its own clock has
    # ended by edge-b's before it starts, and edge-b would take its transfers over. Leases and
    # reports are in the manifest's clock, so neither node notices the other's.
    records, names = origin_records(
        origin, prefix, random.Random(9), 4, "cats", 25 * SIZE, mode="slow"
    )  # 5 s each: past a renewal or two of edge-b
    (library,) = glob.glob("/usr/lib/*/faketime/libfaketime.so.1") or [None]
    assert library is not None, "libfaketime is missing (.ci/run installs it)"
    nodes = [
        daemon_factory(
            manifest_url=postgres_url, node_name=f"edge-{n}", concurrency=2, lease_seconds=6
        )
        for n in "ab"
    ]
    nodes[0].extra_env.update(
        LD_PRELOAD=library, FAKETIME=f"-{SKEW_S}s", FAKETIME_DONT_FAKE_MONOTONIC="1"
    )
    nodes[0].start()
    skew = nodes[0].wait_for("clock_skew", timeout=30)
    assert abs(skew["skew_s"] - SKEW_S) < 2, skew
    nodes[0].drop_atomic("extract_skew.json", records)
    nodes[0].wait_for_count("download_started", 2, timeout=30)
    nodes[1].start()
    fleet = _fleet_until(
        nodes[1],
        lambda f: all(f.get(f"edge-{n}", {}).get("state") == "running" for n in "ab"),
        "both nodes running",
    )
    for node in nodes:
        node.wait_until(
            lambda node=node: len(node.events("download_completed")) == 2,
            "two items each",
            timeout=60,
        )
    assert not nodes[1].events("clock_skew"), "edge-b's clock is the database's"
    for node in nodes:
        assert not node.events("claims_reclaimed") and not node.events("claims_lost")
        node.terminate()
    for aweme_id, name in names.items():
        answers = [r for r in origin.requests_for(name) if r.status == 200]
        assert len(answers) == 1, f"{aweme_id} fetched {len(answers)} times; fleet: {fleet}"


def test_a_nodes_name_is_held_by_one_running_daemon(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    # A cloned host with the same node_name would let go of the first one's claims at its
    # start: it is refused while the first runs, and takes the name once its holder is dead.
    records, names = origin_records(origin, prefix, random.Random(10), 4, "cats", 25 * SIZE, "slow")
    first = daemon_factory(manifest_url=postgres_url, node_name="edge-a", concurrency=4)
    # The clone's data dir has the first one's path, as on another host: its own folder is
    # mounted there in a mount namespace of its own (else its data dir would be another's).
    clone = daemon_factory(
        manifest_url=postgres_url, node_name="edge-a", concurrency=4, data_dir=str(first.data_dir)
    )
    mount = f'mount --bind "{clone.data_dir}" "{first.data_dir}" && exec "$@"'
    clone.launcher = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"]
    first.start()
    first.drop_atomic("extract_name.json", records)
    first.wait_for_count("download_started", 4, timeout=30)
    clone.start(wait_ready=False)
    held = clone.wait_for("node_name_held", timeout=30)
    assert held["node"] == "edge-a" and held["wait_s"] > 0, held
    failed = clone.wait_for("daemon_failed", timeout=NODE_SILENT_S)
    assert failed["reason"] == "node_name_in_use" and "edge-a" in failed["error"], failed
    assert clone.proc is not None and clone.proc.wait(10) == 4  # systemd does not restart it
    assert not clone.events("items_recovered") and not clone.events("download_started")
    first.wait_for_count("download_completed", 4, timeout=30)  # its claims were left alone
    assert not first.events("claims_lost")
    # The node's own next run, after a crash, takes its name back at once.
    first.kill(whole_node=True)
    first.start()
    assert not first.events("node_name_held")
    # A host taking the name of one that died waits until it has been silent NODE_SILENT_S.
    first.kill(whole_node=True)
    killed_at = time.monotonic()
    clone.start(timeout=NODE_SILENT_S + 15)
    assert clone.events("node_name_held")
    assert time.monotonic() - killed_at >= NODE_SILENT_S - 6.0  # its last report, 5 s before
    assert first.media_path("cats", next(iter(names))).exists()
    clone.terminate()


def test_nodes_keep_their_transfers_through_a_database_outage(
    daemon_factory: Any, origin: OriginServer, prefix: str, workers: int
) -> None:
    # Two nodes; four transfers of about 15 s, two on each, run into a 30 s outage and finish
    # in it; four more items wait in the queue, to be claimed once the database is back.
    long_size = 75 * SIZE  # "slow": 16 KiB every 50 ms, 15 s
    long, long_names = origin_records(
        origin, f"{prefix}l", random.Random(5), 4, "cats", long_size, mode="slow"
    )
    short, short_names = origin_records(
        origin, f"{prefix}s", random.Random(6), 4, "cats", SIZE, mode="slow"
    )
    sizes = {**dict.fromkeys(long_names, long_size), **dict.fromkeys(short_names, SIZE)}
    names = {**long_names, **short_names}
    # A server of this test's own: stopping the session's would fail other tests.
    with PostgresCluster() as cluster:
        url = cluster.new_database()
        nodes = _two_nodes(daemon_factory, url, concurrency=2)
        nodes[0].drop_atomic("extract_outage_long.json", long)
        for node in nodes:
            node.wait_for_count("download_started", 2, timeout=30)
        nodes[0].drop_atomic("extract_outage_short.json", short)
        nodes[0].wait_for_count("extract_merged", 2, timeout=30)
        cluster.halt()
        down_at = time.monotonic()
        # Transfers go on; their `done` waits for the database, refused once, not per file.
        failed = [node.wait_for("download_bookkeeping_failed", timeout=30) for node in nodes]
        nodes[0].wait_until(
            lambda: all(
                any(node.media_path("cats", i).exists() for node in nodes) for i in long_names
            ),
            "the long transfers published during the outage",
            timeout=DB_OUTAGE_S,
        )
        time.sleep(max(0.0, down_at + DB_OUTAGE_S - time.monotonic()))  # the outage itself
        for node in nodes:
            assert node.events("download_completed") == [], "logged before `done` was written"
            assert node.running, "a node went down with its database"
        cluster.resume()
        nodes[0].wait_until(
            lambda: sum(len(node.events("download_completed")) for node in nodes) == len(names),
            "every item completed",
            timeout=60,
        )
        for node in nodes:
            # Once by the node, or by each of its workers, whose completions wait each on its own.
            assert len(node.events("download_bookkeeping_failed")) <= workers, failed
            assert not node.events("claims_at_risk") and not node.events("claims_lost")
            # The outage is told once by each part that met it, not once per item or per
            # retry: once by the node, its renewals too; its checkpoints, once by each worker.
            for name in ("manifest_error", "lease_renewal_failed"):
                assert len(node.events(name)) <= 1, node.events(name)
            assert len(node.events("checkpoint_failed")) <= workers
            if node.events("manifest_error"):
                node.wait_for("manifest_recovered", timeout=10)
        store = PostgresManifest.open(url)
        try:
            assert store.counts().items.get("done") == len(names)
            assert store.in_flight_by_owner() == {}, "left active or held"
            holders = {aweme_id: store.item(aweme_id) for aweme_id in names}
        finally:
            store.close()
        for node in nodes:
            node.terminate()
    by_node = {"edge-a": nodes[0], "edge-b": nodes[1]}
    for aweme_id, name in names.items():
        item = holders[aweme_id]
        assert item is not None
        body = by_node[str(item["node"])].media_path("cats", aweme_id).read_bytes()
        assert body == origin.content(name, sizes[aweme_id])
        answers = [r for r in origin.requests_for(name) if r.status == 200]
        assert len(answers) == 1, f"{aweme_id} fetched {len(answers)} times"


def test_a_node_stops_in_time_during_a_database_outage(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    # SIGTERM while the database is down (systemctl stop in an outage): the node exits 0
    # within STOP_BUDGET_S, and what it could not write is done by its next run.
    records, names = origin_records(
        origin, prefix, random.Random(7), 6, "cats", 20 * SIZE, mode="slow"
    )
    with PostgresCluster() as cluster:
        url = cluster.new_database()
        node = daemon_factory(manifest_url=url, node_name="edge-a", concurrency=4)
        node.start()
        node.drop_atomic("extract_stop.json", records)
        node.wait_for_count("download_started", 4, timeout=30)
        cluster.halt()
        took = node.terminate(timeout=STOP_BUDGET_S)
        cluster.resume()
        node.start()
        node.wait_until(
            lambda: all(node.media_path("cats", i).exists() for i in names),
            "every item published by the next run",
            timeout=60,
        )
        store = PostgresManifest.open(url)
        try:
            assert store.counts().items.get("done") == len(names), store.counts()
            assert store.in_flight_by_owner().keys() <= {"edge-a"}
        finally:
            store.close()
        node.terminate()
    assert took < STOP_BUDGET_S
    for aweme_id, name in names.items():
        assert node.media_path("cats", aweme_id).read_bytes() == origin.content(name, 20 * SIZE)


def _seconds(event: dict[str, Any]) -> float:
    """An event's timestamp (UTC ISO 8601) in epoch seconds."""
    return datetime.datetime.fromisoformat(str(event["timestamp"])).timestamp()
