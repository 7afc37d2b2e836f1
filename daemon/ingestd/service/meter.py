"""What is in flight right now, and how many bytes have arrived: the live view's source.

Transfers register on start and count each batch as it arrives (one integer add), so a rate
taken from `received()` includes transfers still running, not only finished files.
"""

from __future__ import annotations

import time


class Tracked:
    """One attempt in flight. `received` counts this attempt's bytes only; `offset` is where it
    began (a resume's bytes already on disk); `total` is the file's size once known."""

    __slots__ = ("aweme_id", "offset", "received", "started", "topic", "total")

    def __init__(self, aweme_id: str, topic: str, offset: int, started: float) -> None:
        self.aweme_id = aweme_id
        self.topic = topic
        self.offset = offset
        self.started = started
        self.received = 0
        self.total: int | None = None


class Meter:
    """The transfers in flight (at most the pool's concurrency) and the bytes received."""

    def __init__(self) -> None:
        self.transfers: dict[str, Tracked] = {}
        self._finished_bytes = 0

    def begin(self, aweme_id: str, topic: str, offset: int) -> Tracked:
        """Register an attempt; `end` removes it."""
        tracked = Tracked(aweme_id, topic, offset, time.monotonic())
        self.transfers[aweme_id] = tracked
        return tracked

    def end(self, tracked: Tracked) -> None:
        """The attempt is over, however it ended: its bytes stay counted."""
        self._finished_bytes += tracked.received
        if self.transfers.get(tracked.aweme_id) is tracked:
            del self.transfers[tracked.aweme_id]

    def received(self) -> int:
        """Every byte received by this process, finished attempts and running ones alike."""
        return self._finished_bytes + sum(t.received for t in self.transfers.values())
