"""Configuration precedence, validation, unknown keys, and where each library's state lives."""

import hashlib
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.config import (
    ConfigError,
    default_log_file,
    default_node_name,
    default_state_dir,
    library_dir_name,
    load_config,
)
from ingestd.store.manifest import Manifest


@pytest.fixture(autouse=True)
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """platformdirs' user folders under tmp_path: never the real user's (state, config)."""
    home = tmp_path / "home"
    for name, folder in (("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "share")):
        monkeypatch.setenv(name, str(home / folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    return home / "state" / "ingestd"  # platformdirs' user_state_dir("ingestd")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_use_platformdirs_and_state_directory(tmp_path: Path) -> None:
    config = load_config(env={"STATE_DIRECTORY": "/var/lib/ingestd"}, cwd=tmp_path)
    assert config.state_dir == Path("/var/lib/ingestd")
    assert config.concurrency == 8 and config.timeout == 45.0 and config.http2
    assert config.max_file_bytes == 536870912 and config.min_free_bytes == 1073741824
    assert config.allowed_hosts == () and config.log_format == "auto"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        'data_dir = "d"\nconcurrency = 2\ntimeout = 5\nallowed_hosts = ["A.example.", "*.cdn"]\n',
    )
    config = load_config(path, env={}, cwd=tmp_path)
    assert config.data_dir == tmp_path / "d"  # relative to the config file
    assert config.concurrency == 2 and config.timeout == 5.0
    assert config.allowed_hosts == ("a.example", "*.cdn")
    env = {"INGESTD_CONCURRENCY": "3", "INGESTD_HTTP2": "false", "INGESTD_ALLOWED_HOSTS": "x,y"}
    config = load_config(path, env=env, cwd=tmp_path)
    assert config.concurrency == 3 and not config.http2 and config.allowed_hosts == ("x", "y")
    config = load_config(path, env=env, overrides={"concurrency": 4}, cwd=tmp_path)
    assert config.concurrency == 4


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "max_attempts = 9\n")
    assert load_config(env={"INGESTD_CONFIG": str(path)}, cwd=tmp_path).max_attempts == 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurency = 3\n", "unknown key 'concurency'"),
        ("concurrency = 'many'\n", "concurrency: expected an integer"),
        ("concurrency = 0\n", "concurrency: 0 is outside"),
        ("http2 = 'yes'\n", "http2: expected true or false"),
        ("allowed_hosts = 'a.com'\n", "allowed_hosts: expected a list"),
        ("log_format = 'xml'\n", "log_format: expected auto, json or console"),
        ("timeout = -1\n", "timeout: -1.0 is outside"),
        ("backoff_base = 10\nbackoff_max = 1\n", "backoff_max must not be smaller"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_files_are_errors_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={}, cwd=tmp_path)


def test_unknown_environment_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="INGESTD_CONCURENCY"):
        load_config(env={"INGESTD_CONCURENCY": "3"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="INGESTD_HTTP2"):
        load_config(env={"INGESTD_HTTP2": "maybe"}, cwd=tmp_path)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={}, cwd=tmp_path)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(env={}, cwd=tmp_path)
    with pytest.raises(AttributeError):
        config.concurrency = 3  # type: ignore[misc]


def test_library_dir_name_is_the_folder_name_and_a_hash_of_the_path() -> None:
    digest = hashlib.sha256(b"/srv/My Library").hexdigest()[:12]
    assert library_dir_name(Path("/srv/My Library")) == f"My_Library-{digest}"
    assert library_dir_name(Path("/a/data")) != library_dir_name(Path("/b/data"))
    assert library_dir_name(Path("/a/data")).startswith("data-")
    assert library_dir_name(Path("/")).startswith("library-")
    assert library_dir_name(Path("/x/..hidden")).startswith("hidden-")
    assert library_dir_name(Path("/x/" + "n" * 300)).split("-")[0] == "n" * 40


def test_default_state_dir_systemd_then_legacy_then_per_library() -> None:
    base, data = Path("/home/u/.local/state/ingestd"), Path("/srv/lib")
    seen: list[Path] = []

    def legacy(fits: bool) -> Callable[[Path], bool]:
        def check(manifest: Path) -> bool:
            seen.append(manifest)
            return fits

        return check

    systemd = {"STATE_DIRECTORY": "/var/lib/ingestd:/other"}
    assert default_state_dir(systemd, data, base, legacy(True)) == Path("/var/lib/ingestd")
    assert seen == [], "under systemd the legacy manifest is not even looked at"
    assert default_state_dir({}, data, base, legacy(True)) == base
    assert seen == [base / "manifest.sqlite3"]
    assert default_state_dir({}, data, base, legacy(False)) == (
        base / "libraries" / library_dir_name(data)
    )


def test_two_libraries_never_share_an_event_file(tmp_path: Path, user_dirs: Path) -> None:
    one = load_config(env={}, overrides={"data_dir": "one"}, cwd=tmp_path)
    two = load_config(env={}, overrides={"data_dir": "two", "state_dir": "s"}, cwd=tmp_path)
    assert one.log_file is not None and two.log_file is not None
    assert one.log_file.parent == two.log_file.parent and one.log_file != two.log_file
    assert one.log_file.name == library_dir_name(tmp_path / "one") + ".jsonl"
    assert default_log_file({"LOGS_DIRECTORY": "/var/log/ingestd"}, tmp_path, tmp_path, False) == (
        Path("/var/log/ingestd/ingestd.jsonl")
    )
    assert default_log_file({}, tmp_path / "x", tmp_path, shared=True) == tmp_path / "ingestd.jsonl"
    named = load_config(env={}, overrides={"data_dir": "one", "log_file": "e.jsonl"}, cwd=tmp_path)
    assert named.log_file == tmp_path / "e.jsonl"


def test_two_data_dirs_get_two_state_dirs(tmp_path: Path, user_dirs: Path) -> None:
    one = load_config(env={}, overrides={"data_dir": "one"}, cwd=tmp_path)
    two = load_config(env={}, overrides={"data_dir": "two"}, cwd=tmp_path)
    assert one.state_dir == user_dirs / "libraries" / library_dir_name(tmp_path / "one")
    assert two.state_dir.parent == one.state_dir.parent and two.state_dir != one.state_dir
    default = load_config(env={}, cwd=tmp_path)
    assert default.data_dir == tmp_path / "home" / "share" / "ingestd"
    assert default.state_dir.parent == user_dirs / "libraries"
    # Set explicitly (flag, environment or file), the state dir is what it says.
    explicit = load_config(env={}, overrides={"data_dir": "one", "state_dir": "s"}, cwd=tmp_path)
    assert explicit.state_dir == tmp_path / "s"
    env = {"INGESTD_STATE_DIR": str(tmp_path / "e")}
    assert load_config(env=env, overrides={"data_dir": "one"}, cwd=tmp_path).state_dir == (
        tmp_path / "e"
    )


def test_a_manifest_in_the_old_shared_place_stays_with_its_library(
    tmp_path: Path, user_dirs: Path
) -> None:
    legacy = Manifest.open(user_dirs / "manifest.sqlite3")  # as an earlier version left it
    legacy.close()

    def state_dir(data: str) -> Path:
        return load_config(env={}, overrides={"data_dir": data}, cwd=tmp_path).state_dir

    # Nothing recorded yet: any library may adopt it (the first `run` records its own).
    assert state_dir("one") == state_dir("two") == user_dirs
    legacy = Manifest.open(user_dirs / "manifest.sqlite3")
    legacy.bind_data_dir(tmp_path / "one")
    legacy.close()
    assert state_dir("one") == user_dirs
    assert state_dir("two") == user_dirs / "libraries" / library_dir_name(tmp_path / "two")
    (user_dirs / "manifest.sqlite3").write_bytes(b"not a database")
    assert state_dir("two") == user_dirs, "an unreadable one is used, so its error shows"


def test_write_info_json_and_cookies_file_keys(tmp_path: Path) -> None:
    config = load_config(env={"INGESTD_DATA_DIR": "d"}, cwd=tmp_path)
    assert config.write_info_json is False and config.cookies_file is None
    env = {"INGESTD_WRITE_INFO_JSON": "yes", "INGESTD_COOKIES_FILE": "~/cookies.txt"}
    config = load_config(env=env, cwd=tmp_path)
    assert config.write_info_json is True
    assert config.cookies_file == Path("~/cookies.txt").expanduser()
    path = write(tmp_path / "c.toml", 'write_info_json = "yes"\n')
    with pytest.raises(ConfigError, match="write_info_json"):
        load_config(path, env={}, cwd=tmp_path)


def test_manifest_url_picks_postgresql_and_never_shows_its_password(tmp_path: Path) -> None:
    config = load_config(env={"INGESTD_DATA_DIR": "d"}, cwd=tmp_path)
    assert config.manifest_url == "" and config.manifest_location == config.manifest_path
    url = "postgresql://ingestd:hunter2@db.internal/ingestd"
    config = load_config(env={"INGESTD_DATA_DIR": "d", "INGESTD_MANIFEST_URL": url}, cwd=tmp_path)
    assert config.manifest_location == url
    assert config.manifest_label == "postgresql://ingestd:***@db.internal/ingestd"
    bad = "mysql://ingestd:hunter2@db.internal/ingestd"
    with pytest.raises(ConfigError, match="expected a postgresql:// URL") as refused:
        load_config(env={"INGESTD_DATA_DIR": "d", "INGESTD_MANIFEST_URL": bad}, cwd=tmp_path)
    assert "hunter2" not in str(refused.value)


def test_node_name_defaults_to_the_host_name_and_must_be_a_plain_name(tmp_path: Path) -> None:
    assert default_node_name("worker-3.dc1.example.com") == "worker-3"
    assert default_node_name("Büro Rechner") == "B-ro-Rechner"
    assert default_node_name("..") == "node" and len(default_node_name("x" * 300)) == 63
    config = load_config(env={"INGESTD_DATA_DIR": "d"}, cwd=tmp_path)
    assert config.node_name and config.lease_seconds == 120.0
    config = load_config(env={"INGESTD_NODE_NAME": "", "INGESTD_DATA_DIR": "d"}, cwd=tmp_path)
    assert config.node_name == default_node_name(socket.gethostname())
    path = write(tmp_path / "c.toml", 'node_name = "edge-2"\nlease_seconds = 30\n')
    config = load_config(path, env={}, cwd=tmp_path)
    assert (config.node_name, config.lease_seconds) == ("edge-2", 30.0)
    for bad in ("a/b", "-lead", "x" * 64, "new\nline"):
        with pytest.raises(ConfigError, match=r"\(node_name\): .* is not a node name"):
            load_config(env={"INGESTD_NODE_NAME": bad, "INGESTD_DATA_DIR": "d"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"\(lease_seconds\): 1.0 is outside 3..86400"):
        load_config(env={"INGESTD_LEASE_SECONDS": "1", "INGESTD_DATA_DIR": "d"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "key", "in_file", "problem"),
    [
        ("INGESTD_TIMEOUT", "abc", "timeout", '"abc"', "expected a number, got 'abc'"),
        ("INGESTD_CONCURRENCY", "many", "concurrency", '"many"', "expected an integer, got 'many'"),
        ("INGESTD_HTTP2", "maybe", "http2", '"maybe"', "expected true or false, got 'maybe'"),
        ("INGESTD_CONCURRENCY", "0", "concurrency", "0", "0 is outside 1..1024"),
    ],
)
def test_a_bad_environment_value_reads_like_the_same_key_in_the_file(
    tmp_path: Path, name: str, text: str, key: str, in_file: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as from_env:
        load_config(env={name: text}, cwd=tmp_path)
    assert str(from_env.value) == f"{name} ({key}): {problem}"
    toml = write(tmp_path / "c.toml", f"{key} = {in_file}\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(toml, env={}, cwd=tmp_path)
    assert str(from_file.value) == f"{key}: {problem}", "the same wording as the file's"


def test_a_missing_or_unreadable_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    toml = write(tmp_path / "c.toml", f'ca_bundle = "{missing}"\n')
    with pytest.raises(ConfigError) as error:
        load_config(toml, env={}, cwd=tmp_path)
    assert str(error.value) == f"ca_bundle: cannot read {missing}: No such file or directory"
    with pytest.raises(ConfigError) as error:  # a folder: unreadable as a file
        load_config(env={"INGESTD_CA_BUNDLE": str(tmp_path)}, cwd=tmp_path)
    assert (
        str(error.value) == f"INGESTD_CA_BUNDLE (ca_bundle): cannot read {tmp_path}: Is a directory"
    )
    not_pem = write(tmp_path / "not.pem", "hello\n")
    with pytest.raises(ConfigError, match=f"ca_bundle: {not_pem} holds no CA certificate"):
        load_config(env={}, overrides={"ca_bundle": str(not_pem)}, cwd=tmp_path)
