"""Backlog figures for bench.py --backlog: big merges, big manifests, memory, reaction time."""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import FAR_FUTURE, LOOPBACK, IngestdProcess, Nginx, _proc_hwm_kib

SAMPLE = {
    "desc": "night market dumplings #streetfood",
    "create_time": 1790304909,
    "author": {"uid": "816522387186459933", "unique_id": "noodle.nights", "nickname": "Noodle"},
    "stats": {"play_count": 7401346, "digg_count": 251599, "comment_count": 83, "share_count": 1},
    "media": {"duration": 9, "width": 576, "height": 1024, "data_size": 11995380},
    "query_context": "cooking tips",
    "extracted_at": "2026-11-26T09:00:00Z",
}
QUERY = (
    "a=1988&bti=NEBzNTY6QGo6OjZALnAjNDQuYCMxNDNg&ch=0&cr=3&dr=0&lr=all&cd=0%7C0%7C0%7C&cv=1"
    "&br=1130&bt=626&cs=0&ds=6&ft=4KJMyMzm8Zmo04aac31&mime_type=video_mp4&qs=4"
    f"&rc=8171acced1b5ca0b559261c6&btag=e00088000&expire={FAR_FUTURE}&l=2026112673282469267770"
    "&ply_type=2&policy=2&signature=4aac318171acced1b5ca0b559261c6ff&tk=tt_chain_token"
)


def records(n: int, base: str) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        record = json.loads(json.dumps(SAMPLE))
        record["aweme_id"] = f"74{i:017d}"
        record["media"]["source_url"] = f"{base}/v/{i}.mp4?{QUERY}"
        record["query_context"] = f"topic {i % 7}"
        out.append(record)
    return out


