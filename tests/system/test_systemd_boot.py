"""README's "Run as a service", verbatim, against a real systemd: Debian 12 under systemd-nspawn.

The fenced blocks of README.md's "Run as a service" section (the system install, the upgrade, the
per-user install) and the journalctl lines of "Following the logs" are parsed from README.md and
run as written inside a booted container. Only the explicit placeholders are substituted
(``<this repository>``: a git snapshot of this checkout's working tree; ``<user>``: a test user).
The container has no network (``--private-network``), so the test sets, around the blocks, what
replaces it: ``PIP_NO_INDEX``/``PIP_FIND_LINKS`` point pip (and pipx's pip) at a wheelhouse
downloaded on the host, and the rootfs is bootstrapped with the packages the README's own
``apt-get install`` lines name (plus dbus and libpam-systemd), so a package missing from those
lines is missing in the container too. ``apt-get update`` finds no sources and changes nothing.

Then the service is checked through systemd itself: readiness, JSON events in the journal, an
extract merged, a reload, the watchdog, IPAddressDeny=, the security exposure, the user unit under
linger, both units at boot, and a clean stop. The tests share one container and run in file order.

Needs root, systemd-nspawn (systemd-container), mmdebstrap and overlayfs; skipped otherwise,
except in CI (``CI`` set), where it fails instead. The rootfs (about 370 MB) and the wheelhouse
are cached under ``$INGESTD_TEST_CACHE`` or ``~/.cache/ingestd-tests``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from support.nspawn import (
    Machine,
    MachineError,
    Unavailable,
    build_rootfs,
    build_wheelhouse,
    event_of,
    message,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
IN_CI = bool(os.environ.get("CI"))
UNIT = "ingestd"
USER = "alice"
STAGE = "/var/cache/ingestd-test"  # test material inside the container
REPO = f"{STAGE}/repo"
WHEELS = f"{STAGE}/wheels"
PIP_OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS}
MAX_EXPOSURE = 1.5
# Link-local, on the container's own loopback (its network namespace is private): without the
# unit's IPAddressDeny= a datagram to it is sent; with it, the cgroup's BPF filter says EPERM.
LINK_LOCAL = "169.254.1.1"
ORIGIN_PORT = 8443

# The first test's setup bootstraps the rootfs when the cache is cold.
pytestmark = pytest.mark.timeout(420)


# --- README -------------------------------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """From ``heading`` (a whole line) to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = lines.index(heading)
    end = len(lines)
    fenced = False
    for i in range(start + 1, len(lines)):
        fenced ^= lines[i].startswith("```")
        match = re.match(r"(#+) ", lines[i])
        if match and not fenced and len(match.group(1)) <= level:
            end = i
            break
    return "\n".join(lines[start:end])


def fenced_blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, "unclosed code fence"
    return blocks


@dataclass(frozen=True)
class Readme:
    system: list[str]
    upgrade: list[str]
    user_root: list[str]
    user: list[str]
    follow_logs: list[str]

    @property
    def packages(self) -> list[str]:
        """Every package an ``apt-get install`` line of the blocks names."""
        found: list[str] = []
        for line in [*self.system, *self.user_root]:
            for match in re.finditer(r"apt-get install((?:\s+[^\s&|;#]+)+)", line):
                found += [w for w in match.group(1).split() if not w.startswith("-")]
        return found

    def line(self, block: list[str], pattern: str) -> str:
        matches = [line for line in block if re.search(pattern, line)]
        assert len(matches) == 1, (pattern, block)
        return matches[0]


def parse_readme(text: str) -> Readme:
    blocks = fenced_blocks(section(text, "## Run as a service"))

    def one(what: str, pattern: str) -> list[str]:
        found = [b for b in blocks if any(re.search(pattern, line) for line in b)]
        assert len(found) == 1, f"README, Run as a service: {len(found)} blocks for the {what}"
        return found[0]

    follow = fenced_blocks(section(text, "### Following the logs"))
    return Readme(
        system=one("system install", r"systemctl enable --now ingestd"),
        upgrade=one("upgrade", r"git pull"),
        user_root=one("per-user root steps", r"loginctl enable-linger"),
        user=one("per-user steps", r"systemctl --user .*enable --now"),
        follow_logs=[line for b in follow for line in b if line.startswith("journalctl ")],
    )


