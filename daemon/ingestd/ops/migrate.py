"""`ingestd migrate`: copy a library's SQLite manifest into PostgreSQL, then check the copy's
counts against the source's. The stores read (store.manifest) and write (store.postgres);
this module runs them and says how it went."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ingestd.ops.live import human_bytes
from ingestd.store.base import Counts, ExtractProgress, StoredProgress
from ingestd.store.manifest import Manifest

if TYPE_CHECKING:  # psycopg is imported only once a URL asks for it (store.open)
    from ingestd.store.postgres import PostgresManifest


@dataclass(frozen=True, slots=True)
class Migration:
    """What `migrate` copied, and what each side counts."""

    source: Counts  # as the SQLite manifest counts itself
    target: Counts  # as the PostgreSQL one does, after the copy
    active: int  # items the source had active: pending in the copy, their attempt spent
    held: int  # pending items the source had claimed ahead: let go in the copy
    followed: int  # extracts followed to completion (their progress rows)
    unlike: tuple[str, ...]  # the extracts whose progress differs in the copy
    seconds: float

    @property
    def expected(self) -> Counts:
        """What the copy must count: the source's counts, active items pending."""
        items = dict(self.source.items)
        items["pending"] = items.get("pending", 0) + items.get("active", 0)
        items["active"] = 0
        return Counts(items, dict(self.source.extracts), self.source.bytes_done)

    def mismatches(self) -> list[str]:
        """Each way the copy's counts differ from the source's, in words; empty when none."""
        want, got = self.expected, self.target
        pairs = [(f"{s} items", n, got.items.get(s, 0)) for s, n in want.items.items()]
        pairs.append(("bytes done", want.bytes_done, got.bytes_done))
        pairs += [(f"{s} extracts", n, got.extracts.get(s, 0)) for s, n in want.extracts.items()]
        found = [
            f"{what}: {a:,} expected from the source, {b:,} in the copy"
            for what, a, b in pairs
            if a != b
        ]
        if self.unlike:
            found.append(
                f"the progress of {len(self.unlike)} extract(s) differs in the copy:"
                f" {', '.join(self.unlike[:3])}"
            )
        return found


def migrate(
    source: Manifest, target: PostgresManifest, data_dir: Path, name: str, node: str | None = None
) -> Migration:
    """Make `target` a copy of `source`, the manifest of the library `data_dir`, kept at `name`,
    as `node`'s library (see PostgresManifest.replace_with), and count both."""
    started = time.monotonic()
    with source.export() as copy:
        counts = source.counts()  # in the export's snapshot
        held = sum(load.held for load in source.in_flight_by_owner().values())
        target.replace_with(copy, data_dir, name, node)
    unlike = tuple(
        p.path
        for p in copy.progress
        if target.extract_progress(p.path, p.sha256) != _copied_progress(p)
    )
    return Migration(
        counts,
        target.counts(),
        counts.items.get("active", 0),
        held,
        len(copy.progress),
        unlike,
        time.monotonic() - started,
    )


def _copied_progress(p: StoredProgress) -> ExtractProgress:
    """How the copy of `p` reads: counts it has none of are 0 there (see replace_with)."""
    items, outstanding, done, expired, failed, size = (n or 0 for n in p[6:])
    return ExtractProgress(
        p.id,
        p.path,
        p.sha256,
        items,
        outstanding,
        done,
        expired,
        failed,
        size,
        p.merged_at,
        p.completed_at,
    )


def summary(migration: Migration, source: str, target: str) -> str:
    """What `ingestd migrate` prints: what the copy holds, and the next step. `target` is the
    URL as it may be shown (redact_dsn)."""
    counts = migration.target
    items = ", ".join(
        f"{n:,} {state}" for state, n in counts.items.items() if n or state != "active"
    )
    extracts = ", ".join(f"{n:,} {status}" for status, n in counts.extracts.items())
    lines = [
        f"copied {source} to {target} in {migration.seconds:.1f} s",
        f"  items      {sum(counts.items.values()):,}: {items}",
    ]
    if migration.active or migration.held:
        lines.append(
            f"             ({migration.active:,} active and {migration.held:,} held before:"
            " pending and unclaimed now, as after a restart)"
        )
    lines += [
        f"  downloaded {human_bytes(counts.bytes_done)} ({counts.bytes_done:,} bytes)",
        f"  extracts   {sum(counts.extracts.values()):,}: {extracts}"
        f" ({migration.followed:,} followed to their completion)",
        f'next: set manifest_url = "{target}" in the config (with its password, or one in'
        " PGPASSFILE), then start ingestd; the SQLite manifest stays as it is, unused",
    ]
    return "\n".join(lines)
