"""Byte-level rules of a transfer: resume validators, response framing, what counts as a video.

Every header value here comes from a server and is untrusted: a value that breaks its grammar
raises `Malformed` (whose message is the detail logged), never a bare ValueError.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import TypeGuard

from ingestd.policy.retry import Failure, Reason

SNIFF_BYTES = 12
MAX_DIGITS = 19  # 10**19 bytes is far past any file; more digits is an attack or a bug
_NUMBER = rf"[0-9]{{1,{MAX_DIGITS}}}"
_LENGTH = re.compile(_NUMBER)
_CONTENT_RANGE = re.compile(rf"bytes ({_NUMBER})-({_NUMBER})/({_NUMBER})")
_UNSATISFIED = re.compile(rf"bytes \*/({_NUMBER})")


class Malformed(ValueError):
    """A response that breaks HTTP's framing rules; str(exc) says how."""


@dataclass(frozen=True, slots=True)
class ContentRange:
    """`Content-Range: bytes start-end/total`, with start <= end < total."""

    start: int
    end: int
    total: int


@dataclass(frozen=True, slots=True)
class Receive:
    """Write the body at byte `start` of the part (cut to `start` first): exactly `length`
    bytes when known. The file is complete at `total` bytes (None: when the body ends)."""

    start: int
    length: int | None
    total: int | None


@dataclass(frozen=True, slots=True)
class PublishPart:
    """The part already holds the whole file (`total` bytes): check it and publish it."""

    total: int


@dataclass(frozen=True, slots=True)
class Reject:
    """No usable body: fail the attempt; `discard` drops the part (it cannot be resumed)."""

    failure: Failure
    discard: bool = False


Plan = Receive | PublishPart | Reject


def looks_like_mp4(head: bytes) -> bool:
    """An ISO-BMFF file (MP4) starts with a box whose type at offset 4 is `ftyp`."""
    return len(head) >= SNIFF_BYTES and head[4:8] == b"ftyp"


def strong_validator(etag: str | None, last_modified: str | None) -> str | None:
    """The validator to send back in If-Range: a strong ETag, else Last-Modified, else None."""
    if etag:
        etag = etag.strip()
        if etag.startswith('"') and etag.endswith('"') and len(etag) >= 2:
            return etag
    if last_modified and last_modified.strip():
        return last_modified.strip()
    return None


def parse_content_length(value: str | None) -> int | None:
    """The declared body length; None when absent. A field repeated (or joined with commas)
    must repeat the same value (RFC 9110 8.6); only ASCII digits, at most MAX_DIGITS."""
    if value is None:
        return None
    if value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS:
        return int(value)  # the usual field, without the general path's sets
    values = {part.strip(" \t") for part in value.split(",")}
    for part in values:
        if not _LENGTH.fullmatch(part):
            raise Malformed(f"content-length {_shown(value)}")
    if len({int(part) for part in values}) != 1:
        raise Malformed(f"conflicting content-length {_shown(value)}")
    return int(values.pop())


def parse_content_range(value: str | None) -> ContentRange:
    """A 206's `Content-Range: bytes a-b/n`, checked: a <= b < n."""
    match = _CONTENT_RANGE.fullmatch(value.strip(" \t")) if value is not None else None
    if match is None:
        raise Malformed(f"content-range {_shown(value)}")
    start, end, total = (int(group) for group in match.groups())
    if not start <= end < total:
        raise Malformed(f"content-range {_shown(value)}")
    return ContentRange(start, end, total)


def unsatisfied_total(value: str | None) -> int | None:
    """The size a 416 reports in `Content-Range: bytes */n`, or None when it reports none."""
    match = _UNSATISFIED.fullmatch(value.strip(" \t")) if value is not None else None
    return None if match is None else int(match.group(1))


def _shown(value: str | None) -> str:
    return "missing" if value is None else repr(value[:40] + ("..." if len(value) > 40 else ""))


