"""ingestd under a (fake) service manager: sd_notify messages, SIGHUP reloads, metrics.

The service manager is an abstract unix datagram socket bound by the test and handed to the
daemon as NOTIFY_SOCKET; a reader thread records every datagram with its arrival time.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import socket
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestd.store.manifest import Counts, Manifest
from support.daemon import Daemon, DaemonError, event_time
from support.extracts import origin_records
from support.origin import OriginServer

WATCHDOG_USEC = 400_000
STATUS_PERIOD = 5.0  # daemon/ingestd/service/daemon.py; not configurable from outside
STATUS_RE = re.compile(
    r"done (?P<done>\d+)/(?P<total>\d+), pending (?P<pending>\d+), active (?P<active>\d+), "
    r"failed (?P<failed>\d+), expired (?P<expired>\d+); (?P<rate>\d+(?:\.\d+)?) MB/s"
)
SIZE = 24_000
TOPIC = "service tests"


@dataclass(frozen=True)
class Notification:
    """One datagram as the fake service manager received it."""

    mono: float  # time.monotonic() at arrival
    wall: float  # time.time() at arrival
    raw: str
    fields: dict[str, str]


class NotifyListener:
    """A fake systemd: binds a unique abstract datagram socket and records what arrives."""

    def __init__(self, on_message: Callable[[Notification], None] | None = None) -> None:
        self.address = f"@ingestd-e2e-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.settimeout(0.1)
        self._on_message = on_message
        self._cond = threading.Condition()
        self._messages: list[Notification] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            mono, wall = time.monotonic(), time.time()
            raw = data.decode("utf-8", errors="replace")
            fields = dict(line.split("=", 1) for line in raw.split("\n") if "=" in line)
            message = Notification(mono, wall, raw, fields)
            if self._on_message is not None:
                self._on_message(message)
            with self._cond:
                self._messages.append(message)
                self._cond.notify_all()

    def messages(self, key: str | None = None, since: int = 0) -> list[Notification]:
        with self._cond:
            snapshot = self._messages[since:]
        return [m for m in snapshot if key is None or key in m.fields]

    def count(self) -> int:
        with self._cond:
            return len(self._messages)

    def wait_for(
        self,
        predicate: Callable[[Notification], bool],
        what: str,
        timeout: float = 10.0,
        since: int = 0,
        daemon: Daemon | None = None,
    ) -> Notification:
        """The first message at index >= ``since`` matching ``predicate``, bounded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self._messages[since:]:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [m.raw for m in self._messages[since:]][-20:]
                    tail = daemon.tail() if daemon is not None else ""
                    raise DaemonError(
                        f"no {what} notification within {timeout}s; got {seen}\n{tail}"
                    )
                self._cond.wait(min(remaining, 0.2))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()


def has(key: str, value: str | None = None) -> Callable[[Notification], bool]:
    return lambda m: key in m.fields and (value is None or m.fields[key] == value)


def parse_status(text: str) -> dict[str, float]:
    match = STATUS_RE.fullmatch(text)
    assert match, f"STATUS= line does not have the documented shape: {text!r}"
    return {k: float(v) for k, v in match.groupdict().items()}


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.fixture
def notify() -> Iterator[Callable[..., NotifyListener]]:
    made: list[NotifyListener] = []

    def factory(on_message: Callable[[Notification], None] | None = None) -> NotifyListener:
        listener = NotifyListener(on_message)
        made.append(listener)
        return listener

    yield factory
    for listener in made:
        listener.close()


