"""Failures that explain themselves: the daemon says what to change, once per host.

Only loopback is used: the HTTPS origin of conftest.py (whose CA the daemon is told, or not,
to trust), and names that resolve to loopback ("localhost", "127.1").
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from support.daemon import Daemon
from support.extracts import make_record, new_id
from support.origin import OriginServer

TOPIC = "explained"
SIZE = 20_000


def _hinted(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if "hint" in e]


@pytest.mark.also_workers  # once per host for the node: not once per worker
def test_an_untrusted_certificate_hints_at_ca_bundle_once_per_host(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    # No ca_bundle: the origin's CA (trustme's) is not among certifi's roots.
    daemon: Daemon = daemon_factory(ca_bundle=None, allowed_hosts=["localhost", "127.0.0.1"])
    daemon.start()
    host_of: dict[str, str] = {}
    records = []
    for host in ("localhost", "127.0.0.1"):
        for _ in range(3):
            aweme_id = new_id(rng)
            url = origin.url(f"{prefix}-{aweme_id}", size=SIZE, host=host)
            records.append(make_record(aweme_id, url, TOPIC, SIZE))
            host_of[aweme_id] = f"{host}:{origin.port}"
    daemon.drop_atomic("extract_20261126T090000.json", records)
    # Each origin fails twice in a row (two items at least) before it is reported down.
    down = daemon.wait_for_count("host_unavailable", 2, timeout=30)
    assert {e["host"] for e in down} == set(host_of.values()), down
    assert all("CERTIFICATE_VERIFY_FAILED" in e["detail"] for e in down), down

    hinted = _hinted(daemon)
    hosts = sorted(e.get("host") or host_of[str(e["aweme_id"])] for e in hinted)
    assert hosts == sorted(set(host_of.values())), f"one hint per host, not per item: {hinted}"
    for event in hinted:
        assert event["event"] in ("download_retry_scheduled", "host_unavailable"), event
        assert "ca_bundle" in event["hint"], event
        assert event["reason"] == "unreachable", event
    assert not daemon.events("download_completed")
    daemon.terminate()


@pytest.mark.also_workers
def test_a_non_public_address_hints_at_allowed_hosts(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory(allowed_hosts=[])  # loopback is left out
    daemon.start()
    # "127.1" is no IP literal to the URL check; it resolves to 127.0.0.1, which the
    # connect-time guard refuses. "localhost" is refused by the URL check itself.
    connect_time = [new_id(rng) for _ in range(2)]
    url_check = new_id(rng)
    records = [
        make_record(i, origin.url(f"{prefix}-{i}", size=SIZE, host="127.1"), TOPIC, SIZE)
        for i in connect_time
    ]
    records.append(make_record(url_check, origin.url(f"{prefix}-{url_check}"), TOPIC, SIZE))
    daemon.drop_atomic("extract_20261126T090000.json", records)
    failed = {str(e["aweme_id"]): e for e in daemon.wait_for_count("download_failed", 3)}
    assert set(failed) == {*connect_time, url_check}
    for event in failed.values():
        assert event["reason"] == "unsafe_url", event
        assert event["detail"].startswith("non_public_address"), event
    assert "127.1 resolves to a non-public address (127.0.0.1)" in failed[connect_time[0]]["detail"]

    hinted = _hinted(daemon)
    # One per host: one of the two 127.1 items, and the localhost one.
    assert len(hinted) == 2, hinted
    assert {str(e["aweme_id"]) for e in hinted} & set(connect_time)
    assert url_check in {str(e["aweme_id"]) for e in hinted}
    for event in hinted:
        assert "allowed_hosts" in event["hint"], event
    assert origin.request_count(f"{prefix}-{url_check}") == 0
    assert not any(origin.request_count(f"{prefix}-{i}") for i in connect_time)
    daemon.terminate()


def test_download_expired_says_when_the_url_expired(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory(concurrency=1)
    daemon.start()
    # One slot, held about 4 s by a slow download; the URL queued behind it expires meanwhile
    # (a URL already dead at the merge is never queued: extract_expired_items says so).
    slow, stale = new_id(rng), new_id(rng)
    slow_url = origin.url(f"{prefix}-{slow}", mode="slow", size=SIZE, chunk=1000, delay=0.2)
    daemon.drop_atomic("extract_20261126T085900.json", [make_record(slow, slow_url, TOPIC, SIZE)])
    daemon.wait_for("download_started", lambda e: e["aweme_id"] == slow, timeout=10)
    expire = int(time.time()) + 2  # alive at the merge, dead 1-2 s later
    forbidden, unsigned = new_id(rng), new_id(rng)
    records = [
        make_record(stale, origin.url(f"{prefix}-{stale}", expire=expire), TOPIC, SIZE),
        # A 403 before the URL's own expiry: when it died is not known.
        make_record(forbidden, origin.url(f"{prefix}-{forbidden}", mode="403"), TOPIC, SIZE),
    ]
    no_expiry = origin.url(f"{prefix}-{unsigned}", mode="403").replace("expire=", "e=")
    records.append(make_record(unsigned, no_expiry, TOPIC, SIZE))
    daemon.drop_atomic("extract_20261126T090000.json", records)
    expired = {str(e["aweme_id"]): e for e in daemon.wait_for_count("download_expired", 3)}
    iso = datetime.fromtimestamp(expire, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert expired[stale]["reason"] == "url_expired"
    assert expired[stale]["expired_at"] == iso, expired[stale]
    assert expired[forbidden]["reason"] == "forbidden" and "expired_at" not in expired[forbidden]
    assert expired[unsigned]["reason"] == "forbidden" and "expired_at" not in expired[unsigned]
    daemon.terminate()
