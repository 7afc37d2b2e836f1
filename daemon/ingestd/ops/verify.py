"""`ingestd verify`: check every done video, and each of its topic links, against the size and
SHA-256 the manifest recorded; find orphan `.part` files and strays; with `repair`, re-queue or
re-link what is broken and remove orphan parts.

Safe while the daemon runs: the manifest is read one short statement at a time (500 items), the
hashing happens outside any transaction, and every repair is one short write transaction that
first checks the item (still done with the same SHA-256; for a `.part`, not pending or active),
so the daemon cannot claim the item while its files are changed. The decisions are in
policy/verify.py, the file work in fs/library.py.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Protocol, TextIO

from ingestd.fs.library import Entry, Identity, Library, sha256_fd
from ingestd.policy.verify import (
    Action,
    Copy,
    Facts,
    Kind,
    Problem,
    classify_file,
    exit_code,
    item_folders,
    judge_copy,
    name_kind,
    placement,
    plan_repair,
    remaining,
)
from ingestd.store.base import DoneItem, ManifestError, ManifestStore

BATCH = 500  # done items per manifest read, and files per lookup
# Files hashed at once: reads and SHA-256 release the GIL, so each thread uses a core while
# another waits on the disk. Measured on 2 cores (README, "What verify checks"): 2 threads
# hash a cached library at 1.9 GB/s against 1.1 GB/s for one; from disk all run at its speed.
JOBS = max(2, min(4, os.cpu_count() or 1))
REASONS = {Problem.MISSING: "verify_missing", Problem.CORRUPT: "verify_corrupt"}


class Progress(Protocol):
    """Where `verify` reports how far it is (a progress bar, or nothing)."""

    def start(self, total_bytes: int) -> None: ...
    def grow(self, n: int) -> None: ...
    def advance(self, n: int) -> None: ...  # called from hashing threads
    def scanning(self, entries: int) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    """No progress shown (stderr is not a terminal)."""

    def start(self, total_bytes: int) -> None:
        """Nothing."""

    def grow(self, n: int) -> None:
        """Nothing."""

    def advance(self, n: int) -> None:
        """Nothing."""

    def scanning(self, entries: int) -> None:
        """Nothing."""

    def stop(self) -> None:
        """Nothing."""


class Bar:
    """A rich progress bar on a terminal: bytes hashed of bytes done, rate, time left."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task("hashing", total=None)
        self._lock = threading.Lock()
        self._total = 0

    def start(self, total_bytes: int) -> None:
        """Show the bar."""
        self._total = total_bytes
        self._progress.update(self._task, total=total_bytes)
        self._progress.start()

    def grow(self, n: int) -> None:
        """More to hash than the done bytes (a link that is a copy)."""
        with self._lock:  # called from several hashing threads
            self._total += n
            self._progress.update(self._task, total=self._total)

    def advance(self, n: int) -> None:
        """`n` more bytes hashed (thread-safe: rich locks its tasks)."""
        self._progress.advance(self._task, n)

    def scanning(self, entries: int) -> None:
        """The hashing is over; the folders are being listed."""
        self._progress.update(self._task, description=f"scanning ({entries} files)")

    def stop(self) -> None:
        """Remove the bar (it is transient)."""
        self._progress.stop()


def progress_for(stream: TextIO) -> Progress:
    """A bar on `stream` when it is a terminal, else nothing at all (no control codes)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Bar(stream) if tty and os.environ.get("TERM") != "dumb" else NoProgress()


@dataclass(slots=True)
class Finding:
    """One problem at one path (relative to media_assets), and what the repair did."""

    problem: Problem
    path: str
    aweme_id: str | None = None
    expected_size: int | None = None
    actual_size: int | None = None
    detail: str | None = None
    repair: str | None = None  # what --repair did, or why it did nothing
    repaired: bool = False

    def document(self) -> dict[str, object]:
        """The finding in `verify --json`."""
        return {
            "problem": self.problem.value,
            "aweme_id": self.aweme_id,
            "path": self.path,
            "expected_size": self.expected_size,
            "actual_size": self.actual_size,
            "detail": self.detail,
            "repair": self.repair,
            "repaired": self.repaired,
        }


@dataclass(slots=True)
class CopyCheck:
    """One copy of a done video as found."""

    path: PurePosixPath
    state: Copy
    identity: Identity | None = None
    detail: str | None = None


@dataclass(slots=True)
class ItemCheck:
    """A done item's copies, checked."""

    item: DoneItem
    copies: list[CopyCheck]
    hashed: int = 0
    findings: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class Report:
    """What `verify` found and did."""

    media_dir: str
    repair: bool
    items: int = 0
    files: int = 0
    bytes_hashed: int = 0
    entries: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    relinked: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Problems found, per category."""
        counts = {p.value: 0 for p in Problem}
        for finding in self.findings:
            counts[finding.problem.value] += 1
        return counts

    def remaining(self) -> dict[str, int]:
        """Problems left that make the exit code 1 (strays never do)."""
        return remaining((f.problem, f.repaired) for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0 when nothing but strays is left, else 1."""
        return exit_code(self.remaining())

    def document(self) -> dict[str, object]:
        """`ingestd verify --json`."""
        return {
            "ok": self.exit_code == 0,
            "repair": self.repair,
            "media_dir": self.media_dir,
            "checked": {
                "items": self.items,
                "files": self.files,
                "bytes_hashed": self.bytes_hashed,
                "entries": self.entries,
                "seconds": round(self.seconds, 3),
            },
            "counts": self.counts(),
            "remaining": self.remaining(),
            "problems": [f.document() for f in self.findings],
            "repaired": {
                "requeued": self.requeued,
                "relinked": self.relinked,
                "removed": self.removed,
            },
        }


