"""Command line: run, status, list, retry, rebind, logs, verify, migrate.

Exit codes: 0 success, 1 runtime failure (including no manifest for this data dir, problems
left by `verify`, and a copy by `migrate` whose counts differ), 2 usage or configuration error
(including a manifest that belongs to another data dir, and a `migrate` target holding another
manifest), 3 nothing matched (`retry` refused every id, `list` found nothing when asked with
--fail-empty), 4 another ingestd runs on this data dir or state dir.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from ingestd import __version__
from ingestd.config import Config, ConfigError, load_config, load_cookies
from ingestd.events import EVENTS, LEVELS
from ingestd.fs.lock import FileLock, LockError, LockHeld
from ingestd.store.base import (
    ForeignManifest,
    ItemSummary,
    ManifestError,
    ManifestStore,
    WrongLibrary,
)
from ingestd.store.open import is_database_url, open_manifest, redact_dsn

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NO_MATCH, EXIT_LOCKED = 0, 1, 2, 3, 4
STATES = ("pending", "active", "done", "expired", "failed")
LIST_LIMIT = 1000
DATA_LOCK = ".ingestd.lock"  # in the data dir: hidden, beside raw/ and media_assets/
STATE_LOCK = "ingestd.lock"
T = TypeVar("T")
# Why `retry` refused an id, by the code `retry --json` gives in `reasons`.
RETRY_REFUSALS = {
    "unknown": "unknown id (not in this manifest)",
    "done": "already done (a done item is never downloaded again)",
    "active": "downloading right now (active); retry it if this attempt fails",
}


class NoManifest(Exception):
    """A reading command found no manifest for this data dir."""

    def __init__(self, config: Config) -> None:
        super().__init__(f"no manifest for {config.data_dir} (looked in {config.manifest_label})")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="TOML config file")
    parser.add_argument("--data-dir", metavar="DIR", help="holds raw/ and media_assets/")
    parser.add_argument("--state-dir", metavar="DIR", help="holds manifest.sqlite3")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (--all lifts it)")
    return value


def _since(text: str) -> str:
    from ingestd.ops.logs import parse_since

    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _event_name(text: str) -> str:
    if text not in EVENTS:
        raise argparse.ArgumentTypeError(
            f"unknown event {text!r}; the events are: {', '.join(sorted(EVENTS))}"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="ingestd",
        description="Turn scraped TikTok extracts into a local video library.",
        epilog="Exit codes: 0 ok, 1 failure (or no manifest, or problems left by verify), 2"
        " usage/config error, 3 nothing matched, 4 another ingestd runs on this data dir or"
        " state dir.",
    )
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground")
    _common(run)
    run.add_argument("--concurrency", type=int, metavar="N", help="downloads in flight")
    run.add_argument(
        "--workers", type=int, metavar="N", help="download processes (concurrency is their total)"
    )
    run.add_argument("--log-format", choices=("auto", "json", "console"))
    run.add_argument("--log-file", metavar="PATH", help="JSON-lines event file")

    status = commands.add_parser("status", help="counts by state from the manifest")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="live view with a progress bar")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    status.add_argument("--count", type=int, default=0, help="stop after N frames (0: never)")

    lister = commands.add_parser("list", help="items with topic, state, attempts, reason")
    _common(lister)
    lister.add_argument("--state", choices=STATES)
    lister.add_argument("--topic", help="raw topic or its folder name")
    lister.add_argument(
        "--node",
        help="items a node has claimed (it or its workers) or whose file or .part it holds",
    )
    shown = lister.add_mutually_exclusive_group()
    shown.add_argument(
        "--limit",
        type=_at_least_one,
        default=LIST_LIMIT,
        metavar="N",
        help=f"at most N items, most recently updated first (default {LIST_LIMIT})",
    )
    shown.add_argument("--all", action="store_true", help="every matching item (no --limit)")
    lister.add_argument(
        "--json",
        action="store_true",
        help="a JSON array, one item a line, with paths, sha256 and the extract's record",
    )
    lister.add_argument("--fail-empty", action="store_true", help="exit 3 when nothing matches")

    retry = commands.add_parser(
        "retry", help="put items back to pending with fresh attempts (safe while running)"
    )
    _common(retry)
    retry.add_argument("--failed", action="store_true", help="every failed item")
    retry.add_argument("--expired", action="store_true", help="every expired item")
    retry.add_argument("ids", nargs="*", metavar="AWEME_ID")
    retry.add_argument("--json", action="store_true", help="machine-readable output")

    rebind = commands.add_parser(
        "rebind",
        help="make the manifest belong to this data dir (after moving a library; daemon stopped)",
    )
    _common(rebind)

    logs = commands.add_parser("logs", help="show (and follow) the JSON event log")
    _common(logs)
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print new events as they come, from the end (with -n, --since or --all: after those)",
    )
    logs.add_argument(
        "-n",
        "--lines",
        type=_at_least_one,
        metavar="N",
        help="only the last N matching events (read from the end of the file)",
    )
    logs.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="events from then on: a duration back from now (90s, 10m, 2h, 1d, 1w) or an ISO"
        " 8601 time (local time unless it has an offset or Z)",
    )
    logs.add_argument(
        "--level",
        choices=LEVELS,
        metavar="LEVEL",
        help=f"the lowest level shown: {', '.join(LEVELS)}",
    )
    logs.add_argument("--all", action="store_true", help="with --follow: the whole history first")
    logs.add_argument(
        "--event",
        action="append",
        default=[],
        type=_event_name,
        metavar="NAME",
        help="only these events (repeat for more); README lists them",
    )
    logs.add_argument("--id", dest="aweme_id", metavar="AWEME_ID")
    logs.add_argument("--json", action="store_true", help="print the JSON lines as they are")
    logs.add_argument("--log-file", metavar="PATH", help="read this file instead")

    verify = commands.add_parser(
        "verify",
        help="check every done video and topic link against the manifest (safe while running)",
        description="Check every done file and topic link against the size and SHA-256 the"
        " manifest recorded; report missing, corrupt, orphan .part and stray files.",
        epilog="Exit codes: 0 nothing left but strays (which are only reported), 1 problems"
        " left (with --repair: problems it could not repair), 2 usage/config error.",
    )
    _common(verify)
    verify.add_argument(
        "--repair",
        action="store_true",
        help="re-queue missing and corrupt videos (corrupt files removed first), re-link"
        " missing links from a good copy, remove orphan .part files; strays are kept",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    migrate = commands.add_parser(
        "migrate",
        help="copy this library's SQLite manifest into PostgreSQL (daemon stopped)",
        description="Copy the SQLite manifest of this library into a PostgreSQL database, in"
        " one transaction, and check the copy's counts; then set manifest_url to that URL.",
        epilog="Exit codes: 0 copied and checked, 1 failure (the database cannot be used, or the"
        " counts differ), 2 usage error or a database holding another manifest (left as it"
        " was), 4 another ingestd runs on this data dir or state dir.",
    )
    _common(migrate)
    migrate.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="the database: postgresql://user@host/db (the password is never shown)",
    )
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides = {
        "data_dir": args.data_dir,
        "state_dir": args.state_dir,
        "concurrency": getattr(args, "concurrency", None),
        "workers": getattr(args, "workers", None),
        "log_format": getattr(args, "log_format", None),
        "log_file": getattr(args, "log_file", None),
    }
    return load_config(args.config, overrides={k: v for k, v in overrides.items() if v is not None})


def _existing(config: Config, *, readonly: bool) -> ManifestStore:
    """This data dir's manifest, which only `run` creates: NoManifest when there is none."""
    if not config.manifest_url and not config.manifest_path.exists():
        raise NoManifest(config)
    return open_manifest(config.manifest_location, readonly=readonly)


