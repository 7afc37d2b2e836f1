"""The download queue's statements cost the same whatever the backlog: every call the pool makes
per file (claims, starts, completions, failures, leases) reaches its rows by key or through a
small index range, never by reading the pending items. Counted in SQLite VM steps (a progress
handler), not in time: a 40-fold backlog must not make a call measurably dearer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.policy.merge import State
from ingestd.store.base import Completion
from ingestd.store.manifest import Manifest
from support.store import r

SMALL, LARGE = 500, 20_000
OWNER = "node"
STEP = 50  # VM instructions per progress-handler call


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Manifests of SMALL and LARGE pending items, from one extract (so the extract-progress
    trigger runs as in the daemon), with 8 items started and 8 held by OWNER."""
    made = {}
    for backlog in (SMALL, LARGE):
        path = tmp_path_factory.mktemp(f"q{backlog}") / "m.sqlite3"
        m = Manifest.open(path)
        m.merge([r(f"{i:07d}") for i in range(backlog)], "e.json", 1.0, sha256="ab" * 32)
        m.claim(2.0, 8, 8, owner=OWNER, lease_until=100.0)
        m.close()  # checkpoints the WAL: the file alone is the manifest
        made[backlog] = path
    return made


Operation = Callable[[Manifest, list[str], list[str]], object]


def _complete(m: Manifest, started: list[str], held: list[str]) -> object:
    return m.complete_many(
        [Completion(i, 10, "00" * 32, f"a/{i}.mp4", ("a",), 3.0, OWNER) for i in started + held]
    )


def _fail(m: Manifest, started: list[str], held: list[str]) -> object:
    url = m.item(started[0])["url"]  # type: ignore[index]
    return m.finish_failed(
        started[0], str(url), State.PENDING, "timeout", None, 9.0, False, 3.0, owner=OWNER
    )


OPERATIONS: dict[str, Operation] = {
    "claim": lambda m, s, h: m.claim(3.0, 8, 8, mark=h, owner=OWNER, lease_until=100.0),
    "start_held": lambda m, s, h: m.start_held(h, 3.0, owner=OWNER),
    "release": lambda m, s, h: m.release(s + h, 3.0, owner=OWNER),
    "renew_leases": lambda m, s, h: m.renew_leases(OWNER, s + h, 200.0),
    "complete_many": _complete,
    "finish_failed": _fail,
    "set_part": lambda m, s, h: m.set_part(s[0], '"etag"', 10, 5),
    "reclaim_lapsed": lambda m, s, h: m.reclaim_lapsed(50.0),
    "in_flight_by_owner": lambda m, s, h: m.in_flight_by_owner(),
    "next_due": lambda m, s, h: m.next_due(),
    "counts": lambda m, s, h: m.counts(),
}


def _steps(path: Path, operation: Operation) -> int:
    m = Manifest.open(path)
    try:
        started, held = (
            [row[0] for row in m._conn.execute(f"SELECT aweme_id FROM items WHERE {where}")]
            for where in ("state = 'active'", "held = 1")
        )
        assert len(started) == len(held) == 8
        steps = 0

        def tick() -> int:
            nonlocal steps
            steps += 1
            return 0

        m._conn.set_progress_handler(tick, STEP)
        operation(m, started, held)
        m._conn.set_progress_handler(None, STEP)
        return steps
    finally:
        m.close()


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_queue_statements_do_not_read_the_backlog(
    templates: dict[int, Path], tmp_path: Path, name: str
) -> None:
    costs = []
    for backlog, template in sorted(templates.items()):
        path = tmp_path / f"{backlog}.sqlite3"
        shutil.copyfile(template, path)
        costs.append(_steps(path, OPERATIONS[name]))
    small, large = costs
    # 40 times the backlog: a read of the pending items would cost 40 times as much.
    assert large <= small * 1.5 + 10, f"{name}: {small} steps on {SMALL} items, {large} on {LARGE}"
