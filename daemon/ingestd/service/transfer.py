"""One download attempt: the request, the resume, the response checks, the writing of the part.

`Transfers.attempt` returns an outcome, `Published` or a `Failure`, and raises nothing but
cancellation. The rules it applies are pure and live in policy.transfer; this module does the
I/O they decide: requests through net.fetch, part-file work in worker threads, and the resume
bookkeeping (validator, declared size, durable offset) in the manifest.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd.config import Config
from ingestd.fs.files import PartFile, describe_os_error, error_path
from ingestd.log import Logger
from ingestd.net.fetch import Chunk, Fetcher, FetchFailed, Response
from ingestd.policy.info import info_document
from ingestd.policy.naming import relative_video_path
from ingestd.policy.retry import (
    Failure,
    Reason,
    classify_status,
    parse_retry_after,
    refusal_hint,
)
from ingestd.policy.transfer import (
    SNIFF_BYTES,
    PublishPart,
    RateFloor,
    Receive,
    Reject,
    looks_like_mp4,
    plan_response,
    resumable,
    resume_headers,
    strong_validator,
)
from ingestd.policy.urls import check_url, is_expired, redact
from ingestd.service.db import Db
from ingestd.service.meter import Meter, Tracked
from ingestd.service.publish import Publisher
from ingestd.store.base import Item, ManifestError

RESUME_MIN_BYTES = 1024 * 1024  # smaller files restart from zero: not worth a manifest write
WRITE_BATCH = 1024 * 1024  # bytes gathered before one write+hash in a worker thread
# A slow transfer still reaches the disk often, so a kill loses little of what arrived.
FLUSH_SECONDS = 0.25
# fsync and record the durable offset this often (bytes or seconds, whichever comes first):
# what a power cut can cost a resumable file.
CHECKPOINT_BYTES = 8 * 1024 * 1024
CHECKPOINT_SECONDS = 2.0
# Range requests one attempt may make while a CDN caps its replies (each must make progress).
MAX_RANGE_REQUESTS = 64
# Requests in a row one attempt may send again at once because their connection was recycled
# (a GOAWAY, or closed under them by one httpcore had not read yet): more is a host that keeps
# doing it, and ends the attempt.
MAX_RECYCLED = 3


@dataclass(frozen=True, slots=True)
class Published:
    """A finished transfer: where the file is, what it holds, which topics it is linked under."""

    path: PurePosixPath
    size: int
    sha256: str
    resumed: bool
    linked_topics: tuple[str | None, ...]
    links: int = 0
    fetched: int = 0  # bytes this attempt received (a resume's earlier bytes are not)


@dataclass(frozen=True, slots=True)
class _Whole:
    """Every byte of the file arrived; `tail` holds the last chunks, not yet written."""

    tail: Sequence[Chunk]


class Transfers:
    """Runs single attempts; shared by every transfer of the pool."""

    def __init__(
        self,
        config: Config,
        db: Db,
        fetcher: Fetcher,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self._db = db
        self._owner = owner  # whose claims these transfers run: resume points are written as it
        self._fetcher = fetcher
        self._publisher = publisher
        self._clock = clock
        self.meter = Meter()
        # A manifest that refuses resume points refuses them for every transfer: told once,
        # until one is written again.
        self.checkpoints_refused = False
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Use a reloaded config from the next attempt on."""
        self._config = config
        self._media_dir = config.media_dir

    async def attempt(self, item: Item, log: Logger) -> Published | Failure:
        """Download `item` once. Raises nothing but cancellation."""
        if is_expired(item.url, self._clock()):
            return Failure(Reason.URL_EXPIRED)
        verdict = check_url(item.url, self._config.allowed_hosts)
        if not verdict.allowed:
            hint = refusal_hint(verdict.reason)
            return Failure(Reason.UNSAFE_URL, detail=verdict.reason, hint=hint)
        relative = relative_video_path(item.topics[0] if item.topics else None, item.aweme_id)
        media = self._media_dir
        try:
            if not resumable(item.validator, item.durable):
                part = PartFile.fresh_in(media, relative)  # no thread hop to open it now
            else:
                part = await asyncio.to_thread(PartFile.open_in, media, relative, item.durable)
        except OSError as exc:
            return _local_failure(exc, media / relative)
        attempt = _Attempt(self, item, part, relative, log)
        tracked = self.meter.begin(item.aweme_id, relative.parts[0], part.size)
        attempt.tracked = tracked
        try:
            try:
                outcome: Published | Failure = await attempt.run()
            except FetchFailed as exc:
                outcome = Failure(
                    exc.reason,
                    exc.status,
                    detail=exc.detail,
                    host_fault=exc.host_fault,
                    hint=exc.hint,
                )
            except OSError as exc:
                outcome = _local_failure(exc, part.path)
            except Exception as exc:  # a bug costs one attempt, never the daemon
                log.exception("download_crashed", error=repr(exc))
                outcome = Failure(Reason.INTERNAL, detail=repr(exc)[:200])
            if isinstance(outcome, Failure):
                await attempt.keep_for_resume()
            return outcome
        except asyncio.CancelledError:
            await attempt.keep_for_resume()  # stopping: what arrived is kept for the next run
            raise
        finally:
            self.meter.end(tracked)
            if not part.closed:  # on cancellation too: shielded, it completes regardless
                await asyncio.shield(asyncio.to_thread(part.close))


