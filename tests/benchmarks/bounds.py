#!/usr/bin/env python3
"""What bounds ingestd on big files: our HTTP/2 client alone, then with each piece of the
daemon's per-byte work added, on the same nginx and files as bench.py's workload (b), against
curl in the same run.

    python tests/benchmarks/bounds.py              # workload b, 3 runs of each sink
    python tests/benchmarks/bounds.py --workload a

Sinks: `discard` (receive and decrypt only), `join` (+ the batch join and a worker-thread hop
per MiB, as the daemon does), `hash` (+ SHA-256), `write` (+ pwrite to tmpfs, no hash), `both`
(hash and write: the daemon's per-byte work). Wall and CPU are this process's own.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import bench

from ingestd.net import http2

SINKS = ("discard", "join", "hash", "write", "both")
BATCH = 1 << 20  # the daemon's WRITE_BATCH


def _work(
    sink: str, fd: int, chunks: Sequence[memoryview | bytes], offset: int, sha: hashlib._Hash
) -> None:
    data = b"".join(chunks)
    if sink in ("write", "both"):
        os.pwrite(fd, data, offset)
    if sink in ("hash", "both"):
        sha.update(data)


async def _fetch_all(origin: bench.Nginx, names: list[str], sink: str, out: Path) -> None:
    context = ssl.create_default_context(cafile=str(origin.ca_path))
    context.set_alpn_protocols(["h2"])

    async def resolve(host: str, port: int, timeout: float | None) -> list[str]:
        return ["127.0.0.1"]

    pool = http2.H2Pool(context, resolve)
    gate = asyncio.Semaphore(8)

    async def one(name: str) -> None:
        async with gate:
            response = await pool.request(
                "localhost", origin.port, b"GET", f"/{name}".encode(), [], 30, 30
            )
            fd = os.open(out / name.replace("/", "_"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            sha = hashlib.sha256()
            offset = size = 0
            pending: list[memoryview | bytes] = []
            try:
                async for batch in response.body:
                    if sink == "discard":
                        response.acknowledge(sum(map(len, batch)))
                        continue
                    pending += batch
                    size += sum(len(c) for c in batch)
                    if size >= BATCH:
                        await asyncio.to_thread(_work, sink, fd, pending, offset, sha)
                        response.acknowledge(size)  # written: the server may send as much again
                        offset, size, pending = offset + size, 0, []
                if pending:
                    await asyncio.to_thread(_work, sink, fd, pending, offset, sha)
            finally:
                os.close(fd)

    try:
        await asyncio.gather(*(one(n) for n in names))
    finally:
        await pool.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="b", choices=sorted(bench.WORKLOADS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scratch", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    bench.ensure_tools(False)
    workload = bench.WORKLOADS[args.workload]
    scratch = Path(tempfile.mkdtemp(prefix="ingestd-bounds-", dir=args.scratch))
    scratch.chmod(0o755)
    (scratch / "origin").mkdir()
    origin = bench.Nginx(scratch / "origin", bench.LOOPBACK)
    names = origin.make_files(workload)
    origin.start()
    gb = workload.files * workload.size / 1e9
    rows: dict[str, list[tuple[float, float]]] = {s: [] for s in (*SINKS, "curl")}
    try:
        for _ in range(args.runs):
            for sink in rows:  # interleaved, so drift hits every sink alike
                out = Path(tempfile.mkdtemp(dir=scratch))
                if sink == "curl":
                    urls = [f"{origin.base}/{n}" for n in names]
                    run = bench.run_curl(urls, out, origin.ca_path, [], 600)
                    rows[sink].append((run.wall_s, run.cpu_s))
                else:
                    before = resource.getrusage(resource.RUSAGE_SELF)
                    start = time.monotonic()
                    asyncio.run(_fetch_all(origin, names, sink, out))
                    wall = time.monotonic() - start
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                    rows[sink].append((wall, cpu))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        origin.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"workload {workload.name}: median of {args.runs}; CPU per GB is the process's own")
    print(f"{'sink':8} {'wall s':>7} {'CPU s/GB':>9}")
    for sink, values in rows.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values) / gb
        print(f"{sink:8} {wall:7.3f} {cpu:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
