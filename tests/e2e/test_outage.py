"""An origin outage in the middle of a 500-item queue: nothing fails, no attempt is spent, the
host is reported once down and once back, and connection attempts follow the host backoff.

The origin (support.raw_origin) first refuses connections (its port closed), then accepts TCP
and never completes TLS (a black hole), then serves again, on the same port throughout.
"""

from __future__ import annotations

import random
import time
from typing import Any

from support.daemon import Daemon, event_time
from support.extracts import make_record, new_id
from support.origin import content
from support.raw_origin import RawOrigin, Reply

ITEMS = 500
SIZE = 24 * 1024
# The 60 s outage, in two phases, each spanning several cooldowns (0.2 s doubling to
# host_backoff_max).
REFUSED_S = 30.0
BLACKHOLE_S = 30.0
HOST_BACKOFF_MAX = 4.0
TIMEOUT = 2.0


def test_an_outage_fails_nothing_and_is_reported_once(
    tmp_path: Any, ingestd_available: None
) -> None:
    with RawOrigin(tmp_path / "origin") as origin:
        ids, names, records = _queue(origin, "outage", ITEMS)
        daemon = Daemon(
            tmp_path / "daemon",
            ca_bundle=origin.ca_pem_path,
            concurrency=8,
            timeout=TIMEOUT,
            max_attempts=2,  # a spent attempt or two would show as `failed`
            backoff_base=0.2,
            backoff_max=2.0,
            host_backoff_max=HOST_BACKOFF_MAX,
        )
        try:
            # First answers paced (0.25 s a file), so the outage finds most of the queue waiting.
            for name in names.values():
                origin.script(name, [Reply(bytes_per_second=4 * SIZE)])
            daemon.start()
            daemon.drop_atomic("extract_20261201T130000.json", records)
            daemon.wait_for_count("download_completed", 50, timeout=30)

            outage_at = time.time()
            origin.refuse()
            time.sleep(REFUSED_S)  # the outage itself: the test's subject, not a readiness wait
            refused_starts = _starts_between(daemon, outage_at, time.time())
            origin.blackhole()
            blackhole_at = time.time()
            time.sleep(BLACKHOLE_S)
            blackhole_accepts = origin.accepts.get("blackhole", 0)
            blackhole_starts = _starts_between(daemon, blackhole_at, time.time())
            done_during = len(
                [e for e in daemon.events("download_completed") if event_time(e) > outage_at + 1]
            )
            origin.unscript()  # the queue drains at full speed: the pacing was for the outage
            origin.restore()
            back_at = time.time()

            daemon.wait_for_count("download_completed", ITEMS, timeout=120)
            drained_s = time.time() - back_at

            down = daemon.events("host_unavailable")
            up = daemon.events("host_recovered")
            assert len(down) == 1 and len(up) == 1, [
                (e["event"], e.get("reason"), e.get("aweme_id"), e.get("detail"), e["timestamp"])
                for e in daemon.events()
                if e["event"] != "download_started"
                and any(abs(event_time(e) - event_time(h)) < 1.5 for h in down[1:] + up[:1])
            ]
            assert down[0]["host"] == up[0]["host"] == f"localhost:{origin.port}"
            assert event_time(down[0]) < outage_at + 5
            assert event_time(up[0]) >= back_at
            assert daemon.events("download_failed") == []
            assert done_during == 0
            # The host's backoff (0.2 s doubling to 4 s), not one try per item or per retry:
            # at most 8 in flight when it went, then about one probe per 2-4 s.
            assert refused_starts <= 8 + 4 + REFUSED_S / 2, refused_starts
            assert blackhole_accepts <= 2 + BLACKHOLE_S / TIMEOUT, blackhole_accepts
            # No attempt spent: every item completed on the attempt it was first claimed for.
            completed = daemon.events("download_completed")
            spent = {e["aweme_id"] for e in completed if e["attempt"] != 1}
            assert not spent, [
                (e["event"], e.get("reason"), e.get("detail"), e.get("duration_s"))
                for e in daemon.events()
                if e.get("aweme_id") in spent and e["event"] != "download_started"
            ]
            status = daemon.status_json()["items"]
            assert (status["done"], status["failed"], status["pending"]) == (ITEMS, 0, 0)
            for aweme_id in ids:
                path = daemon.media_path("outage", aweme_id)
                assert path.read_bytes() == content(names[aweme_id], SIZE), path
            retries = daemon.events("download_retry_scheduled")
            print(
                f"outage: {refused_starts} requests tried while refused ({REFUSED_S:g} s), "
                f"{blackhole_accepts} connections accepted in the black hole ({BLACKHOLE_S:g} s, "
                f"{blackhole_starts} requests), {len(retries)} per-item retry lines in all, "
                f"drained the remaining queue in {drained_s:.1f} s after the origin came back"
            )
            assert len(retries) <= 16, retries
        finally:
            daemon.cleanup()


def test_with_workers_the_node_reports_an_outage_once(
    tmp_path: Any, ingestd_available: None
) -> None:
    """Each worker finds the host down on its own; the node logs it down once and back once."""
    with RawOrigin(tmp_path / "origin") as origin:
        ids, names, records = _queue(origin, "workers-outage", 40)
        daemon = Daemon(
            tmp_path / "daemon",
            ca_bundle=origin.ca_pem_path,
            concurrency=4,
            workers=2,
            timeout=TIMEOUT,
            backoff_base=0.2,
            backoff_max=2.0,
            host_backoff_max=1.0,
        )
        try:
            for name in names.values():  # slow first answers: each worker has some in flight
                origin.script(name, [Reply(bytes_per_second=SIZE)])
            daemon.start()
            daemon.drop_atomic("extract_20261201T140000.json", records)
            daemon.wait_for_count("download_started", 4, timeout=15)
            starts = daemon.events("download_started")
            assert {e["worker"] for e in starts} == {1, 2}, starts
            origin.refuse()  # drops what is in flight on both workers: each finds it down
            time.sleep(3.0)  # the outage itself: the test's subject, not a readiness wait
            origin.unscript()
            origin.restore()
            back_at = time.time()
            daemon.wait_for_count("download_completed", len(ids), timeout=60)
            down = daemon.events("host_unavailable")
            up = daemon.events("host_recovered")
            assert len(down) == 1 and len(up) == 1, (down, up)
            # Probed when a cooldown (at most host_backoff_max = 1 s) ends, not at the pool's
            # next idle look (IDLE_RECHECK, 5 s).
            assert back_at <= event_time(up[0]) <= back_at + 2.5, event_time(up[0]) - back_at
            assert daemon.events("download_failed") == []
        finally:
            daemon.cleanup()


def _queue(
    origin: RawOrigin, label: str, n: int
) -> tuple[list[str], dict[str, str], list[dict[str, Any]]]:
    """`n` items of topic "outage" on `origin`: their ids, origin names by id, and records."""
    rng = random.Random(label)
    ids = [new_id(rng) for _ in range(n)]
    names = {aweme_id: f"{label}-{i}" for i, aweme_id in enumerate(ids)}
    records = [make_record(a, origin.url(names[a], SIZE), "outage", SIZE) for a in ids]
    return ids, names, records


def _starts_between(daemon: Daemon, start: float, end: float) -> int:
    return len([e for e in daemon.events("download_started") if start <= event_time(e) <= end])