def _local_failure(exc: OSError, path: Path) -> Failure:
    """A local error as the item's failure: `detail` names the path (both, for a rename);
    `path` is where it happened, for the pool's probe of that folder."""
    where = error_path(exc) or str(path)
    detail = describe_os_error(exc, path)
    return Failure(Reason.LOCAL_IO, detail=detail, errno=exc.errno, path=where)


class _Attempt:
    """The state of one attempt at one item."""

    def __init__(
        self,
        transfers: Transfers,
        item: Item,
        part: PartFile,
        relative: PurePosixPath,
        log: Logger,
    ) -> None:
        self._t = transfers
        self._config = transfers._config
        self._db = transfers._db
        self._item = item
        self._part = part
        self._relative = relative
        self._log = log
        self._validator = item.validator
        self._total = item.total
        self._resumable = False  # the manifest knows how to resume this part
        self._recorded = (item.validator, item.total, item.durable)
        self._misrecorded = False  # the manifest describes a part this one no longer is
        self._claim_lost = False  # a resume point was refused: another owner has the item
        self._resumed_from = 0
        self.tracked: Tracked | None = None

    async def run(self) -> Published | Failure:
        item, part = self._item, self._part
        recycled = 0
        for hop in range(MAX_RANGE_REQUESTS):
            offset = part.size
            headers = resume_headers(offset, self._validator)
            if offset and not headers:
                await asyncio.to_thread(part.truncate)
                offset = 0
            if hop == 0:
                self._resumed_from = offset
                self._log.info(
                    "download_started",
                    url=redact(item.url),
                    topic=self._relative.parts[0],
                    attempt=item.attempts,
                    resume_from=offset,
                )
            try:
                async with self._t._fetcher.get(item.url, headers) as response:
                    outcome = await self._answer(response, offset)
            except FetchFailed as exc:
                recycled += 1
                if not exc.goaway or recycled > MAX_RECYCLED:
                    raise
                continue  # the server recycled its connection: what came is kept, ask again
            recycled = 0
            if isinstance(outcome, _Whole):  # published with the stream already given back
                return await self._publish(outcome.tail, offset)
            if outcome is not None:
                return outcome
            # A capped range reply: its bytes are good, the rest is asked for at once.
        return Failure(Reason.TRUNCATED, detail=f"still short after {MAX_RANGE_REQUESTS} ranges")

    async def _answer(self, response: Response, offset: int) -> _Whole | Failure | None:
        """Handle one response: the file is whole (its last chunks to write), a failure, or
        None when it needs another range."""
        part, status = self._part, response.status
        if status not in (200, 206, 416):
            reason = classify_status(status) or Reason.HTTP_ERROR
            retry_after = parse_retry_after(response.header("retry-after"), self._t._clock())
            return Failure(reason, status, retry_after)
        etag, last_modified = response.header("etag"), response.header("last-modified")
        plan = plan_response(
            status,
            offset,
            self._total,
            response.header("content-length"),
            response.header("content-range"),
            sent_validator=self._validator if offset else None,
            etag=etag,
            last_modified=last_modified,
            framed=response.framed,
        )
        if isinstance(plan, Reject):
            if plan.discard:
                await asyncio.to_thread(part.truncate)
                await self._remember(None, None)
            return plan.failure
        if isinstance(plan, PublishPart):
            return _Whole([])
        if plan.total is not None and plan.total > self._config.max_file_bytes:
            await asyncio.to_thread(part.discard)
            return Failure(Reason.TOO_LARGE, status, detail=f"declared {plan.total}")
        if plan.start < part.size:  # a 200 to a resume: the file starts over
            await asyncio.to_thread(part.truncate, plan.start)
        elif plan.start:
            await asyncio.to_thread(part.hash_existing)  # so the new bytes are hashed inline
        validator = strong_validator(etag, last_modified)
        if plan.start and validator is None:
            validator = self._validator  # a 206 that names no version continues the one asked
        if plan.total is not None and plan.total <= RESUME_MIN_BYTES:
            validator = None  # not worth a manifest write: restarted from zero if need be
        await self._remember(validator, plan.total if validator is not None else None)
        received = await self._receive(response, plan)
        if isinstance(received, Failure):
            return received
        tail, tail_size = received
        if plan.total is not None and part.size + tail_size < plan.total:
            await asyncio.to_thread(part.write, tail)
            return None
        return _Whole(tail)

    async def _remember(self, validator: str | None, total: int | None) -> None:
        """Take the validator and size the part is written under: a resume asks by them. The
        manifest is told at once only when its record is resumable, and so could splice this
        part with another version; otherwise the first checkpoint records them, with the
        durable size (a crash before it restarts from zero, as it must: nothing is durable)."""
        self._resumable = validator is not None
        self._validator, self._total = validator, total
        recorded_validator, _, recorded_durable = self._recorded
        if not resumable(recorded_validator, recorded_durable):
            return
        durable = self._part.durable if validator is not None else 0
        if not await self._record(validator, total, durable):
            self._misrecorded = (validator, total) != self._recorded[:2]

    async def _record(self, validator: str | None, total: int | None, durable: int) -> bool:
        """Write the resume point; False (logged) when the manifest refused it."""
        if (validator, total, durable) == self._recorded:
            return True
        try:
            written = await self._db.run(
                self._db.manifest.set_part,
                self._item.aweme_id,
                validator,
                total,
                durable,
                owner=self._t._owner,
            )
        except ManifestError as exc:  # the transfer goes on; a resume starts from what is known
            self._resumable = False
            if not self._t.checkpoints_refused:
                self._t.checkpoints_refused = True
                self._log.warning("checkpoint_failed", error=str(exc)[:200])
            return False
        self._t.checkpoints_refused = False
        if not written:  # the claim is another's now: the pool's lease pass stops this transfer
            self._resumable = False
            self._claim_lost = True
            return True  # nothing of the part is this attempt's to change any more
        self._recorded = (validator, total, durable)
        return True

    async def keep_for_resume(self) -> None:
        """After a failed or stopped attempt: checkpoint the part, or empty it when the
        manifest still describes another version of it (a resume must not splice them). A
        part whose claim was lost is left as it is: the manifest describes its new owner's."""
        if self._claim_lost:
            return
        if self._misrecorded and not self._part.closed:
            await asyncio.to_thread(self._part.truncate)
            return
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Make what was written durable and record it, so a resume may use it. Never raises."""
        part = self._part
        if not self._resumable or part.closed or part.size <= part.durable:
            return
        try:
            durable = await asyncio.to_thread(part.sync)
            await self._record(self._validator, self._total, durable)
        except OSError as exc:  # the resume then starts from the last checkpoint
            self._log.warning("checkpoint_failed", error=describe_os_error(exc, part.path))
        except Exception as exc:
            self._log.warning("checkpoint_failed", error=str(exc)[:200])

    async def _receive(
        self, response: Response, plan: Receive
    ) -> tuple[list[Chunk], int] | Failure:
        """Stream the body into the part. Returns the last chunks, not yet written (written
        with the publish, in one hop), and their size; or a Failure. Writes nothing past the
        declared length."""
        config, part = self._config, self._part
        limit = config.max_file_bytes
        pending: list[Chunk] = []
        pending_size = 0
        received = 0
        checked = plan.start > 0
        tracked = self.tracked
        if tracked is not None:  # where this body starts, net of earlier ranges' bytes
            tracked.offset = max(plan.start - tracked.received, 0)
            tracked.total = plan.total
        last_flush = last_sync = time.monotonic()
        floor = RateFloor(config.min_rate, config.min_rate_window, last_flush)

        async def flush() -> None:
            nonlocal pending, pending_size, last_flush, last_sync
            last_flush = time.monotonic()
            if pending:
                sync = self._resumable and (
                    part.size + pending_size - part.durable >= CHECKPOINT_BYTES
                    or last_flush - last_sync >= CHECKPOINT_SECONDS
                )
                data, size, pending, pending_size = pending, pending_size, [], 0
                await asyncio.to_thread(part.write, data, sync=sync)
                response.consumed(size)
                if sync:
                    last_sync = last_flush
                    await self._record(self._validator, self._total, part.durable)

        try:
            async for batch in response.batches():
                size = sum(map(len, batch))
                received += size
                if tracked is not None:
                    tracked.received += size
                if plan.length is not None and received > plan.length:
                    await asyncio.to_thread(part.truncate, plan.start)
                    detail = f"body longer than its content-length {plan.length}"
                    return Failure(Reason.MALFORMED, response.status, detail=detail)
                if plan.start + received > limit:
                    await asyncio.to_thread(part.discard)
                    return Failure(Reason.TOO_LARGE, detail=f"more than {limit} bytes")
                pending += batch
                pending_size += size
                if not checked and pending_size >= SNIFF_BYTES:
                    if not looks_like_mp4(b"".join(pending)[:SNIFF_BYTES]):
                        await asyncio.to_thread(part.discard)
                        return Failure(Reason.NOT_VIDEO, detail="no ftyp box")
                    checked = True
                now = time.monotonic()
                if now >= floor.next_check and floor.too_slow(received, now):
                    await flush()
                    return Failure(Reason.TOO_SLOW, response.status, detail=floor.describe())
                if checked and (pending_size >= WRITE_BATCH or now - last_flush >= FLUSH_SECONDS):
                    await flush()
        except FetchFailed as exc:
            if exc.reason is Reason.MALFORMED:  # nothing of a lying response is kept
                await asyncio.to_thread(part.truncate, plan.start)
            elif checked:
                await flush()  # keep what arrived, for the resume
            raise
        if not checked:
            await asyncio.to_thread(part.discard)
            return Failure(Reason.NOT_VIDEO, detail=f"only {received} bytes")
        if plan.length is not None and received < plan.length:
            await flush()
            end = plan.start + plan.length
            return Failure(Reason.TRUNCATED, response.status, detail=f"{part.size}/{end}")
        return pending, pending_size

    async def _publish(self, tail: Sequence[Chunk], offset: int) -> Published | Failure:
        part, item = self._part, self._item
        if not tail and not looks_like_mp4(await asyncio.to_thread(part.head, SNIFF_BYTES)):
            await asyncio.to_thread(part.discard)
            await self._remember(None, None)
            return Failure(Reason.NOT_VIDEO, detail="the part kept is not a video")
        info: Callable[[], bytes] | None = None
        if self._config.write_info_json:
            try:
                record = await self._db.run(self._db.manifest.record, item.aweme_id)
            except ManifestError as exc:  # what is durable of the part is resumed next time
                return Failure(Reason.LOCAL_IO, detail=f"reading its record: {exc}"[:200])
            topic = item.topics[0] if item.topics else None
            info = functools.partial(info_document, record, item.aweme_id, item.url, topic)
        done = await asyncio.to_thread(
            self._t._publisher.publish, part, tail, self._relative, item.topics, info
        )
        if done.link_error is not None:
            self._log.warning("link_failed", error=done.link_error, retry="relink")
        return Published(
            self._relative,
            part.size,
            done.sha256,
            resumed=self._resumed_from > 0,
            linked_topics=done.linked_topics,
            links=done.links,
            fetched=self.tracked.received if self.tracked is not None else part.size,
        )
