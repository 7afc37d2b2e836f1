"""When to give up on an extract that does not parse: only after it has stopped changing."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What identifies a version of a file cheaply: size, mtime and inode."""

    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """`reject` now, or look again at `recheck_at` (monotonic seconds)."""

    reject: bool
    recheck_at: float = 0.0


@dataclass
class SettleTracker:
    """Remembers, per path, since when an unparsable file has looked the same."""

    settle_seconds: float
    _since: dict[str, tuple[FileSignature, float]] = field(default_factory=dict)

    def unparsable(self, path: str, signature: FileSignature, now: float) -> Verdict:
        """Record that `path` failed to parse at `now`; reject once unchanged for the period."""
        seen = self._since.get(path)
        if seen is None or seen[0] != signature:
            self._since[path] = (signature, now)
            return Verdict(False, now + self.settle_seconds)
        if now - seen[1] >= self.settle_seconds:
            del self._since[path]
            return Verdict(True)
        return Verdict(False, seen[1] + self.settle_seconds)

    def forget(self, path: str) -> None:
        """Drop the record for a path (it parsed, or it is gone)."""
        self._since.pop(path, None)

    def next_recheck(self) -> float | None:
        """The earliest monotonic time at which some tracked path should be looked at again."""
        if not self._since:
            return None
        return min(since for _, since in self._since.values()) + self.settle_seconds

    def due(self, now: float) -> list[str]:
        """Tracked paths whose settle period has run out by `now`."""
        return sorted(p for p, (_, t) in self._since.items() if now - t >= self.settle_seconds)
