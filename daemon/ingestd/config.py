"""Configuration: one frozen, typed object built from file, environment and flags, in that order."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import platformdirs

from ingestd.policy.urls import parse_loopback_address
from ingestd.policy.workers import WORKERS_MAX
from ingestd.store.base import ManifestError, library_path, same_dir
from ingestd.store.manifest import Manifest
from ingestd.store.open import is_database_url, redact_dsn

if TYPE_CHECKING:  # http.cookiejar pulls in urllib.request: only `run` needs it
    from http.cookiejar import MozillaCookieJar

APP_NAME = "ingestd"
ENV_PREFIX = "INGESTD_"
ENV_CONFIG = "INGESTD_CONFIG"
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
DEFAULT_REFERER = "https://www.tiktok.com/"
MANIFEST_NAME = "manifest.sqlite3"
LIBRARIES = "libraries"  # <user state dir>/libraries/<one folder per data dir>
LOG_NAME = "ingestd.jsonl"
LogFormat = Literal["auto", "json", "console"]
Http2Client = Literal["builtin", "h2"]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon can be told. See README, "Configuration"."""

    data_dir: Path
    state_dir: Path
    concurrency: int = 8
    timeout: float = 45.0
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    max_file_bytes: int = 512 * 1024 * 1024
    min_free_bytes: int = 1024 * 1024 * 1024
    ca_bundle: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    http2: bool = True
    # builtin: ingestd's own HTTP/2 client (net/http2); h2: httpx's own HTTP/2 stack (httpcore
    # and h2), slower, a fallback for a CDN that misbehaves with ours.
    http2_client: Http2Client = "builtin"
    connections_per_host: int = 2  # measured over a lossy WAN: see README, Performance
    idle_timeout: float = 60.0  # seconds an HTTP connection without requests is kept
    per_host_concurrency: int = 0  # downloads one host may hold; 0: as many as `concurrency`
    host_backoff_max: float = 900.0  # cap on a failing host's cooldown, seconds
    min_rate: int = 1024  # bytes a second, averaged over min_rate_window; 0: no floor
    min_rate_window: float = 60.0
    user_agent: str = DEFAULT_USER_AGENT
    referer: str = DEFAULT_REFERER
    log_format: LogFormat = "auto"
    log_file: Path | None = None
    log_max_bytes: int = 64 * 1024 * 1024
    log_backups: int = 5
    metrics_address: str = ""
    settle_seconds: float = 5.0
    max_extract_bytes: int = 512 * 1024 * 1024
    rescan_seconds: float = 30.0
    progress_seconds: float = 60.0
    # `<id>.info.json` beside each video published (the record, URLs without query strings).
    write_info_json: bool = False
    # A Netscape cookies.txt; its cookies go to the hosts they match (see net.cookies).
    cookies_file: Path | None = None
    # A libpq URL (postgresql://...): the manifest lives in PostgreSQL (the postgres extra);
    # empty: the SQLite file in state_dir.
    manifest_url: str = ""
    # This node's name on a shared manifest: its claims carry it, `status` shows in-flight
    # items by it. Default: the host name, sanitized. Unique per host of one manifest.
    node_name: str = ""
    # How long a claim stays this node's without a renewal (renewed every third of it): a
    # node that dies has its items back in the queue this long after its last renewal.
    lease_seconds: float = 120.0
    # Download processes on this node (policy.workers): 1 downloads in the daemon's own process.
    workers: int = 1

    @property
    def host_slots(self) -> int:
        """Downloads one host may hold at once."""
        return min(self.per_host_concurrency or self.concurrency, self.concurrency)

    @property
    def raw_dir(self) -> Path:
        """Where extracts are dropped."""
        return self.data_dir / "raw"

    @property
    def media_dir(self) -> Path:
        """Where videos are published."""
        return self.data_dir / "media_assets"

    @property
    def manifest_path(self) -> Path:
        """The SQLite manifest (used unless manifest_url is set)."""
        return self.state_dir / MANIFEST_NAME

    @property
    def manifest_location(self) -> str | Path:
        """Where the manifest is: the PostgreSQL URL, or the SQLite file."""
        return self.manifest_url or self.manifest_path

    @property
    def manifest_node(self) -> str | None:
        """The node whose library and claims are this daemon's on a shared manifest
        (PostgreSQL); None on SQLite, whose manifest is one library."""
        return self.node_name if self.manifest_url else None

    @property
    def manifest_label(self) -> str:
        """The manifest's location for messages and logs: never a password."""
        return redact_dsn(self.manifest_url) if self.manifest_url else str(self.manifest_path)


