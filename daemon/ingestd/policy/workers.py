"""Download worker processes (`workers = N`): how many run, what share of the node's limits
each gets, whose claims are whose, and how soon a worker that died is started again.

The node's `concurrency` stays its total: the workers' shares add up to it, the remainder
spread over the first ones. A worker never gets a share of 0, so a node runs no more workers
than `concurrency`, and a reload that lowers `concurrency` below the number running leaves each
worker one download. A worker that dies is started again after RESTART_DELAY_MIN seconds,
doubling with each death that follows within RESTART_CALM seconds of its start, up to
RESTART_DELAY_MAX; one that ran calmly for that long starts the count over. Each worker finds a
host down on its own; the node logs one host_unavailable when the first finds it down and one
host_recovered when the first has it back; so for downloads_paused (Conditions).
"""

from __future__ import annotations

from collections.abc import Mapping

WORKERS_MAX = 64
RESTART_DELAY_MIN = 0.5  # seconds before a worker that died is started again
RESTART_DELAY_MAX = 30.0  # cap on that delay while it keeps dying
RESTART_CALM = 60.0  # a worker that ran this long before it died starts its backoff over


def worker_count(workers: int, concurrency: int) -> int:
    """How many worker processes run: `workers`, at most one per download allowed."""
    return max(1, min(workers, concurrency, WORKERS_MAX))


def shares(total: int, parts: int) -> list[int]:
    """`total` split over `parts` as evenly as whole numbers go, the first ones taking the
    remainder; never 0 (when `total` < `parts`, each still gets 1)."""
    base, extra = divmod(total, parts)
    return [max(1, base + (k < extra)) for k in range(parts)]


def host_shares(per_host: int, parts: int) -> list[int]:
    """`per_host_concurrency` split like `concurrency`; 0 (no cap of its own) stays 0."""
    return [0] * parts if per_host == 0 else shares(per_host, parts)


def owner_of(node: str, worker: int) -> str:
    """The owner worker `worker` (1-based) claims as: `<node>/<worker>`."""
    return f"{node}/{worker}"


def deaths_after(previous: int, lived_s: float) -> int:
    """The deaths in a row that count towards the backoff, once a worker that lived `lived_s`
    seconds died: a calm run starts the count over."""
    return 1 if lived_s >= RESTART_CALM else previous + 1


def restart_delay(deaths: int) -> float:
    """Seconds before a worker is started again after `deaths` (>= 1) in a row."""
    return min(RESTART_DELAY_MIN * 2.0 ** min(max(deaths, 1) - 1, 32), RESTART_DELAY_MAX)


# What each worker finds on its own and the node reports once: the event that starts such a
# condition, the one that ends it, and the field that tells one instance from another (None:
# one for the node).
CONDITIONS: dict[str, tuple[str, str | None]] = {
    "host_unavailable": ("host_recovered", "host"),
    "downloads_paused": ("downloads_resumed", None),
    "manifest_error": ("manifest_recovered", None),
    "lease_renewal_failed": ("leases_renewed", None),
}
CONDITION_EVENTS = frozenset(CONDITIONS) | {end for end, _ in CONDITIONS.values()}


class Conditions:
    """Which conditions (a host down, downloads paused) the node is in, out of what its workers
    report: a condition starts when the first worker reports it and ends when the first one
    reports it over (the host serves again, the disk takes writes again). The others' reports of
    the same start or end are not the node's news."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], set[int]] = {}  # condition -> workers in it
        self._ends = {end: (start, field) for start, (end, field) in CONDITIONS.items()}

    def admit(self, worker: int, event: str, fields: Mapping[str, object]) -> bool:
        """Whether worker `worker`'s `event` is the node's to log."""
        if event in CONDITIONS:
            key = _key(event, CONDITIONS[event][1], fields)
            first = key not in self._open
            self._open.setdefault(key, set()).add(worker)
            return first
        if event not in self._ends:
            return True
        start, field = self._ends[event]
        return self._open.pop(_key(start, field, fields), None) is not None

    def forget(self, worker: int) -> None:
        """Worker `worker` ended. A condition only it was in is closed without a word: nobody is
        left to report its end, and a worker that finds it again must be heard."""
        for key, workers in list(self._open.items()):
            workers.discard(worker)
            if not workers:
                del self._open[key]


def _key(start: str, field: str | None, fields: Mapping[str, object]) -> tuple[str, str]:
    return start, "" if field is None else str(fields.get(field, ""))
