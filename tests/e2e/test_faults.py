"""Origin fault modes, all served to one daemon run; each test checks one item's fate.

One daemon (module scope) gets one extract holding every case, and the fixture waits until every
item reached a terminal event (download_completed, download_failed or download_expired), but
those whose URL is dead at the merge: they are stored expired then, and named by the merge's one
extract_expired_items line.
Truncation gets daemons of its own (test_truncated.py): over HTTP/2 it can take the shared
connection down with it, which would blur every other case here."""

from __future__ import annotations

import math
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ingestd.store.manifest import Manifest
from support.daemon import TERMINAL, Daemon, DaemonError, Event, by_id, event_time, extract_counts
from support.extracts import make_record, new_id
from support.origin import OriginServer

BOTH_HTTP2_CLIENTS = True  # every test here runs on ours and on httpx's HTTP/2 (h2)

TOPIC = "fault injection"
MAX_ATTEMPTS = 3
TIMEOUT = 1.5
MAX_FILE_BYTES = 1024 * 1024
SIZE = 96 * 1024
WAITING = frozenset({"refused"})  # cases that must not reach a terminal event
AT_MERGE = frozenset({"expired"})  # cases settled by the merge itself: no download event


@dataclass
class Case:
    key: str
    aweme_id: str
    name: str
    size: int
    url: str


@dataclass
class FaultRun:
    daemon: Daemon
    origin: OriginServer
    cases: dict[str, Case]
    status: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def case(self, key: str) -> Case:
        return self.cases[key]

    def events(self, key: str, name: str | None = None) -> list[Event]:
        aweme_id = self.cases[key].aweme_id
        return [
            e
            for e in self.daemon.events(name)
            if str(e.get("aweme_id")) == aweme_id and (name is None or e["event"] == name)
        ]

    def terminal(self, key: str) -> Event:
        found = [e for e in self.events(key) if e["event"] in TERMINAL]
        if not found:
            pytest.fail(
                f"{key}: no terminal event ({self.error or 'run finished'})\n{self.daemon.tail()}"
            )
        assert len(found) == 1, f"{key}: several terminal events: {found}"
        return found[0]

    def retries(self, key: str) -> list[Event]:
        return self.events(key, "download_retry_scheduled")

    def final_path(self, key: str) -> Path:
        return self.daemon.media_path(TOPIC, self.cases[key].aweme_id)

    def assert_intact(self, key: str) -> None:
        case = self.cases[key]
        path = self.final_path(key)
        assert path.is_file(), f"{key}: {path} missing"
        assert path.read_bytes() == OriginServer.content(case.name, case.size)

    def assert_no_file(self, key: str) -> None:
        path = self.final_path(key)
        assert not path.exists(), f"{key}: {path} exists although the download failed"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def run(
    origin: OriginServer, tmp_path_factory: pytest.TempPathFactory, ingestd_available: None
) -> Iterator[FaultRun]:
    prefix = f"faults{uuid.uuid4().hex[:6]}"
    rng = random.Random(prefix)
    cases: dict[str, Case] = {}

    def add(
        key: str, mode: str = "ok", size: int = SIZE, url: str | None = None, **kw: Any
    ) -> Case:
        aweme_id = new_id(rng)
        name = f"{prefix}-{key}"
        cases[key] = Case(key, aweme_id, name, size, url or origin.url(name, mode, size, **kw))
        return cases[key]

    add("r429", "429", k=1, ra=1)
    add("r503", "503", k=2)
    add("r500", "500", k=1)
    add("f403", "403")
    add("f404", "404")
    add("f410", "410")
    add("stall", "stall", k=1, stall_after=16384, stall_s=20)
    add("html", "html")
    add("big_cl", "big", size=2 * MAX_FILE_BYTES)
    add("big_chunked", "big", size=2 * MAX_FILE_BYTES, cl=0)
    add("redir_ok", "redirect", to=origin.url(f"{prefix}-redir_ok-dest", size=SIZE))
    add("redir_unsafe", "redirect", to=origin.url(f"{prefix}-unsafe-dest", host="127.0.0.1"))
    add("redir_loop", "redirect", to="self")
    add("expired", url=origin.url(f"{prefix}-expired", expire=int(time.time()) - 600))
    add(
        "refused",
        url=f"https://localhost:{_closed_port()}/v/x.mp4?expire={int(time.time()) + 3600}"
        "&signature=0123456789abcdef",
    )

    records = [make_record(c.aweme_id, c.url, TOPIC, c.size) for c in cases.values()]
    daemon = Daemon(
        tmp_path_factory.mktemp("faults"),
        ca_bundle=origin.ca_pem_path,
        concurrency=4,
        timeout=TIMEOUT,
        max_attempts=MAX_ATTEMPTS,
        backoff_base=0.2,
        backoff_max=2.0,
        max_file_bytes=MAX_FILE_BYTES,
    )
    fault_run = FaultRun(
        daemon,
        origin,
        cases,
        extra={"unsafe_dest": f"{prefix}-unsafe-dest", "redir_ok_dest": f"{prefix}-redir_ok-dest"},
    )
    try:
        daemon.start()
        daemon.drop_atomic("extract_20261126T160000.json", records)
        merged = daemon.wait_for("extract_merged", timeout=10)
        assert merged["records"] == len(records), merged
        # An unreachable host never ends its items: they wait for it (test below).
        ids = {c.aweme_id for c in cases.values() if c.key not in WAITING | AT_MERGE}

        def all_terminal() -> bool:
            done = by_id(e for e in daemon.events() if e["event"] in TERMINAL)
            return ids <= set(done)

        def unfinished() -> list[str]:
            done = by_id(e for e in daemon.events() if e["event"] in TERMINAL)
            return [c.key for c in cases.values() if c.aweme_id in ids - set(done)]

        daemon.wait_until(
            all_terminal,
            "every fault case reached a terminal event",
            timeout=75,
            detail=lambda: f"still unfinished: {unfinished()}",
        )
        fault_run.status = daemon.status_json()
    except (DaemonError, AssertionError) as exc:
        fault_run.error = str(exc)
    yield fault_run
    daemon.cleanup()


