"""Every event the daemon logs, by name: the one list the code, `ingestd logs --event` and
README's Logs table agree on (tests/unit/test_events.py checks all three); and the levels."""

from __future__ import annotations

from typing import Final

EVENTS: Final = frozenset(
    {
        "daemon_started",
        "items_recovered",
        "daemon_ready",
        "extract_merged",
        "extract_completed",
        "extract_expired_items",
        "extract_skipped",
        "extract_rejected",
        "download_started",
        "download_completed",
        "download_retry_scheduled",
        "download_expired",
        "download_failed",
        "download_superseded",
        "video_linked",
        "downloads_paused",
        "downloads_resumed",
        "host_unavailable",
        "host_recovered",
        "link_failed",
        "checkpoint_failed",
        "progress",
        "watch_failed",
        "download_crashed",
        "disk_check_failed",
        "download_bookkeeping_failed",
        "config_reloaded",
        "config_reload_failed",
        "metrics_serving",
        "metrics_failed",
        "extract_failed",
        "manifest_error",
        "manifest_recovered",
        "lease_renewal_failed",
        "leases_renewed",
        "claims_lost",
        "claims_at_risk",
        "claims_reclaimed",
        "clock_skew",
        "node_name_held",
        "claim_lost",
        "worker_started",
        "worker_exited",
        "daemon_stopping",
        "daemon_failed",
        "daemon_stopped",
    }
)

# Event levels, lowest first (`ingestd logs --level` shows its level and those after it).
LEVELS: Final = ("debug", "info", "warning", "error", "critical")
