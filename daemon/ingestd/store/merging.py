"""The half of a merge that is not SQL, shared by the backends: what a chunk of records does to
the items known under their ids (the rules are policy.merge's), which items it links to the
extract being merged, and how those links count. A backend reads the known rows of a chunk,
asks `plan_chunk`, and writes what the plan says, in one transaction."""

from __future__ import annotations

import collections
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from ingestd.policy.merge import Known, State, merge
from ingestd.policy.urls import may_be_past, past_expiry
from ingestd.store.base import EXPIRED_IDS_KEPT, ExpiredAtMerge

if TYPE_CHECKING:  # the CLI reads the manifest without loading the extract parser
    from ingestd.policy.extract import Record

_url = operator.attrgetter("url")


class ExpiredTally:
    """ExpiredAtMerge, added up over the chunks of one merge (each item counted once)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._first: list[str] = []
        self._earliest: int | None = None
        self._latest: int | None = None

    def add(self, aweme_id: str, expiry: int) -> None:
        if aweme_id in self._ids:
            return
        self._ids.add(aweme_id)
        if len(self._first) < EXPIRED_IDS_KEPT:
            self._first.append(aweme_id)
        self._earliest = expiry if self._earliest is None else min(self._earliest, expiry)
        self._latest = expiry if self._latest is None else max(self._latest, expiry)

    def summary(self) -> ExpiredAtMerge:
        return ExpiredAtMerge(len(self._ids), self._earliest, self._latest, tuple(self._first))


def chunks(seq: Sequence[Record], size: int) -> Iterator[Sequence[Record]]:
    """`seq` in slices of `size` (the last one shorter): one write transaction each."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


@dataclass(slots=True)
class ChunkPlan:
    """What merging a chunk does. `known` holds every id of the chunk with its values after the
    merge; the sets split them by what to write. An id is in `inserted` or in `dirty`, never
    both; `updated`, `reset` and `relink` are subsets of `dirty`."""

    known: dict[str, Known]
    raw: dict[str, str] = field(default_factory=dict)  # the record text to keep, per id
    inserted: set[str] = field(default_factory=set)  # first seen: stored whole
    dirty: set[str] = field(default_factory=set)  # known: written back
    updated: set[str] = field(default_factory=set)  # their URL, topics or state changed
    reset: set[str] = field(default_factory=set)  # fresh attempts, due now, no last error
    relink: set[str] = field(default_factory=set)  # done, with a topic gained
    expired: dict[str, int] = field(default_factory=dict)  # id: the expiry found past

    def new_rows(self) -> tuple[list[str], list[str]]:
        """The inserted ids split into (pending, expired): a URL dead at the merge is stored
        `expired`, with `url_expired` as its last error."""
        if not self.expired:
            return list(self.inserted), []
        dead = [i for i in self.inserted if i in self.expired]
        if not dead:
            return list(self.inserted), []
        return [i for i in self.inserted if i not in self.expired], dead


def plan_chunk(
    chunk: Sequence[Record], known: dict[str, Known], source: str, now: float
) -> ChunkPlan:
    """Apply the records of `chunk`, in order, to the items `known` under their ids (the rows
    read for the chunk; the dict is taken over). A new item, or an expired or failed one given
    a fresher URL, whose URL is past its expiry at `now` is `expired`: never queued, no attempt
    spent. A repeat of an id within the chunk folds into its first record's row."""
    plan = ChunkPlan(known)
    inserted, dirty, expired = plan.inserted, plan.dirty, plan.expired
    # New items whose URL is dead already are stored expired: most chunks have none.
    check = may_be_past(map(_url, chunk), now)
    for record in chunk:
        aweme_id = record.aweme_id
        plan.raw[aweme_id] = record.raw
        current = known.get(aweme_id)
        if current is None:
            state = State.PENDING
            if check and (expiry := past_expiry(record.url, now)) is not None:
                state = State.EXPIRED
                expired[aweme_id] = expiry
            known[aweme_id] = Known(record.url, (record.topic,), (source,), state)
            inserted.add(aweme_id)
            continue
        change = merge(current, record.url, record.topic, source)
        state = change.state
        if change.reset_attempts:  # expired or failed, given a fresher URL
            if (expiry := past_expiry(change.url, now)) is not None:
                state = State.EXPIRED  # fresher, yet dead too: it stays out of the queue
                expired[aweme_id] = expiry
            else:
                expired.pop(aweme_id, None)
        known[aweme_id] = Known(change.url, change.topics, change.sources, state)
        if aweme_id in inserted:
            continue  # a repeat within this chunk folds into the insert
        dirty.add(aweme_id)
        if change.changed:
            plan.updated.add(aweme_id)
        if change.reset_attempts:
            plan.reset.add(aweme_id)
        if change.relink:
            plan.relink.add(aweme_id)
    return plan


def other_extracts(extract_id: int, dirty: set[str], links: dict[str, tuple[int, ...]]) -> set[int]:
    """The extracts the `dirty` items are linked to besides `extract_id`: `relinked` must be
    told which of them are still open."""
    seen = {x for i in dirty for x in links[i]}
    seen.discard(extract_id)
    return seen


def relinked(
    extract_id: int,
    dirty: set[str],
    links: dict[str, tuple[int, ...]],
    open_ids: set[int],
) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """The extract list of each `dirty` item with `extract_id` added and those not in
    `open_ids` dropped (nothing follows the items of a completed extract any more: a list holds
    open ones only), and the items that were not linked to `extract_id` yet."""
    lists: dict[str, tuple[int, ...]] = {}
    fresh = []
    # Items share a few lists: each is worked out once per chunk.
    worked: dict[tuple[int, ...], tuple[tuple[int, ...], bool]] = {}
    for i in dirty:
        linked = links[i]
        if (found := worked.get(linked)) is None:
            kept = tuple(x for x in linked if x == extract_id or x in open_ids)
            added = extract_id not in linked
            found = worked[linked] = ((*kept, extract_id) if added else kept), added
        lists[i] = found[0]
        if found[1]:
            fresh.append(i)
    return fresh, lists


class LinkCounts(NamedTuple):
    """What the items just linked to an extract add to its progress: each counted by the state
    it has now (from then on each change of its state moves the counts)."""

    items: int
    outstanding: int
    done: int
    expired: int
    failed: int
    bytes: int


def link_counts(pending: int, expired: int, items: list[tuple[State, int | None]]) -> LinkCounts:
    """The counts of `pending` and `expired` new items and of known `items` (state, bytes)."""
    states = collections.Counter(state for state, _ in items)
    states[State.PENDING] += pending
    states[State.EXPIRED] += expired
    size = sum(size or 0 for state, size in items if state is State.DONE)
    return LinkCounts(
        pending + expired + len(items),
        states[State.PENDING] + states[State.ACTIVE],
        states[State.DONE],
        states[State.EXPIRED],
        states[State.FAILED],
        size,
    )
