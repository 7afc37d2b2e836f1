"""write_info_json: `<id>.info.json` beside each video published while it is on (turned on here
by a SIGHUP reload), in every topic folder the video is in, holding the record without any
signed query string."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

from support.daemon import Daemon, topic_dir
from support.extracts import make_record, new_id
from support.origin import OriginServer

SIZE = 30_000


def _info(daemon: Daemon, topic: str, aweme_id: str) -> Path:
    return daemon.media_dir / topic_dir(topic) / f"{aweme_id}.info.json"


def test_info_files_beside_videos_once_turned_on(
    daemon_factory: Any, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    daemon: Daemon = daemon_factory()
    daemon.start()
    before = new_id(rng)
    record = make_record(before, origin.url(f"{prefix}-before", size=SIZE), "info tests", SIZE)
    daemon.drop_atomic("extract_20261211T090000.json", [record])
    daemon.wait_for("download_completed")
    assert daemon.media_path("info tests", before).is_file()
    assert not _info(daemon, "info tests", before).exists()  # off by default

    daemon.update_config(write_info_json=True)
    since = daemon.event_count()
    daemon.send_signal(signal.SIGHUP)
    reloaded = daemon.wait_for("config_reloaded", since=since)
    assert reloaded["changed"] == ["write_info_json"], reloaded

    one, two = new_id(rng), new_id(rng)
    first = make_record(one, origin.url(f"{prefix}-one", size=SIZE), "info tests", SIZE)
    first["media"]["cover_url"] += "?x-expires=1790000000&x-signature=c0ffee"
    second = make_record(two, origin.url(f"{prefix}-two", size=SIZE), "info tests", SIZE)
    also = {**second, "query_context": "second topic"}  # the same video under another topic
    since = daemon.event_count()
    daemon.drop_atomic("extract_20261211T100000.json", [first, second, also])
    daemon.wait_for_count("download_completed", 2, since=since)

    # The record as the manifest keeps it: the latest one seen (`also`), in both folders.
    for source, topics in ((first, ["info tests"]), (also, ["info tests", "second topic"])):
        aweme_id = source["aweme_id"]
        expected = json.loads(json.dumps(source))
        expected["media"]["source_url"] = source["media"]["source_url"].split("?")[0]
        expected["media"]["cover_url"] = source["media"]["cover_url"].split("?")[0]
        for topic in topics:
            daemon.wait_until(
                lambda t=topic, a=aweme_id: daemon.media_path(t, a).is_file(),
                f"{aweme_id} is in {topic}",
                timeout=10,
            )
            info = _info(daemon, topic, aweme_id)
            text = info.read_text(encoding="utf-8")
            assert "signature" not in text and "expire=" not in text, text
            assert json.loads(text) == expected
        if len(topics) == 2:
            inodes = {_info(daemon, t, aweme_id).stat().st_ino for t in topics}
            assert len(inodes) == 1, "the info file is not linked like its video"
    leftovers = [p for p in daemon.media_dir.rglob("*") if p.name.startswith(".")]
    assert not leftovers, leftovers
    assert not _info(daemon, "info tests", before).exists()  # not written after the fact
    daemon.terminate()
