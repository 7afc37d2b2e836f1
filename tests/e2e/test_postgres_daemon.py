"""The daemon, a real process, with its manifest in PostgreSQL (`manifest_url`): the sample
extract becomes the same library as on SQLite, the operator commands read the database, a
restart resumes from it, and the password, in the URL or a systemd credential, is never shown."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from ingestd.policy.extract import Record
from ingestd.store.postgres import CREDENTIAL, PostgresManifest
from support.daemon import by_id
from support.extracts import SAMPLE_FIRST, load_sample, localize, origin_records, samples_dir
from support.origin import OriginServer
from support.postgres import PostgresCluster

pytestmark = pytest.mark.skipif(samples_dir() is None, reason="shared sample extracts not found")

SECRET = "not-a-real-password-7a1c"


def with_password(url: str) -> str:
    """The test server trusts local connections, so a password is accepted and unused."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


def test_the_daemon_runs_on_postgresql(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    extract, items = localize(load_sample(SAMPLE_FIRST), origin, prefix)
    url = with_password(postgres_url)
    daemon = daemon_factory(manifest_url=url)
    daemon.start()
    started = daemon.events("daemon_started")[0]
    assert SECRET not in started["manifest"] and "***" in started["manifest"]
    daemon.drop_atomic(SAMPLE_FIRST, extract)
    daemon.wait_for_count("download_completed", len(items), timeout=60)
    for item in items:
        assert daemon.media_path(item.topic, item.aweme_id).read_bytes() == item.content()
    assert not (daemon.state_dir / "manifest.sqlite3").exists()  # nothing went to SQLite

    status = daemon.status_json()
    assert status["items"] == {"pending": 0, "active": 0, "done": 24, "expired": 0, "failed": 0}
    listed = daemon.cli("list", "--state", "done", "--json")
    assert listed.returncode == 0, listed.stderr
    assert SECRET not in listed.stdout + listed.stderr
    daemon.terminate()

    ready = daemon.start()  # the manifest is the database's: nothing is fetched again
    assert ready is not None and ready["items"]["done"] == 24
    daemon.drop_atomic("extract_again.json", extract)  # its content is known there too
    skipped = daemon.wait_for("extract_skipped", lambda e: e["path"].endswith("again.json"))
    assert skipped["reason"] == "duplicate_content"
    daemon.terminate()
    assert len(by_id(daemon.events("download_completed"))) == 0  # this run's events only
    assert not any(SECRET in line for line in daemon.log_lines_containing("postgresql"))
    assert not daemon.log_lines_containing(SECRET)


def test_the_password_may_come_from_a_systemd_credential(
    daemon_factory: Any,
    origin: OriginServer,
    prefix: str,
    postgres_cluster: PostgresCluster,
    tmp_path: Path,
) -> None:
    # As under `LoadCredential=manifest_password:/etc/ingestd/manifest_password`: the URL names
    # no password, the server demands one, and the main process, its workers and `status` all
    # connect with the credential's.
    user = f"node_{prefix.lower()}"
    url = postgres_cluster.new_password_user(user, SECRET)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / CREDENTIAL).write_text(SECRET + "\n")
    (credentials / CREDENTIAL).chmod(0o400)
    extract, items = localize(load_sample(SAMPLE_FIRST), origin, prefix)
    daemon = daemon_factory(manifest_url=url, workers=2)
    daemon.extra_env["CREDENTIALS_DIRECTORY"] = str(credentials)
    daemon.start()
    daemon.drop_atomic(SAMPLE_FIRST, extract)
    daemon.wait_for_count("download_completed", len(items), timeout=60)
    assert daemon.status_json()["items"]["done"] == len(items)
    daemon.terminate()
    assert not daemon.log_lines_containing(SECRET)
    assert not daemon.events("manifest_error")


def test_a_node_lets_go_of_its_own_claims_only_and_takes_back_lapsed_ones(
    daemon_factory: Any, origin: OriginServer, prefix: str, postgres_url: str
) -> None:
    # Three claims left in the database: this node's own from its last run, a live node's,
    # and a dead node's whose lease has ended.
    records, names = origin_records(origin, prefix, random.Random(12), 3, "cats", 4096)
    store = PostgresManifest.open(postgres_url)
    try:
        now = time.time()
        store.merge(
            [
                Record(r["aweme_id"], r["media"]["source_url"], "cats", json.dumps(r))
                for r in records
            ],
            "seed.json",
            now,
        )
        owners = {}
        for owner, lease in (("edge-a", now + 3600), ("edge-b", now + 3600), ("gone", now - 1)):
            (item,), _ = store.claim(now, 1, 0, owner=owner, lease_until=lease)
            owners[owner] = item.aweme_id
    finally:
        store.close()
    daemon = daemon_factory(manifest_url=postgres_url, node_name="edge-a", lease_seconds=3)
    daemon.start()
    assert daemon.events("items_recovered")[0]["count"] == 1  # its own, not edge-b's
    reclaimed = daemon.wait_for("claims_reclaimed", timeout=15)
    assert (reclaimed["owners"], reclaimed["in_flight"]) == ({"gone": 1}, 1)
    daemon.wait_for_count("download_completed", 2, timeout=30)
    done = {e["aweme_id"] for e in daemon.events("download_completed")}
    assert done == {owners["edge-a"], owners["gone"]}
    status = daemon.status_json()
    assert status["items"]["active"] == 1 and status["nodes"] == {
        "edge-b": {"active": 1, "held": 0}
    }
    assert origin.request_count(names[owners["edge-b"]]) == 0, "edge-b's claim was taken"
    daemon.terminate()
