"""Where a video lives: topic folder names and file names, safe by construction."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from pathlib import PurePosixPath

UNTAGGED = "untagged"
MAX_FOLDER_BYTES = 100
AWEME_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def is_valid_id(value: str) -> bool:
    """True for ids that are safe as file names: `^[A-Za-z0-9_-]{1,64}$`."""
    return AWEME_ID_RE.fullmatch(value) is not None


def _safe_char(ch: str) -> str:
    if ch in "/\\\x00" or unicodedata.category(ch) in _UNSAFE_CATEGORIES or ch.isspace():
        return "_"
    return ch


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


def topic_folder(topic: object) -> str:
    """The folder name for a topic: spaces become `_`; anything unsafe is sanitized.

    A sanitized name carries a short hash of the original so that two different topics never
    collapse into one folder. A missing or blank topic is `untagged`.
    """
    if not isinstance(topic, str):
        return UNTAGGED
    return _folder_for(topic)


@functools.lru_cache(maxsize=4096)  # pure, and asked again for every file of a topic
def _folder_for(topic: str) -> str:
    if not topic.strip():
        return UNTAGGED
    plain = topic.replace(" ", "_")
    cleaned = "".join(_safe_char(ch) for ch in plain)
    if cleaned.startswith((".", "-")):
        cleaned = "_" + cleaned[1:]
    if cleaned == plain and len(plain.encode("utf-8")) <= MAX_FOLDER_BYTES:
        return plain
    digest = hashlib.sha256(topic.encode("utf-8", errors="surrogatepass")).hexdigest()[:10]
    stem = _truncate_utf8(cleaned, MAX_FOLDER_BYTES - len(digest) - 1).rstrip(".")
    return f"{stem}-{digest}" if stem else f"topic-{digest}"


def relative_video_path(topic: object, aweme_id: str) -> PurePosixPath:
    """`<topic folder>/<id>.mp4`, relative to the media root. Raises ValueError on a bad id."""
    if not is_valid_id(aweme_id):
        raise ValueError(f"unsafe aweme_id {aweme_id!r}")
    return PurePosixPath(topic_folder(topic)) / f"{aweme_id}.mp4"


def info_path(video: PurePosixPath) -> PurePosixPath:
    """`<id>.info.json` beside `<id>.mp4` (write_info_json)."""
    return video.with_name(f"{video.stem}.info.json")


def part_name(final_name: str) -> str:
    """The name a file has while it is being written."""
    return final_name + ".part"
