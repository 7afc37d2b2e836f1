"""Manifest merge rules: what a new record does to the item already known under its id."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from ingestd.policy.urls import fresher_url

MAX_TOPICS = 64
MAX_SOURCES = 64


class State(enum.StrEnum):
    """An item's lifecycle state, as stored in the manifest."""

    PENDING = "pending"
    ACTIVE = "active"
    DONE = "done"
    EXPIRED = "expired"
    FAILED = "failed"


class Known(NamedTuple):  # a tuple: a merge builds one per record
    """The parts of a manifest row that merging looks at."""

    url: str
    topics: tuple[str | None, ...]
    sources: tuple[str, ...]
    state: State


@dataclass(frozen=True, slots=True)
class Change:
    """The new values for a row. `changed` is true when URL, topics or state moved."""

    url: str
    topics: tuple[str | None, ...]
    sources: tuple[str, ...]
    state: State
    reset_attempts: bool
    relink: bool
    changed: bool


def _add(values: tuple[str, ...], value: str, limit: int) -> tuple[str, ...]:
    if value in values or len(values) >= limit:
        return values
    return (*values, value)


def merge(known: Known, url: str, topic: str | None, source: str) -> Change:
    """Apply one incoming record to a known item.

    A known id gains the topic; unless done, a different (not older) URL replaces the old one,
    and an expired or failed item goes back to pending with its attempts reset. A done item is
    never downloaded again; when it gains a topic it needs a new hard link.
    """
    topics = known.topics
    if topic not in topics and len(topics) < MAX_TOPICS:
        topics = (*topics, topic)
    sources = _add(known.sources, source, MAX_SOURCES)
    state = known.state
    new_url = known.url
    reset = False
    if state is not State.DONE and url != known.url:
        new_url = fresher_url(known.url, url)
        if new_url != known.url and state in (State.EXPIRED, State.FAILED):
            state = State.PENDING
            reset = True
    gained_topic = topics != known.topics
    return Change(
        url=new_url,
        topics=topics,
        sources=sources,
        state=state,
        reset_attempts=reset,
        relink=state is State.DONE and gained_topic,
        changed=gained_topic or new_url != known.url or state is not known.state,
    )
