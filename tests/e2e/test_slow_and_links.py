"""A crawling server ends as too_slow while other hosts keep flowing; one host's slots are capped;
a link that cannot be made is retried by the relink path, never by downloading again."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from support.daemon import Daemon, event_time
from support.extracts import make_record, new_id
from support.origin import OriginServer

SIZE = 64 * 1024
WINDOW = 4.0


def test_a_one_byte_a_second_server_ends_too_slow_while_another_host_flows(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    slow_id, slow_name = new_id(rng), f"{prefix}-crawl"
    crawl = origin.url(slow_name, "slow", SIZE, chunk=1, delay=1.0)
    records = []
    fast = []
    for i in range(40):  # 0.2 s each in the other slot: they span the crawl, from another host
        aweme_id, name = new_id(rng), f"{prefix}-fast{i}"
        url = origin.url(name, "slow", SIZE, host="127.0.0.1", chunk=16384, delay=0.05)
        records.append(make_record(aweme_id, url, "s", SIZE))
        fast.append((aweme_id, name))
    daemon: Daemon = daemon_factory(
        concurrency=2,
        max_attempts=1,
        timeout=10.0,
        min_rate=1024,
        min_rate_window=WINDOW,
        allowed_hosts=["localhost", "127.0.0.1"],
    )
    daemon.start()
    daemon.drop_atomic("extract_20261201T140000.json", [make_record(slow_id, crawl, "s", SIZE)])
    daemon.wait_for("download_started", timeout=15)
    daemon.drop_atomic("extract_20261201T140100.json", records)
    end = daemon.wait_for(
        "download_failed", predicate=lambda e: e["aweme_id"] == slow_id, timeout=WINDOW + 15
    )
    assert end["reason"] == "too_slow", end
    assert WINDOW <= end["duration_s"] <= WINDOW + 3, end
    assert "min_rate 1024" in end["detail"]
    started = next(e for e in daemon.events("download_started") if e["aweme_id"] == slow_id)
    during = [
        e
        for e in daemon.events("download_completed")
        if event_time(started) < event_time(e) < event_time(end)
    ]
    assert len(during) >= 3, f"other host stalled behind the crawl: {len(during)} completed"
    daemon.wait_for_count("download_completed", len(fast), timeout=30)
    for aweme_id, name in fast:
        assert daemon.media_path("s", aweme_id).read_bytes() == OriginServer.content(name, SIZE)
    assert not daemon.media_path("s", slow_id).exists()
    daemon.terminate()


def test_per_host_concurrency_caps_one_hosts_slots(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    items = [(new_id(rng), f"{prefix}-{i}") for i in range(6)]
    records = [
        make_record(a, origin.url(n, "slow", SIZE, chunk=16384, delay=0.1), "p", SIZE)
        for a, n in items
    ]
    daemon: Daemon = daemon_factory(concurrency=6, per_host_concurrency=2)
    daemon.start()
    daemon.drop_atomic("extract_20261201T150000.json", records)
    daemon.wait_for_count("download_completed", len(items), timeout=30)
    spans = []  # as the origin saw them: from the request to the last byte sent
    for _, name in items:
        (request,) = origin.requests_for(name)
        assert request.finished, request
        spans.append((request.monotonic, request.finished_at))
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap <= 2, f"{overlap} transfers on one host at once, per_host_concurrency 2"
    assert daemon.events("download_retry_scheduled") == []  # waiting for a slot is not a retry
    daemon.terminate()


@pytest.mark.also_workers
def test_a_link_that_fails_is_retried_by_relinking_never_by_downloading(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    aweme_id = new_id(random.Random(prefix))
    name = f"{prefix}-linked"
    url = origin.url(name, size=SIZE)
    daemon: Daemon = daemon_factory(backoff_base=0.2, backoff_max=1.0)
    blocker = daemon.media_dir / "second"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the topic folder should be")
    daemon.start()
    daemon.drop_atomic(
        "extract_20261201T160000.json",
        [make_record(aweme_id, url, "first", SIZE), make_record(aweme_id, url, "second", SIZE)],
    )
    done = daemon.wait_for("download_completed", timeout=20)
    assert done["aweme_id"] == aweme_id
    failed = daemon.wait_for_count("link_failed", 2, timeout=10)
    assert all(str(blocker) in e["error"] or "second" in e["error"] for e in failed), failed
    time.sleep(1.5)  # retries go on meanwhile, each after a backoff, none a download
    assert origin.request_count(name) == 1
    links_failed = len(daemon.events("link_failed"))
    assert links_failed <= 8, f"{links_failed} link attempts in about 2 s: not backing off"
    blocker.unlink()
    linked = daemon.wait_for("video_linked", timeout=15)
    assert linked["aweme_id"] == aweme_id
    first = daemon.media_path("first", aweme_id)
    second = daemon.media_path("second", aweme_id)
    assert second.read_bytes() == first.read_bytes() == OriginServer.content(name, SIZE)
    assert first.stat().st_ino == second.stat().st_ino
    assert origin.request_count(name) == 1
    assert daemon.events("download_failed") == []
    daemon.terminate()