# --- checking the done items ---------------------------------------------------------------


def check_item(lib: Library, item: DoneItem, progress: Progress) -> ItemCheck:
    """Every copy of one done item: each inode is read once (hard links share one); a copy
    whose size differs is not hashed. Runs in a worker thread."""
    where = placement(item.aweme_id, item.path, item.topics)
    if where is None:
        why = "the recorded path is not <folder>/<id>.mp4: not opened"
        bad = CopyCheck(PurePosixPath(item.path or "-"), Copy.MISSING, None, why)
        progress.advance(item.bytes or 0)
        return ItemCheck(item, [bad])
    check = ItemCheck(item, [])
    seen: dict[tuple[int, int], tuple[Copy, str | None]] = {}
    budget = item.bytes or 0  # counted in the bar's total for the first inode hashed
    for path in where.paths:
        opened = lib.open(path)
        if opened.fd is None or opened.identity is None:
            state = Copy.MISSING if opened.absent is not None else Copy.UNREADABLE
            check.copies.append(CopyCheck(path, state, None, opened.absent or opened.error))
            continue
        identity = opened.identity
        key = (identity.dev, identity.ino)
        try:
            if key in seen:
                state, detail = seen[key]
            elif item.bytes is not None and identity.size != item.bytes:
                state, detail = Copy.CORRUPT, "size differs"
            else:
                if budget:
                    budget = 0
                else:
                    progress.grow(identity.size)
                sha256 = sha256_fd(opened.fd, progress.advance)
                check.hashed += identity.size
                state = judge_copy(item.bytes, item.sha256, identity.size, sha256)
                detail = "sha256 differs" if state is Copy.CORRUPT else None
            seen[key] = (state, detail)
        except OSError as exc:
            state, detail = Copy.UNREADABLE, exc.strerror or str(exc)
        finally:
            os.close(opened.fd)
        check.copies.append(CopyCheck(path, state, identity, detail))
    if budget:
        progress.advance(budget)  # nothing was hashed against it: the bar still gets there
    return check


def _checked(
    manifest: ManifestStore, lib: Library, progress: Progress, jobs: int, node: str | None
) -> Iterator[ItemCheck]:
    """Every done item (whose file `node` holds) checked, in id order, `jobs` files hashed at
    once; the manifest is read by this thread only, a batch at a time."""
    with ThreadPoolExecutor(max(jobs, 1), thread_name_prefix="verify") as pool:
        running: collections.deque[Future[ItemCheck]] = collections.deque()
        try:
            after = ""
            while True:
                batch = manifest.done_items(after, BATCH, node=node)
                for item in batch:
                    running.append(pool.submit(check_item, lib, item, progress))
                    while len(running) >= 4 * max(jobs, 1):
                        yield running.popleft().result()
                if len(batch) < BATCH:
                    break
                after = batch[-1].aweme_id
            while running:
                yield running.popleft().result()
        finally:
            for future in running:
                future.cancel()


def _findings(check: ItemCheck) -> list[Finding]:
    item = check.item
    found = []
    for copy in check.copies:
        if copy.state is Copy.OK:
            continue
        actual = copy.identity.size if copy.identity is not None else None
        problem = Problem(copy.state.value)
        found.append(
            Finding(problem, str(copy.path), item.aweme_id, item.bytes, actual, copy.detail)
        )
    return found


# --- listing the folders -------------------------------------------------------------------


@dataclass(slots=True)
class Orphan:
    """An orphan `.part`, with the version of it that was seen."""

    finding: Finding
    path: PurePosixPath
    identity: Identity


