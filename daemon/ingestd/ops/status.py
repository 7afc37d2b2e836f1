"""What `ingestd status` and `ingestd list` show: tables and JSON documents."""

from __future__ import annotations

from collections.abc import Sequence

from ingestd.ops.live import human_bytes
from ingestd.store.manifest import Counts, ItemSummary


def status_document(counts: Counts) -> dict[str, object]:
    """The stable JSON shape of `ingestd status --json`."""
    return {
        "items": {
            k: counts.items.get(k, 0) for k in ("pending", "active", "done", "expired", "failed")
        },
        "extracts": {
            "merged": counts.extracts.get("merged", 0),
            "rejected": counts.extracts.get("rejected", 0),
            "duplicate": counts.extracts.get("duplicate", 0),
        },
        "bytes_done": counts.bytes_done,
    }


def status_line(counts: Counts, in_flight: int, rate_bytes_per_s: float) -> str:
    """One line for `systemctl status` (sd_notify STATUS=)."""
    items = counts.items
    total = sum(items.values())
    return (
        f"done {items.get('done', 0)}/{total}, pending {items.get('pending', 0)}, "
        f"active {in_flight}, failed {items.get('failed', 0)}, expired {items.get('expired', 0)}; "
        f"{rate_bytes_per_s / 1e6:.1f} MB/s"
    )


def status_table(counts: Counts, manifest: str) -> str:
    """A readable summary for a terminal."""
    doc = status_document(counts)
    items = doc["items"]
    extracts = doc["extracts"]
    assert isinstance(items, dict) and isinstance(extracts, dict)
    total = sum(items.values())
    lines = [f"manifest  {manifest}", "", "items"]
    lines += [f"  {state:<9}{n:>10}" for state, n in items.items()]
    lines += [f"  {'total':<9}{total:>10}", "", "extracts"]
    lines += [f"  {k:<9}{n:>10}" for k, n in extracts.items()]
    lines += ["", f"downloaded {human_bytes(counts.bytes_done)} ({counts.bytes_done} bytes)"]
    return "\n".join(lines)


def list_table(items: Sequence[ItemSummary]) -> str:
    """`ingestd list` as aligned columns."""
    header = f"{'AWEME_ID':<22} {'STATE':<8} {'ATTEMPTS':>8}  {'REASON':<18} {'BYTES':>12}  TOPIC"
    rows = [
        f"{i.aweme_id:<22} {i.state:<8} {i.attempts:>8}  {i.reason or '-':<18} "
        f"{i.bytes if i.bytes is not None else '-':>12}  {i.topics[0] if i.topics else None!s}"
        for i in items
    ]
    return "\n".join([header, *rows])


def list_document(items: Sequence[ItemSummary]) -> list[dict[str, object]]:
    """`ingestd list --json`."""
    return [
        {
            "aweme_id": i.aweme_id,
            "state": i.state,
            "topics": list(i.topics),
            "attempts": i.attempts,
            "reason": i.reason,
            "status": i.status,
            "bytes": i.bytes,
            "updated_at": i.updated_at,
        }
        for i in items
    ]
