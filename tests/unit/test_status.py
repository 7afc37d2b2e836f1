"""`ingestd status`: the items in flight by node, and the fleet as each node reports itself, in
the JSON document and the table."""

from ingestd.ops.live import InFlight, Snapshot, node_report
from ingestd.ops.status import NODE_SILENT_S, status_document, status_table
from ingestd.store.base import Counts, NodeReport, OwnerLoad

COUNTS = Counts({"pending": 5, "active": 3, "done": 2}, {"merged": 1}, 2048)


def test_status_shows_what_each_node_has_in_flight() -> None:
    owners = {"": OwnerLoad(1, 0), "edge-1": OwnerLoad(2, 8), "edge-2/1": OwnerLoad(0, 4)}
    doc = status_document(COUNTS, owners)
    assert doc["nodes"] == {
        "": {"active": 1, "held": 0},
        "edge-1": {"active": 2, "held": 8},
        "edge-2/1": {"active": 0, "held": 4},
    }
    table = status_table(COUNTS, "m.sqlite3", owners)
    assert table.endswith(
        "in flight by node    active   held\n"
        "  -                        1      0\n"
        "  edge-1                   2      8\n"
        "  edge-2/1                 0      4"
    ), table


def test_status_without_claims_has_no_node_section() -> None:
    assert status_document(COUNTS)["nodes"] == {}
    assert "by node" not in status_table(COUNTS, "m.sqlite3", {})


def test_status_shows_the_fleet_as_each_node_last_reported_it() -> None:
    now = 10_000.0
    fleet = [
        NodeReport("edge-a", now - 3, "running", 4, 12 * 2**20, 8.1e6),
        NodeReport("edge-b", now - 3600, "stopped", 0, 0, 0.0),
        NodeReport("edge-c", now - NODE_SILENT_S - 1, "paused", 1, 2048, 0.0),
    ]
    doc = status_document(COUNTS, {}, fleet, now)
    assert doc["fleet"] == {
        "edge-a": {
            "state": "running",
            "seen_at": now - 3,
            "in_flight": 4,
            "bytes_in_flight": 12 * 2**20,
            "rate_bytes_per_s": 8_100_000,
        },
        "edge-b": {
            "state": "stopped",  # stopped long ago is still stopped, not "not responding"
            "seen_at": now - 3600,
            "in_flight": 0,
            "bytes_in_flight": 0,
            "rate_bytes_per_s": 0,
        },
        "edge-c": {
            "state": "not_responding",  # silent past NODE_SILENT_S without saying it stopped
            "seen_at": now - NODE_SILENT_S - 1,
            "in_flight": 1,
            "bytes_in_flight": 2048,
            "rate_bytes_per_s": 0,
        },
    }
    table = status_table(COUNTS, "postgresql://db/ingestd", {}, fleet, now)
    rows = table.split("\n\n")[-1].splitlines()
    assert rows[0].split() == ["node", "state", "seen", "in", "flight", "received", "rate"]
    assert rows[1].split() == [
        "edge-a",
        "running",
        "3.0",
        "s",
        "ago",
        "4",
        "12.0",
        "MiB",
        "8.10",
        "MB/s",
    ]
    assert rows[2].split()[:2] == ["edge-b", "stopped"] and "1h00m ago" in rows[2]
    assert rows[3].split()[:2] == ["edge-c", "not_responding"]


def test_a_node_reports_its_transfers_bytes_resumed_parts_included() -> None:
    transfers = (
        InFlight("1", "cats", offset=1000, received=500, total=4000, seconds=1.0),
        InFlight("2", "dogs", offset=0, received=300, total=None, seconds=0.5),
    )
    snapshot = Snapshot(in_flight=2, received=800, transfers=transfers)
    assert node_report("edge-a", snapshot, 1e6, 5.0, "run-1") == NodeReport(
        "edge-a", 5.0, "running", 2, 1800, 1e6, "run-1"
    )
    paused = Snapshot(pause=("disk_full", "/srv", 3.0))
    assert node_report("edge-a", paused, 0.0, 6.0, "run-1").state == "paused"
    assert node_report("edge-a", snapshot, 1e6, 7.0, "run-1", stopped=True) == NodeReport(
        "edge-a", 7.0, "stopped", 0, 0, 0.0, "run-1"
    )