def _top_level(entry: Entry) -> Finding:
    if entry.kind == "unlistable":
        return Finding(Problem.UNREADABLE, entry.path, detail=f"folder: {entry.detail}")
    what = {"symlink": "a symlink (not followed)", "file": "a file outside any topic folder"}
    return Finding(Problem.STRAY, entry.path, detail=what.get(entry.kind, "not a regular file"))


def _inside(entry: Entry) -> Finding:
    what = {"symlink": "a symlink (not followed)", "dir": "a folder (not searched)"}
    return Finding(Problem.STRAY, entry.path, detail=what.get(entry.kind, "not a regular file"))


def _scan(
    manifest: ManifestStore, lib: Library, report: Report, progress: Progress
) -> list[Orphan]:
    """List media_assets; report strays and orphan parts. Files named after an item are
    looked up a batch at a time; one that is gone by then (published meanwhile) is dropped."""
    orphans: list[Orphan] = []
    batch: list[tuple[Entry, Kind, str]] = []
    first = len(report.findings)

    def flush() -> None:
        places = manifest.places(aweme_id for _, _, aweme_id in batch)
        for entry, kind, aweme_id in batch:
            place = places.get(aweme_id)
            facts = None
            if place is not None:
                folders = item_folders(place.state, aweme_id, place.path, place.topics)
                facts = Facts(place.state, folders)
            problem = classify_file(kind, entry.folder or "", facts)
            if problem is None:
                continue
            path = PurePosixPath(entry.path)
            st = lib.lstat(path)
            if st is None:
                continue  # gone since the listing: a .part published, a link replaced
            why = "unknown id" if place is None else f"its item is {place.state}"
            if problem is Problem.STRAY and place is not None and place.state == "done":
                why = "not where its item is published"
            finding = Finding(problem, entry.path, aweme_id, None, st.st_size, why)
            report.findings.append(finding)
            if problem is Problem.ORPHAN_PART:
                orphans.append(Orphan(finding, path, Identity.of(st)))
        batch.clear()

    for entry in lib.entries():
        report.entries += 1
        if report.entries % 1000 == 0:
            progress.scanning(report.entries)
        if entry.folder is None:
            report.findings.append(_top_level(entry))
            continue
        if entry.kind != "file":
            report.findings.append(_inside(entry))
            continue
        kind, aweme_id = name_kind(entry.name)
        if aweme_id is None:
            report.findings.append(
                Finding(Problem.STRAY, entry.path, detail="not a name ingestd writes")
            )
            continue
        batch.append((entry, kind, aweme_id))
        if len(batch) >= BATCH:
            flush()
    flush()
    progress.scanning(report.entries)
    report.findings[first:] = sorted(report.findings[first:], key=lambda f: f.path)
    return orphans


# --- repairing -----------------------------------------------------------------------------


def _repair_item(
    manifest: ManifestStore, lib: Library, check: ItemCheck, report: Report, now: float
) -> None:
    item = check.item
    plan = plan_repair([(c.path, c.state) for c in check.copies])
    by_path = {f.path: f for f in check.findings}

    def mark(path: PurePosixPath | str, what: str, repaired: bool) -> None:
        finding = by_path.get(str(path))
        if finding is not None:
            finding.repair, finding.repaired = what, repaired

    if plan.action is Action.LEAVE:
        for finding in check.findings:
            finding.repair = "not repaired: a copy could not be read and none is good"
        return
    if plan.action is Action.RELINK:
        assert plan.source is not None
        source = next(c for c in check.copies if c.path == plan.source)
        assert source.identity is not None
        identity = source.identity
        for target in plan.targets:

            def link(target: PurePosixPath = target) -> bool:
                lib.link(plan.source or target, identity, target)
                return True

            try:
                done = manifest.while_done(item.aweme_id, item.sha256, link)
            except (OSError, ManifestError) as exc:
                mark(target, f"failed: {_error(exc)}", False)
                continue
            if done is None:
                mark(target, "skipped: the item changed since it was checked", False)
                continue
            mark(target, f"relinked to {plan.source}", True)
            report.relinked.append(str(target))
        return
    if plan.action is Action.REQUEUE:
        removals = [c for c in check.copies if c.path in plan.targets and c.identity is not None]

        def remove() -> None:
            for copy in removals:
                assert copy.identity is not None
                lib.remove(copy.path, copy.identity)

        corrupt = any(c.state is Copy.CORRUPT for c in check.copies)
        reason = REASONS[Problem.CORRUPT if corrupt else Problem.MISSING]
        try:
            requeued = manifest.requeue_done(item.aweme_id, item.sha256, reason, now, remove)
        except (OSError, ManifestError) as exc:
            for finding in check.findings:
                finding.repair = f"failed: {_error(exc)}"
            return
        if not requeued:
            for finding in check.findings:
                finding.repair = "skipped: the item changed since it was checked"
            return
        report.requeued.append(item.aweme_id)
        report.removed += [str(c.path) for c in removals]
        for finding in check.findings:
            removed = any(str(c.path) == finding.path for c in removals)
            finding.repair = "removed, requeued" if removed else "requeued"
            finding.repaired = True


