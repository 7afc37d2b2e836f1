"""Claims with leases: when a node renews its claims, and which transfers it must stop.

A claim is a node's for `lease_seconds` from its last renewal (the manifest's `lease_until`,
in the claiming node's clock). Every node hands back the claims whose lease has ended (a dead
node's), counting an attempt for those that were in flight. The node renews its own every
RENEWALS_PER_LEASE-th of a lease; while the manifest cannot be reached it keeps its transfers
as long as their leases hold, and stops each one before its lease could end, so that no item
is ever in flight on two nodes at once. The margin this leaves (one renewal interval) is also
how far the nodes' clocks may disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

RENEWALS_PER_LEASE = 3  # renewals per lease: two may fail before a claim is at risk


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
