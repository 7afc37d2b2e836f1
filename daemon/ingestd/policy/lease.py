"""Claims with leases: when a node renews its claims, and which transfers it must stop.

A claim is a node's for `lease_seconds` from its last renewal (the manifest's `lease_until`,
in the manifest's clock: see below). Every node hands back the claims whose lease has ended (a
dead node's), counting an attempt for those that were in flight. The node renews its own every
RENEWALS_PER_LEASE-th of a lease; while the manifest cannot be reached it keeps its transfers
as long as their leases hold, and stops each one before its lease could end, so that no item
is ever in flight on two nodes at once.

Every time a node writes into the manifest, or compares with what it holds, is read from the
manifest's clock: this host's clock plus the skew measured against the database's, so that nodes
whose clocks disagree still agree on when a lease ends. The margin a renewal interval leaves
only has to cover the error of that measurement (CLOCK_TOLERANCE), not the hosts' disagreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

RENEWALS_PER_LEASE = 3  # renewals per lease: two may fail before a claim is at risk
# Seconds: a skew measured within this of the one applied changes nothing (measurements jitter
# by half a round trip); a measurement whose round trip took longer than this is not used.
CLOCK_TOLERANCE = 0.5


def renewal_interval(lease_seconds: float) -> float:
    """Seconds between two renewals of a node's claims."""
    return lease_seconds / RENEWALS_PER_LEASE


def at_risk(leases: Mapping[str, float], now: float, lease_seconds: float) -> list[str]:
    """The claims (id: lease end last written) that could end before the next renewal is
    tried: their transfers stop now, unless a renewal has just moved their lease on."""
    horizon = now + renewal_interval(lease_seconds)
    return sorted(i for i, until in leases.items() if until <= horizon)


def lost(claimed: Iterable[str], renewed: Iterable[str]) -> list[str]:
    """The claims a renewal did not extend: another node (or a reset) has taken them."""
    kept = set(renewed)
    return sorted(i for i in dict.fromkeys(claimed) if i not in kept)


def adopted_skew(applied: float, measured: float, round_trip: float) -> float:
    """The skew (database clock minus this host's, seconds) to apply from now on, given the one
    applied so far and a new measurement taken in `round_trip` seconds: a new value only when
    the measurement is precise enough and differs by more than CLOCK_TOLERANCE; and 0 when it
    is within CLOCK_TOLERANCE of none, so that hosts in step with the database keep their own
    clock exactly."""
    if round_trip > CLOCK_TOLERANCE or abs(measured - applied) <= CLOCK_TOLERANCE:
        return applied
    return 0.0 if abs(measured) <= CLOCK_TOLERANCE else round(measured, 3)
