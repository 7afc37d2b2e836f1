"""Responses whose framing lies: each ends as documented and never publishes a wrong file.

One daemon downloads every case from a scripted raw HTTP/2 origin (support.raw_origin), which
sends header lists verbatim: upper-case names, a content-length twice, superscript digits,
5,000-digit values, 206s that start elsewhere or stop early, 416s, bodies past their length.
Each case scripts its first replies; afterwards the origin serves the file correctly, so every
case must end with the exact bytes published, after the retries its first replies deserve.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from support.daemon import TERMINAL, Daemon, by_id
from support.extracts import make_record, new_id
from support.origin import content
from support.raw_origin import RawOrigin, Reply

SMALL = 96 * 1024  # restarts from zero after a failure
LARGE = 1536 * 1024  # over 1 MiB: resumed with Range after a failure
HALF = LARGE // 2
CAP = 100_000


def _capped(name: str) -> Callable[[int], bytes]:
    return lambda start: content(name, LARGE)[start : start + CAP]


@dataclass
class Case:
    key: str
    size: int
    replies: Callable[[str], list[Reply]]
    retries: list[str]  # reasons of the retries it must go through, in order
    outcome: str = "download_completed"
    reason: str | None = None
    aweme_id: str = ""
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case(
        "upper_cl",
        SMALL,
        lambda n: [Reply(drop=["content-length"], extra=[("Content-Length", str(SMALL))])],
        ["malformed_response"],
    ),
    Case(
        "upper_cl_half",  # the original bug: half the body published as done
        SMALL,
        lambda n: [
            Reply(drop=["content-length"], extra=[("Content-Length", str(SMALL))], limit=SMALL // 2)
        ],
        ["malformed_response"],
    ),
    Case(
        "dup_cl_same_short",  # identical values are allowed: the body must still match them
        SMALL,
        lambda n: [
            Reply(
                override=[("content-length", str(SMALL)), ("content-length", str(SMALL))],
                limit=SMALL // 2,
            )
        ],
        ["truncated"],
    ),
    Case(
        "dup_cl_conflict",
        SMALL,
        lambda n: [
            Reply(override=[("content-length", str(SMALL)), ("content-length", str(SMALL // 2))])
        ],
        ["malformed_response"],
    ),
    Case(
        "joined_cl_conflict",
        SMALL,
        lambda n: [Reply(override=[("content-length", f"{SMALL}, {SMALL // 2}")])],
        ["malformed_response"],
    ),
    Case(
        "superscript",
        SMALL,
        lambda n: [Reply(override=[("content-length", "²")])],
        ["malformed_response"],
    ),
    Case(
        "digits_5000",
        SMALL,
        lambda n: [Reply(override=[("content-length", "7" * 5000)])],
        ["malformed_response"],
    ),
    Case(
        "retry_after_5000",  # ignored: the host's own backoff applies, nothing crashes
        SMALL,
        lambda n: [Reply(status=429, headers=[("retry-after", "9" * 5000)], body=b"")],
        ["rate_limited"],
    ),
    Case(
        "longer_body",
        SMALL,
        lambda n: [Reply(body=content(n, SMALL) + b"\0" * 1000)],
        ["malformed_response"],
    ),
    Case(
        "always_malformed",
        SMALL,
        lambda n: [Reply(override=[("content-length", "1e5")])] * 3,
        ["malformed_response"] * 2,
        outcome="download_failed",
        reason="malformed_response",
    ),
    Case(
        "range_wrong_start",
        LARGE,
        lambda n: [
            Reply(limit=HALF, end="reset"),
            Reply(
                status=206,
                override=[
                    ("content-range", f"bytes 0-{LARGE - 1}/{LARGE}"),
                    ("content-length", str(LARGE)),
                ],
                body=content(n, LARGE),
            ),
        ],
        ["truncated", "range_mismatch"],
    ),
    Case(
        "range_capped",  # a CDN that caps its range replies: asked again, not published short
        LARGE,
        lambda n: [
            Reply(limit=HALF, end="reset"),
            Reply(
                status=206,
                override=[
                    ("content-range", f"bytes {HALF}-{HALF + CAP - 1}/{LARGE}"),
                    ("content-length", str(CAP)),
                ],
                body=_capped(n),
            ),
        ],
        ["truncated"],
    ),
    Case(
        "range_other_total",
        LARGE,
        lambda n: [
            Reply(limit=HALF, end="reset"),
            Reply(
                status=206,
                override=[
                    ("content-range", f"bytes {HALF}-{LARGE - 1}/{LARGE * 2}"),
                    ("content-length", str(LARGE - HALF)),
                ],
            ),
        ],
        ["truncated", "range_mismatch"],
    ),
    Case(
        "range_other_version",  # If-Range ignored: a 206 of another version is never spliced
        LARGE,
        lambda n: [
            Reply(limit=HALF, end="reset"),
            Reply(status=206, override=[("etag", '"another-version"')]),
        ],
        ["truncated", "range_mismatch"],
    ),
    Case(
        "range_416_complete",  # every byte arrived, then a reset: the resume gets 416
        LARGE,
        lambda n: [Reply(end="reset")],
        ["truncated"],
    ),
    Case(
        "range_416_other_size",
        LARGE,
        lambda n: [
            Reply(limit=HALF, end="reset"),
            Reply(status=416, headers=[("content-range", f"bytes */{LARGE * 2}")], body=b""),
        ],
        ["truncated", "range_mismatch"],
    ),
]


@dataclass
class Run:
    daemon: Daemon
    origin: RawOrigin
    cases: dict[str, Case]
    events: dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, ingestd_available: None) -> Iterator[Run]:
    origin = RawOrigin(tmp_path_factory.mktemp("raw-origin"))
    origin.start()
    rng = random.Random("bad-headers")
    daemon = Daemon(
        tmp_path_factory.mktemp("bad-headers"),
        ca_bundle=origin.ca_pem_path,
        concurrency=4,
        timeout=3.0,
        max_attempts=3,
        backoff_base=0.1,
        backoff_max=0.5,
    )
    records = []
    for case in CASES:
        case.aweme_id, case.name = new_id(rng), f"bad-{case.key}"
        origin.script(case.name, case.replies(case.name))
        records.append(make_record(case.aweme_id, origin.url(case.name, case.size), "bad", 1))
    try:
        daemon.start()
        daemon.drop_atomic("extract_20261201T120000.json", records)
        ids = {c.aweme_id for c in CASES}
        daemon.wait_until(
            lambda: ids <= set(by_id(e for e in daemon.events() if e["event"] in TERMINAL)),
            "every case ended",
            timeout=60,
        )
        yield Run(daemon, origin, {c.key: c for c in CASES}, by_id(daemon.events()))
    finally:
        daemon.cleanup()
        origin.stop()


@pytest.mark.parametrize("key", [c.key for c in CASES])
def test_each_lie_ends_as_documented(run: Run, key: str) -> None:
    case = run.cases[key]
    events = run.events[case.aweme_id]
    end = next(e for e in events if e["event"] in TERMINAL)
    retries = [e["reason"] for e in events if e["event"] == "download_retry_scheduled"]
    assert (end["event"], end.get("reason")) == (case.outcome, case.reason), end
    assert retries == case.retries, [(e["event"], e.get("reason"), e.get("detail")) for e in events]
    path = run.daemon.media_path("bad", case.aweme_id)
    if case.outcome == "download_completed":
        assert path.read_bytes() == content(case.name, case.size), f"{key}: wrong file published"
        assert end["bytes"] == case.size
    else:
        assert not path.exists()
    assert not path.with_name(path.name + ".part").exists() or case.outcome != "download_completed"


def test_no_lie_crashes_a_transfer(run: Run) -> None:
    reasons = {e.get("reason") for e in run.daemon.events()}
    assert "internal_error" not in reasons
    assert run.daemon.events("download_crashed") == []
    assert run.daemon.running


def test_a_complete_part_is_published_on_416_without_downloading_it_again(run: Run) -> None:
    case = run.cases["range_416_complete"]
    requests = run.origin.requests_for(case.name)
    assert [r.status for r in requests] == ["200", "416"], [(r.status, r.range) for r in requests]
    assert requests[1].range == f"bytes={LARGE}-"


def test_capped_range_replies_are_continued_in_the_same_attempt(run: Run) -> None:
    case = run.cases["range_capped"]
    requests = run.origin.requests_for(case.name)
    assert [(r.status, r.range) for r in requests] == [
        ("200", None),
        ("206", f"bytes={HALF}-"),
        ("206", f"bytes={HALF + CAP}-"),
    ]
    end = next(e for e in run.events[case.aweme_id] if e["event"] == "download_completed")
    assert end["attempt"] == 2 and end["resumed"] is True
