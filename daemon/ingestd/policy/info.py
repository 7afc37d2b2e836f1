"""The `<id>.info.json` written beside a video when `write_info_json` is on (pure; no I/O).

It holds the item's record as the manifest keeps it (the JSON text of the latest extract that
had it), like yt-dlp's `--write-info-json`. The record comes from an untrusted extract and its
URLs are signed: every URL in any string of it loses its query string, fragment and
credentials (the same cut as the logs make), and a record that is too large, or no longer
parses, is replaced by a small document saying so. A record with nothing to cut is written
byte for byte as it came.
"""

from __future__ import annotations

import json
import re

from ingestd.policy.extract import encodable
from ingestd.policy.urls import redact

# A record is about 1.3 KB (README, "Manifest"); an extract may hold one of any size up to
# max_extract_bytes, and a library folder is no place for that.
MAX_INFO_BYTES = 1024 * 1024
# A URL inside any string: scheme, optional credentials, the rest up to its query or fragment.
_URL = re.compile(r"(https?://)([^\s/?#@'\"<>]*@)?([^\s?#'\"<>]*)([?#][^\s'\"<>]*)?", re.I)


def _cut(match: re.Match[str]) -> str:
    return match.group(1) + match.group(3)


def _scrub(value: object) -> tuple[object, bool]:
    """`value` with every URL cut back to scheme, host and path; and whether anything changed."""
    if isinstance(value, str):
        if "://" not in value:
            return value, False
        cut = _URL.sub(_cut, value)
        return cut, cut != value
    if isinstance(value, list):
        items = [_scrub(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    if isinstance(value, dict):
        pairs = {k: _scrub(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(c for _, c in pairs.values())
    return value, False


def info_document(record: str | None, aweme_id: str, url: str | None, topic: str | None) -> bytes:
    """The info file's bytes for an item: its scrubbed `record`, or, when that is missing, too
    large or not JSON, a small document with the id, the redacted `url` and the `topic`."""
    if record is not None and len(record) <= MAX_INFO_BYTES:
        try:
            parsed = json.loads(record)
        except (ValueError, RecursionError):
            parsed = None
        if parsed is not None:
            scrubbed, changed = _scrub(parsed)
            if not changed and encodable(record):
                data = record.encode("utf-8")
            else:
                try:
                    data = json.dumps(scrubbed, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate escape: kept as an escape
                    data = json.dumps(scrubbed).encode("ascii")
            if len(data) <= MAX_INFO_BYTES:
                return data
    omitted = {
        "aweme_id": aweme_id,
        "media": {"source_url": None if url is None else redact(url)},
        "query_context": topic,
        "ingestd_record_omitted": {
            "bytes": 0 if record is None else len(record.encode("utf-8", "surrogatepass")),
            "max_bytes": MAX_INFO_BYTES,
        },
    }
    return json.dumps(omitted).encode("ascii")
