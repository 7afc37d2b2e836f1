"""Bodies shorter than their Content-Length, over HTTP/2 (stream reset or ended short).

``reset``: half the body, then RST_STREAM(INTERNAL_ERROR) - what a failing CDN edge does.
``short``: half the body, then END_STREAM - a malformed response; the h2 client library raises
its own InvalidBodyLengthError (not an httpx exception) and drops the whole connection, so other
downloads in flight on it see errors too. Each case gets its own daemon (one item each) so that
every retry reason seen belongs to the case under test.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from support.daemon import TERMINAL, Daemon, by_id
from support.extracts import make_record, new_id
from support.origin import OriginServer

BOTH_HTTP2_CLIENTS = True  # every test here runs on ours and on httpx's HTTP/2 (h2)

TOPIC = "cut short"
SIZE = 96 * 1024
MAX_ATTEMPTS = 3


def _run_until_terminal(daemon: Daemon, ids: set[str], timeout: float = 15) -> dict[str, Any]:
    def progress() -> str:
        retries = [(e["attempt"], e["reason"]) for e in daemon.events("download_retry_scheduled")]
        return f"{len(retries)} retries so far as (attempt, reason): {retries[:12]}"

    daemon.wait_until(
        lambda: ids <= set(by_id(e for e in daemon.events() if e["event"] in TERMINAL)),
        f"{len(ids)} item(s) reached a terminal event",
        timeout=timeout,
        detail=progress,
    )
    return by_id(daemon.events())


def _truncated_item(
    daemon_factory: Any, origin: OriginServer, name: str, prefix: str, k: int, how: str
) -> tuple[Daemon, str, str, dict[str, Any], list[str]]:
    """One item truncated the first `k` times; returns its terminal event and retry reasons."""
    aweme_id = new_id(random.Random(prefix))
    url = origin.url(name, "truncated", SIZE, k=k, how=how)
    daemon: Daemon = daemon_factory(max_attempts=MAX_ATTEMPTS, backoff_max=1.0)
    daemon.start()
    daemon.drop_atomic("extract_20261126T190000.json", [make_record(aweme_id, url, TOPIC, SIZE)])
    events = _run_until_terminal(daemon, {aweme_id})[aweme_id]
    end = next(e for e in events if e["event"] in TERMINAL)
    retries = [e["reason"] for e in events if e["event"] == "download_retry_scheduled"]
    return daemon, aweme_id, name, end, retries


@pytest.mark.parametrize("how", ["reset", "short"])
def test_truncated_once_is_retried_and_completes_intact(
    daemon_factory: Any, origin: OriginServer, prefix: str, how: str
) -> None:
    daemon, aweme_id, name, end, retries = _truncated_item(
        daemon_factory, origin, f"{prefix}-once", prefix, k=1, how=how
    )
    assert end["event"] == "download_completed", (end, retries)
    assert retries == ["truncated"], f"retry reasons {retries}"
    assert end["attempt"] == 2, end
    path = daemon.media_path(TOPIC, aweme_id)
    assert path.read_bytes() == OriginServer.content(name, SIZE)
    assert daemon.part_files() == []
    daemon.terminate()


@pytest.mark.parametrize("how", ["reset", "short"])
def test_always_truncated_fails_after_max_attempts(
    daemon_factory: Any, origin: OriginServer, prefix: str, how: str
) -> None:
    daemon, aweme_id, name, end, retries = _truncated_item(
        daemon_factory, origin, f"{prefix}-always", prefix, k=1_000_000, how=how
    )
    assert (end["event"], end.get("reason")) == ("download_failed", "truncated"), (end, retries)
    assert end["attempts"] == MAX_ATTEMPTS, end
    assert retries == ["truncated"] * (MAX_ATTEMPTS - 1), retries
    assert len(origin.requests_for(name)) == MAX_ATTEMPTS
    assert not daemon.media_path(TOPIC, aweme_id).exists()
    daemon.terminate()


def test_short_h2_body_does_not_sink_concurrent_downloads(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    """A malformed h2 response kills its connection; downloads sharing it must still finish."""
    rng = random.Random(prefix)
    bad_id, bad_name = new_id(rng), f"{prefix}-bad"
    records = [
        make_record(bad_id, origin.url(bad_name, "truncated", SIZE, k=1, how="short"), TOPIC, SIZE)
    ]
    good = []
    for i in range(3):
        aweme_id, name = new_id(rng), f"{prefix}-good{i}"
        url = origin.url(name, "slow", SIZE, chunk=8192, delay=0.02)
        records.append(make_record(aweme_id, url, TOPIC, SIZE))
        good.append((aweme_id, name))
    daemon: Daemon = daemon_factory(max_attempts=MAX_ATTEMPTS, backoff_max=1.0)
    daemon.start()
    daemon.drop_atomic("extract_20261126T200000.json", records)
    ids = {bad_id} | {a for a, _ in good}
    events = _run_until_terminal(daemon, ids)
    for aweme_id, name in [*good, (bad_id, bad_name)]:
        end = next(e for e in events[aweme_id] if e["event"] in TERMINAL)
        assert end["event"] == "download_completed", (name, end)
        assert daemon.media_path(TOPIC, aweme_id).read_bytes() == OriginServer.content(name, SIZE)
    daemon.terminate()