def drop(raw: Path, name: str, data: list[dict[str, Any]]) -> float:
    """Write the extract under a temporary name, then rename: the clock starts at the rename."""
    temp = raw / f".{name}.tmp"
    temp.write_text(json.dumps(data))
    os.rename(temp, raw / name)
    return time.monotonic()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def merge_and_drain(
    scratch: Path, n: int, drain_seconds: float, downloads: bool = True
) -> dict[str, Any]:
    """Merge an n-record extract, then let the backlog drain against nginx for a while.
    With `downloads=False` the daemon's downloads are paused (low-space threshold set
    impossibly high): the merge alone, without transfers competing for the CPU and the manifest."""
    origin_root = scratch / "backlog-origin"
    origin_root.mkdir(parents=True, exist_ok=True)
    origin = Nginx(origin_root, LOOPBACK)
    origin.www.mkdir(parents=True, exist_ok=True)
    (origin.www / "tiny.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(4084))
    # Every /v/<i>.mp4 is the same small file: 200,000 URLs without 200,000 files.
    origin.start("location /v/ { try_files /tiny.mp4 =404; }")
    root = scratch / ("backlog-daemon" if downloads else "backlog-daemon-paused")
    root.mkdir()
    try:
        data = records(n, origin.base)
        threshold = 0 if downloads else 2**60
        daemon = IngestdProcess(root, origin.ca_path, [], {"min_free_bytes": threshold})
        assert daemon.wait("daemon_ready", 1, 60), daemon.lines[-5:]
        t0 = drop(root / "data" / "raw", "extract_backlog.json", data)
        del data
        assert daemon.wait("extract_merged", 1, 600), daemon.lines[-5:]
        merged_after = daemon.first["extract_merged"] - t0
        merge_event = next(json.loads(x) for x in daemon.lines if '"extract_merged"' in x)
        hwm_after_merge = _proc_hwm_kib(daemon.pid)
        drain_peak = 0
        end = time.monotonic() + drain_seconds
        while time.monotonic() < end and daemon.proc.poll() is None:
            drain_peak = max(drain_peak, _rss_kib(daemon.pid))
            time.sleep(0.25)
        done = daemon.events.get("download_completed", 0)
        daemon.stop()
    finally:
        origin.stop()
    return {
        "records": n,
        "drop_to_merged_s": round(merged_after, 3),
        "merge_db_s": merge_event.get("duration_s"),
        "parse_s": merge_event.get("parse_s"),
        "write_s": merge_event.get("write_s"),
        "peak_rss_through_merge_mib": round(hwm_after_merge / 1024, 1),
        "peak_rss_while_draining_mib": round(drain_peak / 1024, 1),
        "drained_items": done,
        "drain_seconds": drain_seconds,
        "downloads": downloads,
    }


def _median_merge(scratch: Path, n: int, runs: int) -> dict[str, Any]:
    """The merge alone (downloads paused), `runs` times: median and every run."""
    results = []
    for run in range(runs):
        folder = scratch / f"merge-only-{run}"
        folder.mkdir()
        results.append(merge_and_drain(folder, n, drain_seconds=0.0, downloads=False))
    keys = ("drop_to_merged_s", "parse_s", "write_s")
    return {
        "records": n,
        "runs": runs,
        **{f"{k}_median": round(statistics.median(r[k] for r in results), 3) for k in keys},
        **{f"{k}_all": [r[k] for r in results] for k in keys},
    }


def manifest_merge(scratch: Path, n: int, runs: int = 3) -> dict[str, Any]:
    """Manifest.merge of an n-record extract alone, in this process, as the merge child does it
    (followed by its sha256, then recorded): wall and CPU seconds, median of `runs`. The write
    half of drop-to-merged, without the daemon, the parse or the machine's other work; with
    PYTHONPATH at an older checkout it gives that version's figure."""
    from ingestd.policy.extract import parse_extract
    from ingestd.store.manifest import Manifest

    data = json.dumps(records(n, "https://cdn.example")).encode()
    parsed = parse_extract(data)
    del data
    wall, cpu = [], []
    for run in range(runs):
        manifest = Manifest.open(scratch / f"merge-manifest-{run}" / "manifest.sqlite3")
        t0, c0 = time.monotonic(), time.process_time()
        try:
            manifest.merge(parsed.records, "extract_x.json", time.time(), "ab" * 32)
        except TypeError:  # a version that did not follow extracts
            manifest.merge(parsed.records, "extract_x.json", time.time())
        manifest.record_extract("extract_x.json", "ab" * 32, 1, "merged", time.time())
        wall.append(time.monotonic() - t0)
        cpu.append(time.process_time() - c0)
        manifest.close()
    return {
        "records": n,
        "runs": runs,
        "wall_s_median": round(statistics.median(wall), 3),
        "cpu_s_median": round(statistics.median(cpu), 3),
        "wall_s_all": [round(t, 3) for t in wall],
        "cpu_s_all": [round(t, 3) for t in cpu],
    }


def status_on_big_manifest(scratch: Path, n: int, repeats: int = 5) -> dict[str, Any]:
    """Time `ingestd status --json` (a new process each time) on an n-item manifest."""
    from ingestd.policy.extract import Record
    from ingestd.store.manifest import Manifest

    state = scratch / "big-state"
    manifest = Manifest.open(state / "manifest.sqlite3")
    started = time.monotonic()
    batch = 50_000
    raw = json.dumps(SAMPLE)
    for first in range(0, n, batch):
        recs = [
            Record(f"75{i:017d}", f"https://cdn.example/v/{i}.mp4?{QUERY}", f"t{i % 7}", raw)
            for i in range(first, min(first + batch, n))
        ]
        manifest.merge(recs, "big.json", now=time.time())
    manifest.close()
    # A manifest weeks into its life: 90 % done, each with its size. (Plain SQL here: the daemon
    # gets there one completion at a time.) Counting bytes of done items is the costly part.
    conn = sqlite3.connect(state / "manifest.sqlite3")
    with conn:
        conn.execute(
            "UPDATE items SET state = 'done', bytes = 2000000 + rowid, sha256 = 'x', path = 'p'"
            " WHERE rowid % 10 != 0"
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    build = time.monotonic() - started
    times = []
    for _ in range(repeats):
        t0 = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ingestd",
                "status",
                "--json",
                "--state-dir",
                str(state),
                "--data-dir",
                str(scratch / "big-data"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(time.monotonic() - t0)
    counted = sum(json.loads(out.stdout)["items"].values())
    python_start = []
    for _ in range(repeats):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_start.append(time.monotonic() - t0)
    return {
        "items": counted,
        "build_s": round(build, 1),
        "status_json_s_median": round(statistics.median(times), 3),
        "status_json_s_all": [round(t, 3) for t in times],
        "bare_python_start_s_median": round(statistics.median(python_start), 3),
    }


def drop_to_request(scratch: Path, samples: int = 20) -> dict[str, Any]:
    """From the rename of a 1-record extract to the daemon's download_started, p50 and p95."""
    origin_root = scratch / "latency-origin"
    origin_root.mkdir(parents=True, exist_ok=True)
    origin = Nginx(origin_root, LOOPBACK)
    (origin.www / "v").mkdir(parents=True, exist_ok=True)
    (origin.www / "v" / "x.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 1000)
    origin.start()
    root = scratch / "latency-daemon"
    root.mkdir()
    latencies = []
    try:
        daemon = IngestdProcess(root, origin.ca_path, [], {})
        assert daemon.wait("daemon_ready", 1, 60)
        for i in range(samples):
            url = f"{origin.base}/v/x.mp4?expire={FAR_FUTURE}&n={i}"
            raw = root / "data" / "raw"
            record = [{"aweme_id": f"9{i:05d}", "media": {"source_url": url}, "query_context": "l"}]
            temp = raw / f".extract_l{i:03d}.json.tmp"
            temp.write_text(json.dumps(record))
            t0 = time.monotonic()
            os.rename(temp, raw / f"extract_l{i:03d}.json")
            assert daemon.wait("download_started", i + 1, 30)
            latencies.append(daemon.last["download_started"] - t0)
            assert daemon.wait("download_completed", i + 1, 30)
            time.sleep(0.05)  # let the watcher settle between drops: independent samples
        daemon.stop()
    finally:
        origin.stop()
    latencies.sort()
    return {
        "samples": samples,
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
    }


def run_backlog(
    scratch: Path, records_n: int = 200_000, manifest_n: int = 1_000_000
) -> dict[str, Any]:
    """All backlog figures, printed and returned."""
    results = {
        "drop_to_first_request": drop_to_request(scratch),
        "merge_and_drain": merge_and_drain(scratch, records_n, drain_seconds=30.0),
        "merge_only": _median_merge(scratch, records_n, runs=3),
        "manifest_merge": manifest_merge(scratch, records_n),
        "status_on_big_manifest": status_on_big_manifest(scratch, manifest_n),
    }
    print(json.dumps(results, indent=2))
    return results
