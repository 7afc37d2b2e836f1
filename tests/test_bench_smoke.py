"""The benchmark itself must not rot: a few-second run against the real nginx, curl and aria2c."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "benchmarks" / "bench.py"
TOOLS = ("nginx", "curl", "aria2c")
missing = [t for t in TOOLS if shutil.which(t) is None]


@pytest.mark.skipif(bool(missing) and not os.environ.get("CI"), reason=f"missing {missing}")
def test_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["tool"]: r for r in report["results"]}
    assert set(rows) == {"ingestd", "curl", "aria2c"}
    for row in rows.values():
        assert row["failures"] == 0 and row["wall_s"] > 0 and row["mb_per_s"] > 0, row
    assert rows["curl"]["wall_vs_curl"] == 1.0
    assert rows["ingestd"]["wall_vs_curl"] is not None


NODES = BENCH.with_name("nodes.py")


def test_nodes_benchmark_smoke_run(tmp_path: Path) -> None:
    """nodes.py --smoke: 1 and 2 daemons in network namespaces on shaped links, one PostgreSQL."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    check = subprocess.run(
        [sys.executable, str(NODES), "--check"], capture_output=True, text=True, timeout=60, env=env
    )
    if check.returncode == 3:  # root, ip, tc with tbf, nginx, curl, PostgreSQL's binaries
        pytest.skip(f"nodes.py cannot run here: {check.stdout.strip()}")
    assert check.returncode == 0, check.stdout + check.stderr
    out = tmp_path / "nodes.json"
    result = subprocess.run(
        [sys.executable, str(NODES), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {r["label"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"curl, 1 link", "1 node", "2 nodes"}
    for row in rows.values():
        assert row["failures"] == 0 and row["wall_s"] > 0 and row["mb_per_s"] > 0, row
    assert rows["1 node"]["vs_one_node"] == 1.0
    assert len(rows["2 nodes"]["share_pct"]) == 2
