"""Download worker processes (`workers = N`): how many run, what share of the node's limits
each gets, whose claims are whose, and how soon a worker that died is started again.

The node's `concurrency` stays its total: the workers' shares add up to it, the remainder
spread over the first ones. A worker never gets a share of 0, so a node runs no more workers
than `concurrency`, and a reload that lowers `concurrency` below the number running leaves each
worker one download. A worker that dies is started again after RESTART_DELAY_MIN seconds,
doubling with each death that follows within RESTART_CALM seconds of its start, up to
RESTART_DELAY_MAX; one that ran calmly for that long starts the count over. Each worker finds a
host down on its own; the node logs one host_unavailable when the first finds it down and one
host_recovered when the last has it back (HostsDown).
"""

from __future__ import annotations

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


class HostsDown:
    """Which workers have each host down: the node's one host_unavailable and host_recovered
    per outage, out of each worker's own."""

    def __init__(self) -> None:
        self._down: dict[str, set[int]] = {}

    def admit(self, worker: int, event: str, host: str) -> bool:
        """Whether worker `worker`'s `event` about `host` is the node's to log: the first
        host_unavailable, and the host_recovered of the last worker that had it down."""
        if event == "host_unavailable":
            down = self._down.setdefault(host, set())
            first = not down
            down.add(worker)
            return first
        if event == "host_recovered":
            had = self._down.get(host)
            if had is None or worker not in had:
                return had is None  # nobody has it down: a lone word, passed on as it came
            had.discard(worker)
            if had:
                return False
            del self._down[host]
        return True

    def forget(self, worker: int) -> None:
        """Worker `worker` ended: what it had down, it will not report back (its successor
        starts knowing nothing)."""
        for host, down in list(self._down.items()):
            down.discard(worker)
            if not down:
                del self._down[host]
