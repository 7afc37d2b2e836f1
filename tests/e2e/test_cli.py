"""The operator commands (status, list, retry, logs) against a real daemon, origin and manifest."""

from __future__ import annotations

import json
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from support.daemon import Daemon, sha256_file
from support.extracts import make_record, new_id, origin_records
from support.origin import OriginServer

TOPIC = "cli tests"
FOLDER = "cli_tests"
SIZE = 20_000
EXIT_OK, EXIT_USAGE, EXIT_NO_MATCH = 0, 2, 3


@dataclass
class Settled:
    daemon: Daemon
    ok_ids: list[str]
    missing_id: str
    names: dict[str, str]  # aweme_id -> origin name


def _records(
    origin: OriginServer, prefix: str, rng: random.Random, n: int, mode: str = "ok"
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    return origin_records(origin, prefix, rng, n, TOPIC, SIZE, mode)


def _settled(daemon_factory: Any, origin: OriginServer, prefix: str, **config: Any) -> Settled:
    """A running daemon whose extract gave 2 done items and 1 failed (404) item."""
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory(**config)
    daemon.start()
    ok, ok_names = _records(origin, prefix, rng, 2)
    missing, missing_names = _records(origin, prefix, rng, 1, mode="404")
    daemon.drop_atomic("extract_20261126T090000.json", ok + missing)
    daemon.wait_for_count("download_completed", 2)
    daemon.wait_for("download_failed")
    daemon.wait_for("extract_completed")  # the last event of the run: nothing is logged after
    (missing_id,) = missing_names
    return Settled(daemon, list(ok_names), missing_id, {**ok_names, **missing_names})


def _ok(result: subprocess.CompletedProcess[str], code: int = EXIT_OK) -> str:
    assert result.returncode == code, (
        f"{result.args[3:]} exited {result.returncode}, expected {code}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout


def _json(result: subprocess.CompletedProcess[str], code: int = EXIT_OK) -> Any:
    return json.loads(_ok(result, code))


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------- status


def test_status_table_json_and_watch(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    run = _settled(daemon_factory, origin, prefix)
    daemon = run.daemon

    doc = _json(daemon.cli("status", "--json"))
    fleet = doc.pop("fleet")
    assert doc == {
        "items": {"pending": 0, "active": 0, "done": 2, "expired": 0, "failed": 1},
        "extracts": {"merged": 1, "rejected": 0, "duplicate": 0},
        "bytes_done": 2 * SIZE,
        "nodes": {},  # nothing in flight
    }
    (node,) = fleet.values()  # the one daemon, as it reported itself (every 5 s)
    assert node["state"] == "running" and abs(node["seen_at"] - time.time()) < 30, fleet

    table = _ok(daemon.cli("status"))
    rows = dict(re.findall(r"^\s+(\w+)\s+(\d+)$", table, re.MULTILINE))
    assert {k: rows[k] for k in ("pending", "active", "done", "expired", "failed", "total")} == {
        "pending": "0",
        "active": "0",
        "done": "2",
        "expired": "0",
        "failed": "1",
        "total": "3",
    }, table
    assert rows["merged"] == "1" and rows["rejected"] == "0", table
    assert str(daemon.state_dir / "manifest.sqlite3") in table
    assert f"({2 * SIZE} bytes)" in table

    started = time.monotonic()
    watch = daemon.cli("status", "--watch", "--count", "2", "--interval", "0.2", timeout=20)
    elapsed = time.monotonic() - started
    out = _ok(watch)
    bars = re.findall(r"(\d+\.\d)%\s+(\d+)/(\d+) done", out)
    assert len(bars) == 2, f"expected 2 frames with a progress bar:\n{out}"
    # The bar counts the work that can still complete: the failed item is not in it.
    assert bars == [("100.0", "2", "2")] * 2, out
    assert out.count("ingestd running") == 2, out
    assert out.count("failed 1") == 2 and out.count("pending 0") == 2, out
    assert out.count(run.missing_id) == 2, "recent failures should list the 404 item"
    assert "not_found" in out
    assert "\x1b[" not in out, "no terminal control codes when stdout is not a TTY"
    assert elapsed < 10, f"--count 2 --interval 0.2 took {elapsed:.1f}s"
    daemon.terminate()


# --------------------------------------------------------------------------------- list


def test_list_filters_and_fail_empty(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    run = _settled(daemon_factory, origin, prefix)
    daemon = run.daemon

    failed = _json(daemon.cli("list", "--state", "failed", "--json"))
    assert len(failed) == 1, failed
    item = failed[0]
    assert item["aweme_id"] == run.missing_id
    assert item["state"] == "failed" and item["reason"] == "not_found", item
    assert item["status"] == 404 and item["attempts"] == 1, item
    assert item["topics"] == [TOPIC]

    done = _json(daemon.cli("list", "--state", "done", "--json"))
    assert sorted(i["aweme_id"] for i in done) == sorted(run.ok_ids)
    assert all(i["bytes"] == SIZE and i["reason"] is None for i in done), done

    everything = sorted(run.names)
    for spelling in (TOPIC, FOLDER):
        listed = _json(daemon.cli("list", "--topic", spelling, "--json"))
        assert sorted(i["aweme_id"] for i in listed) == everything, (spelling, listed)
    failed_in_topic = _json(daemon.cli("list", "--topic", FOLDER, "--state", "failed", "--json"))
    assert [i["aweme_id"] for i in failed_in_topic] == [run.missing_id]
    assert len(_json(daemon.cli("list", "--limit", "1", "--json"))) == 1

    table = _ok(daemon.cli("list"))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["AWEME_ID", "STATE", "ATTEMPTS"], table
    assert len(lines) == 4, table
    row = next(line for line in lines if line.startswith(run.missing_id))
    assert row.split()[1:4] == ["failed", "1", "not_found"], row

    # Nothing matches: an empty answer is success, unless asked to fail.
    assert _json(daemon.cli("list", "--topic", "no such topic", "--json")) == []
    assert _json(daemon.cli("list", "--state", "expired", "--json", "--fail-empty"), 3) == []
    _ok(daemon.cli("list", "--topic", "nope", "--fail-empty"), EXIT_NO_MATCH)
    _ok(daemon.cli("list", "--state", "failed", "--fail-empty"), EXIT_OK)
    daemon.terminate()


def test_list_detail_limit_all_and_json_for_the_next_stage(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    run = _settled(daemon_factory, origin, prefix)
    daemon = run.daemon

    table = _ok(daemon.cli("list"))
    assert table.splitlines()[0].split() == [
        "AWEME_ID",
        "STATE",
        "ATTEMPTS",
        "DETAIL",
        "BYTES",
        "TOPIC",
    ], table
    row = next(line for line in table.splitlines() if line.startswith(run.missing_id))
    assert "not_found (HTTP 404)" in row, row

    # Truncated: says how many more, on stderr (stdout stays the table or the JSON).
    one = daemon.cli("list", "--limit", "1")
    assert len(_ok(one).splitlines()) == 2, one.stdout
    assert one.stderr == "... 2 more (use --limit N or --all)\n", one.stderr
    one_json = daemon.cli("list", "--limit", "1", "--json")
    assert len(_json(one_json)) == 1 and "2 more" in one_json.stderr
    every = daemon.cli("list", "--all")
    assert len(_ok(every).splitlines()) == 4 and every.stderr == "", every.stderr
    exact = daemon.cli("list", "--limit", "3")
    assert len(_ok(exact).splitlines()) == 4 and exact.stderr == "", exact.stderr
    for bad in (("--limit", "0"), ("--limit", "-2"), ("--limit", "x"), ("--all", "--limit", "5")):
        refused = daemon.cli("list", *bad)
        _ok(refused, EXIT_USAGE)
        assert "--limit" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert "must be at least 1, got 0" in daemon.cli("list", "--limit", "0").stderr

    # --json: a JSON array, one item a line, with what the next stage needs.
    text = _ok(daemon.cli("list", "--json", "--all"))
    lines = text.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 5, text
    assert all(line.startswith("{") for line in lines[1:-1]), text
    items = {i["aweme_id"]: i for i in json.loads(text)}
    for aweme_id in run.ok_ids:
        item = items[aweme_id]
        path = daemon.media_dir / FOLDER / f"{aweme_id}.mp4"
        assert item["state"] == "done" and item["topics"] == [TOPIC], item
        assert item["paths"] == [str(path)] and path.is_file(), item
        assert item["bytes"] == SIZE and item["sha256"] == sha256_file(path), item
        assert (item["reason"], item["status"], item["attempts"]) == (None, None, 1), item
        record = item["record"]
        assert record["aweme_id"] == aweme_id and record["desc"] == f"test video {aweme_id}"
        assert record["create_time"] == 1790304909 and record["query_context"] == TOPIC
    failed = items[run.missing_id]
    assert (failed["state"], failed["reason"], failed["status"]) == ("failed", "not_found", 404)
    assert failed["paths"] == [] and failed["sha256"] is None and failed["record"]["desc"]
    assert _ok(daemon.cli("list", "--json", "--state", "expired")) == "[\n]\n"
    daemon.terminate()


def test_list_topic_by_sanitized_folder_name(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory()
    daemon.start()
    aweme_id = new_id(rng)
    url = origin.url(f"{prefix}-{aweme_id}", size=SIZE)
    daemon.drop_atomic("extract_1.json", [make_record(aweme_id, url, "news/today", SIZE)])
    done = daemon.wait_for("download_completed")
    folder = done["path"].split("/")[-2]
    assert folder.startswith("news_today-"), done["path"]
    by_topic = _json(daemon.cli("list", "--topic", "news/today", "--json"))
    assert [i["aweme_id"] for i in by_topic] == [aweme_id]
    daemon.terminate()
    by_folder = _json(daemon.cli("list", "--topic", folder, "--json"))
    assert [i["aweme_id"] for i in by_folder] == [aweme_id], f"--topic {folder} matched nothing"


# -------------------------------------------------------------------------------- retry


def test_retry_while_running(daemon_factory: Any, origin: OriginServer, prefix: str) -> None:
    run = _settled(daemon_factory, origin, prefix)
    daemon = run.daemon
    missing_name = run.names[run.missing_id]
    assert origin.request_count(missing_name) == 1

    no_selector = daemon.cli("retry")
    _ok(no_selector, EXIT_USAGE)
    assert "--failed" in no_selector.stderr

    done_id = run.ok_ids[0]
    refused = _json(daemon.cli("retry", done_id, "--json"), EXIT_NO_MATCH)
    assert refused == {"requeued": [], "refused": [done_id], "reasons": {done_id: "done"}}
    assert _json(daemon.cli("retry", "7440000000000000001", "--json"), EXIT_NO_MATCH) == {
        "requeued": [],
        "refused": ["7440000000000000001"],
        "reasons": {"7440000000000000001": "unknown"},
    }
    plain = daemon.cli("retry", done_id)
    _ok(plain, EXIT_NO_MATCH)
    assert done_id in plain.stderr

    since = daemon.event_count()
    requeued = _json(daemon.cli("retry", "--failed", "--json"))
    assert requeued == {"requeued": [run.missing_id], "refused": [], "reasons": {}}
    # The running daemon picks it up (README: within 5 s) with fresh attempts and asks again.
    started = daemon.wait_for(
        "download_started", lambda e: str(e["aweme_id"]) == run.missing_id, since=since, timeout=10
    )
    assert started["attempt"] == 1, started
    failed = daemon.wait_for(
        "download_failed", lambda e: str(e["aweme_id"]) == run.missing_id, since=since
    )
    assert failed["reason"] == "not_found" and failed["attempts"] == 1, failed
    assert origin.request_count(missing_name) == 2

    # The done items were left alone: not requeued, not fetched again.
    for aweme_id in run.ok_ids:
        assert origin.request_count(run.names[aweme_id]) == 1
    assert _json(daemon.cli("status", "--json"))["items"]["done"] == 2
    # A mixed request requeues what it can and reports the rest (exit 0: something matched).
    mixed = _json(daemon.cli("retry", done_id, run.missing_id, "--json"))
    assert mixed == {
        "requeued": [run.missing_id],
        "refused": [done_id],
        "reasons": {done_id: "done"},
    }
    daemon.terminate()


def test_retry_says_why_it_refused_each_id(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory(timeout=60.0, min_rate=0)
    daemon.start()
    ok, _ = _records(origin, prefix, rng, 1)
    stalled, names = _records(origin, prefix, rng, 1, mode="stall")
    daemon.drop_atomic("extract_20261126T090000.json", ok + stalled)
    done_id = str(daemon.wait_for("download_completed")["aweme_id"])
    (active_id,) = names
    daemon.wait_until(
        lambda: origin.request_count(names[active_id]) == 1, "the stalled item is in flight"
    )
    unknown_id = "7440000000000000002"

    text = daemon.cli("retry", done_id, active_id, unknown_id)
    _ok(text, EXIT_NO_MATCH)
    assert text.stderr.splitlines() == [
        f"refused {done_id}: already done (a done item is never downloaded again)",
        f"refused {active_id}: downloading right now (active); retry it if this attempt fails",
        f"refused {unknown_id}: unknown id (not in this manifest)",
    ], text.stderr
    doc = _json(daemon.cli("retry", done_id, active_id, unknown_id, "--json"), EXIT_NO_MATCH)
    assert doc == {
        "requeued": [],
        "refused": [done_id, active_id, unknown_id],
        "reasons": {done_id: "done", active_id: "active", unknown_id: "unknown"},
    }
    daemon.terminate()


# --------------------------------------------------------------------------------- logs


def test_logs_filters(daemon_factory: Any, origin: OriginServer, prefix: str) -> None:
    run = _settled(daemon_factory, origin, prefix)
    daemon = run.daemon

    completed = _json_lines(_ok(daemon.cli("logs", "--event", "download_completed", "--json")))
    assert {e["event"] for e in completed} == {"download_completed"}
    assert sorted(str(e["aweme_id"]) for e in completed) == sorted(run.ok_ids)

    terminal = _json_lines(
        _ok(
            daemon.cli(
                "logs", "--event", "download_completed", "--event", "download_failed", "--json"
            )
        )
    )
    assert sorted(e["event"] for e in terminal) == ["download_completed"] * 2 + ["download_failed"]

    story = _json_lines(_ok(daemon.cli("logs", "--id", run.missing_id, "--json")))
    assert {str(e["aweme_id"]) for e in story} == {run.missing_id}
    assert [e["event"] for e in story] == ["download_started", "download_failed"], story

    both = _json_lines(
        _ok(daemon.cli("logs", "--id", run.ok_ids[0], "--event", "download_completed", "--json"))
    )
    assert [(e["event"], str(e["aweme_id"])) for e in both] == [
        ("download_completed", run.ok_ids[0])
    ]

    # The file holds what stdout showed, in the same order.
    everything = _json_lines(_ok(daemon.cli("logs", "--json")))
    assert [e["event"] for e in everything] == [e["event"] for e in daemon.events()]

    pretty = _ok(daemon.cli("logs", "--event", "download_failed"))
    assert "download_failed" in pretty and run.missing_id in pretty
    assert "\x1b[" not in pretty, "no colours when stdout is not a terminal"
    daemon.terminate()


def test_logs_last_since_level_and_event_names(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    run = _settled(daemon_factory, origin, prefix)
    daemon = run.daemon
    daemon.wait_for("extract_completed", timeout=10)  # the last event this run will log
    printed = daemon.events()

    last = _json_lines(
        _ok(daemon.cli("logs", "-n", "1", "--event", "download_completed", "--json"))
    )
    assert last == [_strip(daemon.events("download_completed")[-1])]
    tail = _json_lines(_ok(daemon.cli("logs", "--lines", "3", "--json")))
    assert tail == [_strip(e) for e in printed[-3:]]

    errors = _json_lines(_ok(daemon.cli("logs", "--level", "error", "--json")))
    assert [e["event"] for e in errors] == ["download_failed"], errors
    warnings = _json_lines(_ok(daemon.cli("logs", "--level", "warning", "--json")))
    assert {e["level"] for e in warnings} <= {"warning", "error", "critical"}, warnings

    assert len(_json_lines(_ok(daemon.cli("logs", "--since", "1h", "--json")))) == len(printed)
    assert _ok(daemon.cli("logs", "--since", "2999-01-01T00:00:00Z", "--json")) == ""
    middle = printed[len(printed) // 2]["timestamp"]
    since = _json_lines(_ok(daemon.cli("logs", "--since", middle, "--json")))
    assert since == [_strip(e) for e in printed if e["timestamp"] >= middle]

    for bad in (("--since", "yesterday"), ("-n", "0"), ("--level", "loud")):
        refused = daemon.cli("logs", *bad)
        _ok(refused, EXIT_USAGE)
        assert bad[0] in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    unknown = daemon.cli("logs", "--event", "download_complete")
    _ok(unknown, EXIT_USAGE)
    assert "unknown event 'download_complete'" in unknown.stderr, unknown.stderr
    assert "download_completed" in unknown.stderr and "daemon_started" in unknown.stderr
    daemon.terminate()


def _strip(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the file has it: without what support.daemon adds when reading stdout."""
    return {k: v for k, v in event.items() if not k.startswith("_")}


class Follower:
    """`ingestd logs --follow --json` as a subprocess; its lines collected by a thread."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen(
            daemon.command("logs", "--follow", "--json", *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=daemon.root,
            env=daemon.env(),
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, predicate: Any, what: str, timeout: float = 15.0) -> dict[str, Any]:
        """Read lines (bounded) until one parses into an event matching ``predicate``."""
        for event in self.events:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"logs --follow exited ({self.proc.poll()}) before {what}")
            event = json.loads(line)
            self.events.append(event)
            if predicate(event):
                return event
        raise AssertionError(
            f"logs --follow showed no {what} within {timeout}s; saw "
            f"{[e.get('event') for e in self.events][-20:]}"
        )

    def stop(self) -> int:
        """Ctrl-C (SIGINT): the follower ends quietly with exit 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._thread.join(5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        return code


def test_logs_follow_starts_at_the_end_like_tail(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    run = _settled(daemon_factory, origin, prefix)
    daemon = run.daemon
    tail = Follower(daemon)
    last_then_new = Follower(daemon, "-n", "1", "--event", "download_failed")
    try:
        shown = last_then_new.wait_for(lambda e: e["event"] == "download_failed", "the last one")
        assert str(shown["aweme_id"]) == run.missing_id
        # The tail shows nothing of the past: poke the daemon (SIGHUP logs config_reloaded)
        # until it shows something new, so that it surely reads by now.
        for _ in range(20):
            daemon.send_signal(signal.SIGHUP)
            try:
                tail.wait_for(lambda e: e["event"] == "config_reloaded", "a reload", timeout=1)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("logs --follow showed no new event")
        _json(daemon.cli("retry", "--failed", "--json"))
        again = f"the new download_failed of {run.missing_id}"
        tail.wait_for(lambda e: e["event"] == "download_failed", again)
        last_then_new.wait_for(lambda e: e is not shown and e["event"] == "download_failed", again)
        past = {"daemon_started", "daemon_ready", "extract_merged", "download_completed"}
        assert not [e["event"] for e in tail.events if e["event"] in past], tail.events
        assert [e["event"] for e in last_then_new.events] == ["download_failed"] * 2
    finally:
        codes = (tail.stop(), last_then_new.stop())
    assert codes == (0, 0)
    daemon.terminate()


LOG_MAX_BYTES = 4096
BURST = 3  # items per extract: one burst of events stays well under LOG_MAX_BYTES


def _completed(*ids: str) -> Any:
    wanted = set(ids)
    return lambda e: e["event"] == "download_completed" and str(e.get("aweme_id")) in wanted


def test_logs_follow_shows_new_events_across_rotation(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory(log_max_bytes=LOG_MAX_BYTES, log_backups=50)
    daemon.start()
    rotated = daemon.log_file.with_name(daemon.log_file.name + ".1")
    assert not rotated.exists()
    follower = Follower(daemon, "--all")
    completed_follow = Follower(daemon, "--all", "--event", "download_completed")
    ids: list[str] = []
    try:
        follower.wait_for(lambda e: e["event"] == "daemon_ready", "daemon_ready (history)")

        # Bursts of events, each smaller than the rotation size, until the file rotates; the
        # followers catch up after each burst, so the file never rotates twice behind their back.
        bursts = 0
        while not rotated.exists():
            assert bursts < 8, f"no rotation after {bursts} bursts\n{daemon.tail()}"
            records, names = _records(origin, prefix, rng, BURST)
            since = daemon.event_count()
            daemon.drop_atomic(f"extract_20261126T{bursts:02d}0000.json", records)
            ids += names
            daemon.wait_for_count("download_completed", BURST, since=since)
            for aweme_id in names:
                follower.wait_for(_completed(aweme_id), f"download_completed for {aweme_id}")
                completed_follow.wait_for(_completed(aweme_id), f"filtered {aweme_id}")
            burst_bytes = sum(len(line) + 1 for line in daemon.all_stdout[since:])
            assert burst_bytes < LOG_MAX_BYTES, f"a burst of {burst_bytes} B rotates twice"
            bursts += 1

        # After the rotation both followers keep going with the new file.
        records, names = _records(origin, prefix, rng, 1)
        daemon.drop_atomic("extract_20261126T230000.json", records)
        (late_id,) = names
        ids.append(late_id)
        follower.wait_for(_completed(late_id), "download_completed after the rotation")
        completed_follow.wait_for(_completed(late_id), "filtered event after the rotation")

        # Every event the daemon printed reached the follower once, in order, across files.
        shown = [(e["event"], e.get("aweme_id"), e["timestamp"]) for e in follower.events]
        printed = [(e["event"], e.get("aweme_id"), e["timestamp"]) for e in daemon.events()]
        assert shown == printed[: len(shown)], "logs --follow lost, repeated or reordered events"
        assert {e["event"] for e in completed_follow.events} == {"download_completed"}
        assert sorted(str(e["aweme_id"]) for e in completed_follow.events) == sorted(ids)
    finally:
        codes = (follower.stop(), completed_follow.stop())
    assert codes == (0, 0), f"logs --follow did not end cleanly on SIGINT: {codes}"
    daemon.terminate()


def test_logs_follow_keeps_up_with_rapid_rotations(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory(log_max_bytes=1024, log_backups=100, concurrency=8)
    daemon.start()
    follower = Follower(daemon, "--all")
    try:
        follower.wait_for(lambda e: e["event"] == "daemon_ready", "daemon_ready (history)")
        records, _ = _records(origin, prefix, rng, 20)
        daemon.drop_atomic("extract_20261126T090000.json", records)
        daemon.wait_for_count("download_completed", 20)
        last = daemon.events()[-1]
        follower.wait_for(lambda e: e["timestamp"] == last["timestamp"], "the last event", 3)
        shown = [(e["event"], e.get("aweme_id")) for e in follower.events]
        printed = [(e["event"], e.get("aweme_id")) for e in daemon.events()]
        assert len(list(daemon.root.glob("events.jsonl.*"))) > 2
        assert shown == printed, f"follow showed {len(shown)} of {len(printed)} events"
    finally:
        follower.stop()
    daemon.terminate()


# ------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "command", [("run",), ("status",), ("list",), ("retry", "--failed"), ("logs",), ("verify",)]
)
def test_unknown_config_key_exits_2_naming_it(
    daemon_factory: Any, command: tuple[str, ...]
) -> None:
    daemon: Daemon = daemon_factory(concurrancy=3)
    result = daemon.cli(*command, timeout=20)
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    assert "concurrancy" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "daemon_started" not in result.stdout


@pytest.mark.parametrize(
    ("config", "env", "key"),
    [
        ({"concurrency": 0}, {}, "concurrency"),
        ({"timeout": "soon"}, {}, "timeout"),
        ({}, {"INGESTD_BOGUS_KEY": "1"}, "INGESTD_BOGUS_KEY"),
        ({}, {"INGESTD_CONCURRENCY": "many"}, "INGESTD_CONCURRENCY"),
    ],
)
def test_invalid_config_exits_2_naming_the_key(
    daemon_factory: Any, config: dict[str, Any], env: dict[str, str], key: str
) -> None:
    daemon: Daemon = daemon_factory(**config)
    result = daemon.cli("run", timeout=20, env=env)
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    assert key.lower() in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            (),
            ["run", "status", "list", "retry", "rebind", "logs", "verify", "migrate", "--version"],
        ),
        (("run",), ["--config", "--data-dir", "--state-dir", "--concurrency", "--log-file"]),
        (("status",), ["--json", "--watch", "--interval", "--count"]),
        (("list",), ["--state", "--topic", "--limit", "--all", "--json", "--fail-empty"]),
        (("retry",), ["--failed", "--expired", "AWEME_ID", "--json"]),
        (
            ("logs",),
            ["--follow", "-n", "--since", "--level", "--all", "--event", "--id", "--json"],
        ),
        (("rebind",), ["--data-dir", "--state-dir"]),
        (("verify",), ["--repair", "--json", "--data-dir", "--state-dir", "Exit codes"]),
        (("migrate",), ["--to", "--config", "--data-dir", "--state-dir", "Exit codes"]),
    ],
)
def test_help_for_every_command(command: tuple[str, ...], options: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ingestd", *command, "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: ingestd {' '.join(command)}".rstrip()), result.stdout
    missing = [o for o in options if o not in result.stdout]
    assert not missing, f"--help of {command} does not mention {missing}:\n{result.stdout}"


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        (
            {"ca_bundle": "/nonexistent/ingestd-ca.pem"},
            {},
            "ca_bundle: cannot read /nonexistent/ingestd-ca.pem: No such file or directory",
        ),
        ({}, {"INGESTD_TIMEOUT": "abc"}, "INGESTD_TIMEOUT (timeout): expected a number, got 'abc'"),
        ({"timeout": "abc"}, {}, "timeout: expected a number, got 'abc'"),
    ],
)
def test_config_errors_say_which_key_and_value_before_anything_starts(
    daemon_factory: Any, config: dict[str, Any], env: dict[str, str], message: str
) -> None:
    daemon: Daemon = daemon_factory(**config)
    result = daemon.cli("run", timeout=20, env=env)
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip() == f"ingestd: configuration error: {message}"
    assert result.stdout == "", "run failed before starting: no daemon_started"
