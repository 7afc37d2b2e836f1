"""cookies_file: each request, each redirect hop, carries the cookies of its own host only; never
an expired one, never a Set-Cookie the CDN sent back; values never reach a log; SIGHUP re-reads
the file, and a bad one on reload keeps the old cookies. On ours and on httpx's HTTP/2 (h2).

Two loopback names serve as two hosts: `localhost` and `127.0.0.1`. The standard library's
cookie policy gives a dotless name the effective name `localhost.local` (RFC 2965), so that is
the domain the localhost cookies carry here; a real CDN host has dots and needs nothing special.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

from support.daemon import Daemon
from support.extracts import make_record, new_id
from support.origin import OriginServer

BOTH_HTTP2_CLIENTS = True
SIZE = 20_000
FUTURE = int(time.time()) + 86400
PAST = int(time.time()) - 86400
HOSTS = ["localhost", "127.0.0.1"]
# Cookie values: none may ever appear in a log line (stdout, stderr or the event file).
LOCAL_V1 = "LocalSecretV1x9"
LOCAL_V2 = "LocalSecretV2q7"
IP_VALUE = "IpSecretK3v8"
OLD_VALUE = "ExpiredSecretZ4"
SERVER_SET = "ServerSetSecretM2"


def _cookies_txt(path: Path, local_value: str) -> Path:
    lines = [
        "# Netscape HTTP Cookie File",
        f"localhost.local\tFALSE\t/\tFALSE\t0\tlocal_session\t{local_value}",  # 0: a session
        f"127.0.0.1\tFALSE\t/\tTRUE\t{FUTURE}\tip_secure\t{IP_VALUE}",
        f"127.0.0.1\tFALSE\t/\tFALSE\t{PAST}\tip_old\t{OLD_VALUE}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cookie(origin: OriginServer, name: str) -> list[str | None]:
    """The Cookie header of each request the origin received for `name`."""
    return [r.headers.get("cookie") for r in origin.requests_for(name)]


def _assert_no_leak(daemon: Daemon, *values: str) -> None:
    log_file = daemon.log_file.read_text(encoding="utf-8")
    for value in values:
        assert value not in log_file, f"{value} in the event file"
        assert not daemon.log_lines_containing(value), f"{value} in the daemon's output"


def test_each_host_and_hop_gets_its_own_cookies_and_values_stay_out_of_logs(
    daemon_factory: Any, origin: OriginServer, prefix: str, tmp_path: Path
) -> None:
    rng = random.Random(prefix)
    cookies = _cookies_txt(tmp_path / "cookies.txt", LOCAL_V1)
    daemon: Daemon = daemon_factory(allowed_hosts=HOSTS, cookies_file=str(cookies))
    local_id, ip_id, hop_id = (new_id(rng) for _ in range(3))
    names = {i: f"{prefix}-{n}" for i, n in zip((local_id, ip_id, hop_id), "lih", strict=True)}
    records = [
        make_record(local_id, origin.url(names[local_id], size=SIZE), "c", SIZE),
        make_record(ip_id, origin.url(names[ip_id], size=SIZE, host="127.0.0.1"), "c", SIZE),
        make_record(hop_id, origin.url(names[hop_id], "redirect", SIZE), "c", SIZE),
    ]
    daemon.start()
    daemon.drop_atomic("extract_20261210T090000.json", records)
    daemon.wait_for_count("download_completed", 3)

    local = f"local_session={LOCAL_V1}"
    ip = f"ip_secure={IP_VALUE}"
    assert _cookie(origin, names[local_id]) == [local]
    assert _cookie(origin, names[ip_id]) == [ip]  # Secure over https; the expired one never
    assert _cookie(origin, names[hop_id]) == [local]  # localhost, redirected ...
    assert _cookie(origin, names[hop_id] + "-target") == [ip]  # ... to 127.0.0.1
    daemon.terminate()
    _assert_no_leak(daemon, LOCAL_V1, IP_VALUE, OLD_VALUE)


def test_a_set_cookie_from_the_cdn_is_never_sent_back(
    daemon_factory: Any, origin: OriginServer, prefix: str, tmp_path: Path
) -> None:
    # Only cookies_file's cookies are sent (here: none for localhost), on either HTTP/2 client.
    cookies = _cookies_txt(tmp_path / "cookies.txt", LOCAL_V1)
    cookies.write_text(cookies.read_text().replace("localhost.local", "other.example"))
    daemon: Daemon = daemon_factory(allowed_hosts=HOSTS, cookies_file=str(cookies))
    name = f"{prefix}-back"
    target = origin.url(f"{name}-target", size=SIZE)  # the same host
    url = origin.url(name, "redirect", SIZE, to=target, set_cookie=SERVER_SET)
    daemon.start()
    record = make_record(new_id(random.Random(prefix)), url, "c", SIZE)
    daemon.drop_atomic("extract_20261210T093000.json", [record])
    daemon.wait_for("download_completed")
    (hop,) = origin.requests_for(name)
    assert hop.status == 302 and SERVER_SET in hop.response_headers["set-cookie"], hop
    assert _cookie(origin, name) == [None]
    assert _cookie(origin, f"{name}-target") == [None]
    daemon.terminate()
    _assert_no_leak(daemon, SERVER_SET)


def test_sighup_rereads_the_file_and_a_bad_one_keeps_the_old_cookies(
    daemon_factory: Any, origin: OriginServer, prefix: str, tmp_path: Path
) -> None:
    rng = random.Random(prefix)
    cookies = _cookies_txt(tmp_path / "cookies.txt", LOCAL_V1)
    daemon: Daemon = daemon_factory(allowed_hosts=HOSTS, cookies_file=str(cookies))
    daemon.start()

    def fetch(stamp: str) -> str:
        aweme_id = new_id(rng)
        name = f"{prefix}-{stamp}"
        since = daemon.event_count()
        record = make_record(aweme_id, origin.url(name, size=SIZE), "c", SIZE)
        daemon.drop_atomic(f"extract_20261210T{stamp}.json", [record])
        daemon.wait_for("download_completed", lambda e: e["aweme_id"] == aweme_id, since=since)
        (cookie,) = _cookie(origin, name)
        assert cookie is not None
        return cookie

    def reload(outcome: str) -> dict[str, Any]:
        since = daemon.event_count()
        daemon.send_signal(signal.SIGHUP)
        return daemon.wait_for(outcome, since=since)

    assert fetch("100000") == f"local_session={LOCAL_V1}"
    _cookies_txt(cookies, LOCAL_V2)  # the same path, new content
    reloaded = reload("config_reloaded")
    assert reloaded["changed"] == ["cookies_file"], reloaded
    assert fetch("110000") == f"local_session={LOCAL_V2}"

    cookies.write_text(f"not a cookies file\nlocalhost.local\t{LOCAL_V1}\n")
    bad = reload("config_reload_failed")
    assert bad["reason"] == "invalid" and bad["keys"] == ["cookies_file"], bad
    assert str(cookies) in bad["error"], bad
    assert fetch("120000") == f"local_session={LOCAL_V2}"  # the old cookies stay
    cookies.unlink()
    missing = reload("config_reload_failed")
    assert missing["keys"] == ["cookies_file"] and str(cookies) in missing["error"], missing
    assert fetch("130000") == f"local_session={LOCAL_V2}"
    daemon.terminate()
    _assert_no_leak(daemon, LOCAL_V1, LOCAL_V2, IP_VALUE, OLD_VALUE)


def test_a_missing_or_bad_cookies_file_at_startup_is_a_configuration_error(
    daemon_factory: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "absent" / "cookies.txt"
    daemon: Daemon = daemon_factory(cookies_file=str(missing))
    result = daemon.cli("run", timeout=30)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "cookies_file" in result.stderr and str(missing) in result.stderr, result.stderr
    assert "daemon_started" not in result.stdout

    bad = tmp_path / "bad.txt"
    bad.write_text(f"# Netscape HTTP Cookie File\nlocalhost\tTRUE\t/\tFALSE\t0\tn\t{LOCAL_V1}\n")
    daemon.update_config(cookies_file=str(bad))
    result = daemon.cli("run", timeout=30)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "cookies_file" in result.stderr and str(bad) in result.stderr, result.stderr
    assert LOCAL_V1 not in result.stderr + result.stdout