def _requests(run: FaultRun, key: str) -> list[Any]:
    return run.origin.requests_for(run.case(key).name)


def test_rate_limited_waits_retry_after_then_completes(run: FaultRun) -> None:
    end = run.terminal("r429")
    assert end["event"] == "download_completed", end
    assert end["attempt"] == 1, "a 429 is the host's answer: it spends no attempt"
    host = f"localhost:{run.origin.port}"
    cooled = [e for e in run.daemon.events("host_unavailable") if e["host"] == host]
    assert [e["reason"] for e in cooled][:1] == ["rate_limited"], cooled
    assert 0.9 <= float(cooled[0]["retry_in_s"]) <= 1.1, f"Retry-After: 1 not honoured: {cooled}"
    reqs = _requests(run, "r429")
    assert len(reqs) == 2
    gap = reqs[1].monotonic - reqs[0].monotonic
    assert gap >= 0.9, f"second request came {gap:.2f}s after the 429 with Retry-After: 1"
    run.assert_intact("r429")


def test_unavailable_is_retried_then_completes(run: FaultRun) -> None:
    end = run.terminal("r503")
    assert end["event"] == "download_completed", end
    assert end["attempt"] == 1, "a 503 is the host's answer: it spends no attempt"
    retries = run.retries("r503")
    assert all((r["reason"], r["status"]) == ("unavailable", 503) for r in retries), retries
    assert len(_requests(run, "r503")) == 3
    run.assert_intact("r503")


def test_server_error_once_is_retried_then_completes(run: FaultRun) -> None:
    end = run.terminal("r500")
    assert end["event"] == "download_completed", end
    retries = run.retries("r500")
    assert [(r["reason"], r["status"]) for r in retries] == [("server_error", 500)], retries
    assert end["attempt"] == 2
    assert len(_requests(run, "r500")) == 2
    run.assert_intact("r500")


def test_forbidden_marks_item_expired_after_one_request(run: FaultRun) -> None:
    end = run.terminal("f403")
    assert (end["event"], end["reason"]) == ("download_expired", "forbidden"), end
    assert run.retries("f403") == []
    assert len(_requests(run, "f403")) == 1
    run.assert_no_file("f403")


@pytest.mark.parametrize("key", ["f404", "f410"])
def test_gone_fails_not_found_after_one_request(run: FaultRun, key: str) -> None:
    end = run.terminal(key)
    assert (end["event"], end["reason"]) == ("download_failed", "not_found"), end
    assert end["status"] == int(key[1:])
    assert run.retries(key) == []
    assert len(_requests(run, key)) == 1
    run.assert_no_file(key)


def test_stalled_transfer_times_out_and_is_retried(run: FaultRun) -> None:
    end = run.terminal("stall")
    assert end["event"] == "download_completed", end
    # The item's own timeout when the host served others meanwhile (one retry line, an
    # attempt); the host's when it served nothing else (no line, no attempt): timing decides.
    retries = run.retries("stall")
    assert [r["reason"] for r in retries] in ([], ["timeout"]), retries
    first, second = _requests(run, "stall")
    waited = second.monotonic - first.monotonic
    assert waited >= TIMEOUT * 0.8, f"tried again {waited:.2f}s into a stall (< {TIMEOUT})"
    assert waited < TIMEOUT + 5, f"stall noticed only after {waited:.2f}s (timeout {TIMEOUT})"
    run.assert_intact("stall")


