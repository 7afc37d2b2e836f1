"""Prometheus metrics: the only code that imports prometheus_client. Served only when
`metrics_address` is set, and only on loopback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ingestd.policy.retry import Reason
from ingestd.policy.urls import parse_loopback_address

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class Attempts(Protocol):
    """What the download pool counts: Metrics, or in a worker process what sends each attempt
    to the main process's Metrics."""

    def attempt(
        self, outcome: str, seconds: float, size: int = 0, reason: Reason | None = None
    ) -> None:
        """Count one finished attempt; `reason`: why it did not produce a file."""


class Metrics:
    """The daemon's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Gauge(
            "ingestd_items", "Items in the manifest by state.", ["state"], registry=self.registry
        )
        # `reason` is a policy.retry.Reason value (an enum, so a bounded set of series), empty
        # for a completed file: to Prometheus an empty label is no label, so the completed
        # series is the one it was before `reason` existed.
        self.downloads = Counter(
            "ingestd_downloads",
            "Finished download attempts by outcome (completed, retry, expired, failed,"
            " superseded) and failure reason (empty when completed).",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "ingestd_downloaded_bytes", "Bytes of published videos.", registry=self.registry
        )
        self.duration = Histogram(
            "ingestd_download_duration_seconds",
            "Duration of download attempts.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_age = Gauge(
            "ingestd_queue_age_seconds",
            "Age of the oldest pending item (0 when none).",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ingestd_downloads_in_flight", "Transfers running now.", registry=self.registry
        )
        self._server: WSGIServer | None = None
        # labels() builds a label tuple and takes a lock per call: one lookup per attempt
        # here instead (a bounded set: outcomes x Reason values).
        self._children: dict[tuple[str, Reason | None], tuple[Counter, Histogram]] = {}

    def attempt(
        self, outcome: str, seconds: float, size: int = 0, reason: Reason | None = None
    ) -> None:
        """Count one finished attempt; `reason`: why it did not produce a file."""
        children = self._children.get((outcome, reason))
        if children is None:
            children = self._children[outcome, reason] = (
                self.downloads.labels(outcome, "" if reason is None else reason.value),
                self.duration.labels(outcome),
            )
        children[0].inc()
        children[1].observe(seconds)
        if size:
            self.bytes.inc(size)

    def snapshot(self, items: Mapping[str, int], queue_age: float, in_flight: int) -> None:
        """Refresh the gauges from a manifest sample."""
        for state, n in items.items():
            self.items.labels(state).set(n)
        self.queue_age.set(max(queue_age, 0.0))
        self.in_flight.set(in_flight)

    def serve(self, address: str) -> tuple[str, int]:
        """Start the HTTP endpoint in a background thread; returns the bound host and port."""
        host, port = parse_loopback_address(address)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop the endpoint."""
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
        self._server = None