def _read(config: Config, query: Callable[[ManifestStore], T]) -> T:
    """Run a read-only query on this data dir's manifest."""
    manifest = _existing(config, readonly=True)
    try:
        manifest.check_data_dir(config.data_dir, config.manifest_node)
        return query(manifest)
    finally:
        manifest.close()


@contextlib.contextmanager
def _writable(config: Config) -> Iterator[ManifestStore]:
    """This data dir's manifest, open for writing; it must exist."""
    manifest = _existing(config, readonly=False)
    try:
        yield manifest
    finally:
        manifest.close()


@contextlib.contextmanager
def _library_locked(config: Config) -> Iterator[None]:
    """Hold the data dir's and the state dir's locks: one daemon (or rebind) per library."""
    with (
        FileLock.acquire(config.data_dir / DATA_LOCK),
        FileLock.acquire(config.state_dir / STATE_LOCK),
    ):
        yield


def _recent_failures(manifest: ManifestStore) -> list[ItemSummary]:
    return manifest.list_items(state="failed", limit=5)


def _status(config: Config, args: argparse.Namespace) -> int:
    from ingestd.ops.status import status_document, status_table

    if args.watch:
        return _watch(config, args)
    counts, owners, fleet, now = _read(
        config, lambda m: (m.counts(), m.in_flight_by_owner(), m.node_reports(), m.clock())
    )
    if args.json:
        print(json.dumps(status_document(counts, owners, fleet, now)))
    else:
        print(status_table(counts, config.manifest_label, owners, fleet, now))
    return EXIT_OK


