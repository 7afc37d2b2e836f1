"""Several nodes (real daemon processes, each with its own data and state dir and node name)
drain one PostgreSQL manifest: every item is fetched by exactly one of them, each publishes
into its own data dir, and the manifest says which node holds each file."""

from __future__ import annotations

import random
import time
from typing import Any

from ingestd.store.postgres import PostgresManifest
from support.extracts import origin_records
from support.origin import OriginServer

ITEMS = 240
SIZE = 64 * 1024  # "slow": 16 KiB every 50 ms, so one node alone would need 12 s


def test_three_nodes_fetch_every_item_exactly_once(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    records, names = origin_records(
        origin, prefix, random.Random(3), ITEMS, "cats", SIZE, mode="slow"
    )
    nodes = [
        daemon_factory(manifest_url=postgres_url, node_name=f"edge-{n}", concurrency=4)
        for n in "abc"
    ]
    for node in nodes:
        node.start()
    nodes[0].drop_atomic("extract_fleet.json", records)  # one node's raw/ folder only
    done: dict[str, str] = {}  # aweme_id: the node holding its file
    store = PostgresManifest.open(postgres_url)
    try:
        deadline = time.monotonic() + 60
        while store.counts().items.get("done", 0) < ITEMS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.counts().items.get("done") == ITEMS
        for record in records:
            item = store.item(record["aweme_id"])
            assert item is not None
            done[record["aweme_id"]] = str(item["node"])
    finally:
        store.close()
    for node in nodes:
        node.terminate()
    full_gets = {
        name: sum(1 for r in origin.requests_for(name) if r.finished and r.status == 200)
        for name in names.values()
    }
    assert set(full_gets.values()) == {1}, "an item was fetched twice, or never"
    by_node = {f"edge-{n}": node for n, node in zip("abc", nodes, strict=True)}
    assert set(done.values()) <= set(by_node)
    for aweme_id, holder in done.items():
        for name, node in by_node.items():
            path = node.media_path("cats", aweme_id)
            assert path.exists() == (name == holder), (aweme_id, holder, name)
        assert by_node[holder].media_path("cats", aweme_id).read_bytes() == origin.content(
            names[aweme_id], SIZE
        )
    # Each node logged completions for the files it holds, and only those.
    for name, node in by_node.items():
        logged = {e["aweme_id"] for e in node.events("download_completed")}
        assert logged == {i for i, holder in done.items() if holder == name}
    assert len(set(done.values())) == 3, "a node did no work"
