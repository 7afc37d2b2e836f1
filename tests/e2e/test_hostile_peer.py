"""A hostile HTTP/2 server floods the daemon's connection; the daemon's bounds must hold.

For each flood kind (support.flood_origin), one daemon process downloads from a good origin
(hypercorn) while three of its items sit on a FloodOrigin that answers every request by
flooding the connection for FLOOD_SECONDS. The requirement (net/http2/connection.py's
invariants, seen from outside): the good downloads finish meanwhile and byte-exact, no flooded
item is published, the daemon spends under CPU_BOUND CPU seconds over the flood window (plus
BASELINE_CPU for the good downloads it does at the same time) and its peak RSS stays under
RSS_BOUND. `pytest -s` prints one line per kind with what was measured.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.daemon import TERMINAL, Daemon
from support.extracts import make_record, new_id
from support.flood_origin import FLOOD_KINDS, FloodOrigin
from support.origin import OriginServer

TOPIC = "hostile peer"
FLOOD_SECONDS = 2.0
FLOOD_ITEMS = 3
GOOD_ITEMS = 10
GOOD_SIZE = 256 * 1024
# CPU seconds a flood may cost the daemon: 40 % of the window, where an unbounded flood takes
# 85-100 % (each kind measured 0.12-0.23 s over its 4.4 s window when the window was 4 s).
CPU_BOUND = 0.4 * FLOOD_SECONDS
BASELINE_CPU = 0.5  # allowance for the good downloads done during the flood window
RSS_BOUND = 100 * 1024 * 1024
_TICKS = os.sysconf("SC_CLK_TCK")

# Kinds measured over a bound: strict xfail with the numbers (see the report of the run).
KNOWN_WEAK: dict[str, str] = {}  # tiny_data was, until DATA frames had a minimum average


def _cases() -> list[object]:
    return [
        pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=KNOWN_WEAK[kind]))
        if kind in KNOWN_WEAK
        else kind
        for kind in FLOOD_KINDS
    ]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of the line


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture
def flood_origin(tmp_path: Path) -> Iterator[FloodOrigin]:
    server = FloodOrigin(tmp_path / "flood", seconds=FLOOD_SECONDS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("kind", _cases())
def test_flood_is_bounded(
    kind: str,
    tmp_path: Path,
    origin: OriginServer,
    flood_origin: FloodOrigin,
    daemon_factory: Callable[..., Daemon],
) -> None:
    began = time.monotonic()
    bundle = tmp_path / "cas.pem"
    bundle.write_text(
        Path(origin.ca_pem_path).read_text() + Path(flood_origin.ca_pem_path).read_text()
    )
    daemon = daemon_factory(
        ca_bundle=str(bundle),
        allowed_hosts=["localhost"],
        concurrency=6,
        timeout=3.0,
        max_attempts=1,
    )
    prefix = f"hostile{uuid.uuid4().hex[:6]}"
    rng = random.Random(prefix)
    good = {new_id(rng): f"{prefix}-good{i}" for i in range(GOOD_ITEMS)}
    bad = {new_id(rng): f"{prefix}-{kind}{i}" for i in range(FLOOD_ITEMS)}
    flood_records = [
        make_record(aweme_id, flood_origin.url(name, kind), TOPIC, GOOD_SIZE)
        for aweme_id, name in bad.items()
    ]
    good_records = [
        make_record(aweme_id, origin.url(name, size=GOOD_SIZE), TOPIC, GOOD_SIZE)
        for aweme_id, name in good.items()
    ]

    daemon.start()
    pid = daemon.pid
    # Measured from before the first extract: floods the client cuts short last milliseconds,
    # so the window starts before the first request (BASELINE_CPU covers the merges and the
    # good downloads).
    window_began = time.monotonic()
    cpu_before = cpu_seconds(pid)
    daemon.drop_atomic("extract_20261126T160000.json", flood_records)
    merged = daemon.wait_for("extract_merged", timeout=10)
    assert merged["records"] == len(flood_records), merged
    assert flood_origin.wait_until(lambda: bool(flood_origin.floods()), timeout=10), (
        f"no flood started\n{daemon.tail()}"
    )
    # The good items arrive once a flood is on, so that they download while it lasts.
    daemon.drop_atomic("extract_20261126T160500.json", good_records)
    merged = daemon.wait_for_count("extract_merged", 2, timeout=10)[1]
    assert merged["records"] == len(good_records), merged

    def floods_over() -> bool:
        floods = flood_origin.floods()
        return bool(floods) and all(f.ended is not None for f in floods)

    # The window: from the first extract until FLOOD_SECONDS after the first flood began and
    # every flood has ended (the client left, or the origin gave up after FLOOD_SECONDS), and a
    # little after for the daemon to react.
    # The daemon runs for the whole flood time even when it cut the floods short at once, so
    # that whatever it does next (reconnect, retry, get flooded again) is counted too.
    first_flood = min(f.started for f in flood_origin.floods())
    time.sleep(max(0.0, first_flood + FLOOD_SECONDS - time.monotonic()))
    assert flood_origin.wait_until(floods_over, timeout=FLOOD_SECONDS + 5), flood_origin.floods()
    time.sleep(0.3)
    window = time.monotonic() - window_began
    cpu_used = cpu_seconds(pid) - cpu_before

    completed = {
        str(e["aweme_id"]) for e in daemon.events("download_completed")
    }  # before waiting on: the good ones must finish meanwhile, not after the flood
    good_during = len(completed & set(good))

    def settled() -> bool:
        ended = {str(e.get("aweme_id")) for e in daemon.events() if e["event"] in TERMINAL}
        return set(good) <= ended

    daemon.wait_until(settled, "every good item ended", timeout=20)
    time.sleep(0.2)
    rss = peak_rss(pid)
    floods = flood_origin.floods()
    print(
        f"\n[hostile {kind}] cpu {cpu_used:.2f} s over {window:.1f} s window "
        f"(drop to end {cpu_seconds(pid) - cpu_before:.2f} s), peak rss {rss / 2**20:.1f} MiB, "
        f"floods {len(floods)} on {flood_origin.connections - 1} connection(s): "
        + ", ".join(
            f"{f.frames} frames/{f.bytes / 2**20:.1f} MiB in {f.seconds:.2f} s by {f.ended_by}"
            for f in floods
        )
        + f"; good done within the window {good_during}/{GOOD_ITEMS}"
        f"; flood items ended {_outcomes(daemon, bad)}"
        f"; origin loop errors {len(flood_origin.loop_errors)}"
        f"; test {time.monotonic() - began:.1f} s"
    )

    done = {str(i["aweme_id"]) for i in _list_done(daemon)}
    assert set(good) <= done, f"good items not done: {sorted(set(good) - done)}"
    for aweme_id, name in good.items():
        path = daemon.media_path(TOPIC, aweme_id)
        assert path.read_bytes() == OriginServer.content(name, GOOD_SIZE), name
    assert not (done & set(bad)), f"a flooded item was published: {sorted(done & set(bad))}"
    for aweme_id in bad:
        assert not daemon.media_path(TOPIC, aweme_id).exists(), aweme_id
    assert not (completed & set(bad))
    assert cpu_used < CPU_BOUND + BASELINE_CPU, (
        f"{kind}: {cpu_used:.2f} CPU s over a {window:.1f} s flood window"
    )
    assert rss < RSS_BOUND, f"{kind}: peak RSS {rss / 2**20:.1f} MiB"


def _list_done(daemon: Daemon) -> list[dict[str, object]]:
    result = daemon.cli("list", "--state", "done", "--json")
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, list), parsed
    return parsed


def _outcomes(daemon: Daemon, ids: dict[str, str]) -> list[str]:
    """How each of `ids` ended so far: the terminal event's name and reason, or "open"."""
    ended = {
        str(e.get("aweme_id")): f"{e['event']}:{e.get('reason')}"
        for e in daemon.events()
        if e["event"] in TERMINAL
    }
    return [ended.get(aweme_id, "open") for aweme_id in ids]
