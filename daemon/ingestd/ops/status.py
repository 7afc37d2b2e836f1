"""What `ingestd status` and `ingestd list` show: tables, JSON documents, the live view."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

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


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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
    lines += ["", f"downloaded {_human_bytes(counts.bytes_done)} ({counts.bytes_done} bytes)"]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Rate:
    """Throughput between two status samples."""

    bytes_per_s: float
    items_per_s: float


def measure_rate(before: Counts, after: Counts, seconds: float) -> Rate:
    """Bytes and completed items per second between two samples."""
    seconds = max(seconds, 1e-6)
    done_delta = after.items.get("done", 0) - before.items.get("done", 0)
    return Rate(
        max(after.bytes_done - before.bytes_done, 0) / seconds, max(done_delta, 0) / seconds
    )


def progress_bar(done: int, total: int, width: int = 40) -> str:
    """`[#####.....]  12.5%` for done of total."""
    fraction = done / total if total else 1.0
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%"


def eta_text(remaining: int, rate: Rate) -> str:
    """Time left at the current item rate, as h:mm:ss, or `-` when unknown."""
    if remaining <= 0:
        return "0:00:00"
    if rate.items_per_s <= 0:
        return "-"
    seconds = int(remaining / rate.items_per_s)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def watch_frame(counts: Counts, rate: Rate, failures: Sequence[ItemSummary]) -> str:
    """One screen of `ingestd status --watch`."""
    items = counts.items
    total = sum(items.values())
    done = items.get("done", 0)
    remaining = items.get("pending", 0) + items.get("active", 0)
    lines = [
        f"ingestd  {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"{progress_bar(done, total)}  {done}/{total} done",
        f"downloaded {_human_bytes(counts.bytes_done)}   rate {rate.bytes_per_s / 1e6:.2f} MB/s"
        f"   ({rate.items_per_s:.1f} items/s)   ETA {eta_text(remaining, rate)}",
        "  ".join(f"{k} {items.get(k, 0)}" for k in ("pending", "active", "expired", "failed")),
        "",
        "recent failures:" if failures else "no failures",
    ]
    for item in failures:
        topic = item.topics[0] if item.topics else None
        lines.append(
            f"  {item.aweme_id:<22} {item.state:<8} {item.reason or '-':<18} "
            f"attempts {item.attempts}  topic {topic!s}"
        )
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