def _watch(config: Config, args: argparse.Namespace) -> int:
    """`status --watch`: redrawn in place on a terminal, one plain frame per interval else."""
    from ingestd.ops.live import LIVE_FILE, RateMeter, daemon_state, pid_alive, read_live
    from ingestd.ops.terminal import run_live, watch_console, watch_view

    console = watch_console(sys.stdout)
    display = run_live(console) if console.is_terminal else None
    rate = RateMeter()
    frames = 0
    try:
        with display or contextlib.nullcontext():
            while True:
                counts = _read(config, lambda manifest: manifest.counts())
                failures = _read(config, _recent_failures)
                live = read_live(config.state_dir / LIVE_FILE)
                state = daemon_state(live, time.time(), live is not None and pid_alive(live.pid))
                if live is not None and state[0] in ("running", "paused"):
                    rate.add(live.clock, live.received)
                view = watch_view(
                    items=counts.items,
                    bytes_done=counts.bytes_done,
                    live=live,
                    state=state,
                    rate=rate.rate(),
                    failures=failures,
                    where=str(config.data_dir),
                )
                if display is not None:
                    display.update(view, refresh=True)
                else:
                    console.print(view)
                    console.print()
                    console.file.flush()
                frames += 1
                if args.count and frames >= args.count:
                    return EXIT_OK
                time.sleep(max(args.interval, 0.05))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_OK


