"""cookies_file: a Netscape cookies.txt read by the standard library's MozillaCookieJar, and the
Cookie header each request gets from it (the jar's policy decides: domain, path, Secure, expiry).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ingestd.config import ConfigError, load_config, load_cookies
from ingestd.net.cookies import CookieFileError, cookie_header, load_cookie_jar, same_cookies

MAGIC = "# Netscape HTTP Cookie File\n"
FUTURE = int(time.time()) + 86400
PAST = int(time.time()) - 86400


def cookies_txt(path: Path, *lines: str, magic: str = MAGIC) -> Path:
    """Write a cookies.txt: each line is domain, subdomains, path, secure, expires, name, value
    separated by spaces here (tabs in the file)."""
    path.write_text(magic + "".join("\t".join(line.split(" ")) + "\n" for line in lines))
    return path


def test_header_per_domain_path_secure_and_expiry(tmp_path: Path) -> None:
    jar = load_cookie_jar(
        cookies_txt(
            tmp_path / "c.txt",
            f"cdn.example.com FALSE / FALSE {FUTURE} host_only h1",
            f".example.com TRUE / FALSE {FUTURE} whole_domain d1",
            f".example.com TRUE /v FALSE {FUTURE} video_path p1",
            f".example.com TRUE / TRUE {FUTURE} secure_only s1",
            f".example.com TRUE / FALSE {PAST} expired e1",
            ".example.com TRUE / FALSE 0 session_zero z1",  # 0: a session cookie (yt-dlp)
            "#HttpOnly_.example.com TRUE / FALSE  http_only o1",  # empty expiry: session
            f"other.org FALSE / FALSE {FUTURE} elsewhere x1",
        )
    )

    def names(url: str) -> set[str]:
        header = cookie_header(jar, url)
        return set() if header is None else {p.split("=")[0] for p in header.split("; ")}

    everywhere = {"whole_domain", "session_zero", "http_only"}
    assert names("https://cdn.example.com/v/1.mp4?sig=x") == everywhere | {
        "host_only",
        "video_path",
        "secure_only",
    }
    assert names("https://img.example.com/x") == everywhere | {"secure_only"}
    assert names("http://img.example.com/v/1") == everywhere | {"video_path"}  # no Secure
    assert names("https://sub.cdn.example.com/") == everywhere | {"secure_only"}  # host-only
    assert names("https://example.org/") == set()
    assert names("https://other.org/") == {"elsewhere"}
    assert cookie_header(jar, "https://other.org/") == "elsewhere=x1"


def test_a_cookie_that_expires_later_stops_being_sent(tmp_path: Path) -> None:
    soon = int(time.time()) + 2
    jar = load_cookie_jar(cookies_txt(tmp_path / "c.txt", f"example.com FALSE / FALSE {soon} a 1"))
    assert cookie_header(jar, "https://example.com/") == "a=1"
    jar_copy = load_cookie_jar(tmp_path / "c.txt")
    for cookie in jar_copy:
        cookie.expires = int(time.time()) - 1
    assert cookie_header(jar_copy, "https://example.com/") is None


def test_ip_hosts_and_dotless_names(tmp_path: Path) -> None:
    # The standard library's policy (RFC 2965): a dotless host name such as localhost has the
    # effective name `localhost.local`; an IP address is matched exactly, never as a suffix.
    jar = load_cookie_jar(
        cookies_txt(
            tmp_path / "c.txt",
            f"127.0.0.1 FALSE / FALSE {FUTURE} ip 1",
            f"localhost.local FALSE / FALSE {FUTURE} lh 2",
        )
    )
    assert cookie_header(jar, "https://127.0.0.1:8443/x") == "ip=1"
    assert cookie_header(jar, "https://localhost:8443/x") == "lh=2"
    assert cookie_header(jar, "https://27.0.0.1/x") is None
    assert cookie_header(jar, "https://10.127.0.0.1/x") is None


def test_same_cookies(tmp_path: Path) -> None:
    one = load_cookie_jar(cookies_txt(tmp_path / "a.txt", f"a.com FALSE / FALSE {FUTURE} n v"))
    two = load_cookie_jar(cookies_txt(tmp_path / "b.txt", f"a.com FALSE / FALSE {FUTURE} n v"))
    three = load_cookie_jar(cookies_txt(tmp_path / "c.txt", f"a.com FALSE / FALSE {FUTURE} n w"))
    assert same_cookies(one, two) and not same_cookies(one, three)
    assert same_cookies(None, None) and not same_cookies(one, None)


SECRET = "s3cr3tVALUE"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("not a cookies file\n", "Netscape"),
        (f"{MAGIC}example.com\tTRUE\t/\tFALSE\t0\tname\t{SECRET}\n", "Netscape"),  # dot rule
        (f"{MAGIC}example.com\tFALSE\t/\tFALSE\tsoon\tname\t{SECRET}\n", "Netscape"),
        (f"{MAGIC}example.com\tFALSE\t/\n", "Netscape"),
        (f"{MAGIC}example.com\tFALSE\t/\tFALSE\t0\tname\t{SECRET};x\n", "cannot carry"),
        (f"{MAGIC}example.com\tFALSE\t/\tFALSE\t0\tname\t{SECRET}\x01\n", "cannot carry"),
        (f"{MAGIC}example.com\tFALSE\t/\tFALSE\t0\tname\t{SECRET}\u00e9\n", "cannot carry"),
    ],
)
def test_bad_files_are_refused_without_showing_values(
    tmp_path: Path, content: str, why: str
) -> None:
    path = tmp_path / "cookies.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CookieFileError) as info:
        load_cookie_jar(path)
    message = str(info.value)
    assert str(path) in message and why in message, message
    assert SECRET not in message and info.value.__cause__ is None, message


def test_missing_unreadable_special_and_huge_files(tmp_path: Path) -> None:
    with pytest.raises(CookieFileError, match="No such file"):
        load_cookie_jar(tmp_path / "absent.txt")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CookieFileError, match="not a regular file"):
        load_cookie_jar(fifo)  # never blocks on a FIFO
    huge = tmp_path / "huge.txt"
    huge.write_text(MAGIC + "#" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(CookieFileError, match="larger than"):
        load_cookie_jar(huge)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CookieFileError, match="Netscape"):
        load_cookie_jar(binary)


def test_config_key_and_its_errors(tmp_path: Path) -> None:
    cookies_txt(tmp_path / "cookies.txt", f"a.com FALSE / FALSE {FUTURE} n v")
    config_file = tmp_path / "c.toml"
    config_file.write_text('data_dir = "d"\nstate_dir = "s"\ncookies_file = "cookies.txt"\n')
    config = load_config(config_file, env={}, cwd=tmp_path / "elsewhere")
    assert config.cookies_file == tmp_path / "cookies.txt"  # relative to the config file
    jar = load_cookies(config)
    assert jar is not None and cookie_header(jar, "https://a.com/") == "n=v"
    env = {"INGESTD_COOKIES_FILE": "missing.txt"}
    config = load_config(config_file, env=env, cwd=tmp_path)
    with pytest.raises(ConfigError) as info:
        load_cookies(config)
    assert str(info.value).startswith("cookies_file: ") and str(tmp_path / "missing.txt") in str(
        info.value
    )
    assert load_cookies(load_config(env={"INGESTD_DATA_DIR": "d"}, cwd=tmp_path)) is None


def test_expired_cookies_do_not_make_a_reload_look_like_a_change(tmp_path: Path) -> None:
    path = cookies_txt(
        tmp_path / "c.txt",
        f"a.com FALSE / FALSE {FUTURE} n v",
        f"a.com FALSE / FALSE {PAST} old v",
    )
    running = load_cookie_jar(path)
    assert cookie_header(running, "https://a.com/") == "n=v"  # the jar drops `old` meanwhile
    assert same_cookies(running, load_cookie_jar(path))
