"""What `ingestd status` and `ingestd list` show: tables and JSON documents."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

from ingestd.ops.live import human_bytes, human_duration, human_rate
from ingestd.policy.naming import topic_folder
from ingestd.store.base import NODE_SILENT_S, Counts, ItemSummary, NodeReport, OwnerLoad


def node_state(report: NodeReport, now: float) -> str:
    """What `status` says a node is: its own word, unless it went silent without stopping."""
    if report.state != "stopped" and now - report.seen_at > NODE_SILENT_S:
        return "not_responding"
    return report.state


def status_document(
    counts: Counts,
    owners: Mapping[str, OwnerLoad] | None = None,
    fleet: Sequence[NodeReport] = (),
    now: float = 0.0,
) -> dict[str, object]:
    """The stable JSON shape of `ingestd status --json`; `nodes`: the items each owner (a node,
    or `node/worker`; "" for claims without one) has running (`active`) and claimed ahead;
    `fleet`: what each node last reported of itself (at `seen_at`, epoch seconds), its state
    judged at `now`."""
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
        "nodes": {
            name: {"active": load.active, "held": load.held}
            for name, load in (owners or {}).items()
        },
        "fleet": {
            r.node: {
                "state": node_state(r, now),
                "seen_at": r.seen_at,
                "in_flight": r.in_flight,
                "bytes_in_flight": r.bytes_in_flight,
                "rate_bytes_per_s": round(r.rate),
            }
            for r in fleet
        },
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


def status_table(
    counts: Counts,
    manifest: str,
    owners: Mapping[str, OwnerLoad] | None = None,
    fleet: Sequence[NodeReport] = (),
    now: float = 0.0,
) -> str:
    """A readable summary for a terminal."""
    doc = status_document(counts, owners)
    items = doc["items"]
    extracts = doc["extracts"]
    assert isinstance(items, dict) and isinstance(extracts, dict)
    total = sum(items.values())
    lines = [f"manifest  {manifest}", "", "items"]
    lines += [f"  {state:<9}{n:>10}" for state, n in items.items()]
    lines += [f"  {'total':<9}{total:>10}", "", "extracts"]
    lines += [f"  {k:<9}{n:>10}" for k, n in extracts.items()]
    lines += ["", f"downloaded {human_bytes(counts.bytes_done)} ({counts.bytes_done} bytes)"]
    if fleet:
        head = f"{'node':<18} {'state':<14} {'seen':>9} {'in flight':>9} {'received':>10}"
        lines += ["", f"{head} {'rate':>11}"]
        for r in fleet:
            seen = human_duration(max(now - r.seen_at, 0.0)) + " ago"
            lines.append(
                f"  {r.node:<16} {node_state(r, now):<14} {seen:>9} {r.in_flight:>9}"
                f" {human_bytes(r.bytes_in_flight):>10} {human_rate(r.rate):>11}"
            )
    if owners:
        lines += ["", f"in flight by node {'active':>9} {'held':>6}"]
        lines += [f"  {name or '-':<16}{o.active:>10} {o.held:>6}" for name, o in owners.items()]
    return "\n".join(lines)


def item_detail(item: ItemSummary) -> str:
    """The DETAIL column of `ingestd list`: the reason and the HTTP status, if any."""
    if item.reason is None:
        return "-" if item.status is None else f"HTTP {item.status}"
    return item.reason if item.status is None else f"{item.reason} (HTTP {item.status})"


def list_rows(items: Iterable[ItemSummary]) -> Iterator[str]:
    """`ingestd list` as aligned columns, line by line (the header first)."""
    yield f"{'AWEME_ID':<22} {'STATE':<8} {'ATTEMPTS':>8}  {'DETAIL':<30} {'BYTES':>12}  TOPIC"
    for i in items:
        yield (
            f"{i.aweme_id:<22} {i.state:<8} {i.attempts:>8}  {item_detail(i):<30} "
            f"{i.bytes if i.bytes is not None else '-':>12}  {i.topics[0] if i.topics else None!s}"
        )


def list_table(items: Sequence[ItemSummary]) -> str:
    """`ingestd list` as aligned columns."""
    return "\n".join(list_rows(items))


def item_paths(item: ItemSummary, media_dir: Path) -> list[str]:
    """Where a done item's file is: the folder of its first topic, then every further topic
    folder it is (or, while its links are being made, will be) linked into."""
    if item.state != "done" or not item.path:
        return []
    first = PurePosixPath(item.path)
    folders = {first.parent.name}
    paths = [str(media_dir / first)]
    for topic in item.topics:
        folder = topic_folder(topic)
        if folder not in folders:
            folders.add(folder)
            paths.append(str(media_dir / folder / first.name))
    return paths


def item_document(item: ItemSummary, media_dir: Path | None = None) -> dict[str, object]:
    """One element of `ingestd list --json`; with an item listed `full` and `media_dir`, its
    digest, paths and raw record (the extract's own fields: desc, create_time...) too."""
    doc: dict[str, object] = {
        "aweme_id": item.aweme_id,
        "state": item.state,
        "topics": list(item.topics),
        "attempts": item.attempts,
        "reason": item.reason,
        "status": item.status,
        "bytes": item.bytes,
        "updated_at": item.updated_at,
    }
    if media_dir is not None:
        doc["sha256"] = item.sha256
        doc["paths"] = item_paths(item, media_dir)
        try:
            doc["record"] = json.loads(item.record) if item.record is not None else None
        except ValueError:  # it was parsed once to be merged: only for safety
            doc["record"] = None
    return doc


def list_document(
    items: Sequence[ItemSummary], media_dir: Path | None = None
) -> list[dict[str, object]]:
    """`ingestd list --json`, whole (the command streams the same elements)."""
    return [item_document(i, media_dir) for i in items]


def json_array(documents: Iterable[dict[str, object]]) -> Iterator[str]:
    """A JSON array written as its elements come, one element a line (`[` and `]` on lines of
    their own), so a million items never sit in memory at once."""
    yield "["
    previous = None
    for doc in documents:
        if previous is not None:
            yield previous + ","
        previous = json.dumps(doc)
    if previous is not None:
        yield previous
    yield "]"
