#!/usr/bin/env python3
"""ingestd against curl and aria2c on the same files from the same local nginx (HTTP/2, TLS).

    python tests/benchmarks/bench.py            # workloads a, b, c; median of 5 runs each
    python tests/benchmarks/bench.py --wan      # through netem: 80 ms RTT, 0.5 % loss, 200 Mbit/s
    python tests/benchmarks/bench.py --backlog  # merge / drain / status / drop-to-request figures
    python tests/benchmarks/bench.py --smoke    # a few seconds: the benchmark still works

Everything runs on this machine: nginx on an ephemeral loopback port (inside a network namespace of
its own for --wan), certificates from trustme, files generated here. Missing tools (nginx, curl,
aria2c, iproute2) are installed with apt-get when running as root. Output goes to a tmpfs folder by
default so that the figures measure the transfer machinery, not the disk (ingestd fsyncs every
file; curl and aria2c do not).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trustme
import wanemu  # type: ignore[import-not-found]

MiB = 1024 * 1024
FAR_FUTURE = 4_102_444_800  # 2100-01-01: the benchmark's signed URLs never expire
NETNS = "ingestd-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_TO = os.environ.get("BENCH_PROFILE", "")  # py-spy raw stacks of ingestd runs
# BENCH_PROFILE_GIL=1: only samples that hold the GIL (where the interpreter's time goes).
PROFILE_GIL = ["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []
# BENCH_WRAP="perf stat -o out --": a command the daemon runs under (its whole life, startup too).
WRAP = os.environ.get("BENCH_WRAP", "").split()


@dataclass(frozen=True)
class Workload:
    name: str
    files: int
    size: int


WORKLOADS = {
    "a": Workload("a", 200, 2 * MiB),
    "b": Workload("b", 20, 50 * MiB),
    "c": Workload("c", 5000, 64 * 1024),
}
SMOKE = {"s": Workload("s", 12, 256 * 1024)}


@dataclass
class Run:
    tool: str
    wall_s: float
    cpu_s: float
    peak_rss_kib: int
    bytes: int
    ok: bool
    note: str = ""


@dataclass
class Summary:
    workload: str
    tool: str
    runs: int
    wall_s: float
    mb_per_s: float
    cpu_s_per_gb: float
    peak_rss_mib: float
    wall_vs_curl: float | None = None
    cpu_vs_curl: float | None = None
    failures: int = 0
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)


# --- tools ------------------------------------------------------------------------------


def ensure_tools(wan: bool) -> None:
    """Install what is missing (Debian packages), when we may."""
    wanted = {"nginx": "nginx-light", "curl": "curl", "aria2c": "aria2"}
    if wan:
        wanted["ip"] = "iproute2"
        wanted["tc"] = "iproute2"
    missing = sorted({pkg for tool, pkg in wanted.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing tools; install: apt-get install {' '.join(missing)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env)
    if result.returncode != 0 and "nginx-light" in missing:  # newer Debian: plain nginx
        missing = [("nginx" if p == "nginx-light" else p) for p in missing]
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, check=True)


def stop_process(proc: subprocess.Popen[Any], sig: int, grace: float) -> None:
    """Signal, wait `grace` seconds, then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Network:
    """Where the origin and the clients run, and the host name the URLs use."""

    title: str
    client_ns: list[str] = field(default_factory=list)  # command prefix for the clients
    server_ns: list[str] = field(default_factory=list)  # and for nginx
    host: str = "localhost"  # in URLs (the certificate names it)
    listen: str = "127.0.0.1"


LOOPBACK = Network("loopback")


