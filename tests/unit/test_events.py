"""One list of event names (ingestd.events): README's Logs table and the code agree with it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ingestd.events import EVENTS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "daemon" / "ingestd"
LOG_CALLS = frozenset({"info", "warning", "error", "critical", "exception"})


def readme_events() -> set[str]:
    """Every name in the first column of README's event table (## Logs)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| event | level | fields |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        names |= set(re.findall(r"`([a-z_]+)`", first))
    return names


def sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")}


def test_the_readme_table_lists_exactly_the_events() -> None:
    documented = readme_events()
    assert documented - EVENTS == set(), "in README's table, not in ingestd.events"
    assert EVENTS - documented == set(), "in ingestd.events, not in README's table"


def test_every_event_the_code_logs_is_known() -> None:
    # log.debug events never reach the log (the logger drops them): not part of the contract.
    logged: dict[str, Path] = {}
    for path, tree in sources().items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_CALLS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                logged[node.args[0].value] = path
    unknown = {name: str(path) for name, path in logged.items() if name not in EVENTS}
    assert not unknown, f"logged but not in ingestd.events (and README): {unknown}"


def test_every_known_event_is_named_in_the_code() -> None:
    # Some are logged by a variable (policy.hosts names host_unavailable/host_recovered).
    constants = {
        node.value
        for path, tree in sources().items()
        if path.name != "events.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert EVENTS - constants == set(), "in ingestd.events but logged nowhere"
