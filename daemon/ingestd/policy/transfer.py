"""Byte-level rules of a transfer: resume validators, Content-Range, and what counts as a video."""

from __future__ import annotations

import re

SNIFF_BYTES = 12
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


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


def content_range_start(value: str | None) -> int | None:
    """The first byte position of a `Content-Range: bytes a-b/n` header, or None if malformed."""
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    start, end = int(match.group(1)), int(match.group(2))
    return start if end >= start else None


def resume_headers(offset: int, validator: str | None) -> dict[str, str]:
    """Headers that ask for the rest of a partial file, or none when it cannot be resumed."""
    if offset < SNIFF_BYTES or not validator:
        return {}
    return {"Range": f"bytes={offset}-", "If-Range": validator}
