"""Claim rate of the manifest under several claiming nodes: what the queue itself can serve.

Each node is a process with its own store connection that does, per item, what the download
pool does around a transfer that takes no time: claim (as many as its free slots, with its
owner and a lease), then write the outcome (complete_many, owner-checked), renewing its leases
every so often. The figure is items claimed and completed per second across the nodes; every
item must be completed exactly once, by one node.

    .venv/bin/python tests/benchmarks/claims.py --nodes 3 --concurrency 64 --items 30000
    .venv/bin/python tests/benchmarks/claims.py --backend sqlite --nodes 2

PostgreSQL runs as the tests' throwaway server (tests/support/postgres.py: a Unix socket,
fsync off), SQLite on a file in --scratch (WAL, synchronous=NORMAL, as the daemon has it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent / "daemon")]

from ingestd.policy.extract import Record  # noqa: E402
from ingestd.store.base import Completion, ManifestStore  # noqa: E402
from ingestd.store.open import open_manifest  # noqa: E402

LEASE = 120.0
RENEW_EVERY = 200  # claims between two lease renewals (the daemon renews every 40 s)


def seed(location: str | Path, items: int) -> None:
    store = open_manifest(location)
    try:
        url = "https://cdn.example.com/v/{}.mp4?expire=9999999999"
        records = [
            Record(f"74{i:017d}", url.format(i), f"topic {i % 7}", "{}") for i in range(items)
        ]
        store.merge(records, "extract_1.json", time.time(), sha256="ab" * 32)
    finally:
        store.close()


def node(location: str | Path, name: str, concurrency: int, start: Any, out: Any) -> None:
    """One node: claim up to `concurrency` at a time and complete them, until none is due."""
    store: ManifestStore = open_manifest(location)
    done = refused = claims = 0
    latencies: list[float] = []
    start.wait()
    began = time.perf_counter()
    try:
        while True:
            now = time.time()
            t0 = time.perf_counter()
            started, _ = store.claim(now, concurrency, 0, owner=name, lease_until=now + LEASE)
            latencies.append(time.perf_counter() - t0)
            if not started:
                break
            claims += 1
            if claims % RENEW_EVERY == 0:
                store.renew_leases(name, [i.aweme_id for i in started], now + LEASE)
            flags = store.complete_many(
                [
                    Completion(
                        i.aweme_id, 1000, "00" * 32, f"t/{i.aweme_id}.mp4", i.topics, now, name
                    )
                    for i in started
                ]
            )
            done += sum(flag is not None for flag in flags)
            refused += sum(flag is None for flag in flags)
        out.put((name, done, refused, time.perf_counter() - began, latencies))
    finally:
        store.close()


def run(location: str | Path, nodes: int, concurrency: int, items: int) -> dict[str, Any]:
    seed(location, items)
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    procs = [
        context.Process(target=node, args=(location, f"node-{k}", concurrency, start, out))
        for k in range(1, nodes + 1)
    ]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # every node connected and waiting (a claim before that would be unfair)
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - began
    for proc in procs:
        proc.join(timeout=30)
    store = open_manifest(location)
    try:
        counts = store.counts().items
    finally:
        store.close()
    completed = sum(r[1] for r in results)
    latencies = sorted(x for r in results for x in r[4])
    return {
        "nodes": nodes,
        "concurrency": concurrency,
        "items": items,
        "wall_s": round(wall, 3),
        "items_per_s": round(completed / wall),
        "per_node": {r[0]: r[1] for r in sorted(results)},
        "refused": sum(r[2] for r in results),
        "claim_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "claim_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "exactly_once": completed == items == counts.get("done", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--items", type=int, default=30_000)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ingestd-claims-", dir=args.scratch))
    if args.backend == "sqlite":
        result = run(scratch / "manifest.sqlite3", args.nodes, args.concurrency, args.items)
    else:
        from support.postgres import PostgresCluster

        with PostgresCluster() as cluster:
            result = run(cluster.new_database(), args.nodes, args.concurrency, args.items)
    print({"backend": args.backend, **result})
    return 0 if result["exactly_once"] and not result["refused"] else 1


if __name__ == "__main__":
    sys.exit(main())
