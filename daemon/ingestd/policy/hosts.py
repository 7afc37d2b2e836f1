"""Host health: which origin hosts may be sent a request now, and when a failing one is tried again.

Pure: the pool asks `admit` before each transfer and reports each outcome to `finished`; both take
the time as an argument and return what to do. A host that fails to connect (DNS, TCP, TLS) or
answers 429/503 `HOST_FAILURES_TO_COOL` times in a row cools down: no request goes to it until
the cooldown ends, when a single probe tests it. The cooldown doubles with each failed probe, up
to `host_backoff_max`; a `Retry-After` on a 429/503 sets it for the whole host. Items waiting for
a cooling host spend none of their attempts.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from ingestd.policy.retry import backoff_delay

HOST_FAILURES_TO_COOL = 2  # one lost SYN is not an outage; two in a row stop the traffic
# While a probe is out, other items for the host look again this much later at the earliest.
PROBE_WAIT = 1.0
# Hosts remembered; the healthy ones with nothing in flight are forgotten first.
MAX_HOSTS = 4096
# Connections lost this close together (seconds), this many times, went down with their host.
LOSS_WINDOW = 2.0
LOSS_BURST = 2


@dataclass(frozen=True, slots=True)
class HostEvent:
    """A change an operator should see: `host_unavailable` or `host_recovered`."""

    event: str
    host: str
    reason: str
    retry_in_s: float = 0.0
    failures: int = 0
    down_s: float = 0.0


@dataclass
class _Host:
    in_flight: int = 0
    failures: int = 0  # host faults in a row
    cooling_until: float = 0.0
    down_since: float | None = None  # set while the host is reported unavailable
    went_down_at: float = float("-inf")  # when it was last reported unavailable
    probe: str | None = None  # the ticket of the request probing the host, while one is out
    reason: str = ""
    served_at: float = -1.0  # when a request last ended with an answer from the host
    # When its last connections died under a single transfer (a burst is the host's fault).
    losses: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=LOSS_BURST)
    )


class HostHealth:
    """Per-host slots, cooldowns and probes."""

    def __init__(self, backoff_base: float, backoff_max: float, slots: int) -> None:
        self._base = max(backoff_base, 0.1)
        self._max = backoff_max
        self._slots = slots
        self._hosts: dict[str, _Host] = {}

    def reconfigure(self, backoff_base: float, backoff_max: float, slots: int) -> None:
        """Apply reloaded settings to later decisions."""
        self._base, self._max, self._slots = max(backoff_base, 0.1), backoff_max, slots

    def blocked(self, now: float) -> list[str]:
        """Hosts that cannot take a request now: cooling down, probing, or out of slots."""
        return [
            name
            for name, h in self._hosts.items()
            if h.cooling_until > now or h.probe is not None or h.in_flight >= self._slots
        ]

    def next_cooldown_end(self, now: float) -> float | None:
        """When the first cooldown still running ends (its host may be probed then); None when
        no host is cooling."""
        return min(
            (h.cooling_until for h in self._hosts.values() if h.cooling_until > now), default=None
        )

    def down(self) -> list[str]:
        """Hosts reported unavailable now."""
        return [name for name, h in self._hosts.items() if h.down_since is not None]

    def served_since(self, host: str, since: float) -> bool:
        """True when `host` answered some request that ended after `since`: a transfer of
        its that died meanwhile failed on its own account, not the host's."""
        state = self._hosts.get(host)
        return state is not None and state.served_at >= since

    def lost(self, host: str, now: float) -> None:
        """A connection died under one transfer of `host` (judged later by `went_down`)."""
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host()
        state.losses.append(now)

    def went_down(self, host: str, at: float, now: float) -> bool:
        """Whether a transfer lost at `at` went down with its host: the host is cooling down
        or reported down now, or was reported down around `at`, or other connections of its
        died around the same time."""
        state = self._hosts.get(host)
        if state is None:
            return False
        if state.cooling_until > now or state.down_since is not None:
            return True
        if abs(state.went_down_at - at) <= LOSS_WINDOW:
            return True
        near = [t for t in state.losses if abs(t - at) <= LOSS_WINDOW]
        return len(near) >= LOSS_BURST

    def cooling_until(self, host: str) -> float:
        """When `host` may be tried again (0 when it may be now)."""
        state = self._hosts.get(host)
        return 0.0 if state is None else state.cooling_until

    def admit(self, host: str, now: float, ticket: str) -> float | None:
        """Take a slot on `host` for the request `ticket` names: None when taken, else the
        earliest time to ask again (the end of a cooldown; a little later while a probe is
        out or the host's slots are all taken). `finished` gives the slot back."""
        state = self._hosts.get(host)
        if state is None:
            if len(self._hosts) >= MAX_HOSTS:
                self._forget_idle()
            state = self._hosts[host] = _Host()
        if now < state.cooling_until:
            return state.cooling_until
        if state.probe is not None or state.in_flight >= self._slots:
            return now + PROBE_WAIT
        if state.down_since is not None:
            state.probe = ticket  # the single request that tests a host coming back
        state.in_flight += 1
        return None

    def finished(
        self,
        host: str,
        now: float,
        ticket: str,
        *,
        host_fault: bool,
        reason: str = "",
        retry_after: float | None = None,
        jitter: float = 0.5,
        cancelled: bool = False,
    ) -> HostEvent | None:
        """Release the slot `admit` gave; `host_fault` says the host failed us (no connection,
        429 or 503), `cancelled` that the request ended without a verdict (it never reached
        the host, or was stopped). Returns the event to log, if the host went down or came
        back. Only the probe's own end ends a probe."""
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(in_flight=1)
        state.in_flight = max(state.in_flight - 1, 0)
        probe = state.probe == ticket
        if probe:
            state.probe = None
        if cancelled:
            return None
        if state.down_since is not None and not probe:
            return None  # sent before the cooldown began: says nothing new, either way
        if not host_fault:
            state.failures = 0
            state.cooling_until = 0.0
            state.served_at = now
            if state.down_since is None:
                return None
            down_s, state.down_since = now - state.down_since, None
            return HostEvent("host_recovered", host, state.reason, down_s=round(down_s, 3))
        state.failures += 1
        state.reason = reason
        if state.failures < HOST_FAILURES_TO_COOL and retry_after is None:
            return None
        if retry_after is not None:
            delay = min(max(retry_after, 0.0), self._max)
        else:
            exponent = state.failures - HOST_FAILURES_TO_COOL + 1
            delay = backoff_delay(exponent, self._base, self._max, jitter)
        state.cooling_until = max(state.cooling_until, now + delay)
        if state.down_since is not None:
            return None
        state.down_since = state.went_down_at = now
        return HostEvent("host_unavailable", host, reason, round(delay, 3), failures=state.failures)

    def told_down(self, host: str, until: float, reason: str, now: float) -> None:
        """Another worker of the node found `host` down, cooling until `until`: send it
        nothing before then, then probe it as if this pool had found it down (its failure
        doubles the wait; its success ends the outage, already told by the node: no event)."""
        state = self._hosts.get(host)
        if state is None:
            if len(self._hosts) >= MAX_HOSTS:
                self._forget_idle()
            state = self._hosts[host] = _Host()
        state.cooling_until = max(state.cooling_until, until)
        state.failures = max(state.failures, HOST_FAILURES_TO_COOL)
        state.reason = reason
        if state.down_since is None:
            state.down_since = state.went_down_at = now

    def told_up(self, host: str, now: float) -> None:
        """Another worker of the node has `host` serving again: it may be sent requests now."""
        state = self._hosts.get(host)
        if state is None or state.down_since is None:
            return
        state.failures, state.cooling_until, state.down_since = 0, 0.0, None
        state.served_at = now

    def _forget_idle(self) -> None:
        idle = [n for n, h in self._hosts.items() if not h.in_flight and h.down_since is None]
        for name in idle[: max(len(idle) // 2, 1)]:
            del self._hosts[name]


HINTED_MAX = 1024  # (host, hint) pairs remembered as told: a hint is logged once per host


class Hinted:
    """Which hints (about `ca_bundle`, `allowed_hosts`...) were told for which host: a hint
    rides on the first event of a host's failure, not on every item's. One per download pool,
    and one in the main process over its workers' events, so that a node tells it once.
    Bounded: past HINTED_MAX pairs the oldest is forgotten, and may be told again."""

    def __init__(self) -> None:
        self._told: dict[tuple[str, str], None] = {}  # oldest first

    def first(self, host: str, hint: str) -> bool:
        """Whether `hint` about `host` is news (and note it told)."""
        key = (host, hint)
        if key in self._told:
            return False
        self._told[key] = None
        if len(self._told) > HINTED_MAX:
            del self._told[next(iter(self._told))]
        return True

    def clear(self) -> None:
        """Forget every hint told (a reload may have changed what they are about)."""
        self._told.clear()
