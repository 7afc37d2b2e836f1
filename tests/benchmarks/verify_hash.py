#!/usr/bin/env python3
"""How fast `ingestd verify` reads and hashes a library, against `sha256sum` and a plain read.

    python tests/benchmarks/verify_hash.py                      # 4 GiB in 40 files, jobs 1 2 4
    python tests/benchmarks/verify_hash.py --gib 2 --jobs 1 4 --cold

Builds a library (files of random bytes, a manifest marking them done) under --dir (default: a
temporary folder on the disk holding /var/tmp, not tmpfs), then times `verify()` with each
number of hashing threads, `sha256sum` over the same files, and `cat > /dev/null` (what the disk
gives). With --cold (root only) the page cache is dropped before each run, so the disk is what
is measured; without it the files are read from memory and the CPU is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingestd.fs.library import Library
from ingestd.ops.verify import verify
from ingestd.policy.extract import Record
from ingestd.store.manifest import Completion, Manifest

MIB = 1024 * 1024


def build(root: Path, gib: float, files: int) -> tuple[Path, list[Path]]:
    media = root / "media_assets" / "bench"
    media.mkdir(parents=True, exist_ok=True)
    size = int(gib * 1024) // files * MIB  # whole MiB
    manifest = Manifest.open(root / "state" / "manifest.sqlite3")
    ids = [f"{7440000000000000000 + i}" for i in range(files)]
    manifest.merge([Record(i, f"https://h/{i}", "bench", "{}") for i in ids], "bench.json", 1.0)
    done, paths = [], []
    block = os.urandom(MIB)
    for aweme_id in ids:
        path = media / f"{aweme_id}.mp4"
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            for n in range(size // MIB):
                chunk = block[n % 7 :] + block[: n % 7]  # not all blocks alike
                out.write(chunk)
                digest.update(chunk)
        done.append(Completion(aweme_id, size, digest.hexdigest(), f"bench/{path.name}", [], 2.0))
        paths.append(path)
    manifest.complete_many(done)
    manifest.close()
    return root / "state" / "manifest.sqlite3", paths


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(label: str, total: int, cold: bool, run: object) -> float:
    if cold:
        drop_caches()
    started = time.perf_counter()
    assert callable(run)
    run()
    wall = time.perf_counter() - started
    print(f"{label:<22} {wall:7.2f} s  {total / wall / 1e6:8.0f} MB/s", flush=True)
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="drop the page cache first (root)")
    parser.add_argument("--dir", type=Path, help="where to build the library (kept)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="verify-bench-", dir="/var/tmp"))
    try:
        manifest_path, paths = build(root, args.gib, args.files)
        total = sum(p.stat().st_size for p in paths)
        print(
            f"{len(paths)} files, {total / 1e9:.2f} GB, {os.cpu_count()} CPUs,"
            f" {'cold' if args.cold else 'warm'} cache"
        )
        names = [str(p) for p in paths]
        for _ in range(args.runs):
            timed(
                "cat",
                total,
                args.cold,
                lambda: subprocess.run(
                    f"cat {' '.join(names)} > /dev/null", shell=True, check=True
                ),
            )
            timed(
                "sha256sum",
                total,
                args.cold,
                lambda: subprocess.run(
                    ["sha256sum", *names], check=True, stdout=subprocess.DEVNULL
                ),
            )
            for jobs in args.jobs:

                def run(jobs: int = jobs) -> None:
                    manifest = Manifest.open(manifest_path, readonly=True)
                    with Library(root / "media_assets") as library:
                        report = verify(manifest, library, jobs=jobs)
                    manifest.close()
                    assert report.exit_code == 0 and report.bytes_hashed == total, report.counts()

                timed(f"verify jobs={jobs}", total, args.cold, run)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
