"""Command line: `ingestd run` and `ingestd status`.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ingestd import __version__
from ingestd.config import Config, ConfigError, load_config
from ingestd.store.manifest import Counts, Manifest, ManifestError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="TOML config file")
    parser.add_argument("--data-dir", metavar="DIR", help="holds raw/ and media_assets/")
    parser.add_argument("--state-dir", metavar="DIR", help="holds manifest.sqlite3")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="ingestd", description="Turn scraped TikTok extracts into a local video library."
    )
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground")
    _common(run)
    run.add_argument("--concurrency", type=int, metavar="N", help="downloads in flight")
    run.add_argument("--log-format", choices=("auto", "json", "console"))
    run.add_argument("--log-file", metavar="PATH", help="also append JSON events to this file")
    status = commands.add_parser("status", help="show counts from the manifest")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides = {
        "data_dir": args.data_dir,
        "state_dir": args.state_dir,
        "concurrency": getattr(args, "concurrency", None),
        "log_format": getattr(args, "log_format", None),
        "log_file": getattr(args, "log_file", None),
    }
    return load_config(args.config, overrides={k: v for k, v in overrides.items() if v is not None})


def _status(config: Config, as_json: bool) -> int:
    from ingestd.service.status import status_document, status_table

    path = config.manifest_path
    if path.exists():
        manifest = Manifest.open(path, readonly=True)
        try:
            counts = manifest.counts()
        finally:
            manifest.close()
    else:
        counts = Counts({}, {}, 0)
    if as_json:
        print(json.dumps(status_document(counts)))
    else:
        print(status_table(counts, str(path)))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ingestd` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"ingestd: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "status":
        try:
            return _status(config, args.json)
        except ManifestError as exc:
            print(f"ingestd: cannot read the manifest: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    from ingestd import log
    from ingestd.service.daemon import run

    try:
        log.configure(config.log_format, config.log_file)
    except OSError as exc:
        print(f"ingestd: cannot open log file: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return run(config)
    finally:
        log.shutdown()
