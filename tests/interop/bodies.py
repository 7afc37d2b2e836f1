"""The files every server serves: deterministic, MP4-shaped, sized to hit the framing edges.

The daemon publishes only what starts like an MP4 (``ftyp`` at offset 4), so every body starts
with an ``ftyp`` box (the same one tests/support/origin.py uses) and goes on with bytes from a
PRNG seeded by the file's name: the same name gives the same bytes on every run.

Sizes: around the 16 KiB frame size and the 64 KiB default windows, one over 1 MiB and one over
8 MiB (many window updates, several of the daemon's 1 MiB writes, and past our 4 MiB per-stream
outstanding bound), and a few dozen ~200 KiB files so that streams overlap on a connection and a
server that sends GOAWAY every few requests does so many times within one run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

FTYP_HEADER = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
KiB = 1024
MiB = 1024 * 1024

EDGE_SIZES = (
    KiB,
    16383,
    16384,
    16385,
    65535,
    65536,
    65537,
    MiB + 7,
    8 * MiB + 3,
)
CI_EDGE_SIZES = (KiB, 16383, 16384, 16385, 65535, 65537, MiB + 7)


@dataclass(frozen=True)
class Body:
    """One served file: its name under the document root and its size."""

    name: str
    size: int

    def data(self) -> bytes:
        return _content(self.name, self.size)

    @property
    def sha256(self) -> str:
        return _sha256(self.name, self.size)


@functools.lru_cache(maxsize=128)
def _content(name: str, size: int) -> bytes:
    head = FTYP_HEADER[:size]
    return head + random.Random(f"interop/{name}/{size}").randbytes(size - len(head))


@functools.lru_cache(maxsize=256)
def _sha256(name: str, size: int) -> str:
    return hashlib.sha256(_content(name, size)).hexdigest()


def _many(count: int, around: int, spread: int, seed: str) -> list[Body]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        size = around - spread // 2 + rng.randrange(spread)
        out.append(Body(f"m{i:02d}-{size}.mp4", size))
    return out


def full_set() -> list[Body]:
    """The matrix's files: the edge sizes and 36 files of about 200 KiB (about 17 MB in all)."""
    edges = [Body(f"e-{size}.mp4", size) for size in EDGE_SIZES]
    return edges + _many(36, 200 * KiB, 64 * KiB, "full")


def ci_set() -> list[Body]:
    """A smaller set for CI (about 2.5 MB): the edges up to 1 MiB and 12 files of ~100 KiB."""
    edges = [Body(f"e-{size}.mp4", size) for size in CI_EDGE_SIZES]
    return edges + _many(12, 100 * KiB, 32 * KiB, "ci")


def write_docroot(bodies: list[Body], docroot: Path) -> None:
    """Write every body under ``docroot``, readable by servers that drop root (0755/0644)."""
    docroot.mkdir(parents=True, exist_ok=True)
    os.chmod(docroot, 0o755)
    for body in bodies:
        path = docroot / body.name
        path.write_bytes(body.data())
        os.chmod(path, 0o644)


def total_bytes(bodies: list[Body]) -> int:
    return sum(b.size for b in bodies)
