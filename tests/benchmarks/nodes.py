#!/usr/bin/env python3
"""Scale across nodes (issue 12): 1, 2 and 3 daemons, each in a network namespace of its own
behind its own emulated link, draw from one origin and one PostgreSQL manifest.

    python tests/benchmarks/nodes.py                # 1, 2, 3 nodes and curl; median of 3 runs
    python tests/benchmarks/nodes.py --files 48 --size-mib 8 --rate-mbit 100 --runs 5
    python tests/benchmarks/nodes.py --smoke        # 1 and 2 nodes, small files, seconds
    python tests/benchmarks/nodes.py --check        # can this machine run it? (exit 0 or 3)

Root only. The namespaces and addresses exist only while it runs, and only inside them:

    ingestd-node<k>: 10.199.<k>.2 dev inod<k>  <-veth, tbf each way->  iorg<k> 10.199.<k>.1
                                                       ingestd-origin: nginx on 10.199.100.1 (lo)

Every node reaches nginx at the same address (routed over its own link), so the URLs of the
one extract serve all of them. The extract is dropped into node 1's raw folder; it is merged
once into the shared manifest and the other nodes hear of it by NOTIFY. A run's time is from
that drop to the last `download_completed` (logged once the item's `done` is written); the
manifest, the files and the logs are then checked: every item done once, by one node, whole.
PostgreSQL is the tests' throwaway server (tests/support/postgres.py): its Unix socket reaches
into every namespace. The reference is curl (HTTP/2, --parallel) fetching the same files
through one node's link: the ceiling of one link. Output goes to tmpfs, as in bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DAEMON_SRC = HERE.parent.parent / "daemon"  # the daemons run this checkout's ingestd
sys.path[:0] = [str(HERE), str(HERE.parent), str(DAEMON_SRC)]

from bench import (  # noqa: E402
    CLK_TCK,
    FAR_FUTURE,
    IngestdProcess,
    MiB,
    Network,
    Nginx,
    Workload,
    _tree,
    ensure_tools,
    machine,
    run_curl,
    write_extract,
)

from ingestd.store.postgres import PostgresManifest  # noqa: E402
from support.postgres import PostgresCluster, PostgresError, find_bindir  # noqa: E402

ORIGIN_NS = "ingestd-origin"
NODE_NS = "ingestd-node{}"
ORIGIN_IP = "10.199.100.1"
LOCK = "/run/ingestd-nodes.lock"  # the namespaces have fixed names: one run at a time
CURL = 0  # the node count that stands for the curl reference
SKIP = 3  # --check's exit status when this machine cannot run the benchmark
SMOKE = Workload("nodes-smoke", 12, 256 * 1024)


# --- the network --------------------------------------------------------------------------


def _sh(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def remove_namespaces() -> None:
    """Delete this benchmark's namespaces (their veths go with them), a crashed run's too."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        if name == ORIGIN_NS or re.fullmatch(r"ingestd-node\d+", name):
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def _shape(ns: str, device: str, rate_mbit: float) -> None:
    # burst 128 KiB: more than one 64 KiB GSO packet (veth passes those; tbf would cut each
    # into segments), and 5 ms at 200 Mbit/s, so the rate holds within a few % over any
    # 0.1 s. latency 25 ms: a router-sized queue (625 KB at 200 Mbit/s) through which TCP
    # keeps the link full with few drops; with no base RTT, it adds no delay until it fills.
    _sh(
        *("tc", "-n", ns, "qdisc", "add", "dev", device, "root", "tbf"),
        *("rate", f"{rate_mbit:g}mbit", "burst", "128kb", "latency", "25ms"),
    )