def plan_response(
    status: int,
    offset: int,
    known_total: int | None,
    content_length: str | None,
    content_range: str | None,
    *,
    sent_validator: str | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
    framed: bool = True,
) -> Plan:
    """What to do with a 200, 206 or 416 answer to a GET asking for bytes from `offset` on
    (0: the whole file), given the file size an earlier answer declared, if any.

    `sent_validator` went out in If-Range; `etag` and `last_modified` are the answer's.
    `framed`: the protocol marks the body's end (HTTP/2, chunked), so a body without a length
    is still known to be whole; an HTTP/1.1 body ended by the connection's close is not, and
    is refused."""
    try:
        length = parse_content_length(content_length)
        if status == 200:
            if length is None and not framed:
                return Reject(Failure(Reason.MALFORMED, 200, detail="no length, no framing"))
            return Receive(0, length, length)
        if status == 206:
            if not offset:
                return Reject(
                    Failure(Reason.MALFORMED, 206, detail="206 to a request without Range")
                )
            if sent_validator and not same_version(sent_validator, etag, last_modified):
                detail = "206 of another version: its validator is not the If-Range sent"
                return Reject(Failure(Reason.RANGE_MISMATCH, 206, detail=detail), discard=True)
            found = parse_content_range(content_range)
            expected = found.end - found.start + 1
            if length is not None and length != expected:
                raise Malformed(f"content-length {length} for content-range {content_range!r}")
            if found.start != offset:
                detail = f"asked from {offset}, got {found.start}"
                return Reject(Failure(Reason.RANGE_MISMATCH, 206, detail=detail), discard=True)
            if known_total is not None and found.total != known_total:
                detail = f"size {found.total}, was {known_total}"
                return Reject(Failure(Reason.RANGE_MISMATCH, 206, detail=detail), discard=True)
            return Receive(found.start, expected, found.total)
        if status == 416 and offset:
            total = unsatisfied_total(content_range)
            if total == offset and (known_total is None or known_total == total):
                return PublishPart(total)
            detail = f"416: part holds {offset} bytes, size {total if total is not None else '?'}"
            return Reject(Failure(Reason.RANGE_MISMATCH, 416, detail=detail), discard=True)
    except Malformed as exc:
        return Reject(Failure(Reason.MALFORMED, status, detail=str(exc)))
    return Reject(Failure(Reason.HTTP_ERROR, status))


def same_version(sent: str, etag: str | None, last_modified: str | None) -> bool:
    """Whether an answer is of the version `sent` in If-Range names, comparing like with like
    (an ETag with the ETag, a date with Last-Modified); True when it says nothing to compare."""
    if sent.startswith('"'):
        return etag is None or etag.strip() == sent
    return last_modified is None or last_modified.strip() == sent


def resumable(validator: str | None, offset: int) -> TypeGuard[str]:
    """Whether `offset` bytes of a part written under `validator` are worth asking the rest
    for (Range and If-Range). A part, or a manifest record of one, that is not resumable is
    started over from zero, whatever it holds."""
    return bool(validator) and offset >= SNIFF_BYTES


def resume_headers(offset: int, validator: str | None) -> dict[str, str]:
    """Headers that ask for the rest of a partial file, or none when it cannot be resumed."""
    if resumable(validator, offset):
        return {"Range": f"bytes={offset}-", "If-Range": validator}
    return {}


class RateFloor:
    """curl's `-Y`/`-y`: an attempt whose average rate over the last `window` seconds stays
    under `min_rate` bytes a second is too slow. No clock: the caller passes `now`."""

    def __init__(self, min_rate: int, window: float, now: float) -> None:
        self._min_rate = min_rate
        self._window = window
        self._rate = 0.0
        # (time, bytes so far), at most one a second: bounded by the window, not by the peer.
        self._marks: collections.deque[tuple[float, int]] = collections.deque([(now, 0)])
        # Asking before this changes nothing: callers on a hot path skip the call until then.
        self.next_check = now + 1.0 if min_rate > 0 else float("inf")

    def too_slow(self, received: int, now: float) -> bool:
        """Note that `received` bytes have arrived in all by `now`; True when too slow."""
        if self._min_rate <= 0:
            return False
        self.next_check = now + 1.0
        marks = self._marks
        if now - marks[-1][0] >= 1.0:
            marks.append((now, received))
        while len(marks) > 1 and marks[1][0] <= now - self._window:
            marks.popleft()
        since, then = marks[0]
        if now - since < self._window:
            return False  # not a whole window yet
        self._rate = (received - then) / (now - since)
        return self._rate < self._min_rate

    def describe(self) -> str:
        """The rate that was too slow, for the log."""
        return f"{self._rate:.0f} B/s over {self._window:g} s, under min_rate {self._min_rate}"