# How each key is read from a string (environment) and what values it accepts.
def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


def _parse_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        value = tomllib.loads(f"v = {text}")["v"]
        if not isinstance(value, list):
            raise ValueError("expected a list")
        return cast(list[str], value)
    return [part.strip() for part in text.split(",") if part.strip()]


_PATH_KEYS = frozenset({"data_dir", "state_dir", "ca_bundle", "log_file", "cookies_file"})
_BOOL_KEYS = frozenset({"http2", "write_info_json"})
_INT_KEYS = (
    frozenset(
        {"concurrency", "max_attempts", "max_file_bytes", "min_free_bytes", "max_extract_bytes"}
    )
    | {"log_max_bytes", "log_backups", "connections_per_host", "per_host_concurrency", "min_rate"}
    | {"workers"}
)
_FLOAT_KEYS = frozenset(
    {"timeout", "backoff_base", "backoff_max", "settle_seconds", "rescan_seconds"}
) | {"progress_seconds", "host_backoff_max", "min_rate_window", "idle_timeout", "lease_seconds"}
_ENV_PARSERS: dict[str, Callable[[str], object]] = {
    **dict.fromkeys(_PATH_KEYS, str),
    **dict.fromkeys(_INT_KEYS, int),
    **dict.fromkeys(_FLOAT_KEYS, float),
    **dict.fromkeys(_BOOL_KEYS, _parse_bool),
    "allowed_hosts": _parse_list,
    "user_agent": str,
    "referer": str,
    "log_format": str,
    "http2_client": str,
    "metrics_address": str,
    "manifest_url": str,
    "node_name": str,
    "workers": int,
}
KEYS = frozenset(f.name for f in fields(Config))
assert frozenset(_ENV_PARSERS) == KEYS

_RANGES: dict[str, tuple[float, float]] = {
    "concurrency": (1, 1024),
    "connections_per_host": (1, 64),
    "idle_timeout": (1, 86400),
    "per_host_concurrency": (0, 1024),
    "host_backoff_max": (1, 7 * 86400),
    "min_rate": (0, 2**40),
    "min_rate_window": (1, 86400),
    "timeout": (0.1, 86400),
    "max_attempts": (1, 1000),
    "backoff_base": (0, 86400),
    "backoff_max": (0, 7 * 86400),
    "max_file_bytes": (1, 2**50),
    "min_free_bytes": (0, 2**60),
    "settle_seconds": (0, 86400),
    "max_extract_bytes": (2, 2**40),
    "rescan_seconds": (0.1, 86400),
    "progress_seconds": (0.1, 86400),
    "log_max_bytes": (0, 2**40),
    "log_backups": (0, 100),
    "lease_seconds": (3, 86400),
    "workers": (1, WORKERS_MAX),
}
# A node's name: it becomes part of every claim's owner (`<node>` or `<node>/<worker>`).
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _coerce(key: str, value: object, base: Path, label: str | None = None) -> object:
    """Check one value's type and range; resolve relative paths against `base`. A ConfigError
    names `label`: the key, or where the value came from (`INGESTD_TIMEOUT (timeout)`)."""
    label = label or key
    if key in _PATH_KEYS:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{label}: expected a path, got {value!r}")
        path = Path(os.path.expanduser(str(value)))
        path = path if path.is_absolute() else (base / path)
        if key == "ca_bundle":
            _check_ca_bundle(path, label)
        return path
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label}: expected an integer, got {value!r}")
    elif key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label}: expected a number, got {value!r}")
        value = float(value)
    elif key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(f"{label}: expected true or false, got {value!r}")
    elif key == "allowed_hosts":
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(h, str) and h.strip() for h in value
        ):
            raise ConfigError(f"{label}: expected a list of host names, got {value!r}")
        return tuple(h.strip().lower().rstrip(".") for h in value)
    elif key == "log_format":
        if value not in ("auto", "json", "console"):
            raise ConfigError(f"{label}: expected auto, json or console, got {value!r}")
    elif key == "http2_client":
        if value not in ("builtin", "h2"):
            raise ConfigError(f"{label}: expected builtin or h2, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(f"{label}: expected a string, got {value!r}")
    elif key == "metrics_address" and value:
        try:
            parse_loopback_address(value)
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}") from exc
    elif key == "node_name" and value and not NODE_NAME.fullmatch(value):
        raise ConfigError(
            f"{label}: {value[:80]!r} is not a node name (1-63 letters, digits, '.', '_', '-';"
            " starting with a letter or digit)"
        )
    elif key == "manifest_url" and value and not is_database_url(value):
        shown = redact_dsn(value)[:200]
        raise ConfigError(f"{label}: expected a postgresql:// URL, got {shown!r}")
    if key in _RANGES:
        low, high = _RANGES[key]
        number = cast(float, value)
        if not low <= number <= high:
            raise ConfigError(f"{label}: {value!r} is outside {low:g}..{high:g}")
    return value


