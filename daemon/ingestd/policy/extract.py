"""Parsing and validating an extract's bytes into usable records (pure; no file access)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass

from ingestd.policy.naming import is_valid_id
from ingestd.policy.urls import MAX_URL_LENGTH

MAX_DEPTH = 32
MAX_TOPIC_CHARS = 512


class RejectReason(enum.StrEnum):
    """Why a whole extract was refused. Values appear in `extract_rejected` events."""

    INVALID_JSON = "invalid_json"
    NOT_ARRAY = "not_array"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    NO_USABLE_RECORDS = "no_usable_records"
    UNREADABLE = "unreadable"


class ExtractError(Exception):
    """The extract cannot be merged; `reason` says why."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Record:
    """One usable record: the fields the daemon needs, plus the raw record as JSON text."""

    aweme_id: str
    url: str
    topic: str | None
    raw: str


@dataclass(frozen=True, slots=True)
class ParsedExtract:
    """The usable records of an extract and how many elements were not usable."""

    records: list[Record]
    total: int
    unusable: int


def _too_deep(document: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children: Iterator[object]
        if isinstance(node, dict):
            children = iter(node.values())
        elif isinstance(node, list):
            children = iter(node)
        else:
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def normalize_record(element: object) -> Record | None:
    """A usable Record from one array element, or None when it lacks a safe id or a URL."""
    if not isinstance(element, dict):
        return None
    raw_id = element.get("aweme_id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return None
    aweme_id = str(raw_id)
    if not is_valid_id(aweme_id):
        return None
    media = element.get("media")
    if not isinstance(media, dict):
        return None
    url = media.get("source_url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return None
    topic = element.get("query_context")
    if not isinstance(topic, str):
        topic = None
    elif len(topic) > MAX_TOPIC_CHARS:
        topic = topic[:MAX_TOPIC_CHARS]
    raw = json.dumps(element, ensure_ascii=False, separators=(",", ":"))
    return Record(aweme_id, url, topic, raw)


def parse_extract(data: bytes, max_depth: int = MAX_DEPTH) -> ParsedExtract:
    """Parse an extract; raise ExtractError when it must be rejected as a whole."""
    try:
        document = json.loads(data)
    except RecursionError as exc:
        raise ExtractError(RejectReason.TOO_DEEP, "nesting exceeds the parser's limit") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExtractError(RejectReason.INVALID_JSON, str(exc)[:200]) from exc
    if not isinstance(document, list):
        raise ExtractError(RejectReason.NOT_ARRAY, f"top level is {type(document).__name__}")
    if _too_deep(document, max_depth):
        raise ExtractError(RejectReason.TOO_DEEP, f"nesting deeper than {max_depth}")
    records: list[Record] = []
    for element in document:
        try:
            record = normalize_record(element)
        except (ValueError, RecursionError):  # e.g. lone surrogates that cannot be re-encoded
            record = None
        if record is not None:
            records.append(record)
    if document and not records:
        raise ExtractError(RejectReason.NO_USABLE_RECORDS, f"{len(document)} elements")
    return ParsedExtract(records, len(document), len(document) - len(records))