def test_html_instead_of_video_fails_not_video(run: FaultRun) -> None:
    end = run.terminal("html")
    assert (end["event"], end["reason"]) == ("download_failed", "not_video"), end
    assert run.retries("html") == []
    assert len(_requests(run, "html")) == 1
    run.assert_no_file("html")


@pytest.mark.parametrize("key", ["big_cl", "big_chunked"])
def test_oversized_body_fails_too_large(run: FaultRun, key: str) -> None:
    end = run.terminal(key)
    assert (end["event"], end["reason"]) == ("download_failed", "too_large"), end
    assert run.retries(key) == []
    assert len(_requests(run, key)) == 1
    run.assert_no_file(key)


def test_redirect_within_allowed_hosts_is_followed(run: FaultRun) -> None:
    end = run.terminal("redir_ok")
    assert end["event"] == "download_completed", end
    dest = run.extra["redir_ok_dest"]
    assert len(run.origin.requests_for(dest)) == 1
    path = run.final_path("redir_ok")
    assert path.read_bytes() == OriginServer.content(dest, SIZE)


def test_redirect_to_unlisted_loopback_address_is_refused(run: FaultRun) -> None:
    end = run.terminal("redir_unsafe")
    assert (end["event"], end["reason"]) == ("download_failed", "unsafe_url"), end
    assert run.origin.requests_for(run.extra["unsafe_dest"]) == [], "redirect target was fetched"
    assert len(_requests(run, "redir_unsafe")) == 1
    run.assert_no_file("redir_unsafe")


def test_redirect_loop_fails_too_many_redirects(run: FaultRun) -> None:
    end = run.terminal("redir_loop")
    assert (end["event"], end["reason"]) == ("download_failed", "too_many_redirects"), end
    run.assert_no_file("redir_loop")


def test_expired_url_is_not_requested(run: FaultRun) -> None:
    assert run.status is not None, run.error
    aweme_id = run.case("expired").aweme_id
    (summary,) = run.daemon.events("extract_expired_items")
    assert (summary["count"], summary["aweme_ids"]) == (1, [aweme_id]), summary
    assert summary["earliest_expiry"] == summary["latest_expiry"], summary
    assert run.events("expired") == [], "an item dead at the merge has no download events"
    assert _requests(run, "expired") == []
    run.assert_no_file("expired")


def test_an_unreachable_host_spends_no_attempts_and_is_reported_once(run: FaultRun) -> None:
    assert run.status is not None, run.error
    assert [e for e in run.events("refused") if e["event"] in TERMINAL] == []
    port = run.case("refused").url.split("/")[2]
    down = [e for e in run.daemon.events("host_unavailable") if e["host"] == port]
    assert len(down) == 1 and down[0]["reason"] == "unreachable", down
    assert "signature" not in down[0]["detail"]
    # Tried again on the host's backoff (0.2 s doubling), not once per retry of the item.
    started = run.events("refused", "download_started")
    span = event_time(started[-1]) - event_time(started[0])
    assert len(started) <= 4 + math.log2(max(span, 0.2) / 0.1), (len(started), span)
    retries = run.retries("refused")
    assert len(retries) <= 1 and all(r["reason"] == "unreachable" for r in retries), retries
    manifest = Manifest.open(run.daemon.state_dir / "manifest.sqlite3", readonly=True)
    try:
        row = manifest.item(run.case("refused").aweme_id)
    finally:
        manifest.close()
    assert row is not None and (row["state"], row["attempts"]) in {("pending", 0), ("active", 1)}


def test_logs_never_carry_the_signed_query(run: FaultRun) -> None:
    leaks = run.daemon.log_lines_containing("signature=")
    assert leaks == [], f"{len(leaks)} log lines leak signature=: {leaks[:3]}"
    for event in run.daemon.events("download_started"):
        assert "?" not in event["url"] and "expire=" not in event["url"], event


def test_status_counts_match_outcomes(run: FaultRun) -> None:
    assert run.status is not None, run.error
    outcomes = {k: run.terminal(k)["event"] for k in run.cases if k not in WAITING | AT_MERGE}
    expected = {
        "pending": len(WAITING),
        "active": 0,
        "done": sum(v == "download_completed" for v in outcomes.values()),
        "expired": sum(v == "download_expired" for v in outcomes.values()) + len(AT_MERGE),
        "failed": sum(v == "download_failed" for v in outcomes.values()),
    }
    assert run.status["items"] == expected
    assert extract_counts(run.status["extracts"]) == (1, 0)
