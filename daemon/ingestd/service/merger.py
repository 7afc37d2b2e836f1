"""Parsing and merging an extract: small ones in this process, big ones in a child process.

A 200,000-record extract is a few hundred MB of JSON; parsed, it takes several times that in
Python objects, and CPython keeps most of that memory once freed. Parsing and merging it in a
short-lived child keeps the daemon's own footprint flat for weeks, and lets that work use the
other core while downloads go on. The child writes to the manifest itself, in the same short
transactions; merging is idempotent, so a child killed half-way (shutdown) loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from ingestd.fs.files import ExtractBytes, read_extract
from ingestd.policy.extract import ExtractError, ParsedExtract, RejectReason, parse_extract
from ingestd.service.db import Db
from ingestd.store.base import ExpiredAtMerge
from ingestd.store.open import is_database_url, open_manifest

IN_PROCESS_MAX_BYTES = 4 * 1024 * 1024


class ExtractChanged(Exception):
    """The file changed between hashing and parsing: look at it again later."""


@dataclass(frozen=True, slots=True)
class Merged:
    """What merging one extract did."""

    total: int
    unusable: int
    new: int
    updated: int
    parse_s: float  # reading, checking and parsing the file
    write_s: float  # writing the manifest
    expired: ExpiredAtMerge  # items whose URL was dead already


def _parse_version(data: bytes, sha256: str) -> ParsedExtract | None:
    """Parse `data` while hashing it on the other core (hashlib releases the GIL). None when the
    bytes are not the version the daemon hashed: their verdict, even a rejection, is moot."""
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
        try:
            parsed = parse_extract(data)
        except ExtractError:
            if digest.result() != sha256:
                return None
            raise
        return parsed if digest.result() == sha256 else None


def _merge_in_child(
    out: Connection, manifest: str, extract: str, sha256: str, max_bytes: int, source: str
) -> None:
    # A short-lived process that builds millions of objects and frees them at exit: the cyclic
    # collector would only rescan them again and again (it costs ~40 % of the parse).
    gc.disable()
    try:
        started = time.monotonic()
        content = read_extract(Path(extract), max_bytes, digest=False)
        parsed = _parse_version(content.data, sha256)
        del content
        if parsed is None:
            out.send(("changed",))
            return
        parsed_at = time.monotonic()
        store = open_manifest(manifest if is_database_url(manifest) else Path(manifest))
        try:
            counts = store.merge(parsed.records, source, store.clock(), sha256)
        finally:
            store.close()
        timing = (parsed_at - started, time.monotonic() - parsed_at)
        expired = counts.expired
        out.send(
            (
                "ok",
                parsed.total,
                parsed.unusable,
                counts.new,
                counts.updated,
                *timing,
                (expired.count, expired.earliest, expired.latest, list(expired.aweme_ids)),
            )
        )
    except ExtractError as exc:
        out.send(("rejected", exc.reason.value, exc.detail))
    except Exception as exc:  # reported to the parent, which logs it and retries later
        out.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


class Merger:
    """Turns an extract's bytes into manifest rows, wherever that is cheapest."""

    def __init__(self, db: Db, manifest: str | Path, max_bytes: int) -> None:
        self._db = db
        self._manifest = str(manifest)  # what the child opens: a path or a URL
        self.max_bytes = max_bytes
        self._children: set[multiprocessing.process.BaseProcess] = set()

    async def merge(self, path: Path, content: ExtractBytes) -> Merged:
        """Parse and merge; raises ExtractError (reject or settle), ExtractChanged."""
        if len(content.data) == content.signature.size:  # small: the bytes were kept
            started = time.monotonic()
            parsed = await asyncio.to_thread(parse_extract, content.data)
            parsed_at = time.monotonic()
            counts = await self._db.run(
                self._db.manifest.merge,
                parsed.records,
                path.name,
                self._db.manifest.clock(),
                content.sha256,
            )
            return Merged(
                parsed.total,
                parsed.unusable,
                counts.new,
                counts.updated,
                parsed_at - started,
                time.monotonic() - parsed_at,
                counts.expired,
            )
        return await self._in_child(path, content.sha256)

    async def _in_child(self, path: Path, sha256: str) -> Merged:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_merge_in_child,
            args=(sender, self._manifest, str(path), sha256, self.max_bytes, path.name),
            name="ingestd-merge",
            daemon=True,
        )
        await asyncio.to_thread(child.start)  # spawn forks and pickles: not on the loop
        sender.close()
        self._children.add(child)
        try:
            reply = await asyncio.to_thread(_receive, receiver)
        finally:
            self._children.discard(child)
            receiver.close()
            await asyncio.to_thread(child.join, 5.0)
        kind = reply[0]
        if kind == "ok":
            total, unusable, new, updated = (int(str(v)) for v in reply[1:5])
            parse_s, write_s = (float(str(v)) for v in reply[5:7])
            return Merged(total, unusable, new, updated, parse_s, write_s, _expired(reply[7]))
        if kind == "rejected":
            raise ExtractError(RejectReason(str(reply[1])), str(reply[2]))
        if kind == "changed":
            raise ExtractChanged(str(path))
        raise RuntimeError(f"merge worker failed: {reply[1] if len(reply) > 1 else kind}")

    def stop(self) -> None:
        """Stop every merge child now (shutdown). What they merged stays."""
        for child in list(self._children):
            with contextlib.suppress(Exception):
                child.terminate()


def _expired(sent: object) -> ExpiredAtMerge:
    assert isinstance(sent, tuple)
    count, earliest, latest, ids = sent
    return ExpiredAtMerge(int(count), earliest, latest, tuple(str(i) for i in ids))


def _receive(receiver: Connection) -> tuple[object, ...]:
    try:
        reply = receiver.recv()
    except EOFError:
        return ("failed", "merge worker exited without an answer")
    return tuple(reply)