def _extract(
    origin: OriginServer, prefix: str, rng: random.Random, n: int, mode: str = "ok"
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    return origin_records(origin, prefix, rng, n, TOPIC, SIZE, mode)


def _for_id(aweme_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: str(e.get("aweme_id")) == aweme_id


# --------------------------------------------------------------------- start, run, stop


def test_ready_after_startup_scan_then_status_watchdog_and_stopping(
    daemon_factory: Any, origin: OriginServer, prefix: str, notify: Any
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory()
    first, names1 = _extract(origin, prefix, rng, 2)
    second, names2 = _extract(origin, prefix, rng, 2)
    daemon.write_raw("extract_20261126T090000.json", first)
    daemon.write_raw("extract_20261126T150000.json", second)

    # What the manifest says at the very moment READY=1 arrives (read in the listener thread).
    at_ready: list[Counts] = []

    def snapshot(message: Notification) -> None:
        if message.fields.get("READY") == "1" and not at_ready:
            manifest = Manifest.open(daemon.state_dir / "manifest.sqlite3", readonly=True)
            try:
                at_ready.append(manifest.counts())
            finally:
                manifest.close()

    listener = notify(snapshot)
    daemon.extra_env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon.start()
    ready = listener.wait_for(has("READY", "1"), "READY=1", daemon=daemon)

    # READY=1 is the first non-watchdog message, it comes once, and only after the startup scan.
    first_messages = [m.raw for m in listener.messages() if "WATCHDOG" not in m.fields]
    assert first_messages[0] == ready.raw, first_messages
    assert at_ready, "READY=1 arrived but the manifest snapshot was not taken"
    assert at_ready[0].extracts["merged"] == 2, f"READY=1 before both merges: {at_ready[0]}"
    assert sum(at_ready[0].items.values()) == 4, at_ready[0]
    merged = daemon.events("extract_merged")
    assert len(merged) == 2, daemon.tail()
    for event in merged:
        assert event_time(event) <= ready.wall, (
            f"READY=1 arrived at {ready.wall}, before {event['path']} was merged "
            f"({event['timestamp']})"
        )
    started = daemon.events("daemon_started")[0]
    assert started["notify"] is True
    assert started["watchdog_s"] == pytest.approx(WATCHDOG_USEC / 2e6)

    # READY carries a STATUS line of the documented shape.
    status = parse_status(ready.fields["STATUS"])
    assert status["total"] == 4 and status["done"] + status["pending"] <= 4, status

    ids = set(names1) | set(names2)
    daemon.wait_for_count("download_completed", 4)
    assert {str(e["aweme_id"]) for e in daemon.events("download_completed")} == ids

    # Periodic STATUS= (without READY), every STATUS_PERIOD seconds, reflecting the manifest.
    update = listener.wait_for(
        lambda m: "STATUS" in m.fields and "READY" not in m.fields,
        "periodic STATUS=",
        timeout=STATUS_PERIOD + 5,
        daemon=daemon,
    )
    assert update.mono - ready.mono == pytest.approx(STATUS_PERIOD, abs=1.5)
    values = parse_status(update.fields["STATUS"])
    assert values == {
        "done": 4,
        "total": 4,
        "pending": 0,
        "active": 0,
        "failed": 0,
        "expired": 0,
        "rate": values["rate"],
    }, update.raw
    assert values["rate"] >= 0

    # WATCHDOG=1 about every WATCHDOG_USEC/2, from before READY until the stop.
    pings = [m.mono for m in listener.messages("WATCHDOG") if m.mono >= ready.mono]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(gaps) >= 10, f"only {len(pings)} WATCHDOG=1 pings in {update.mono - ready.mono}s"
    half = WATCHDOG_USEC / 2e6
    assert statistics.median(gaps) == pytest.approx(half, rel=0.25), gaps
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"a gap would have tripped the watchdog: {gaps}"
    assert all(m.raw == "WATCHDOG=1" for m in listener.messages("WATCHDOG"))

    # SIGTERM: STOPPING=1, then a clean exit 0 (terminate() asserts the exit code).
    before_stop = listener.count()
    sent = time.monotonic()
    daemon.terminate()
    stopping = listener.wait_for(
        has("STOPPING", "1"), "STOPPING=1", timeout=5, since=before_stop, daemon=daemon
    )
    assert stopping.mono >= sent
    assert daemon.events("daemon_stopping")[0]["signal"] == "SIGTERM"
    assert daemon.events("daemon_stopped")[0]["exit_code"] == 0
    assert len(listener.messages("READY")) == 1, "READY=1 sent more than once without a reload"


def test_no_watchdog_pings_when_watchdog_pid_names_another_process(
    daemon_factory: Any, notify: Any
) -> None:
    daemon: Daemon = daemon_factory()
    listener = notify()
    daemon.extra_env = {
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "WATCHDOG_PID": str(os.getpid()),  # the test runner, not the daemon
    }
    daemon.start()
    ready = listener.wait_for(has("READY", "1"), "READY=1", daemon=daemon)
    assert daemon.events("daemon_started")[0]["watchdog_s"] is None
    # Five watchdog periods of silence; a bounded wait for something that must not come.
    with pytest.raises(DaemonError):
        listener.wait_for(has("WATCHDOG"), "WATCHDOG=1", timeout=5 * WATCHDOG_USEC / 2e6)
    assert listener.messages("WATCHDOG") == []
    assert ready.fields["READY"] == "1"
    daemon.terminate()
    assert listener.messages("WATCHDOG") == []


# ------------------------------------------------------------------------------- reload


def _reload(daemon: Daemon, listener: NotifyListener, **changes: Any) -> tuple[int, Notification]:
    """Rewrite the config, SIGHUP, check RELOADING=1 + MONOTONIC_USEC then READY=1.

    Returns (event index before the signal, the READY=1 that ended the reload)."""
    daemon.update_config(**changes)
    since_event, since_msg = daemon.event_count(), listener.count()
    before = monotonic_usec()
    daemon.send_signal(signal.SIGHUP)
    reloading = listener.wait_for(
        has("RELOADING", "1"), "RELOADING=1", since=since_msg, daemon=daemon
    )
    after = monotonic_usec()
    assert re.fullmatch(r"\d+", reloading.fields.get("MONOTONIC_USEC", "")), reloading.raw
    usec = int(reloading.fields["MONOTONIC_USEC"])
    assert before <= usec <= after, f"MONOTONIC_USEC={usec} not within [{before}, {after}]"
    index = listener.messages(since=since_msg).index(reloading) + since_msg
    ready = listener.wait_for(
        has("READY", "1"), "READY=1 after RELOADING=1", since=index + 1, daemon=daemon
    )
    assert ready.mono >= reloading.mono
    return since_event, ready


def _ready_under_notify(daemon_factory: Any, notify: Any) -> tuple[Daemon, Any]:
    """A daemon started under a fake service manager, once it has sent READY=1."""
    daemon: Daemon = daemon_factory()
    listener = notify()
    daemon.extra_env = {"NOTIFY_SOCKET": listener.address}
    daemon.start()
    listener.wait_for(has("READY", "1"), "READY=1", daemon=daemon)
    return daemon, listener


def test_sighup_applies_live_settings(
    daemon_factory: Any, origin: OriginServer, prefix: str, notify: Any
) -> None:
    rng = random.Random(prefix)
    daemon, listener = _ready_under_notify(daemon_factory, notify)

    # A live change seen on the wire: the next request carries the new User-Agent.
    since, ready = _reload(daemon, listener, user_agent="ingestd-e2e/2.0")
    reloaded = daemon.wait_for("config_reloaded", since=since)
    assert reloaded["changed"] == ["user_agent"], reloaded
    assert event_time(reloaded) <= ready.wall, "READY=1 came before the config was applied"
    records, names = _extract(origin, prefix, rng, 1)
    daemon.drop_atomic("extract_20261126T100000.json", records)
    (ua_id,) = names
    daemon.wait_for("download_completed", _for_id(ua_id))
    assert [r.headers.get("user-agent") for r in origin.requests_for(names[ua_id])] == [
        "ingestd-e2e/2.0"
    ]

    # allowed_hosts no longer lists the origin: its URLs are refused without a request.
    since, ready = _reload(daemon, listener, allowed_hosts=["example.invalid"])
    reloaded = daemon.wait_for("config_reloaded", since=since)
    assert reloaded["changed"] == ["allowed_hosts"], reloaded
    assert event_time(reloaded) <= ready.wall
    records, names = _extract(origin, prefix, rng, 1)
    daemon.drop_atomic("extract_20261126T110000.json", records)
    (blocked_id,) = names
    failed = daemon.wait_for("download_failed", _for_id(blocked_id))
    assert failed["reason"] == "unsafe_url", failed
    assert origin.request_count(names[blocked_id]) == 0, "a refused host was contacted"
    assert not daemon.events("download_started", _for_id(blocked_id))
    assert not daemon.events("config_reload_failed")
    daemon.terminate()


def test_refused_and_invalid_reloads_keep_the_old_config(
    daemon_factory: Any, origin: OriginServer, prefix: str, notify: Any
) -> None:
    rng = random.Random(prefix)
    daemon, listener = _ready_under_notify(daemon_factory, notify)
    old_data_dir = daemon.config["data_dir"]
    moved = daemon.root / "moved-data"

    # data_dir needs a restart: refused as a whole (the concurrency change is not applied either).
    since, _ready = _reload(daemon, listener, data_dir=str(moved), concurrency=2)
    refused = daemon.wait_for("config_reload_failed", since=since)
    assert refused["reason"] == "restart_required", refused
    assert refused["keys"] == ["data_dir"], refused
    assert not daemon.events("config_reloaded")

    # Downloads keep going with the old config: the old raw/ is watched, the old library used.
    records, names = _extract(origin, prefix, rng, 2)
    daemon.drop_atomic("extract_20261126T100000.json", records)
    daemon.wait_for_count("download_completed", 2, since=since)
    for aweme_id in names:
        assert daemon.media_path(TOPIC, aweme_id).is_file()
    assert not moved.exists(), "the refused data_dir was created anyway"

    # A file that does not parse: refused as invalid, READY=1 still comes, work goes on.
    daemon.update_config(data_dir=old_data_dir, concurrency=None)
    daemon.config_path.write_text("concurrency = [\n", encoding="utf-8")
    since_event, since_msg = daemon.event_count(), listener.count()
    daemon.send_signal(signal.SIGHUP)
    invalid = daemon.wait_for("config_reload_failed", since=since_event)
    assert invalid["reason"] == "invalid", invalid
    assert invalid["error"], invalid
    reloading = listener.wait_for(has("RELOADING", "1"), "RELOADING=1", since=since_msg)
    ready = listener.wait_for(has("READY", "1"), "READY=1 after an invalid reload", since=since_msg)
    assert ready.mono >= reloading.mono
    records, names = _extract(origin, prefix, rng, 1)
    daemon.drop_atomic("extract_20261126T110000.json", records)
    (aweme_id,) = names
    daemon.wait_for("download_completed", _for_id(aweme_id), since=since_event)
    assert not daemon.events("config_reloaded")
    daemon.terminate()


# ------------------------------------------------------------------------------ metrics


def _scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1", address
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_endpoint_after_downloads(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory(metrics_address="127.0.0.1:0")  # the kernel picks the port
    daemon.start()
    serving = daemon.wait_for("metrics_serving")
    address = serving["address"]
    assert address.startswith("127.0.0.1:") and not address.endswith(":0"), serving

    ok, ok_names = _extract(origin, prefix, rng, 2)
    missing, _ = _extract(origin, prefix, rng, 1, mode="404")
    gone, _ = _extract(origin, prefix, rng, 1, mode="403")
    flaky, _ = _extract(origin, prefix, rng, 1, mode="500")  # one 500, then the file
    daemon.drop_atomic("extract_20261126T100000.json", ok + missing + gone + flaky)
    daemon.wait_for_count("download_completed", 3)
    daemon.wait_for("download_failed")
    daemon.wait_for("download_expired")

    samples = _scrape(address)
    downloads = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "ingestd_downloads_total"
    }
    # `reason`: the failure's reason (a policy.retry.Reason value), empty for a completed file.
    assert downloads == {
        (("outcome", "completed"), ("reason", "")): 3,
        (("outcome", "failed"), ("reason", "not_found")): 1,
        (("outcome", "expired"), ("reason", "forbidden")): 1,
        (("outcome", "retry"), ("reason", "server_error")): 1,
    }, downloads
    assert samples[("ingestd_downloaded_bytes_total", ())] == 3 * SIZE
    inf_bucket = (("le", "+Inf"), ("outcome", "completed"))  # durations: by outcome only
    assert samples[("ingestd_download_duration_seconds_bucket", inf_bucket)] == 3
    assert samples[("ingestd_download_duration_seconds_count", (("outcome", "failed"),))] == 1

    # Gauges are refreshed every STATUS_PERIOD seconds: poll (bounded) until the first refresh.
    deadline = time.monotonic() + STATUS_PERIOD + 5
    key = ("ingestd_items", (("state", "done"),))
    while samples.get(key) != 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = _scrape(address)
    assert samples.get(key) == 3, f"ingestd_items never refreshed: {sorted(samples)}"
    assert samples[("ingestd_items", (("state", "failed"),))] == 1
    assert samples[("ingestd_items", (("state", "expired"),))] == 1
    assert samples[("ingestd_items", (("state", "pending"),))] == 0
    assert samples[("ingestd_queue_age_seconds", ())] == 0
    assert samples[("ingestd_downloads_in_flight", ())] == 0
    assert len(ok_names) == 2
    daemon.terminate()


@pytest.mark.parametrize("address", ["0.0.0.0:9464", "192.0.2.1:9464", "127.0.0.1", "[::1]:x"])
def test_metrics_address_must_be_loopback_with_a_port(daemon_factory: Any, address: str) -> None:
    daemon: Daemon = daemon_factory(metrics_address=address)
    result = daemon.cli("run", timeout=20)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "metrics_address" in result.stderr, result.stderr
    assert "daemon_started" not in result.stdout
