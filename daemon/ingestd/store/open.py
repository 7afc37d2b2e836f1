"""Which backend holds a manifest, from where it is: a `postgresql://` (or `postgres://`) URL
names a PostgreSQL database (store.postgres), anything else the path of a SQLite file
(store.manifest). psycopg is imported only when a URL asks for it: it is an optional extra."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ingestd.store.base import ManifestError, ManifestStore
from ingestd.store.manifest import Manifest

if TYPE_CHECKING:
    from ingestd.store.postgres import PostgresManifest

_SCHEMES = ("postgresql", "postgres")
# A password in a libpq URL (user:password@, up to the `@` before the first `/`, as libpq
# reads it), in its query (password=...), or in a key=value string (password=... or '...').
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/]*(?=@)")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(
    r"((?<![?&\w])password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE
)
_PASSWORDS = (_URL_PASSWORD, _QUERY_PASSWORD, _KEYWORD_PASSWORD)


def is_database_url(location: str | Path) -> bool:
    """True for a `postgresql://` or `postgres://` URL (any case): a manifest in PostgreSQL."""
    if not isinstance(location, str):
        return False
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


def redact_dsn(text: str) -> str:
    """`text` (a DSN, URL or key=value, or a message quoting one) with each password written
    in it as `***`: fit for messages and logs."""
    for pattern in _PASSWORDS:
        text = pattern.sub(r"\1***", text)
    return text


def dsn_passwords(dsn: str) -> set[str]:
    """The passwords written in `dsn`, each as written and as decoded (percent-escapes, quotes):
    what a message about it must not show in any spelling."""
    found: set[str] = set()
    for pattern in _PASSWORDS:
        for match in pattern.finditer(dsn):
            written = dsn[match.end(1) : match.end()]
            unquoted = written[1:-1] if written[:1] == written[-1:] == "'" else written
            found.update((written, unquote(written), unquoted.replace("\\'", "'")))
    found.discard("")
    return found


def open_manifest(location: str | Path, *, readonly: bool = False) -> ManifestStore:
    """Open the manifest at `location` (see the module docstring), creating and migrating it
    unless `readonly`. Raises ManifestError, also when the PostgreSQL extra is missing."""
    if is_database_url(location):
        return open_postgres(str(location), readonly=readonly)
    return Manifest.open(Path(location), readonly=readonly)


def open_postgres(url: str, *, readonly: bool = False) -> PostgresManifest:
    """The manifest in the PostgreSQL database `url` names (see open_manifest). Raises
    ManifestError, also when the PostgreSQL extra is missing."""
    try:
        from ingestd.store.postgres import PostgresManifest
    except ImportError as exc:
        raise ManifestError(
            f"{redact_dsn(url)}: a PostgreSQL manifest needs psycopg"
            f" (install ingestd[postgres]): {exc}"
        ) from None
    return PostgresManifest.open(url, readonly=readonly)