def script(lines: list[str], substitutions: dict[str, str]) -> str:
    """The block as a bash script: each line as written, stopping at the first that fails.

    ``set -e`` is not enough (a failing ``git clone ... && cd ...`` would not stop it), so every
    line is followed by a check of its own exit status; ``pipefail`` makes a pipe fail when any
    part of it does. Each line is echoed first, and stderr goes with stdout, so the transcript
    reads like a terminal."""
    out = ["set -o pipefail", "exec 2>&1"]
    for number, raw in enumerate(lines, 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        assert not raw.rstrip().endswith("\\"), f"continued line in a README block: {raw!r}"
        line = raw
        for placeholder, value in substitutions.items():
            line = line.replace(placeholder, value)
        assert not re.search(r"<[a-z][a-z ]*>", line), f"unsubstituted placeholder: {line!r}"
        out.append(f"printf '%s\\n' {shlex.quote('$ ' + line)}")
        out.append(line)
        out.append(
            f"rc=$?; [ $rc -eq 0 ] || {{ printf 'README line %s exited %s: %s\\n' {number} $rc "
            f"{shlex.quote(line)}; exit 90; }}"
        )
    return "\n".join(out) + "\n"


def run_block(
    machine: Machine,
    lines: list[str],
    substitutions: dict[str, str],
    user: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> str:
    result = machine.run(
        ["bash", "-c", script(lines, substitutions)],
        user=user,
        env=env,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise MachineError(f"README block failed ({result.returncode}):\n{result.stdout}")
    return result.stdout


def output_of(transcript: str, command: str) -> list[str]:
    """The lines a command of the transcript printed (up to the next echoed command)."""
    lines = transcript.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ") and command in line]
    assert len(starts) == 1, (command, transcript)
    out: list[str] = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("$ "):
            break
        out.append(line)
    return out


# --- helpers ------------------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must run the systemd boot test: {reason}", pytrace=False)
    pytest.skip(reason)


def preflight() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, an overlay mount)"
    missing = [t for t in ("systemd-nspawn", "mmdebstrap", "nsenter") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install systemd-container mmdebstrap)"
    return None


def requirements() -> list[str]:
    """What pip needs offline: the project's dependencies and build requirements, and the
    pip, setuptools and wheel that pipx installs into its shared libraries."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [
        *project["project"]["dependencies"],
        *project["build-system"]["requires"],
        "pip",
        "setuptools",
        "wheel",
    ]


def source_files() -> list[Path]:
    """This checkout's files as git would commit them (tracked and untracked, not ignored)."""
    command = ["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"]
    try:
        out = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
        return [Path(p.decode()) for p in out.split(b"\0") if p and (ROOT / p.decode()).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
        skip |= {"build", "data", "state"}
        files = []
        for path in ROOT.rglob("*"):
            rel = path.relative_to(ROOT)
            if path.is_file() and not any(p in skip or p.endswith(".egg-info") for p in rel.parts):
                files.append(rel)
        return files


def stage(machine: Machine, wheels: Path) -> None:
    """Put the wheelhouse and a git snapshot of the working tree into the container."""
    shutil.copytree(wheels, machine.root / WHEELS.lstrip("/"))
    repo = machine.root / REPO.lstrip("/")
    for rel in source_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    machine.sh(
        f"cd {REPO} && git init -q -b main && git add -A && "
        "git -c user.name=ingestd-test -c user.email=test@localhost commit -q -m snapshot"
    )


def timestamp(value: str) -> dt.datetime:
    """An event's ``timestamp`` (2026-12-02T04:36:47.188301Z) or systemd's (us+utc)."""
    if value.endswith("Z"):
        return dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=dt.UTC)
    match = re.fullmatch(r"\w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) UTC", value)
    assert match, value
    return dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.UTC)


def events(machine: Machine, after: str = "", unit: str = UNIT) -> list[dict[str, Any]]:
    """The daemon's own events in the unit's journal."""
    found = []
    for entry in machine.journal("-u", unit, after=after):
        event = event_of(entry)
        if event is not None:
            found.append(event)
    return found


def wait_event(
    machine: Machine, after: str, name: str, timeout: float = 30, **fields: Any
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        for event in events(machine, after):
            if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                return event
        return None

    found: dict[str, Any] = wait_for(
        f"{name} {fields}", probe, timeout, detail=lambda: journal_text(machine, after)
    )
    return found


def journal_text(machine: Machine, after: str = "") -> str:
    return "\n".join(message(e) for e in machine.journal("-u", UNIT, after=after))[-6000:]


def drop_extract(machine: Machine, name: str, records: str) -> str:
    """Write-then-rename into raw/, as the README asks producers to; returns the final path."""
    final = f"/srv/ingestd/raw/{name}"
    machine.run(
        [
            "sh",
            "-ec",
            'tmp="/srv/ingestd/raw/.$1.tmp"; printf "%s\\n" "$2" > "$tmp"; mv "$tmp" "$3"',
            "sh",
            name,
            records,
            final,
        ]
    )
    return final


def expired_record(aweme_id: str) -> str:
    url = f"https://v77.tiktokcdn-us.com/{aweme_id}.mp4?expire=1700000000"
    return f'[{{"aweme_id": "{aweme_id}", "media": {{"source_url": "{url}"}}}}]'


def ensure_active(machine: Machine) -> None:
    machine.run(["systemctl", "start", UNIT], timeout=120)


def is_active(machine: Machine, unit: str, user: str | None = None) -> bool:
    argv = ["systemctl", "is-active", unit]
    env = None
    if user is not None:
        argv.insert(1, "--user")
        env = {"XDG_RUNTIME_DIR": f"/run/user/{machine.uid(user)}"}
    return machine.run(argv, user=user, env=env, check=False).stdout.strip() == "active"


PROBE = (
    "import socket\n"
    f"for a in ('{LINK_LOCAL}', '127.0.0.1'):\n"
    "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "    try:\n"
    "        s.sendto(b'x', (a, 9))\n"
    "        print('ipdeny-probe', a, 'sent')\n"
    "    except OSError as e:\n"
    "        print('ipdeny-probe', a, 'errno', e.errno)\n"
)
# The test's own drop-in: a quick watchdog, no core dumps, and the probe in the unit's cgroup
# (ExecStartPre= runs there, under the unit's sandbox and IP filter, before ExecStart=).
PROBE_ESCAPED = PROBE.replace("\n", "\\n")  # systemd turns \n back into newlines
DROPIN = f"""[Service]
WatchdogSec=4s
LimitCORE=0
ExecStartPre=/usr/bin/python3 -c "{PROBE_ESCAPED}"
"""

# A loopback HTTPS origin inside the container (HTTP/1.1; the daemon falls back from h2): every
# GET gets the same MP4-shaped body. Arguments: certificate chain and key, port, body file.
ORIGIN = """
import http.server, socket, socketserver, ssl, sys
BODY = open(sys.argv[3], "rb").read()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, fmt, *args):
        print(fmt % args, flush=True)
class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1])
context.set_alpn_protocols(["http/1.1"])
server = Server(("::", int(sys.argv[2])), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()
"""
ORIGIN_BODY = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(range(256)) * 256


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme() -> Readme:
    return parse_readme(README.read_text())


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, readme: Readme) -> Iterator[Machine]:
    reason = preflight()
    if reason:
        unavailable(reason)
    workdir = tmp_path_factory.mktemp("nspawn")
    log = workdir / "build.log"
    try:
        rootfs = build_rootfs(readme.packages, log)
        wheels = build_wheelhouse(requirements(), log)
    except Unavailable as exc:
        unavailable(str(exc))
    box = Machine(rootfs, workdir)
    try:
        try:
            box.mount()
            box.boot()
        except Unavailable as exc:
            unavailable(str(exc))
        stage(box, wheels)
        yield box
    finally:
        box.close()


@pytest.fixture(scope="module")
def service(machine: Machine, readme: Readme) -> str:
    """The README's system block has run, as written; its transcript."""
    return run_block(machine, readme.system, {"<this repository>": REPO}, env=PIP_OFFLINE)


@pytest.fixture(scope="module")
def origin(machine: Machine, service: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A loopback HTTPS origin the daemon trusts and may fetch from; its base URL."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    machine.write("/etc/ingestd/test-origin-ca.pem", ca.cert_pem.bytes())
    machine.write(f"{STAGE}/origin/server.pem", cert.private_key_and_cert_chain_pem.bytes(), 0o600)
    machine.write(f"{STAGE}/origin/serve.py", ORIGIN)
    machine.write(f"{STAGE}/origin/body.mp4", ORIGIN_BODY)
    log = tmp_path_factory.mktemp("origin") / "origin.log"
    origin = f"{STAGE}/origin"
    argv = ["python3", f"{origin}/serve.py", f"{origin}/server.pem", str(ORIGIN_PORT)]
    machine.spawn([*argv, f"{origin}/body.mp4"], log)
    wait_for("the origin", lambda: "listening" in log.read_text(), 30, detail=log.read_text)
    config = machine.root / "etc/ingestd/config.toml"
    config.write_text(
        config.read_text()
        + 'allowed_hosts = ["localhost"]\nca_bundle = "/etc/ingestd/test-origin-ca.pem"\n'
    )
    machine.run(["systemctl", "restart", UNIT], timeout=120)  # ca_bundle needs a restart
    return f"https://localhost:{ORIGIN_PORT}"


@pytest.fixture(scope="module")
def dropin(machine: Machine, service: str) -> str:
    """The test's drop-in is in force (restarted); the journal cursor before that restart."""
    machine.run(["ip", "address", "add", f"{LINK_LOCAL}/32", "dev", "lo"])
    machine.write("/etc/systemd/system/ingestd.service.d/50-test.conf", DROPIN)
    machine.run(["systemctl", "daemon-reload"])
    cursor = machine.cursor()
    machine.run(["systemctl", "restart", UNIT], timeout=120)
    return cursor


@pytest.fixture(scope="module")
def user_service(machine: Machine, readme: Readme, service: str) -> str:
    """The README's per-user blocks have run: root's, then the user's; the user's transcript."""
    machine.run(["useradd", "--create-home", "--shell", "/bin/bash", USER])
    run_block(machine, readme.user_root, {"<user>": USER}, env=PIP_OFFLINE)
    uid = machine.uid(USER)
    # What the README's "login session" provides: the user's manager up, XDG_RUNTIME_DIR set.
    wait_for(f"user@{uid}.service", lambda: is_active(machine, f"user@{uid}.service"), 60)
    # The user clones a repository they own (git refuses one owned by someone else).
    machine.sh(f"cp -a {REPO} {REPO}-{USER} && chown -R {USER}: {REPO}-{USER}")
    return run_block(
        machine,
        readme.user,
        {"<this repository>": f"{REPO}-{USER}"},
        user=USER,
        env={"XDG_RUNTIME_DIR": f"/run/user/{uid}", **PIP_OFFLINE},
    )


# --- the system service -------------------------------------------------------------------------


def test_service_block_runs_verbatim(machine: Machine, readme: Readme, service: str) -> None:
    assert machine.run(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"
    assert is_active(machine, UNIT)
    # The block's own journal filter printed JSON events, systemd's lines skipped.
    printed = output_of(service, "journalctl -u ingestd")
    shown = [event_of({"MESSAGE": line}) for line in printed]
    assert shown and all(shown), printed
    assert any(e and e["event"] == "extract_merged" for e in shown), printed
    assert "/var/lib/ingestd/manifest.sqlite3" in "\n".join(output_of(service, "ingestd status"))
    # Documentation= names files that exist once the block has run.
    docs = machine.show(UNIT, "Documentation")["Documentation"].split()
    assert docs
    for url in docs:
        assert url.startswith("file:"), url
        machine.run(["test", "-s", url.removeprefix("file:")])


def test_journal_carries_json_events(machine: Machine, service: str) -> None:
    entries = machine.journal("-u", UNIT)
    own = [e for e in entries if e.get("_TRANSPORT") == "stdout" and e.get("_COMM") == "ingestd"]
    assert own, journal_text(machine)
    for entry in own:
        event = event_of(entry)
        assert event is not None, message(entry)
        assert {"event", "level", "timestamp"} <= event.keys(), event
    names = [e["event"] for e in map(event_of, own) if e]
    assert names[:2] == ["daemon_started", "daemon_ready"], names
    # ...next to systemd's own lines, which are not JSON: why the README's filters use fromjson?.
    cat = machine.run(["journalctl", "-u", UNIT, "-o", "cat"]).stdout.splitlines()
    assert any(line.startswith("Starting ingestd.service") for line in cat), cat


def test_dropped_extract_is_merged(machine: Machine, readme: Readme, service: str) -> None:
    rename = readme.line(readme.system, r"^mv \S+ /srv/ingestd/raw/extract_")
    path = rename.split()[2]
    demo = re.search(r'"aweme_id": "([^"]+)"', readme.line(readme.system, r"aweme_id"))
    assert demo
    merged = wait_event(machine, "", "extract_merged", path=path)
    assert (merged["records"], merged["new"], merged["unusable"]) == (1, 1, 0), merged
    dead = wait_event(machine, "", "extract_expired_items", path=path)  # dead at the merge
    assert dead["count"] == 1 and dead["aweme_ids"] == [demo.group(1)], dead
    # The temporary name was never read.
    assert not [e for e in events(machine) if ".tmp" in str(e.get("path", ""))]


def test_unit_is_active_only_after_ready(machine: Machine, service: str) -> None:
    """systemd marks the unit active when READY=1 arrives, after the startup scan: an extract
    waiting in raw/ is merged while the unit is still activating."""
    machine.run(["systemctl", "stop", UNIT], timeout=60)
    path = drop_extract(machine, "extract_startup.json", expired_record("7000000000000000001"))
    cursor = machine.cursor()
    machine.run(["systemctl", "start", UNIT], timeout=120)  # returns once active
    props = machine.show(
        UNIT, "ActiveState", "SubState", "InactiveExitTimestamp", "ActiveEnterTimestamp"
    )
    props |= machine.show(UNIT, "Type", "NotifyAccess", "StatusText", "NRestarts")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert (props["Type"], props["NotifyAccess"]) == ("notify", "main"), props
    started = wait_event(machine, cursor, "daemon_started")
    merged = wait_event(machine, cursor, "extract_merged", path=path)
    ready = wait_event(machine, cursor, "daemon_ready")
    activating = timestamp(props["InactiveExitTimestamp"])
    active = timestamp(props["ActiveEnterTimestamp"])
    assert activating < timestamp(started["timestamp"]) < timestamp(merged["timestamp"]) < active
    # daemon_ready is logged just after READY=1 is sent.
    assert abs((timestamp(ready["timestamp"]) - active).total_seconds()) < 2, (ready, props)
    assert props["StatusText"].startswith("done "), props  # STATUS= from the daemon
    assert props["NRestarts"] == "0", props
    assert sum(ready["items"].values()) >= 2, ready  # the README's demo item and this one


def test_reload_applies_a_config_change(machine: Machine, service: str) -> None:
    ensure_active(machine)
    before = machine.show(UNIT, "MainPID", "NRestarts")
    machine.run(["sed", "-i", "s/^concurrency = .*/concurrency = 3/", "/etc/ingestd/config.toml"])
    cursor = machine.cursor()
    machine.run(["systemctl", "reload", UNIT])
    reloaded = wait_event(machine, cursor, "config_reloaded")
    assert "concurrency" in reloaded["changed"], reloaded
    assert machine.show(UNIT, "MainPID", "NRestarts") == before
    assert not [e for e in events(machine, cursor) if e["event"] == "config_reload_failed"]


def test_security_exposure_is_low(machine: Machine, service: str) -> None:
    out = machine.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
    match = re.search(r"Overall exposure level for ingestd\.service: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= MAX_EXPOSURE, out


def test_log_filters_follow_and_tabulate(
    machine: Machine, readme: Readme, origin: str, tmp_path: Path
) -> None:
    """Both journalctl lines of "Following the logs", as written, across systemd's own lines."""
    follow = [line for line in readme.follow_logs if " -f " in line]
    table = [line for line in readme.follow_logs if " -f " not in line]
    assert len(follow) == 1 and len(table) == 1, readme.follow_logs
    ensure_active(machine)
    output = tmp_path / "follow.out"
    # stdbuf: jq writes each line as it comes (it buffers when writing to a pipe).
    follower = machine.spawn(
        ["timeout", "120", "stdbuf", "-oL", "bash", "-o", "pipefail", "-c", follow[0]], output
    )
    try:
        wait_for(
            "journalctl -f",
            lambda: machine.run(["pgrep", "-f", "journalctl -u ingestd"], check=False).stdout,
            30,
        )
        time.sleep(0.5)  # past its first lines, following
        machine.run(["systemctl", "reload", UNIT])  # "Reloading ingestd.service..." (not JSON)
        drop_extract(machine, "extract_follow.json", expired_record("7000000000000000002"))
        # A real download from the loopback origin, for the table.
        aweme_id = "7000000000000000003"
        url = f"{origin}/video/{aweme_id}.mp4?expire={int(time.time()) + 3600}"
        record = f'[{{"aweme_id": "{aweme_id}", "query_context": "cooking tips", '
        record += f'"media": {{"source_url": "{url}"}}}}]'
        cursor = machine.cursor()
        drop_extract(machine, "extract_download.json", record)
        done = wait_event(machine, cursor, "download_completed", timeout=60, aweme_id=aweme_id)
        wait_for(
            "the follow filter's output",
            lambda: "7000000000000000002" in output.read_text(),
            30,
            detail=output.read_text,
        )
    finally:
        machine.stop_spawned(follower)
    shown = output.read_text().splitlines()
    wanted = ("download_failed", "download_expired", "extract_expired_items")
    assert all((e := event_of({"MESSAGE": line})) and e["event"] in wanted for line in shown)
    assert done["bytes"] == len(ORIGIN_BODY), done
    published = f"/srv/ingestd/media_assets/cooking_tips/{aweme_id}.mp4"
    digest = machine.run(["sha256sum", published]).stdout.split()[0]
    assert digest == hashlib.sha256(ORIGIN_BODY).hexdigest()
    rows = machine.run(["bash", "-o", "pipefail", "-c", table[0]]).stdout.splitlines()
    assert any(row.split("\t")[:2] == [aweme_id, str(len(ORIGIN_BODY))] for row in rows), rows


def test_ip_address_deny_is_in_force(machine: Machine, dropin: str) -> None:
    deny = machine.show(UNIT, "IPAddressDeny")["IPAddressDeny"].split()
    assert "169.254.0.0/16" in deny, deny
    probes = [message(e) for e in machine.journal("-u", UNIT, after=dropin)]
    probes = [line for line in probes if line.startswith("ipdeny-probe")]
    # Inside the unit's cgroup: link-local refused by the BPF filter (EPERM), loopback sent.
    assert f"ipdeny-probe {LINK_LOCAL} errno 1" in probes, probes
    assert "ipdeny-probe 127.0.0.1 sent" in probes, probes
    # The same probe outside the unit, in the same network namespace: both sent.
    outside = machine.run(["python3", "-c", PROBE]).stdout.splitlines()
    assert outside == [f"ipdeny-probe {LINK_LOCAL} sent", "ipdeny-probe 127.0.0.1 sent"], outside


def test_watchdog_restarts_a_stopped_daemon(machine: Machine, dropin: str) -> None:
    ensure_active(machine)
    before = machine.show(UNIT, "MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "4s", before
    cursor = machine.cursor()
    machine.run(["kill", "-STOP", before["MainPID"]])

    def restarted() -> dict[str, str] | None:
        now = machine.show(UNIT, "MainPID", "NRestarts", "ActiveState", "SubState")
        if (now["ActiveState"], now["SubState"]) != ("active", "running"):
            return None
        return now if int(now["NRestarts"]) == int(before["NRestarts"]) + 1 else None

    after: dict[str, str] = wait_for("a watchdog restart", restarted, 60)
    assert after["MainPID"] != before["MainPID"], after
    lines = [message(e) for e in machine.journal("-u", UNIT, after=cursor)]
    assert any("Watchdog timeout" in line for line in lines), lines
    wait_event(machine, cursor, "daemon_ready")


def test_upgrade_block_runs_verbatim(machine: Machine, readme: Readme, service: str) -> None:
    ensure_active(machine)
    cursor = machine.cursor()
    run_block(machine, readme.upgrade, {"<this repository>": REPO}, env=PIP_OFFLINE)
    assert is_active(machine, UNIT)
    ready = wait_event(machine, cursor, "daemon_ready")
    assert ready["items"]["expired"] >= 1, ready  # the same manifest, kept


# --- the user unit, boot, stop ------------------------------------------------------------------


def test_user_unit_runs_via_pipx_and_linger(machine: Machine, user_service: str) -> None:
    env = {"XDG_RUNTIME_DIR": f"/run/user/{machine.uid(USER)}"}
    assert is_active(machine, UNIT, user=USER)
    props = machine.show(UNIT, "ExecMainPID", "ExecStart", "NRestarts", user=USER)
    assert f"/home/{USER}/.local/bin/ingestd" in props["ExecStart"], props
    target = machine.run(["readlink", "-f", f"/home/{USER}/.local/bin/ingestd"]).stdout
    assert target.startswith(f"/home/{USER}/.local/pipx/venvs/ingestd/"), target
    assert machine.run(["loginctl", "show-user", USER, "-p", "Linger"]).stdout.strip() == (
        "Linger=yes"
    )
    # No login session: the user's manager runs because of linger alone.
    sessions = machine.run(["loginctl", "list-sessions", "--no-legend"]).stdout
    assert USER not in sessions, sessions
    journal = machine.run(
        ["journalctl", "--user", "-u", UNIT, "-o", "cat"], user=USER, env=env
    ).stdout
    names = [e["event"] for line in journal.splitlines() if (e := event_of({"MESSAGE": line}))]
    assert "daemon_ready" in names, journal


def test_both_units_start_at_boot(machine: Machine, user_service: str) -> None:
    machine.reboot()
    wait_for("ingestd.service after boot", lambda: is_active(machine, UNIT), 60)
    wait_for("the user's ingestd.service", lambda: is_active(machine, UNIT, user=USER), 60)


def test_stop_is_clean(machine: Machine, service: str) -> None:
    ensure_active(machine)
    cursor = machine.cursor()
    machine.run(["systemctl", "stop", UNIT], timeout=60)
    props = machine.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert props == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainCode": "1",  # CLD_EXITED: it exited, no signal killed it
        "ExecMainStatus": "0",
    }, props
    stopped = wait_event(machine, cursor, "daemon_stopped")
    assert stopped["exit_code"] == 0, stopped
    lines = [message(e) for e in machine.journal("-u", UNIT, after=cursor)]
    assert not [line for line in lines if "SIGKILL" in line or "timed out" in line], lines
