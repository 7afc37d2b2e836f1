"""Lint, format and strict typing are part of the test suite, so CI and README agree."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_lint() -> None:
    result = run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


# Each foreign library whose errors and types must not leak is imported by one module, which
# translates them (the guide: one module imports httpx, one watchfiles, one owns SQL).
BOUNDARIES = {
    "httpx": "net/fetch.py",
    "httpcore": "net/fetch.py",
    "h2": "net/fetch.py",
    "watchfiles": "fs/watch.py",
    "sqlite3": "store/manifest.py",
    "psycopg": "store/postgres.py",
    "psycopg_pool": "store/postgres.py",
    "structlog": "log.py",
    "prometheus_client": "metrics.py",
    "platformdirs": "config.py",
}


def test_foreign_libraries_are_imported_at_one_boundary_each() -> None:
    package = ROOT / "daemon" / "ingestd"
    found: dict[str, set[str]] = {name: set() for name in BOUNDARIES}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in found:
                    found[top].add(path.relative_to(package).as_posix())
    assert found == {name: {module} for name, module in BOUNDARIES.items()}
