"""`workers = N`, the pure parts: how many workers and their shares, the restart backoff, the
channel's messages and framing, the config a worker is given, the node's snapshot; and the
worker's outbox, which waits rather than grows or drops when the main process stops reading."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from ingestd.cli import _config, build_parser
from ingestd.config import Config, config_document, config_from_document
from ingestd.log import encode_event, get_logger
from ingestd.metrics import Metrics
from ingestd.ops.live import InFlight, Snapshot, combine, counters_of, parse_snapshot
from ingestd.ops.live import snapshot_document as document
from ingestd.policy.workers import (
    RESTART_CALM,
    RESTART_DELAY_MAX,
    RESTART_DELAY_MIN,
    Conditions,
    deaths_after,
    host_shares,
    owner_of,
    restart_delay,
    shares,
    worker_count,
)
from ingestd.service import wire
from ingestd.service.pool import hold_ahead
from ingestd.service.tasks import until_stopped
from ingestd.service.worker import Outbox
from ingestd.service.workers import Workers, worker_config


def test_the_workers_share_the_node_concurrency_and_never_get_nothing() -> None:
    assert shares(8, 2) == [4, 4]
    assert shares(10, 4) == [3, 3, 2, 2]  # the remainder goes to the first ones
    assert sum(shares(1000, 7)) == 1000
    assert shares(1, 3) == [1, 1, 1]  # a reload below the workers running: one each
    assert host_shares(0, 3) == [0, 0, 0]  # no cap of its own stays none
    assert host_shares(5, 2) == [3, 2]


def test_no_more_workers_than_downloads() -> None:
    assert worker_count(4, 8) == 4
    assert worker_count(4, 2) == 2
    assert worker_count(1, 8) == 1
    assert worker_count(64, 1024) == 64


def test_a_worker_claims_as_node_slash_k() -> None:
    assert owner_of("edge-1", 2) == "edge-1/2"


def test_restarts_back_off_and_a_calm_run_starts_the_count_over() -> None:
    deaths, delays = 0, []
    for _ in range(10):
        deaths = deaths_after(deaths, 1.0)
        delays.append(restart_delay(deaths))
    assert delays[:4] == [RESTART_DELAY_MIN, 2 * RESTART_DELAY_MIN, 4 * RESTART_DELAY_MIN, 4.0]
    assert delays[-1] == RESTART_DELAY_MAX and delays == sorted(delays)
    assert deaths_after(deaths, RESTART_CALM) == 1
    assert restart_delay(10**6) == RESTART_DELAY_MAX


def test_messages_round_trip_one_line_each() -> None:
    line = wire.encode("report", snapshot={"a": [1, None]}, n=3)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert wire.decode(line[:-1]) == {"t": "report", "snapshot": {"a": [1, None]}, "n": 3}
    event = {"event": "download_completed", "path": "bad \udcff name", "bytes": 7}
    line = wire.log_line(encode_event(event))[:-1]
    assert wire.decode(line) == {"t": "log", "e": event}  # a lone surrogate survives, escaped
    assert wire.logged(line) == encode_event(event)  # written as it came, not decoded
    assert wire.logged(wire.encode("report", snapshot={})[:-1]) is None
    assert wire.decode(b"not json") is None
    assert wire.decode(b"[1, 2]") is None
    assert wire.decode(b'{"no": "kind"}') is None


def test_lines_are_cut_wherever_the_chunks_end() -> None:
    lines = wire.Lines(limit=10)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert lines.feed(b"g\n") == [b"fg"]
    lines.feed(b"0123456789")
    with pytest.raises(wire.ChannelError):
        lines.feed(b"x")


def test_a_worker_gets_the_config_as_it_is_with_its_shares(tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path / "data",
        state_dir=tmp_path / "state",
        concurrency=9,
        per_host_concurrency=3,
        allowed_hosts=("a.example", "*.b.example"),
        log_file=None,
        cookies_file=tmp_path / "cookies.txt",
        workers=2,
    )
    assert config_from_document(config_document(config)) == config
    first, second = (worker_config(config, k, 2) for k in (1, 2))
    assert (first.concurrency, second.concurrency) == (5, 4)
    assert (first.per_host_concurrency, second.per_host_concurrency) == (2, 1)
    assert first.node_name == config.node_name and first.workers == 2


def test_run_takes_workers_from_the_command_line(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["run", "--workers", "3", "--data-dir", str(tmp_path), "--state-dir", str(tmp_path)]
    )
    assert _config(args).workers == 3


def test_the_node_snapshot_adds_up_its_workers() -> None:
    one = Snapshot(
        in_flight=2,
        received=100,
        completed=3,
        bytes=90,
        transfers=(InFlight("1", "cats", 0, 10, 50, 1.5), InFlight("2", "dogs", 5, 0, None, 0)),
        pause=("disk_full", "/srv", 2.0),
        hosts_down=("a:443",),
    )
    two = Snapshot(in_flight=1, received=7, failed=1, pause=("disk_full", "/srv", 5.0))
    node = combine([counters_of(one), one, two])
    assert (node.in_flight, node.received, node.completed, node.failed) == (3, 207, 6, 1)
    assert node.pause == ("disk_full", "/srv", 5.0) and node.hosts_down == ("a:443",)
    assert [t.aweme_id for t in node.transfers] == ["1", "2"]
    assert combine([]) == Snapshot()
    assert parse_snapshot(document(one)) == one
    assert parse_snapshot({"in_flight": 1}) is None
    assert parse_snapshot("nonsense") is None


def test_the_outbox_waits_for_a_stalled_reader_and_loses_nothing() -> None:
    ours, theirs = socket.socketpair()
    for end, option in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
        end.setsockopt(socket.SOL_SOCKET, option, 4096)
    outbox = Outbox(ours, limit=8192)
    lines = [b"%06d" % i + b"x" * 93 + b"\n" for i in range(3000)]  # 300 KB
    producer = threading.Thread(target=lambda: [outbox.put(line) for line in lines])
    producer.start()
    producer.join(0.5)
    assert producer.is_alive(), "the producer went on although nothing was read"
    received = b""
    theirs.settimeout(10)
    while len(received) < sum(map(len, lines)):
        received += theirs.recv(65536)
    producer.join(10)
    assert received == b"".join(lines)
    outbox.close(1.0)
    assert theirs.recv(10) == b""  # closed once written
    theirs.close()
    ours.close()


def test_a_shared_manifest_is_claimed_a_quarter_round_ahead_and_small_pools_hold_none() -> None:
    assert [hold_ahead(n, shared=False) for n in (1, 2, 8)] == [1, 2, 8]
    # Two workers of 2 slots on a 3-item queue: one holding the third left the other idle.
    assert [hold_ahead(n, shared=True) for n in (1, 2, 3, 4, 8, 16)] == [0, 0, 0, 1, 2, 4]


async def test_until_stopped_names_the_task_that_crashed_and_not_a_stop() -> None:
    stop = asyncio.Event()

    async def crash() -> None:
        raise ValueError("boom")

    idle = asyncio.create_task(asyncio.Event().wait(), name="idle")
    crashed = await until_stopped(stop, [idle, asyncio.create_task(crash(), name="feeder")])
    assert [(name, repr(error)) for name, error in crashed] == [("feeder", "ValueError('boom')")]
    asyncio.get_running_loop().call_soon(stop.set)
    assert await until_stopped(stop, [idle]) == []
    assert not idle.done()  # a stop ends the wait, not the tasks
    idle.cancel()


def test_the_node_logs_a_host_down_once_and_back_when_its_first_worker_has_it_back() -> None:
    node = Conditions()
    a, b = {"host": "cdn-a.example:443"}, {"host": "cdn-b.example:443"}
    assert node.admit(1, "host_unavailable", a)  # the first worker to find it down
    assert not node.admit(2, "host_unavailable", a)  # the node said so already
    assert node.admit(2, "host_unavailable", b)  # another host is news
    # Worker 1's probe got through: the host serves again. Worker 2 may never probe it (the
    # queue can drain first), so the node cannot wait for it.
    assert node.admit(1, "host_recovered", a)
    assert not node.admit(2, "host_recovered", a)  # old news
    assert node.admit(2, "host_recovered", b)
    assert node.admit(1, "host_unavailable", a)  # a new outage
    assert node.admit(1, "download_completed", a)  # other events pass


def test_a_worker_that_dies_with_a_host_down_leaves_the_others_to_report_it_back() -> None:
    node = Conditions()
    host = {"host": "cdn.example:443"}
    assert node.admit(1, "host_unavailable", host)
    assert not node.admit(2, "host_unavailable", host)
    node.forget(1)  # worker 1 died; worker 2 still has it down
    assert not node.admit(3, "host_unavailable", host)
    assert node.admit(2, "host_recovered", host)
    assert node.admit(3, "host_unavailable", host)
    node.forget(3)  # the only one in it died: nobody is left to say it is over
    assert node.admit(2, "host_unavailable", host)  # so the next finding is heard


def test_the_node_logs_downloads_paused_once_and_resumed_once() -> None:
    node = Conditions()
    paused = {"reason": "read_only", "detail": "/srv/media_assets"}
    assert node.admit(1, "downloads_paused", paused)
    assert not node.admit(2, "downloads_paused", {**paused, "in_flight": 0})
    assert node.admit(2, "downloads_resumed", {"reason": "read_only"})
    assert not node.admit(1, "downloads_resumed", {"reason": "read_only"})
    assert node.admit(2, "downloads_paused", {"reason": "disk_full"})  # the next pause


def test_a_manifest_outage_is_the_nodes_whichever_process_meets_it_first() -> None:
    # The main process reports as 0: it meets the outage on its own calls (merges, links).
    node = Conditions()
    error = {"error": "no connection to the database within 5 s", "retry_in_s": 5.0}
    assert node.admit(0, "manifest_error", error)
    assert not node.admit(1, "manifest_error", error)
    assert not node.admit(2, "manifest_error", {**error, "retry_in_s": 1.0})
    assert node.admit(2, "manifest_recovered", {"down_s": 6.1})  # the first through
    assert not node.admit(0, "manifest_recovered", {"down_s": 6.5})
    assert not node.admit(1, "manifest_recovered", {"down_s": 7.0})
    assert node.admit(1, "manifest_error", error)  # the next outage


def test_a_node_tells_its_renewals_failing_once_whichever_worker_meets_it() -> None:
    node = Conditions()
    assert node.admit(2, "lease_renewal_failed", {"error": "no connection", "claims": 3})
    assert not node.admit(1, "lease_renewal_failed", {"error": "no connection", "claims": 5})
    assert node.admit(1, "leases_renewed", {"claims": 5, "down_s": 31.0})
    assert not node.admit(2, "leases_renewed", {"claims": 3, "down_s": 31.4})


class _Sent:
    """A worker's channel, as far as the main process writes to it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object] | None] = []

    def send(self, message: bytes) -> None:
        self.messages.append(wire.decode(message.rstrip(b"\n")))