def _quiet_broken_pipe() -> None:
    """The reader went away (`... | head`): exit without Python's flush error at shutdown."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _list(config: Config, args: argparse.Namespace) -> int:
    from ingestd.ops.status import item_document, json_array, list_rows

    limit = None if args.all else args.limit

    def show(manifest: ManifestStore) -> tuple[int, int]:
        """Print the items as they are read; returns (shown, more not shown)."""
        shown, truncated = 0, False

        def items() -> Iterator[ItemSummary]:
            nonlocal shown, truncated
            # One more than asked for, to know whether there are more.
            ask = None if limit is None else limit + 1
            found = manifest.iter_items(args.state, args.topic, ask, full=args.json, node=args.node)
            for item in found:
                if shown == limit:
                    truncated = True
                    return
                shown += 1
                yield item

        if args.json:
            lines = json_array(item_document(i, config.media_dir) for i in items())
        else:
            lines = list_rows(items())
        for line in lines:
            print(line)
        if not truncated:
            return shown, 0
        more = manifest.count_items(args.state, args.topic, node=args.node) - shown
        return shown, max(more, 1)

    try:
        shown, more = _read(config, show)
    except BrokenPipeError:
        sys.stderr.close()  # `ingestd list | head`: quiet exit
        return EXIT_OK
    if more:
        print(f"... {more:,} more (use --limit N or --all)", file=sys.stderr)
    return EXIT_NO_MATCH if args.fail_empty and not shown else EXIT_OK


def _retry(config: Config, args: argparse.Namespace) -> int:
    states = [s for s, wanted in (("failed", args.failed), ("expired", args.expired)) if wanted]
    if not states and not args.ids:
        print("ingestd: retry needs --failed, --expired or AWEME_IDs", file=sys.stderr)
        return EXIT_USAGE
    with _writable(config) as manifest:
        manifest.check_data_dir(config.data_dir, config.manifest_node)
        requeued, refused = manifest.retry(states, args.ids, manifest.clock())
    if args.json:
        doc = {"requeued": requeued, "refused": list(refused), "reasons": refused}
        print(json.dumps(doc))
    else:
        print(f"requeued {len(requeued)} item(s)")
        for aweme_id, why in refused.items():
            print(f"refused {aweme_id}: {RETRY_REFUSALS.get(why, why)}", file=sys.stderr)
    return EXIT_NO_MATCH if refused and not requeued else EXIT_OK


def _logs(config: Config, args: argparse.Namespace) -> int:
    from ingestd.ops.logs import LogFilter, read_events, renderer

    if config.log_file is None:
        print("ingestd: no log_file configured", file=sys.stderr)
        return EXIT_FAILURE
    if not args.follow and not config.log_file.exists():
        print(f"ingestd: no log file at {config.log_file}", file=sys.stderr)
        return EXIT_FAILURE
    wanted = LogFilter(frozenset(args.event), args.aweme_id, args.level, args.since)
    # Like tail -f: following starts at the end, unless some history is asked for.
    history = not args.follow or args.all or args.since is not None
    render = renderer(args.json, colors=sys.stdout.isatty())
    try:
        events = read_events(
            config.log_file, wanted, last=args.lines, history=history, follow=args.follow
        )
        for event in events:
            print(render(event), flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        _quiet_broken_pipe()  # `ingestd logs | head`
    return EXIT_OK


def _verify(config: Config, args: argparse.Namespace) -> int:
    from ingestd.fs.library import Library
    from ingestd.ops.verify import print_report, progress_for, verify

    # Without --repair nothing is written: read-only, so group members can verify too.
    manifest = _existing(config, readonly=not args.repair)
    try:
        manifest.check_data_dir(config.data_dir, config.manifest_node)
        with Library(config.media_dir) as library:
            bar = progress_for(sys.stderr)
            report = verify(
                manifest, library, repair=args.repair, progress=bar, node=config.manifest_node
            )
    except KeyboardInterrupt:
        print("ingestd: verify interrupted", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        manifest.close()
    if args.json:
        print(json.dumps(report.document()))
    else:
        print_report(report, sys.stdout)
    return report.exit_code


def _rebind(config: Config, args: argparse.Namespace) -> int:
    if not config.data_dir.is_dir():
        print(f"ingestd: the data dir {config.data_dir} does not exist", file=sys.stderr)
        return EXIT_USAGE
    if not config.manifest_url and not config.manifest_path.exists():
        raise NoManifest(config)  # before the locks, which would create the state dir
    with _library_locked(config), _writable(config) as manifest:
        node = config.manifest_node
        before = manifest.bind_data_dir(config.data_dir, replace=True, node=node)
        after = manifest.recorded_data_dir(node)
    print(f"{config.manifest_label} now belongs to {after} (was {before or 'not recorded'})")
    return EXIT_OK


def _migrate(config: Config, args: argparse.Namespace) -> int:
    from ingestd.ops.migrate import migrate, summary
    from ingestd.store.manifest import Manifest
    from ingestd.store.open import open_postgres

    target = redact_dsn(args.to)
    if not is_database_url(args.to):
        print(f"ingestd: --to takes a postgresql:// URL, not {target!r}", file=sys.stderr)
        return EXIT_USAGE
    sqlite = dataclasses.replace(config, manifest_url="")  # the source, whatever is configured
    if not sqlite.manifest_path.exists():
        raise NoManifest(sqlite)  # before the locks, which would create the state dir
    name = os.path.realpath(sqlite.manifest_path)  # recorded in the copy: see replace_with
    with (
        _library_locked(config),
        contextlib.closing(Manifest.open(sqlite.manifest_path)) as source,
    ):
        try:
            source.check_data_dir(config.data_dir)
        except WrongLibrary as exc:
            print(f"ingestd: configuration error: {_wrong_library(sqlite, exc)}", file=sys.stderr)
            return EXIT_USAGE
        with contextlib.closing(open_postgres(args.to)) as manifest:
            try:
                done = migrate(source, manifest, config.data_dir, name, config.node_name)
            except ForeignManifest as exc:
                print(
                    f"ingestd: {target} cannot take this library's manifest: {exc}. Nothing was"
                    " changed; migrate into an empty database",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            except KeyboardInterrupt:
                # The copy is one transaction: made whole, or not at all.
                print("ingestd: migrate interrupted; run it again to finish", file=sys.stderr)
                return EXIT_FAILURE
    print(summary(done, name, target))
    if problems := done.mismatches():
        print(f"ingestd: the copy in {target} does not match its source:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILURE
    print("counts checked: the copy matches its source")
    return EXIT_OK


def _run(config: Config, args: argparse.Namespace) -> int:
    from ingestd import log
    from ingestd.service.daemon import run

    try:
        cookies = load_cookies(config)  # a missing or bad cookies file is the config's fault
    except ConfigError as exc:
        print(f"ingestd: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The locks come first: a second daemon must not touch the manifest or the shared log file.
    with _library_locked(config):
        manifest = open_manifest(config.manifest_location)
        try:
            manifest.bind_data_dir(config.data_dir, node=config.manifest_node)  # the first run
        finally:
            manifest.close()
        try:
            log.configure(
                config.log_format, config.log_file, config.log_max_bytes, config.log_backups
            )
        except OSError as exc:
            print(f"ingestd: cannot open log file: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        try:
            return run(config, reload_config=lambda: _config(args), cookies=cookies)
        finally:
            log.shutdown()


def _wrong_library(config: Config, exc: WrongLibrary) -> str:
    return (
        f"the manifest {config.manifest_label} belongs to the data dir {exc.recorded}, not"
        f" {exc.wanted}. Use the --state-dir (or state_dir) that holds {exc.wanted}'s own"
        f" manifest, or none for its default one; or move this manifest to {exc.recorded}'s"
        f" state dir; or, if the library itself moved here, run `ingestd rebind` with this"
        " state dir (README: Moving a library)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ingestd` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"ingestd: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    commands: dict[str, Callable[[Config, argparse.Namespace], int]] = {
        "run": _run,
        "status": _status,
        "list": _list,
        "retry": _retry,
        "rebind": _rebind,
        "logs": _logs,
        "verify": _verify,
        "migrate": _migrate,
    }
    try:
        return commands[args.command](config, args)
    except LockHeld as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except NoManifest as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except WrongLibrary as exc:
        print(f"ingestd: configuration error: {_wrong_library(config, exc)}", file=sys.stderr)
        return EXIT_USAGE
    except LockError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ManifestError as exc:
        print(f"ingestd: cannot use the manifest: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. no permission on the state folder
        print(f"ingestd: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_FAILURE