@contextlib.contextmanager
def wan_network(delay_ms: int, loss: float, rate_mbit: int) -> Iterator[Network]:
    """80 ms RTT, 0.5 % loss, 200 Mbit/s. With the kernel's netem: one namespace whose
    loopback has netem, both ends in it. Without (this project's VMs): wanemu.py, a userspace
    forwarder between two namespaces over TUN devices."""
    shape = f"{2 * delay_ms} ms RTT, {loss} % loss, {rate_mbit} Mbit/s"
    subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    run_in = ["ip", "netns", "exec", NETNS]
    subprocess.run([*run_in, "ip", "link", "set", "lo", "up"], check=True)
    probe = [*run_in, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL)
        with emulated_wan(delay_ms, loss, rate_mbit) as network:
            yield network
        return
    try:
        subprocess.run([*run_in, "tc", "qdisc", "del", "dev", "lo", "root"], check=True)
        subprocess.run(
            [
                *run_in,
                "tc",
                "qdisc",
                "add",
                "dev",
                "lo",
                "root",
                "netem",
                "delay",
                f"{delay_ms}ms",
                "loss",
                f"{loss}%",
                "rate",
                f"{rate_mbit}mbit",
                "limit",
                "100000",
            ],
            check=True,
        )
        yield Network(f"WAN (netem: {shape})", run_in, run_in)
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def emulated_wan(delay_ms: int, loss: float, rate_mbit: int) -> Iterator[Network]:
    """wanemu.py in its own process (its CPU is not any tool's), until the block ends."""
    script = Path(__file__).with_name("wanemu.py")
    argv = [sys.executable, str(script), "--delay-ms", str(delay_ms), "--loss", str(loss)]
    emulator = subprocess.Popen(
        [*argv, "--rate-mbit", str(rate_mbit)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert emulator.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(emulator.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout=15)
        if not ready or ready[0].strip() != "ready":
            raise RuntimeError("wanemu.py did not come up within 15 s")
        yield Network(
            f"WAN (emulated, wanemu.py: {2 * delay_ms} ms RTT, {loss} % loss, {rate_mbit} Mbit/s)",
            ["ip", "netns", "exec", wanemu.CLIENT_NS],
            ["ip", "netns", "exec", wanemu.SERVER_NS],
            host=wanemu.SERVER_IP,
            listen=wanemu.SERVER_IP,
        )
    finally:
        stop_process(emulator, signal.SIGTERM, 10)


# --- the origin ---------------------------------------------------------------------------


class Nginx:
    """nginx serving generated MP4-shaped files over TLS + HTTP/2 on an ephemeral port."""

    def __init__(self, root: Path, network: Network) -> None:
        self.root = root
        self.www = root / "www"
        self.ns = network.server_ns
        self.network = network
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        ca = trustme.CA()
        # The network's own host too (nodes.py's origin address), once.
        names = dict.fromkeys(("localhost", "127.0.0.1", wanemu.SERVER_IP, network.host))
        cert = ca.issue_cert(*names)
        self.ca_path = root / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        self.cert_path = root / "cert.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_path))

    def make_files(self, workload: Workload) -> list[str]:
        folder = self.www / workload.name
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(workload.name)
        names = []
        block = rng.randbytes(min(workload.size, 4 * MiB))
        for i in range(workload.files):
            name = f"{i:06d}.mp4"
            path = folder / name
            if not path.exists() or path.stat().st_size != workload.size:
                head = b"\x00\x00\x00\x18ftypisom" + i.to_bytes(8, "big")
                body = (block * (workload.size // len(block) + 1))[: workload.size - len(head)]
                path.write_bytes(head + body)
            names.append(f"{workload.name}/{name}")
        return names

    def start(self, location: str = "location / { }") -> None:
        self.port = free_port()
        for sub in ("logs", "tmp"):
            (self.root / sub).mkdir(exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.root}/tmp/body;
    proxy_temp_path {self.root}/tmp/proxy;
    fastcgi_temp_path {self.root}/tmp/fastcgi;
    uwsgi_temp_path {self.root}/tmp/uwsgi;
    scgi_temp_path {self.root}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    http2_max_requests 100000;
    types {{ video/mp4 mp4; }}
    server {{
        listen {self.network.listen}:{self.port} ssl http2;
        ssl_certificate {self.cert_path};
        ssl_certificate_key {self.cert_path};
        root {self.www};
        {location}
    }}
}}
""")
        self.proc = subprocess.Popen(
            [*self.ns, "nginx", "-c", str(conf), "-p", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [
                    *self.ns,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "--cacert",
                    str(self.ca_path),
                    "-w",
                    "%{http_code}",
                    f"{self.base}/",
                ],
                capture_output=True,
                text=True,
            )
            if probe.stdout in ("200", "403", "404"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx died: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.05)
        raise RuntimeError("nginx did not answer within 10 s")

    @property
    def base(self) -> str:
        return f"https://{self.network.host}:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT, 10)  # SIGQUIT: nginx's graceful stop
            self.proc = None


# --- measuring processes ------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _proc_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants alive now (ingestd's download workers, with `workers`)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def _tree_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of `pids` still there."""
    cpu = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            cpu[pid] = _proc_cpu(pid)
    return cpu


def run_child(argv: list[str], cwd: Path, timeout: float) -> tuple[float, float, int, int]:
    """Run a client to completion: wall seconds, CPU seconds, peak RSS KiB, exit status.

    Peak RSS is read from /proc (VmHWM) while it runs: wait4's ru_maxrss would include the
    benchmark's own memory, inherited at fork before the exec.
    """
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = started + timeout
    hwm = 0
    while True:
        with contextlib.suppress(OSError, ValueError):
            hwm = max(hwm, _proc_hwm_kib(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.002)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, hwm, proc.returncode


def run_curl(urls: list[str], out: Path, ca: Path, ns: list[str], timeout: float) -> Run:
    config = out / "curl.cfg"
    lines = []
    for i, url in enumerate(urls):
        lines.append(f'url = "{url}"\noutput = "{out}/{i:06d}.mp4"\n')
    config.write_text("".join(lines))
    argv = [
        *ns,
        "curl",
        "--http2",
        "-Z",
        "--parallel-max",
        "8",
        "-s",
        "--fail",
        "--cacert",
        str(ca),
        "-K",
        str(config),
    ]
    wall, cpu, rss, code = run_child(argv, out, timeout)
    return Run("curl", wall, cpu, rss, _output_bytes(out), code == 0, f"exit {code}")


def run_aria2c(urls: list[str], out: Path, ca: Path, ns: list[str], timeout: float) -> Run:
    listing = out / "aria2.txt"
    listing.write_text("".join(f"{url}\n  out={i:06d}.mp4\n" for i, url in enumerate(urls)))
    argv = [
        *ns,
        "aria2c",
        "-j",
        "8",
        "-i",
        str(listing),
        "-d",
        str(out),
        f"--ca-certificate={ca}",
        "--console-log-level=error",
        "--summary-interval=0",
        "--file-allocation=none",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--max-connection-per-server=1",
        "--split=1",
        "--quiet=true",
    ]
    wall, cpu, rss, code = run_child(argv, out, timeout)
    return Run("aria2c", wall, cpu, rss, _output_bytes(out), code == 0, f"exit {code}")


def _output_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.mp4"))


class IngestdProcess:
    """A real `ingestd run` with its JSON events read in a thread."""

    def __init__(
        self,
        root: Path,
        ca: Path,
        ns: list[str],
        extra: dict[str, Any],
        host: str = "localhost",
        source: Path | None = None,
    ) -> None:
        self.root = root
        config = {
            "data_dir": str(root / "data"),
            "state_dir": str(root / "state"),
            "log_file": str(root / "events.jsonl"),
            "ca_bundle": str(ca),
            "allowed_hosts": [host],
            "concurrency": 8,
            "min_free_bytes": 0,
            "max_file_bytes": 1 << 40,
            "log_format": "json",
            "progress_seconds": 3600.0,
            **extra,
        }
        self.config_path = root / "ingestd.toml"
        self.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        self.proc = subprocess.Popen(
            [*ns, *WRAP, sys.executable, "-m", "ingestd", "run", "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
            # Another checkout's source root (--baseline): its ingestd, this benchmark.
            env=None if source is None else {**os.environ, "PYTHONPATH": str(source)},
        )
        self.events: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            try:
                name = json.loads(line).get("event", "")
            except ValueError:
                continue
            with self._cond:
                self.lines.append(line)
                self.events[name] = self.events.get(name, 0) + 1
                self.first.setdefault(name, now)
                self.last[name] = now
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait(self, name: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.events.get(name, 0) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 15)


def _die_with_parent() -> None:
    # A benchmark killed by a timeout must not leave its daemon running.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def write_extract(raw: Path, urls: list[str], topic: str = "bench") -> float:
    records = [
        {"aweme_id": f"{i:019d}", "media": {"source_url": url}, "query_context": topic}
        for i, url in enumerate(urls)
    ]
    temp = raw / ".extract_bench.json.tmp"
    temp.write_text(json.dumps(records))
    final = raw / "extract_bench.json"
    os.rename(temp, final)
    return time.monotonic()


def run_ingestd(
    urls: list[str],
    out: Path,
    ca: Path,
    ns: list[str],
    timeout: float,
    extra: dict[str, Any],
    host: str = "localhost",
    source: Path | None = None,
    tool: str = "ingestd",
) -> Run:
    daemon = IngestdProcess(out, ca, ns, extra, host, source)
    try:
        if not daemon.wait("daemon_ready", 1, 30):
            daemon.stop()
            err = daemon.proc.stderr.read() if daemon.proc.stderr else ""
            return Run(tool, 0, 0, 0, 0, False, "not ready: " + err[-500:])
        pid = daemon.pid  # under `ip netns exec` too: ip execs the daemon
        profiler = None
        if PROFILE_TO:
            profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "--threads",
                    *PROFILE_GIL,
                    "-o",
                    f"{PROFILE_TO}.{tool}.{pid}",  # one file a run: ingestd and baseline apart
                    "-p",
                    str(pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        # With `workers`, the workers' CPU counts too, and peak RSS is the sum of each
        # process's peak (an upper bound of the tree's).
        pids = _tree(pid)
        cpu0 = _tree_cpu(pids)
        t0 = write_extract(out / "data" / "raw", urls)
        ok = daemon.wait("download_completed", len(urls), timeout)
        t1 = daemon.last.get("download_completed", time.monotonic())
        cpu1 = _tree_cpu(pids)
        cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
        rss = sum(_proc_hwm_kib(p) for p in cpu1)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=30)
        failed = daemon.events.get("download_failed", 0)
        note = f"failed={failed} retried={daemon.events.get('download_retry_scheduled', 0)}"
    finally:
        daemon.stop()
    return Run(tool, t1 - t0, cpu, rss, _output_bytes(out / "data"), ok, note)


# --- the suite ----------------------------------------------------------------------------


def summarize(workload: Workload, runs: list[Run]) -> Summary:
    good = [r for r in runs if r.ok] or runs
    wall = statistics.median(r.wall_s for r in good)
    cpu = statistics.median(r.cpu_s for r in good)
    total = workload.files * workload.size
    return Summary(
        workload=workload.name,
        tool=runs[0].tool,
        runs=len(runs),
        wall_s=round(wall, 3),
        mb_per_s=round(total / wall / 1e6, 1) if wall else 0.0,
        cpu_s_per_gb=round(cpu / (total / 1e9), 2),
        peak_rss_mib=round(max(r.peak_rss_kib for r in good) / 1024, 1),
        failures=sum(not r.ok for r in runs),
        walls=[round(r.wall_s, 3) for r in runs],
        cpus=[round(r.cpu_s, 3) for r in runs],
    )


def bench_workloads(
    workloads: list[Workload],
    runs: int,
    tools: list[str],
    scratch: Path,
    network: Network,
    ingestd_extra: dict[str, Any],
    baseline: Path | None = None,
    variants: dict[str, dict[str, Any]] | None = None,
) -> list[Summary]:
    """Every tool on every workload, `runs` times, alternating who goes first. `variants`:
    more ingestd runs (tool name: config on top of `ingestd_extra`), of this checkout."""
    variants = variants or {}
    ns = network.client_ns
    (scratch / "origin").mkdir(parents=True, exist_ok=True)
    origin = Nginx(scratch / "origin", network)
    summaries: list[Summary] = []
    for workload in workloads:
        names = origin.make_files(workload)
        origin.start()
        try:
            urls = [f"{origin.base}/{n}?expire={FAR_FUTURE}&signature=bench" for n in names]
            timeout = 60.0 if workload.name in SMOKE else 600.0
            results: dict[str, list[Run]] = {t: [] for t in tools}
            for i in range(runs):
                order = (
                    tools[i % len(tools) :] + tools[: i % len(tools)]
                )  # alternate who goes first
                for tool in order:
                    out = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=scratch / "out"))
                    try:
                        if tool == "curl":
                            run = run_curl(urls, out, origin.ca_path, ns, timeout)
                        elif tool == "aria2c":
                            run = run_aria2c(urls, out, origin.ca_path, ns, timeout)
                        else:
                            source = baseline if tool == "baseline" else None
                            run = run_ingestd(
                                urls,
                                out,
                                origin.ca_path,
                                ns,
                                timeout,
                                {**ingestd_extra, **variants.get(tool, {})},
                                network.host,
                                source,
                                tool,
                            )
                        expected = workload.files * workload.size
                        if run.bytes != expected:
                            run.ok = False
                            run.note += f" bytes {run.bytes}/{expected}"
                        results[tool].append(run)
                        print(
                            f"  {workload.name} {tool:8} run {i + 1}: {run.wall_s:7.3f} s "
                            f"cpu {run.cpu_s:6.2f} s rss {run.peak_rss_kib / 1024:6.1f} MiB "
                            f"{'ok' if run.ok else 'FAILED ' + run.note}",
                            flush=True,
                        )
                    finally:
                        shutil.rmtree(out, ignore_errors=True)
            rows = [summarize(workload, results[t]) for t in tools]
            if "baseline" in results and "ingestd" in results:
                print_pairs(workload.name, results["ingestd"], results["baseline"])
            curl = next((r for r in rows if r.tool == "curl"), None)
            for row in rows:
                if curl is not None and curl.wall_s:
                    row.wall_vs_curl = round(row.wall_s / curl.wall_s, 2)
                    row.cpu_vs_curl = round(row.cpu_s_per_gb / max(curl.cpu_s_per_gb, 1e-9), 2)
            summaries += rows
        finally:
            origin.stop()
    return summaries


def print_pairs(workload: str, runs: list[Run], baseline: list[Run]) -> None:
    """ingestd against --baseline run by run: each pair ran back to back, so the machine's
    drift cancels out of the ratio; the median of the pairs is the figure to quote. CPU time
    (the daemon's own, user and system) is printed beside wall time: on a shared machine it
    moves less from run to run."""
    pairs = [(new, old) for new, old in zip(runs, baseline, strict=True) if new.ok and old.ok]
    for label in ("wall", "cpu"):
        values = [(getattr(new, f"{label}_s"), getattr(old, f"{label}_s")) for new, old in pairs]
        diffs = [(new / old - 1) * 100 for new, old in values if old]
        if diffs:
            listed = " ".join(f"{d:+.1f}" for d in diffs)
            print(
                f"  {workload} ingestd vs baseline, {label}: median"
                f" {statistics.median(diffs):+.1f} % over {len(diffs)} pairs ({listed})",
                flush=True,
            )


def print_table(title: str, rows: list[Summary]) -> None:
    print(f"\n{title}")
    print(
        f"{'wl':<3} {'tool':<18} {'wall s':>8} {'MB/s':>8} {'CPU s/GB':>9} {'RSS MiB':>8} "
        f"{'wall/curl':>9} {'cpu/curl':>9} {'fail':>5}"
    )
    for r in rows:
        print(
            f"{r.workload:<3} {r.tool:<18} {r.wall_s:>8.3f} {r.mb_per_s:>8.1f} "
            f"{r.cpu_s_per_gb:>9.2f} {r.peak_rss_mib:>8.1f} "
            f"{r.wall_vs_curl if r.wall_vs_curl is not None else '-':>9} "
            f"{r.cpu_vs_curl if r.cpu_vs_curl is not None else '-':>9} {r.failures:>5}"
        )


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="abc", help="which of a, b, c (default: abc)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tools", default="ingestd,curl,aria2c")
    parser.add_argument("--wan", action="store_true", help="through netem in a network namespace")
    parser.add_argument("--backlog", action="store_true", help="backlog figures instead")
    parser.add_argument("--smoke", action="store_true", help="tiny, one run, a few seconds")
    parser.add_argument("--scratch", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--json", default="bench-results.json", help="where to write results")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also run the ingestd of another checkout (a git worktree), alternating with this"
        " one, and print the paired wall-time differences",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra ingestd config, e.g. --set concurrency=16",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=JSON[,KEY=JSON]",
        help="also run ingestd with this config on top (a tool of its own, in the same"
        " alternation), e.g. --variant workers=2",
    )
    args = parser.parse_args()
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    ensure_tools(args.wan)
    scratch = Path(tempfile.mkdtemp(prefix="ingestd-bench-", dir=args.scratch))
    scratch.chmod(0o755)  # nginx workers run as an unprivileged user
    (scratch / "out").mkdir()
    report: dict[str, Any] = {"machine": machine(), "config": extra}
    try:
        if args.backlog:
            from backlog import run_backlog  # type: ignore[import-not-found]

            report["backlog"] = run_backlog(scratch)
        else:
            tools = args.tools.split(",")
            baseline = None
            if args.baseline is not None:
                baseline = (args.baseline / "daemon").resolve()
                if not (baseline / "ingestd").is_dir():
                    parser.error(f"--baseline {args.baseline}: no daemon/ingestd there")
                tools.append("baseline")
            variants = {
                f"ingestd[{spec}]": {
                    k: json.loads(v) for k, v in (pair.split("=", 1) for pair in spec.split(","))
                }
                for spec in args.variant
            }
            tools += list(variants)
            report["variants"] = variants
            if args.smoke:
                workloads, runs = list(SMOKE.values()), 1
            else:
                workloads, runs = [WORKLOADS[w] for w in args.workloads], args.runs
            context = wan_network(40, 0.5, 200) if args.wan else contextlib.nullcontext(LOOPBACK)
            with context as network:
                rows = bench_workloads(
                    workloads, runs, tools, scratch, network, extra, baseline, variants
                )
            print_table(f"{network.title}; median of {runs}; {report['machine']['date']}", rows)
            report["network"] = network.title
            report["profile"] = "wan" if args.wan else "loopback"
            report["results"] = [asdict(r) for r in rows]
            failed = sum(r.failures for r in rows)
            if failed:
                print(f"\n{failed} failed run(s)", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return 1 if any(r.get("failures") for r in report.get("results", [])) else 0


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(main())