async def test_what_the_node_logs_of_its_disk_and_hosts_is_passed_on_to_other_workers(
    tmp_path: Path,
) -> None:
    # The media folder is every worker's: the one that met the fault speaks for the node, and
    # the others pause too, rather than start transfers that would meet it.
    config = Config(data_dir=tmp_path, state_dir=tmp_path)
    workers = Workers(config, 3, get_logger(), Metrics(), lambda: None)
    channels = [_Sent() for _ in range(3)]
    for slot, channel in zip(workers._slots, channels, strict=True):
        slot.channel = channel  # type: ignore[assignment]
    paused = {"event": "downloads_paused", "reason": "disk_full", "detail": "No space left: /srv"}
    event = encode_event({**paused, "worker": 2})
    assert workers._admit(workers._slots[1], event) == event
    told = {"t": "pause", "reason": "disk_full", "detail": "No space left: /srv"}
    assert [c.messages for c in channels] == [[told], [], [told]]
    # Their own pauses that follow are not the node's news, and pass nothing on.
    assert workers._admit(workers._slots[0], encode_event({**paused, "worker": 1})) is None
    assert [len(c.messages) for c in channels] == [1, 0, 1]
    # So is a host found down, then back by one of those told of it (the one that found it
    # may never try it again), which passes that on as well.
    for channel in channels:
        channel.messages.clear()
    down = {"event": "host_unavailable", "host": "cdn:443", "reason": "rate_limited"}
    assert workers._admit(workers._slots[0], encode_event({**down, "retry_in_s": 30.0}))
    told_down = {"t": "host_down", "host": "cdn:443", "retry_in_s": 30.0, "reason": "rate_limited"}
    assert [c.messages for c in channels] == [[], [told_down], [told_down]]
    workers._conditions.forget(1)  # it died: the others were told, and are in it too
    up = encode_event({"event": "host_recovered", "host": "cdn:443", "down_s": 31.0})
    assert workers._admit(workers._slots[2], up) == up
    told_up = {"t": "host_up", "host": "cdn:443"}
    assert [c.messages for c in channels] == [[told_up], [told_down, told_up], [told_down]]
