"""`ingestd status`: counts from the manifest, as a table or as JSON."""

from __future__ import annotations

from ingestd.store.manifest import Counts


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
