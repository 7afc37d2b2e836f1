"""ingestd under the seccomp policy of systemd/ingestd.service, enforced by the kernel.

The unit hardens the daemon with SystemCallFilter=@system-service ~@privileged @resources,
SystemCallErrorNumber=EPERM, SystemCallArchitectures=native, MemoryDenyWriteExecute=yes,
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX (and RestrictNamespaces=, LockPersonality=,
RestrictSUIDSGID=, also seccomp). systemd is not PID 1 here, so support/sandbox.py builds the same
filter from the unit file and the local ``systemd-analyze syscall-filter`` lists, and ``exec``s the
real daemon under it. Every call the filter refuses gets systemd's errno and one line in a denial
log, so a refused call shows up even when the daemon copes with the error.

The probe test is the positive control: the filter really is on and refuses what it should.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import sandbox
from support.daemon import Daemon, by_id
from support.extracts import Item, make_record, new_id
from support.origin import OriginServer

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "ingestd.service"
LAUNCHER = Path(sandbox.__file__).resolve()

# Refusals the daemon is known to meet and to cope with as it would under systemd. Any other
# refusal fails the test: look at it (system call, arguments, thread) before adding it here.
EXPECTED_DENIALS: dict[tuple[str, str], str] = {
    ("clone3", ""): "RestrictNamespaces=yes: clone3 gets ENOSYS and glibc falls back to clone()",
}
if os.geteuid() == 0:
    # SQLite's unix VFS (robustFchown in os_unix.c) gives a new -journal/-wal/-shm file the
    # database's owner, but only when euid is 0, and ignores the result. The unit runs as
    # User=ingestd, where SQLite never makes the call; @chown is part of ~@privileged.
    EXPECTED_DENIALS[("fchown", "to 0:0")] = "SQLite as root only; the unit runs User=ingestd"

# The probe's calls: outcome under the filter, and the (syscall, errno) the supervisor must log
# for it (None: an allowed call, nothing logged).
PROBE: dict[str, tuple[str, tuple[str, str] | None]] = {
    "mmap_write_exec": ("EPERM", ("mmap", "EPERM")),  # MemoryDenyWriteExecute=
    "mmap_read_exec": ("ok", None),
    "mmap_read_write": ("ok", None),
    "mprotect_exec": ("EPERM", ("mprotect", "EPERM")),  # MemoryDenyWriteExecute=
    "setuid_same_uid": ("EPERM", ("setuid", "EPERM")),  # ~@privileged
    "setpriority_same": ("EPERM", ("setpriority", "EPERM")),  # ~@resources
    "mount": ("EPERM", ("mount", "EPERM")),  # not in @system-service
    "unknown_syscall": ("ENOSYS", ("#1023", "ENOSYS")),  # not in @known
    "socket_netlink": ("EAFNOSUPPORT", ("socket", "EAFNOSUPPORT")),  # RestrictAddressFamilies=
    "socket_inet6": ("ok", None),
    "socket_unix": ("ok", None),
    "thread": ("ok", ("clone3", "ENOSYS")),  # RestrictNamespaces=, then glibc's clone() fallback
    "unshare_uts": ("EPERM", ("unshare", "EPERM")),  # RestrictNamespaces=
    "personality_query": ("EPERM", ("personality", "EPERM")),  # LockPersonality=
    "chmod_setuid": ("EPERM", ("chmod", "EPERM")),  # RestrictSUIDSGID=
    "chmod_plain": ("ok", None),
    "Seccomp": ("2", None),  # /proc/self/status: a seccomp filter is installed
    "NoNewPrivs": ("1", None),
}
if os.uname().machine == "x86_64":
    PROBE["other_abi_child"] = ("SIGSYS", None)  # SystemCallArchitectures=native: x32 is killed

TOPIC_A = "sandbox startup"
TOPIC_B = "sandbox watched"
WATCHDOG_USEC = 1_000_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the seccomp sandbox is required in CI: {reason}")
    pytest.skip(f"seccomp sandbox unavailable: {reason}")


@pytest.fixture(scope="session")
def policy(tmp_path_factory: pytest.TempPathFactory) -> sandbox.Policy:
    """The unit's policy, once the launcher has run a no-op under it.

    Skips (fails in CI) where libseccomp, systemd-analyze or seccomp user notification is
    missing; fails wherever the unit uses a setting the sandbox does not emulate."""
    try:
        sandbox.LibSeccomp()
        policy = sandbox.policy_from_unit(UNIT)
    except sandbox.SandboxUnavailable as exc:
        _unavailable(str(exc))
        raise  # not reached
    except sandbox.Unsupported as exc:
        pytest.fail(f"{UNIT.name} uses a setting support/sandbox.py does not emulate: {exc}")
    denials = tmp_path_factory.mktemp("sandbox") / "smoke-denials.jsonl"
    smoke = subprocess.run(
        [*_launcher(denials), sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if smoke.returncode == sandbox.SETUP_FAILED:
        _unavailable(smoke.stderr.strip())
    assert smoke.returncode == 0, f"python -c pass under the sandbox: {smoke.stderr}"
    return policy


def _launcher(denials: Path) -> list[str]:
    return [
        sys.executable,
        str(LAUNCHER),
        "run",
        "--unit",
        str(UNIT),
        "--denials",
        str(denials),
        "--",
    ]


def _unexpected(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if (r.get("syscall"), r.get("detail")) not in EXPECTED_DENIALS]


class SandboxedDaemon(Daemon):
    """A ``Daemon`` whose ``run`` process is exec'd by the sandbox launcher."""

    def __init__(self, root: Path, **config: Any) -> None:
        super().__init__(root, **config)
        self.denials = self.root / "denials.jsonl"
        self.launcher = _launcher(self.denials)

    def denial_records(self) -> list[dict[str, Any]]:
        return sandbox.read_denials(self.denials)

    def tail(self, lines: int = 40) -> str:
        records = self.denial_records()
        return (
            super().tail(lines)
            + f"\n--- seccomp denials ({len(records)}) ---\n"
            + sandbox.format_denials(records)
        )


