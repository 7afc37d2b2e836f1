"""Boot a Debian 12 root filesystem under systemd-nspawn and drive it from the host.

Used by tests/system: the README's service steps run, verbatim, against a real systemd as PID 1.

- ``build_rootfs`` bootstraps the rootfs with mmdebstrap (``--variant=important``, from the mirror
  the host's apt uses) and caches it under ``cache_dir()``, keyed by suite, mirror and package
  list: a second run reuses it. Its apt sources are removed (the container has no network, so
  ``apt-get update`` finds nothing to fetch and ``apt-get install`` finds the packages installed).
- ``build_wheelhouse`` downloads wheels (``pip download``) for ``pip install .`` and ``pipx``
  inside the container, which has no network either; cached the same way.
- ``Machine`` mounts an overlay over the cached rootfs (a copy if overlayfs is unavailable),
  boots it with ``systemd-nspawn -b --private-network --register=no --keep-unit`` in the
  background (the console goes to a file), and runs commands inside with ``nsenter`` into the
  namespaces of the container's PID 1: ``systemd-run -M`` and ``machinectl`` need a registered
  machine, which needs systemd on the host. ``close()`` powers the container off (SIGKILL after a
  deadline) and unmounts the overlay, whatever happened before.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

SUITE = "bookworm"
VARIANT = "important"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# logind (libpam-systemd) for lingering user managers, and the system bus it needs.
BASE_PACKAGES = ("dbus", "libpam-systemd")
# Bump when prepare_rootfs() changes: the cache key includes it.
ROOTFS_REVISION = 2
HOSTNAME = "ingestd-test"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_PDEATHSIG = 1
STALE_SECONDS = 3600.0  # other cached rootfs versions unused this long are removed


class Unavailable(RuntimeError):
    """systemd-nspawn (or what it needs) cannot run on this machine."""


class MachineError(RuntimeError):
    """The container misbehaved: it did not boot, or a command failed."""


def cache_dir() -> Path:
    """$INGESTD_TEST_CACHE, else $XDG_CACHE_HOME/ingestd-tests, else ~/.cache/ingestd-tests."""
    explicit = os.environ.get("INGESTD_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ingestd-tests"


def apt_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the host's apt uses for the main archive (deb822 or one-line sources)."""
    parts = etc / "sources.list.d"
    files = [*sorted(parts.glob("*.sources")), etc / "sources.list", *sorted(parts.glob("*.list"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {
                    m.group(1).lower(): m.group(2).strip()
                    for m in re.finditer(r"^([A-Za-z-]+):(.*)$", stanza, re.M)
                }
                if (
                    "deb" in fields.get("types", "").split()
                    and SUITE in fields.get("suites", "").split()
                ):
                    return fields["uris"].split()[0].rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1].rstrip("/")
    return DEFAULT_MIRROR


@contextlib.contextmanager
def locked(path: Path, timeout: float = 600.0) -> Iterator[None]:
    """An exclusive flock on ``path``: one build at a time per cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MachineError(f"{path} still locked after {timeout} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _prune(cache: Path, prefix: str, keep: Path) -> None:
    now = time.time()
    for marker in cache.glob(f"{prefix}-*.ok"):
        entry = marker.with_suffix("")
        if entry == keep or now - marker.stat().st_mtime < STALE_SECONDS:
            continue
        marker.unlink(missing_ok=True)
        shutil.rmtree(entry, ignore_errors=True)


def prepare_rootfs(root: Path) -> None:
    """What a fresh Debian install has and a bare bootstrap lacks; no sources (no network)."""
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
    )
    (root / "etc/dpkg/dpkg.cfg.d/99mmdebstrap").unlink(missing_ok=True)  # force-unsafe-io
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    for source in (root / "etc/apt/sources.list.d").glob("*"):
        source.unlink()


def build_rootfs(packages: Sequence[str], log: Path, timeout: float = 300.0) -> Path:
    """The cached rootfs with BASE_PACKAGES and ``packages``; bootstrapped on first use."""
    mirror = apt_mirror()
    include = sorted({*BASE_PACKAGES, *packages})
    cache = cache_dir()
    target = cache / f"rootfs-{_key(SUITE, VARIANT, mirror, include, ROOTFS_REVISION)}"
    marker = target.with_name(target.name + ".ok")
    with locked(cache / ".lock"):
        if marker.exists() and target.is_dir():
            marker.touch()
            return target
        _prune(cache, "rootfs", target)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        command = [
            "mmdebstrap",
            f"--variant={VARIANT}",
            "--dpkgopt=force-unsafe-io",  # no fsync per file: a throwaway tree, twice as fast
            f"--include={','.join(include)}",
            SUITE,
            str(partial),
            mirror,
        ]
        with log.open("ab") as out:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            result = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = log.read_text(errors="replace")[-3000:]
            raise Unavailable(f"mmdebstrap failed ({result.returncode}):\n{tail}")
        prepare_rootfs(partial)
        partial.rename(target)
        marker.touch()
    return target


def build_wheelhouse(requirements: Sequence[str], log: Path, timeout: float = 600.0) -> Path:
    """Wheels for ``requirements`` and their dependencies (host's pip, same Python and arch)."""
    cache = cache_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = cache / f"wheels-{_key(version, sorted(requirements))}"
    marker = target.with_name(target.name + ".ok")
    with locked(cache / ".lock"):
        if marker.exists() and target.is_dir():
            marker.touch()
            return target
        _prune(cache, "wheels", target)
        shutil.rmtree(target, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--dest",
            str(target),
            *requirements,
        ]
        with log.open("ab") as out:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            result = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        if result.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            tail = log.read_text(errors="replace")[-3000:]
            raise Unavailable(f"pip download failed ({result.returncode}):\n{tail}")
        marker.touch()
    return target


def kill_session(sid: int, sig: int, spare: int = 0) -> int:
    """Signal every live process of session ``sid`` but ``spare``; how many there were.

    A process group is not enough: a program such as ``timeout`` moves to a process group of its
    own, but all keep the session."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == spare:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid and fields[0] != "Z":  # state, ppid, pgrp, session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), sig)
            count += 1
    return count


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the test process dies, however it dies (for
    systemd-nspawn, an orderly shutdown of the container)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _container_init(nspawn_pid: int) -> int | None:
    """The pid (host's view) of the container's PID 1: nspawn's child that is pid 1 inside."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^NSpid:\s+(.*)$", status, re.M)
        if match and match.group(1).split()[-1] == "1" and len(match.group(1).split()) > 1:
            return int(child)
    return None


class Machine:
    """One booted container over an overlay of a cached rootfs."""

    def __init__(self, rootfs: Path, workdir: Path) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.root = workdir / "root"
        self.console = workdir / "console.log"
        self.leader = 0
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._mounted = False
        self._children: list[subprocess.Popen[bytes]] = []

    # --- lifecycle -----------------------------------------------------------------------

    def mount(self) -> None:
        """An overlay (upper and work dirs in workdir) over the read-only cached rootfs."""
        upper, work = self.workdir / "upper", self.workdir / "work"
        for path in (self.root, upper, work):
            path.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            self._mounted = True
            return
        # No overlayfs: a full copy (a few seconds more, same result).
        self.root.rmdir()
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(self.rootfs), str(self.root)],
            check=True,
            timeout=300,
        )

    def boot(self, timeout: float = 90.0) -> None:
        """Start systemd-nspawn in the background and wait until systemd has booted."""
        # The cgroup v2 layout a real Debian 12 boots with (IPAddressDeny= needs cgroup v2 too),
        # even where the host mounts the hybrid layout.
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        self._console = self.console.open("ab")
        self._nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--directory",
                str(self.root),
                "--register=no",
                "--keep-unit",
                "--private-network",
                # systemd needs bpf() for IPAddressDeny=; without it the filter is silently dropped.
                "--system-call-filter=bpf",
                "--console=read-only",
                "--boot",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._nspawn.poll() is not None:
                raise Unavailable(
                    f"systemd-nspawn exited with {self._nspawn.returncode}:\n{self.console_tail()}"
                )
            leader = _container_init(self._nspawn.pid)
            if leader is not None:
                self.leader = leader
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"no container init after {timeout} s:\n{self.console_tail()}")
            time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise Unavailable(f"the container stopped while booting:\n{self.console_tail()}")
            state = self.run(["systemctl", "is-system-running"], check=False, timeout=30).stdout
            if state.strip() in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise Unavailable(f"not booted after {timeout} s ({state.strip()}):\n{self.console_tail()}")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Power off (SIGTERM to nspawn: an orderly shutdown), SIGKILL after ``timeout``."""
        for child in list(self._children):
            self.stop_spawned(child)
        nspawn = self._nspawn
        if nspawn is not None and nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)
            try:
                nspawn.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Killing the container's PID 1 kills everything in its pid namespace.
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(nspawn.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    nspawn.wait(timeout=10)
        self._nspawn = None
        self.leader = 0
        if self._console is not None:
            self._console.close()
            self._console = None

    def reboot(self, timeout: float = 90.0) -> None:
        """Power off and boot the same root filesystem again."""
        self.shutdown()
        self.boot(timeout)

    def close(self) -> None:
        """Shut down, unmount the overlay and remove the working copy, whatever state we are in."""
        try:
            self.shutdown()
        finally:
            if self._mounted:
                for attempt in range(20):
                    result = subprocess.run(
                        ["umount", str(self.root)], capture_output=True, timeout=30, check=False
                    )
                    if result.returncode == 0:
                        break
                    time.sleep(0.25 * (attempt + 1))
                else:
                    subprocess.run(["umount", "--lazy", str(self.root)], timeout=30, check=False)
                self._mounted = False
            # INGESTD_TEST_KEEP=1 keeps the container's changes (its journal too) for a post-mortem.
            keep = ("upper",) if os.environ.get("INGESTD_TEST_KEEP") else ()
            for name in ("root", "upper", "work"):
                if name not in keep:
                    shutil.rmtree(self.workdir / name, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    def console_tail(self, chars: int = 4000) -> str:
        try:
            return self.console.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- commands ------------------------------------------------------------------------

    def command(
        self, argv: Sequence[str], user: str | None = None, env: Mapping[str, str] | None = None
    ) -> list[str]:
        """``argv`` to run inside the container (as root, or as ``user``) with a clean env."""
        if not self.running:
            raise MachineError("the container is not running")
        home = "/root" if user is None else f"/home/{user}"
        variables = {"PATH": PATH, "HOME": home, "LANG": "C.UTF-8", "TERM": "dumb"}
        if user is not None:
            variables.update(USER=user, LOGNAME=user, SHELL="/bin/bash")
        variables.update(env or {})
        inner = ["env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv]
        if user is not None:
            inner = ["runuser", "-u", user, "--", *inner]
        return ["nsenter", "--target", str(self.leader), "--all", "--root", "--wd", *inner]

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdout and stderr captured separately."""
        command = self.command(argv, user, env)
        with subprocess.Popen(
            command,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process:
            try:
                stdout, stderr = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_spawned(process, grace=2)
                raise
        result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise MachineError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def sh(self, script: str, **kwargs: Any) -> str:
        """A shell snippet (sh -ec) as root; its stdout."""
        return self.run(["sh", "-ec", script], **kwargs).stdout

    def spawn(
        self, argv: Sequence[str], output: Path, user: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start in the background, output to ``output``; killed by ``stop_spawned`` or close."""
        with output.open("ab") as out:
            child = subprocess.Popen(
                self.command(argv, user),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children.append(child)
        return child

    def stop_spawned(self, child: subprocess.Popen[Any], grace: float = 5.0) -> None:
        """SIGTERM to everything a command started (its session), SIGKILL after ``grace`` s.

        The session leader, nsenter, is spared until it exits by itself: it reaps its child,
        which lives in the container. Killed first, it would leave that child a zombie whose new
        parent is the host's init, which no process in the container can reap, and systemd's
        shutdown in the container then waits for it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            kill_session(child.pid, sig, spare=child.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=grace)
                break
        if child.poll() is None:
            kill_session(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        kill_session(child.pid, signal.SIGKILL)  # anything that outlived the leader
        if child in self._children:
            self._children.remove(child)

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside the container's filesystem (through the overlay, from the host)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            target.write_text(data)
        else:
            target.write_bytes(data)
        target.chmod(mode)

    # --- systemd views -------------------------------------------------------------------

    def show(self, unit: str, *props: str, user: str | None = None) -> dict[str, str]:
        """``systemctl show`` properties (timestamps as ``us+utc``)."""
        argv = ["systemctl", "show", "--timestamp=us+utc", unit, "-p", ",".join(props)]
        env = None
        if user is not None:
            argv.insert(1, "--user")
            env = {"XDG_RUNTIME_DIR": f"/run/user/{self.uid(user)}"}
        out = self.run(argv, user=user, env=env).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def uid(self, user: str) -> int:
        return int(self.run(["id", "-u", user]).stdout)

    def cursor(self) -> str:
        """The journal's current end, for ``journal(after=...)``."""
        out = self.run(["journalctl", "--quiet", "-n", "1", "-o", "json"]).stdout.strip()
        return str(json.loads(out)["__CURSOR"]) if out else ""

    def journal(self, *matches: str, after: str = "") -> list[dict[str, Any]]:
        """Journal entries (journalctl -o json) matching ``matches`` (e.g. ``-u``, ``ingestd``)."""
        argv = ["journalctl", "--quiet", "--no-pager", "-o", "json", *matches]
        if after:
            argv.append(f"--after-cursor={after}")
        out = self.run(argv, timeout=60).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def message(entry: Mapping[str, Any]) -> str:
    """An entry's MESSAGE (journalctl -o json gives an array of bytes for binary ones)."""
    value = entry.get("MESSAGE", "")
    if isinstance(value, list):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def event_of(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ingestd event an entry carries (its MESSAGE is one JSON object), else None."""
    try:
        value = json.loads(message(entry))
    except ValueError:
        return None
    return value if isinstance(value, dict) and "event" in value else None


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.25,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``probe()`` until it returns something truthy; MachineError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise MachineError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)