def _drop_orphan(manifest: ManifestStore, lib: Library, orphan: Orphan, report: Report) -> None:
    finding = orphan.finding
    assert finding.aweme_id is not None

    def remove() -> None:
        lib.remove(orphan.path, orphan.identity, same_size=False)

    try:
        dropped = manifest.drop_part(finding.aweme_id, remove)
    except (OSError, ManifestError) as exc:
        finding.repair = f"failed: {_error(exc)}"
        return
    if dropped:
        finding.repair, finding.repaired = "removed", True
        report.removed.append(finding.path)
    else:  # its item went back to pending or active: the daemon may write it now
        finding.repair, finding.repaired = "kept: its item is pending or active now", True


def _error(exc: Exception) -> str:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


# --- the command -----------------------------------------------------------------------------


def verify(
    manifest: ManifestStore,
    lib: Library,
    *,
    repair: bool = False,
    progress: Progress | None = None,
    jobs: int = JOBS,
    clock: Callable[[], float] = time.time,
    node: str | None = None,
) -> Report:
    """Check the library `lib` against `manifest` (with `node`, the done items whose files
    that node holds); with `repair`, fix what can be fixed."""
    progress = progress or NoProgress()
    started = time.monotonic()
    report = Report(str(lib.media_dir), repair)
    broken: list[ItemCheck] = []
    progress.start(manifest.counts().bytes_done)
    try:
        for check in _checked(manifest, lib, progress, jobs, node):
            report.items += 1
            report.files += len(check.copies)
            report.bytes_hashed += check.hashed
            check.findings = _findings(check)
            if check.findings:
                report.findings += check.findings
                broken.append(check)
        orphans = _scan(manifest, lib, report, progress)
    finally:
        progress.stop()
    if repair:
        for check in broken:
            _repair_item(manifest, lib, check, report, clock())
        for orphan in orphans:
            _drop_orphan(manifest, lib, orphan, report)
        for finding in report.findings:
            if finding.repair is None:
                finding.repair = "kept" if finding.problem is Problem.STRAY else "not repaired"
    report.seconds = time.monotonic() - started
    return report


# --- output ----------------------------------------------------------------------------------


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def problem_line(finding: Finding) -> str:
    """One line per problem: category, id, path, sizes, why, and what the repair did."""
    sizes = []
    if finding.expected_size is not None:
        sizes.append(f"expected {finding.expected_size} B")
    if finding.actual_size is not None:
        sizes.append(f"found {finding.actual_size} B")
    parts = [f"{finding.problem.value:<11}", f"{finding.aweme_id or '-':<22}", finding.path]
    facts = "; ".join(x for x in (", ".join(sizes), finding.detail or "") if x)
    line = " ".join(parts) + (f"  ({facts})" if facts else "")
    return line + (f"  -> {finding.repair}" if finding.repair else "")


def print_report(report: Report, stream: TextIO) -> None:
    """The summary table and one line per problem, for a person."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False, soft_wrap=True)
    console.print(
        f"checked {report.items} done items, {report.files} files,"
        f" {_human_bytes(report.bytes_hashed)} hashed in {report.seconds:.1f} s"
        f" ({report.entries} entries under {report.media_dir})",
        markup=False,
    )
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    table.add_column("problem")
    table.add_column("found", justify="right")
    if report.repair:
        table.add_column("repaired", justify="right")
    table.add_column("left", justify="right")
    left = report.remaining()
    for problem in Problem:
        found = sum(1 for f in report.findings if f.problem is problem)
        fixed = sum(1 for f in report.findings if f.problem is problem and f.repaired)
        still = str(left[problem.value]) if problem.value in left else "-"  # strays: kept
        row = [problem.value, str(found), *([str(fixed)] if report.repair else []), still]
        table.add_row(*row)
    console.print(table)
    for finding in report.findings:
        console.print(problem_line(finding), markup=False, soft_wrap=True)
    if report.requeued:
        console.print(
            f"requeued {len(report.requeued)} item(s): the daemon downloads them again"
            " (`ingestd list --state pending`)",
            markup=False,
        )
    if report.exit_code == 0:
        console.print("ok", markup=False)
    elif not report.repair:
        console.print("problems found: `ingestd verify --repair` fixes what it can", markup=False)
    else:
        console.print("problems left (see above)", markup=False)
