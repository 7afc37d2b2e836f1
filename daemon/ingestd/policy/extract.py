"""Parsing and validating an extract's bytes into usable records (pure; no file access)."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from ingestd.policy.naming import is_valid_id
from ingestd.policy.urls import MAX_URL_LENGTH, sendable

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


class Record(NamedTuple):
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


def _maybe_too_deep(raw: str, max_depth: int) -> bool:
    # The array is depth 1, so an element may nest max_depth - 1 levels. Its depth is at most its
    # number of brackets: counting them is fast, and only elements over that get walked.
    return raw.count("[") + raw.count("{") + 1 > max_depth


def _check_depth(element: object, max_depth: int) -> None:
    if _too_deep(element, max_depth - 1):
        raise ExtractError(RejectReason.TOO_DEEP, f"nesting deeper than {max_depth}")


def _record(raw_id: object, media: object, topic: object, raw: str) -> Record | None:
    """A usable Record from a record's fields and its JSON text, or None when it lacks a safe id
    or a usable URL."""
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return None
    aweme_id = str(raw_id)
    if not is_valid_id(aweme_id) or not isinstance(media, dict):
        return None
    url = media.get("source_url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return None
    if not encodable(url) or not sendable(url):  # never requested; no store need hold it
        return None
    if not isinstance(topic, str):
        topic = None
    elif len(topic) > MAX_TOPIC_CHARS:
        topic = topic[:MAX_TOPIC_CHARS]
    return Record(aweme_id, url, topic, raw)


def encodable(text: str) -> bool:
    """Whether `text` is valid UTF-8 text: a lone surrogate (legal as a JSON escape, and how an
    extract read as invalid UTF-8 keeps its bad bytes) cannot be stored or sent."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# What the parsers yield per element: (aweme_id, media, query_context) of an object, or None for
# any other value, with the element's JSON text.
_Element = tuple[tuple[object, object, object] | None, str]


def _collect(elements: Iterator[_Element]) -> ParsedExtract:
    records: list[Record] = []
    total = 0
    for fields, raw in elements:
        total += 1
        if fields is not None and (record := _record(*fields, raw)) is not None:
            records.append(record)
    if total and not records:
        raise ExtractError(RejectReason.NO_USABLE_RECORDS, f"{total} elements")
    return ParsedExtract(records, total, total - len(records))


def _fields(element: object) -> tuple[object, object, object] | None:
    if not isinstance(element, dict):
        return None
    return element.get("aweme_id"), element.get("media"), element.get("query_context")


# --- the reference parser: the standard library, element by element --------------------------

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _stdlib_elements(text: str, max_depth: int) -> Iterator[_Element]:
    """Each element of the top-level array (which starts at the first non-blank character), with
    its exact JSON text: decoding element by element keeps each record's own text."""
    pos = _skip_ws(text, _skip_ws(text, 0) + 1)  # past "["
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            element, stop = _DECODER.raw_decode(text, pos)
            raw = text[pos:stop]
            if _maybe_too_deep(raw, max_depth):
                _check_depth(element, max_depth)
            yield _fields(element), raw
            pos = _skip_ws(text, stop)
            if text.startswith("]", pos):
                pos += 1
                break
            if not text.startswith(",", pos):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos = _skip_ws(text, pos + 1)
    if _skip_ws(text, pos) != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


def _parse_stdlib(data: bytes, max_depth: int) -> ParsedExtract:
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        if not text.startswith("[", _skip_ws(text, 0)):
            document = json.loads(text)  # valid JSON of another type, or invalid JSON
            raise ExtractError(RejectReason.NOT_ARRAY, f"top level is {type(document).__name__}")
        return _collect(_stdlib_elements(text, max_depth))
    except RecursionError as exc:
        raise ExtractError(RejectReason.TOO_DEEP, "nesting exceeds the parser's limit") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExtractError(RejectReason.INVALID_JSON, str(exc)[:200]) from exc


# --- the fast path: msgspec splits the array and decodes only the three fields used ------------


class _Fields(msgspec.Struct):
    aweme_id: Any = None
    media: Any = None
    query_context: Any = None


_ARRAY_START = re.compile(rb"[ \t\n\r]*\[")
_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])
_FIELDS = msgspec.json.Decoder(_Fields)


class _Undecided(Exception):
    """The fast path cannot give the reference parser's verdict: let the reference decide."""


def _reference(raw: str) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _Undecided from exc


def _fast_elements(data: bytes, max_depth: int) -> Iterator[_Element]:
    try:
        parts = _SPLIT.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        # Malformed, or only outside msgspec's grammar (NaN, lone surrogate escapes): either
        # way the standard library's verdict is the one that counts.
        raise _Undecided from exc
    for part in parts:
        try:
            raw = bytes(part).decode("utf-8")  # msgspec does not check UTF-8 inside strings
        except UnicodeDecodeError as exc:
            raise _Undecided from exc
        if _maybe_too_deep(raw, max_depth):
            element = _reference(raw)
            _check_depth(element, max_depth)
            yield _fields(element), raw
        elif not raw.startswith("{"):
            yield None, raw
        else:
            try:
                found = _FIELDS.decode(part)
            except msgspec.DecodeError:
                yield _fields(_reference(raw)), raw
            else:
                yield (found.aweme_id, found.media, found.query_context), raw


def _parse_fast(data: bytes, max_depth: int) -> ParsedExtract:
    if json.detect_encoding(data) != "utf-8" or not _ARRAY_START.match(data):
        raise _Undecided
    return _collect(_fast_elements(data, max_depth))


def parse_extract(data: bytes, max_depth: int = MAX_DEPTH) -> ParsedExtract:
    """Parse an extract; raise ExtractError when it must be rejected as a whole.

    The verdict and the records are those of the standard library's parser, read element by
    element. msgspec gets there about 3x faster on well-formed UTF-8 input, so it goes first, and
    anything it cannot judge exactly the same way (any error at all, other encodings, lone
    surrogate escapes, NaN) goes to the standard library.
    """
    try:
        return _parse_fast(data, max_depth)
    except _Undecided:
        return _parse_stdlib(data, max_depth)