@contextlib.contextmanager
def links(nodes: int, rate_mbit: float) -> Iterator[list[list[str]]]:
    """The origin namespace and `nodes` client ones, each on its own veth to the origin,
    shaped at `rate_mbit` both ways; yields each node's command prefix. Removed on exit."""
    if not 1 <= nodes <= 99:
        raise ValueError(f"1 to 99 nodes, not {nodes}")
    remove_namespaces()
    try:
        _sh("ip", "netns", "add", ORIGIN_NS)
        _sh("ip", "-n", ORIGIN_NS, "link", "set", "lo", "up")
        _sh("ip", "-n", ORIGIN_NS, "addr", "add", f"{ORIGIN_IP}/32", "dev", "lo")
        for k in range(1, nodes + 1):
            ns, near, far = NODE_NS.format(k), f"inod{k}", f"iorg{k}"
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            # Both ends are born in their namespaces: nothing appears in the host's.
            _sh(
                *("ip", "link", "add", near, "netns", ns, "type", "veth"),
                *("peer", "name", far, "netns", ORIGIN_NS),
            )
            _sh("ip", "-n", ns, "addr", "add", f"10.199.{k}.2/24", "dev", near)
            _sh("ip", "-n", ORIGIN_NS, "addr", "add", f"10.199.{k}.1/24", "dev", far)
            for where, device in ((ns, near), (ORIGIN_NS, far)):
                _sh("ip", "-n", where, "link", "set", device, "up")
                _shape(where, device, rate_mbit)
            _sh("ip", "-n", ns, "route", "add", f"{ORIGIN_IP}/32", "via", f"10.199.{k}.1")
        yield [["ip", "netns", "exec", NODE_NS.format(k)] for k in range(1, nodes + 1)]
    finally:
        remove_namespaces()


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Hold the benchmark's lock: a second run would tear down the first one's namespaces."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit("another nodes.py is running (one at a time)")
        yield
    finally:
        os.close(fd)


def cannot_run() -> str | None:
    """Why this machine cannot run the benchmark, or None (sets up and removes one link)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    missing = [t for t in ("ip", "tc", "nginx", "curl") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        find_bindir()
    except PostgresError as exc:
        return str(exc)
    try:
        with exclusive(), links(1, 200):
            pass
    except RuntimeError as exc:
        return f"cannot build a shaped veth link: {exc}"
    return None


# --- measuring ----------------------------------------------------------------------------


def _family_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its descendants, live or reaped (PostgreSQL's backends)."""
    total = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def _busy_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of the whole machine so far: other processes and softirq
    (the veths and tbf) included, which no process's own figure shows."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, sum(values[:8])


@dataclass
class Run:
    nodes: int  # CURL for the reference
    wall_s: float
    bytes: int
    ok: bool
    note: str = ""
    items: list[int] = field(default_factory=list)  # per node
    ends_s: list[float] = field(default_factory=list)  # per node: drop to its last completion
    daemon_cpu_s: list[float] = field(default_factory=list)  # per node
    nginx_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0
    busy_cores: float = 0.0


@dataclass
class Summary:
    label: str
    nodes: int
    runs: int
    failures: int
    wall_s: float
    mb_per_s: float
    mbit_per_s: float
    vs_one_node: float | None
    share_pct: list[float]  # items per node, over all good runs
    daemon_cpu_s: float
    nginx_cpu_s: float
    pg_cpu_s: float
    busy_cores: float
    walls: list[float]
    mb_per_s_runs: list[float]