def load_cookies(config: Config) -> MozillaCookieJar | None:
    """The cookies of `cookies_file`, read now (None without one). A reload reads it again.
    Raises ConfigError naming the key and the path, never a cookie value."""
    if config.cookies_file is None:
        return None
    from ingestd.net.cookies import CookieFileError, load_cookie_jar

    try:
        return load_cookie_jar(config.cookies_file)
    except CookieFileError as exc:
        raise ConfigError(f"cookies_file: {exc}") from None


def _check_ca_bundle(path: Path, label: str) -> None:
    """A CA bundle that cannot be used is a configuration error, found before anything starts
    (not a TLS setup failure once the daemon runs)."""
    import ssl  # only when a bundle is configured: the reading commands do not need it

    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        problem = f"{path} holds no CA certificate in PEM form ({exc.reason or exc})"
        raise ConfigError(f"{label}: {problem}") from exc
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {path}: {exc.strerror or exc}") from exc


def default_config_path(env: Mapping[str, str]) -> Path | None:
    """The config file used when none is named: systemd's, else the user config dir's."""
    candidates = []
    configuration = _systemd_dir(env, "CONFIGURATION_DIRECTORY")
    if configuration is not None:
        candidates.append(configuration / "config.toml")
    candidates.append(Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml")
    return next((c for c in candidates if c.is_file()), None)


def _systemd_dir(env: Mapping[str, str], name: str) -> Path | None:
    # systemd passes colon-separated lists; ours name one directory each.
    value = env.get(name)
    return Path(value.split(":")[0]) if value else None


def library_dir_name(data_dir: Path) -> str:
    """The state folder name of one library: `<last folder name, sanitized>-<12 hex digits of
    the SHA-256 of the path>`. `data_dir` must be absolute and resolved (see library_path)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", data_dir.name).lstrip(".-")[:40] or "library"
    digest = hashlib.sha256(os.fsencode(str(data_dir))).hexdigest()[:12]
    return f"{name}-{digest}"


def default_state_dir(
    env: Mapping[str, str], data_dir: Path, base: Path, legacy_fits: Callable[[Path], bool]
) -> Path:
    """The state dir when none is configured: `$STATE_DIRECTORY` under systemd, else one per
    library, `<base>/libraries/<library_dir_name(data_dir)>`. `base` is the platformdirs user
    state dir, where earlier versions kept one manifest for whatever library they ran on: that
    manifest stays in use for its own library, as `legacy_fits(<base>/manifest.sqlite3)` says.
    """
    systemd = _systemd_dir(env, "STATE_DIRECTORY")
    if systemd is not None:
        return systemd
    if legacy_fits(base / MANIFEST_NAME):
        return base
    return base / LIBRARIES / library_dir_name(data_dir)


def legacy_manifest_fits(data_dir: Path) -> Callable[[Path], bool]:
    """Whether a manifest from before per-library state dirs is `data_dir`'s: it exists and
    records that data dir, or none yet (an older schema: the first `run` adopts it)."""

    def fits(manifest: Path) -> bool:
        if not manifest.is_file():
            return False
        try:
            reader = Manifest.open(manifest, readonly=True)
            try:
                recorded = reader.recorded_data_dir()
            finally:
                reader.close()
        except ManifestError:
            return True  # unreadable: using it shows why, rather than starting a new library
        return recorded is None or same_dir(recorded, data_dir)

    return fits


def default_log_file(env: Mapping[str, str], data_dir: Path, base: Path, shared: bool) -> Path:
    """The event file when none is configured: `$LOGS_DIRECTORY/ingestd.jsonl` under systemd,
    else one per library under `base` (the platformdirs user log dir), so that two libraries
    never write and rotate one file; `shared`: the library keeps the old shared manifest, and
    with it the old shared `<base>/ingestd.jsonl`."""
    systemd = _systemd_dir(env, "LOGS_DIRECTORY")
    if systemd is not None:
        return systemd / LOG_NAME
    if shared:
        return base / LOG_NAME
    return base / LIBRARIES / f"{library_dir_name(data_dir)}.jsonl"


def _defaults(env: Mapping[str, str], values: Mapping[str, object]) -> dict[str, object]:
    data_dir = cast(Path, values.get("data_dir") or Path(platformdirs.user_data_dir(APP_NAME)))
    resolved = Path(library_path(data_dir))
    base = Path(platformdirs.user_state_dir(APP_NAME))
    defaults: dict[str, object] = {"data_dir": data_dir}
    state_dir = values.get("state_dir")
    if state_dir is None:
        state_dir = default_state_dir(env, resolved, base, legacy_manifest_fits(resolved))
        defaults["state_dir"] = state_dir
    logs = Path(platformdirs.user_log_dir(APP_NAME))
    defaults["log_file"] = default_log_file(env, resolved, logs, shared=state_dir == base)
    return defaults


def default_node_name(hostname: str) -> str:
    """The node name when none is configured: the host's name up to its first dot, with what
    a node name cannot hold replaced by `-` ("node" when nothing is left)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname.split(".")[0]).strip("._-")[:63]
    return name or "node"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _check_keys(source: str, keys: object) -> None:
    unknown = sorted(set(cast(Mapping[str, object], keys)) - KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(KEYS))})"
        )


