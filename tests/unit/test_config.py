"""Configuration precedence, validation and unknown keys."""

from pathlib import Path

import pytest

from ingestd.config import ConfigError, load_config


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