class Bench:
    """The origin, the database and the links, set up once; one `run` per configuration."""

    def __init__(
        self,
        scratch: Path,
        origin: Nginx,
        cluster: PostgresCluster,
        prefixes: list[list[str]],
        workload: Workload,
        extra: dict[str, Any],
        timeout: float,
    ) -> None:
        self.scratch, self.origin, self.cluster = scratch, origin, cluster
        self.prefixes, self.workload, self.extra, self.timeout = prefixes, workload, extra, timeout
        names = origin.make_files(workload)
        self.urls = [f"{origin.base}/{n}?expire={FAR_FUTURE}&signature=bench" for n in names]
        self.ids = [f"{i:019d}" for i in range(len(names))]  # as write_extract numbers them
        self.total = workload.files * workload.size

    def run(self, nodes: int) -> Run:
        assert self.origin.proc is not None
        if self.origin.proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({self.origin.proc.returncode})")
        out = Path(tempfile.mkdtemp(prefix=f"n{nodes}-", dir=self.scratch / "out"))
        try:
            if nodes == CURL:
                return self._curl(out)
            url = self.cluster.new_database()
            try:
                return self._nodes(nodes, url, out)
            finally:
                self.cluster.drop_database(url)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def _curl(self, out: Path) -> Run:
        ticks0 = _busy_ticks()
        nginx0 = self._nginx_cpu()
        result = run_curl(self.urls, out, self.origin.ca_path, self.prefixes[0], self.timeout)
        run = Run(CURL, result.wall_s, result.bytes, result.ok, result.note)
        run.nginx_cpu_s = self._nginx_cpu() - nginx0
        run.daemon_cpu_s = [result.cpu_s]
        run.busy_cores = _cores(ticks0, _busy_ticks())
        if run.bytes != self.total:
            run.ok, run.note = False, f"{run.note} bytes {run.bytes}/{self.total}"
        return run

    def _nodes(self, nodes: int, url: str, out: Path) -> Run:
        homes = [out / f"node{k}" for k in range(1, nodes + 1)]
        daemons: list[IngestdProcess] = []
        try:
            for k, home in enumerate(homes, 1):
                home.mkdir()
                config = {"manifest_url": url, "node_name": f"node{k}", **self.extra}
                prefix = self.prefixes[k - 1]
                daemons.append(
                    IngestdProcess(home, self.origin.ca_path, prefix, config, ORIGIN_IP, DAEMON_SRC)
                )
            for k, daemon in enumerate(daemons, 1):
                if not daemon.wait("daemon_ready", 1, 60):
                    return Run(nodes, 0, 0, False, f"node{k} not ready: {_tail(daemon)}")
            pg = self._postmaster()
            cpu0 = [_family_cpu(d.pid) for d in daemons]
            nginx0, pg0, ticks0 = self._nginx_cpu(), _family_cpu(pg), _busy_ticks()
            t0 = write_extract(homes[0] / "data" / "raw", self.urls)
            finished, why = _wait_terminal(daemons, self.origin, len(self.urls), self.timeout)
            t1 = max(d.last.get("download_completed", t0) for d in daemons)
            run = Run(nodes, t1 - t0, 0, finished, why)
            run.ends_s = [round(d.last.get("download_completed", t0) - t0, 2) for d in daemons]
            run.daemon_cpu_s = [_family_cpu(d.pid) - c for d, c in zip(daemons, cpu0, strict=True)]
            run.nginx_cpu_s = self._nginx_cpu() - nginx0
            run.pg_cpu_s = _family_cpu(pg) - pg0
            run.busy_cores = _cores(ticks0, _busy_ticks())
        finally:
            for daemon in daemons:
                daemon.stop()
        problems = self._check(url, homes, daemons, run)
        if problems:
            run.ok = False
            run.note = "; ".join([run.note, *problems]).strip("; ")
        return run

    def _check(
        self, url: str, homes: list[Path], daemons: list[IngestdProcess], run: Run
    ) -> list[str]:
        """Every item done once, in the manifest, the logs and on disk; fills run.items and
        run.bytes. The problems found (none: all good)."""
        problems: list[str] = []
        holder: dict[str, int] = {}
        store = PostgresManifest.open(url)
        try:
            counts = {state: n for state, n in store.counts().items.items() if n}
            if counts != {"done": len(self.ids)}:
                problems.append(f"manifest {counts}")
            for k, home in enumerate(homes, 1):
                after = ""
                while page := store.done_items(after, node=f"node{k}"):
                    for item in page:
                        holder[item.aweme_id] = k
                        path = home / "data" / "media_assets" / str(item.path)
                        size = path.stat().st_size if path.is_file() else -1
                        run.bytes += max(size, 0)
                        if size != self.workload.size or item.bytes != self.workload.size:
                            problems.append(f"{item.aweme_id} on node{k}: {size} bytes")
                    after = page[-1].aweme_id
        finally:
            store.close()
        if sorted(holder) != self.ids:
            problems.append(f"{len(holder)} of {len(self.ids)} items held by a node")
        logged: Counter[tuple[str, int]] = Counter()
        for k, daemon in enumerate(daemons, 1):
            for line in daemon.lines:
                event = json.loads(line)
                if event.get("event") == "download_completed":
                    logged[(str(event["aweme_id"]), k)] += 1
        if logged != Counter(holder.items()):
            problems.append("completions logged do not match the manifest's holders")
        files = sum(1 for home in homes for _ in (home / "data" / "media_assets").rglob("*.mp4"))
        if files != len(self.ids):
            problems.append(f"{files} files for {len(self.ids)} items")
        run.items = [sum(1 for k in holder.values() if k == n) for n in range(1, len(homes) + 1)]
        return problems

    def _nginx_cpu(self) -> float:
        assert self.origin.proc is not None
        return _family_cpu(self.origin.proc.pid)  # `ip netns exec` execs nginx: its master

    def _postmaster(self) -> int:
        return int((self.cluster.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _wait_terminal(
    daemons: list[IngestdProcess], origin: Nginx, items: int, timeout: float
) -> tuple[bool, str]:
    """Until every item is completed, failed or expired on some node; (all completed, why not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts: Counter[str] = Counter()
        for daemon in daemons:
            for name in ("download_completed", "download_failed", "download_expired"):
                counts[name] += daemon.events.get(name, 0)
        if counts.total() >= items:
            ok = counts["download_completed"] == items
            return ok, "" if ok else f"outcomes {dict(counts)}"
        for k, daemon in enumerate(daemons, 1):
            if daemon.proc.poll() is not None:
                return False, f"node{k} exited {daemon.proc.returncode}: {_tail(daemon)}"
        if origin.proc is None or origin.proc.poll() is not None:
            return False, "nginx exited"
        time.sleep(0.02)
    return False, f"timed out after {timeout:.0f} s"


def _tail(daemon: IngestdProcess) -> str:
    if daemon.proc.poll() is None:
        return daemon.lines[-1][-300:] if daemon.lines else "no output"
    return daemon.proc.stderr.read()[-500:] if daemon.proc.stderr else ""


def _cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total else 0.0


# --- the report ---------------------------------------------------------------------------


def label(nodes: int) -> str:
    return "curl, 1 link" if nodes == CURL else f"{nodes} node{'s' if nodes > 1 else ''}"


def summarize(nodes: int, runs: list[Run], total: int) -> Summary:
    good = [r for r in runs if r.ok]  # none: every figure 0, and `fail` says why
    wall = statistics.median(r.wall_s for r in good) if good else 0.0
    items = [sum(col) for col in zip(*(r.items for r in good), strict=True)] if nodes else []
    return Summary(
        label=label(nodes),
        nodes=nodes,
        runs=len(runs),
        failures=sum(not r.ok for r in runs),
        wall_s=round(wall, 3),
        mb_per_s=round(total / wall / 1e6, 1) if wall else 0.0,
        mbit_per_s=round(total * 8 / wall / 1e6, 1) if wall else 0.0,
        vs_one_node=None,
        share_pct=[round(100 * n / max(sum(items), 1), 1) for n in items],
        daemon_cpu_s=_median([sum(r.daemon_cpu_s) for r in good]),
        nginx_cpu_s=_median([r.nginx_cpu_s for r in good]),
        pg_cpu_s=_median([r.pg_cpu_s for r in good]),
        busy_cores=_median([r.busy_cores for r in good]),
        walls=[round(r.wall_s, 3) for r in runs],
        mb_per_s_runs=[round(total / r.wall_s / 1e6, 1) if r.wall_s else 0.0 for r in runs],
    )


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def print_run(i: int, run: Run, total: int) -> None:
    rate = total / run.wall_s / 1e6 if run.wall_s else 0.0
    items = "/".join(str(n) for n in run.items) or "-"
    ends = "/".join(f"{e:.1f}" for e in run.ends_s) or "-"
    cpu = "+".join(f"{c:.2f}" for c in run.daemon_cpu_s) or "-"
    print(
        f"  run {i + 1} {label(run.nodes):<13} {run.wall_s:7.2f} s {rate:6.1f} MB/s"
        f"  items {items:<11} ends {ends:<14} cpu {cpu} nginx {run.nginx_cpu_s:.2f}"
        f" pg {run.pg_cpu_s:.2f} busy {run.busy_cores:.2f} cores"
        f"  {'ok' if run.ok else 'FAILED ' + run.note}",
        flush=True,
    )


def print_table(title: str, rows: list[Summary]) -> None:
    print(f"\n{title}")
    head = (
        f"{'':<13} {'wall s':>7} {'MB/s':>6} {'Mbit/s':>7} {'x 1 node':>8} {'items % per node':<17}"
        f" {'CPU s':>6} {'nginx':>6} {'PG':>5} {'busy':>5} {'fail':>4}"
    )
    print(head)
    for r in rows:
        ratio = f"{r.vs_one_node:.2f}" if r.vs_one_node is not None else "-"
        share = "/".join(f"{s:.0f}" for s in r.share_pct) or "-"
        print(
            f"{r.label:<13} {r.wall_s:>7.2f} {r.mb_per_s:>6.1f} {r.mbit_per_s:>7.1f} {ratio:>8}"
            f" {share:<17} {r.daemon_cpu_s:>6.2f} {r.nginx_cpu_s:>6.2f} {r.pg_cpu_s:>5.2f}"
            f" {r.busy_cores:>5.2f} {r.failures:>4}"
        )
    print(
        "CPU s: the daemons' (curl's for curl), all nodes together; nginx, PG: the origin's and"
        " the database's; busy: cores the whole machine kept busy (softirq and others included)."
    )
    print("runs (wall s / MB/s):")
    for r in rows:
        listed = ", ".join(
            f"{w:.2f}/{m:.1f}" for w, m in zip(r.walls, r.mb_per_s_runs, strict=True)
        )
        print(f"  {r.label:<13} {listed}")


# --- the suite ----------------------------------------------------------------------------


def bench_nodes(args: argparse.Namespace, workload: Workload, counts: list[int]) -> dict[str, Any]:
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    total = workload.files * workload.size
    # Slower than a quarter of one link means something is wrong: give up there.
    timeout = 60 + 4 * total * 8 / (args.rate_mbit * 1e6)
    scratch = Path(tempfile.mkdtemp(prefix="ingestd-nodes-", dir=args.scratch))
    scratch.chmod(0o755)  # nginx workers and PostgreSQL run as unprivileged users
    (scratch / "out").mkdir()
    configs = ([CURL] if args.curl else []) + counts
    results: dict[int, list[Run]] = {n: [] for n in configs}
    try:
        with (
            exclusive(),
            links(max(counts), args.rate_mbit) as prefixes,
            PostgresCluster(base_dir=scratch) as cluster,
        ):
            server = ["ip", "netns", "exec", ORIGIN_NS]
            network = Network("nodes", prefixes[0], server, host=ORIGIN_IP, listen=ORIGIN_IP)
            (scratch / "origin").mkdir()
            origin = Nginx(scratch / "origin", network)
            origin.start()
            try:
                bench = Bench(scratch, origin, cluster, prefixes, workload, extra, timeout)
                for i in range(args.runs):
                    shift = i % len(configs)  # who goes first turns, so drift spreads out
                    for nodes in configs[shift:] + configs[:shift]:
                        run = bench.run(nodes)
                        results[nodes].append(run)
                        print_run(i, run, total)
            finally:
                origin.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [summarize(n, results[n], total) for n in configs]
    one = next((r for r in rows if r.nodes == 1), None)
    for row in rows:
        if one is not None and one.mb_per_s:
            row.vs_one_node = round(row.mb_per_s / one.mb_per_s, 2)
    return {
        "machine": machine(),
        "link": f"{args.rate_mbit:g} Mbit/s each way per node (tbf)",
        "workload": asdict(workload),
        "config": extra,
        "results": [asdict(r) for r in rows],
        "runs": {label(n): [asdict(r) for r in results[n]] for n in configs},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,2,3", help="node counts to run (default 1,2,3)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=96)
    parser.add_argument("--size-mib", type=float, default=8.0)
    parser.add_argument("--rate-mbit", type=float, default=200.0, help="each link, each way")
    parser.add_argument("--no-curl", dest="curl", action="store_false", help="skip curl's run")
    parser.add_argument("--smoke", action="store_true", help="1 and 2 nodes, 12 small files")
    parser.add_argument("--check", action="store_true", help=f"exit 0 if it can run, {SKIP} if not")
    parser.add_argument("--scratch", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--json", type=Path, help="also write the results there")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON", help="extra ingestd config"
    )
    args = parser.parse_args()
    if args.check:
        reason = cannot_run()
        print(reason or "ok")
        return SKIP if reason else 0
    if os.geteuid() != 0:
        sys.exit("nodes.py needs root (network namespaces, tc)")
    ensure_tools(wan=True)
    workload = Workload("nodes", args.files, int(args.size_mib * MiB))
    counts = [int(n) for n in args.nodes.split(",")]
    if args.smoke:
        workload, counts, args.runs = SMOKE, [1, 2], 1
    # Both unwind: daemons, nginx and PostgreSQL stopped, namespaces removed. SIGINT too, as
    # a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report = bench_nodes(args, workload, counts)
    rows = [Summary(**r) for r in report["results"]]
    title = (
        f"{workload.files} x {workload.size / MiB:g} MiB, {report['link']};"
        f" median of {args.runs}; {report['machine']['date']}"
    )
    print_table(title, rows)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    failed = sum(r.failures for r in rows)
    if failed:
        print(f"\n{failed} failed run(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: everything stopped and removed", file=sys.stderr)
        sys.exit(130)