def _from_env(name: str, key: str, text: str, cwd: Path) -> object:
    """One INGESTD_* variable's value, checked as the same key in the file is: a bad one gets
    the file's message, naming the variable and the key (`INGESTD_TIMEOUT (timeout): ...`)."""
    label = f"{name} ({key})"
    try:
        value = _ENV_PARSERS[key](text)
    except ValueError as exc:
        _coerce(key, text, cwd, label)  # the text as it is: a type error, in the file's words
        raise ConfigError(f"{label}: {exc}") from exc
    return _coerce(key, value, cwd, label)


def load_config(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Build the Config: defaults < TOML file < INGESTD_* environment < `overrides` (flags)."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    values: dict[str, object] = {}
    path_arg = config_path or env.get(ENV_CONFIG) or default_config_path(env)
    if path_arg:
        path = Path(path_arg)
        path = path if path.is_absolute() else cwd / path
        table = _read_file(path)
        _check_keys(f"config file {path}", table)
        values.update({k: _coerce(k, v, path.parent) for k, v in table.items()})
    env_values: dict[str, object] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in KEYS:
            _check_keys(f"environment variable {name}", {key: None})
        env_values[key] = _from_env(name, key, text, cwd)
    values.update(env_values)
    if overrides:
        _check_keys("command line", overrides)
        values.update({k: _coerce(k, v, cwd) for k, v in overrides.items() if v is not None})
    merged = {**_defaults(env, values), **values}
    merged["node_name"] = merged.get("node_name") or default_node_name(socket.gethostname())
    config = Config(**cast(dict[str, Any], merged))
    if config.backoff_max < config.backoff_base:
        raise ConfigError("backoff_max must not be smaller than backoff_base")
    return config


def config_document(config: Config) -> dict[str, object]:
    """The config as JSON values (paths as strings), as a worker process is given it."""
    doc: dict[str, object] = {f.name: getattr(config, f.name) for f in fields(Config)}
    for key in _PATH_KEYS:
        doc[key] = None if doc[key] is None else str(doc[key])
    doc["allowed_hosts"] = list(config.allowed_hosts)
    return doc


def config_from_document(doc: Mapping[str, object]) -> Config:
    """The Config that config_document turned into `doc`."""
    values = dict(doc)
    for key in _PATH_KEYS:
        if values.get(key) is not None:
            values[key] = Path(str(values[key]))
    values["allowed_hosts"] = tuple(cast(list[str], values["allowed_hosts"]))
    return Config(**cast(dict[str, Any], values))