class NotifySocket:
    """A stand-in for systemd's NOTIFY_SOCKET: an abstract datagram socket, read when asked."""

    def __init__(self) -> None:
        self.address = f"@ingestd-sandbox-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self._sock.recv(65536).decode(errors="replace"))
            except BlockingIOError:
                return self.messages

    def keys(self) -> set[str]:
        return {line for m in self.drain() for line in m.splitlines()}

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def sandboxed(
    tmp_path: Path, origin: OriginServer, policy: sandbox.Policy, ingestd_available: None
) -> Iterator[SandboxedDaemon]:
    daemon = SandboxedDaemon(
        tmp_path / "ingestd",
        ca_bundle=origin.ca_pem_path,
        max_attempts=4,
        backoff_base=0.2,
        backoff_max=1.0,
        settle_seconds=0.5,
    )
    yield daemon
    daemon.cleanup()


def _seccomp_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"Seccomp", "Seccomp_filters", "NoNewPrivs"}:
            fields[key] = value.strip()
    return fields


def test_probe_is_refused_what_the_unit_refuses(policy: sandbox.Policy, tmp_path: Path) -> None:
    """Positive control: the same launcher and filter refuse each rule's call, and log it."""
    denials = tmp_path / "probe-denials.jsonl"
    result = subprocess.run(
        [*_launcher(denials), sys.executable, str(LAUNCHER), "probe"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"probe exited {result.returncode}: {result.stderr}"
    outcomes = json.loads(result.stdout)
    expected = {check: outcome for check, (outcome, _) in PROBE.items()}
    assert outcomes == expected, f"probe under the filter: {outcomes}"

    records = sandbox.read_denials(denials)
    logged = {(r.get("syscall"), r.get("errno")) for r in records}
    missing = {check: log for check, (_, log) in PROBE.items() if log and log not in logged}
    assert not missing, (
        f"refusals that did not pass through the supervisor: {missing}\n"
        + sandbox.format_denials(records)
    )
    netlink = [r for r in records if r.get("syscall") == "socket"]
    assert [r["detail"] for r in netlink] == ["AF_NETLINK"], netlink
    wx = [r for r in records if r.get("syscall") == "mmap"]
    assert [r["detail"] for r in wx] == ["PROT_R|W|X"], wx
    assert not [r for r in records if "supervisor_error" in r], records


def test_daemon_merges_and_downloads_under_the_units_seccomp_policy(
    sandboxed: SandboxedDaemon, origin: OriginServer, prefix: str
) -> None:
    rng = random.Random(prefix)
    items: list[Item] = []

    def record(topic: str, key: str, mode: str = "ok", **kw: Any) -> dict[str, Any]:
        aweme_id, name = new_id(rng), f"{prefix}-{key}"
        size = 64 * 1024 + rng.randrange(128 * 1024)
        items.append(Item(aweme_id, name, size, topic))
        return make_record(aweme_id, origin.url(name, mode, size, **kw), topic, size)

    startup = [record(TOPIC_A, f"a{i}") for i in range(4)]
    watched = [record(TOPIC_B, f"b{i}") for i in range(3)]
    watched.append(record(TOPIC_B, "retry503", "503", k=1))  # backoff timer, second request
    watched.append(record(TOPIC_B, "cut", "truncated", k=1, how="reset"))  # resume with Range
    shared = dict(startup[0], query_context=TOPIC_B)  # same id, second topic: a hard link
    items.append(Item(shared["aweme_id"], items[0].name, items[0].size, TOPIC_B))
    watched.append(shared)

    notify = NotifySocket()
    try:
        sandboxed.extra_env = {
            "NOTIFY_SOCKET": notify.address,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
        }
        sandboxed.write_raw("extract_20261126T090000.json", startup)
        sandboxed.start()  # startup scan merges the first extract before daemon_ready

        status = _seccomp_status(sandboxed.pid)
        assert status.get("Seccomp") == "2" and status.get("NoNewPrivs") == "1", status
        assert int(status.get("Seccomp_filters", "1")) >= 1, status

        sandboxed.drop_atomic("extract_20261126T150000.json", watched)
        sandboxed.wait_for("extract_merged", lambda e: e["path"].endswith("T150000.json"))
        unique = {item.aweme_id for item in items}
        sandboxed.wait_for_count("download_completed", len(unique), timeout=30)
        sandboxed.wait_until(
            lambda: (
                all(sandboxed.media_path(i.topic, i.aweme_id).is_file() for i in items)
                and not sandboxed.part_files()
            ),
            "every file is published and no .part is left",
            timeout=10,
        )

        for item in items:
            path = sandboxed.media_path(item.topic, item.aweme_id)
            assert path.read_bytes() == item.content(), f"{path} differs from the origin's bytes"
            requests = origin.requests_for(item.name)
            assert requests and {r.http_version for r in requests} == {"2"}, item
        first, linked = (sandboxed.media_path(t, shared["aweme_id"]) for t in (TOPIC_A, TOPIC_B))
        assert first.stat().st_ino == linked.stat().st_ino, "the repeated id was not hard-linked"
        completed = by_id(sandboxed.events("download_completed"))
        assert set(completed) == unique
        retried = by_id(sandboxed.events("download_retry_scheduled"))
        assert set(retried) == {items[7].aweme_id, items[8].aweme_id}, retried

        index = sandboxed.event_count()
        os.kill(sandboxed.pid, signal.SIGHUP)  # ExecReload=
        sandboxed.wait_for("config_reloaded", since=index, timeout=10)

        assert sandboxed.terminate() < 10
        assert sandboxed.events("daemon_stopped"), sandboxed.tail()
        keys = notify.keys()
        for key in ("READY=1", "WATCHDOG=1", "STOPPING=1"):
            assert key in keys, f"{key} never reached NOTIFY_SOCKET: {sorted(keys)}"
    finally:
        notify.close()

    records = sandboxed.denial_records()
    assert not [r for r in records if "supervisor_error" in r], records
    unexpected = _unexpected(records)
    assert not unexpected, (
        "the daemon made system calls that systemd/ingestd.service refuses:\n"
        + sandbox.format_denials(unexpected)
        + "\nall refusals:\n"
        + sandbox.format_denials(records)
    )
