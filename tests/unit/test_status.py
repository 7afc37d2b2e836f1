"""`ingestd status`: the items in flight, by node, in the JSON document and the table."""

from ingestd.ops.status import status_document, status_table
from ingestd.store.base import Counts, OwnerLoad

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
