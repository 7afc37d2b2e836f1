"""Run a command under the seccomp policy of a systemd unit, without systemd as PID 1.

The policy is read from the unit's ``[Service]`` section: ``SystemCallFilter=`` (groups expanded
with ``systemd-analyze syscall-filter``, so the lists are exactly the local systemd's),
``SystemCallErrorNumber=``, ``SystemCallArchitectures=native``, ``RestrictAddressFamilies=``,
``MemoryDenyWriteExecute=``, ``RestrictNamespaces=``, ``LockPersonality=`` and
``RestrictSUIDSGID=``. These are the settings systemd implements with seccomp; the rules follow
systemd 252's ``src/shared/seccomp-util.c``. Mount, user and cgroup sandboxing (ProtectSystem=,
PrivateTmp=, User=, IPAddressDeny=, ...) is not emulated here. A setting in a form this module
does not emulate raises ``Unsupported`` rather than being silently skipped.

How it runs: the launcher forks a supervisor, loads one libseccomp filter (native architecture
only, allowed system calls and arguments -> ALLOW, anything else -> USER_NOTIF) and ``exec``s
the command, so the interpreter's own start-up already runs filtered, as under systemd. The
supervisor, which is not filtered, answers every denied call with the errno systemd would return
(``SystemCallErrorNumber=`` for calls in ``@known``, ENOSYS for calls newer than that list,
EAFNOSUPPORT for a refused address family, ENOSYS for clone3 under RestrictNamespaces=, EPERM
for the argument rules) and appends one JSON line per denial to the denial log. So the command
sees systemd's semantics while every violation is recorded with its system call, arguments and
thread name, even one the program handles silently. A call from a non-native ABI kills the
process (SIGSYS) instead.

Only libseccomp (``libseccomp.so.2``, a dependency of systemd) and ``systemd-analyze`` are needed;
the binding is ctypes. Command line (used by the e2e tests)::

    python sandbox.py run --unit UNIT --denials LOG -- COMMAND [ARG...]
    python sandbox.py policy --unit UNIT      # print the policy as JSON
    python sandbox.py probe                   # the positive control, run *inside* ``run``
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import mmap
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

SETUP_FAILED = 125  # exit code of ``run`` when the sandbox could not be set up

# libseccomp actions and attributes (seccomp.h)
ACT_KILL_PROCESS = 0x80000000
ACT_NOTIFY = 0x7FC00000
ACT_ALLOW = 0x7FFF0000
ATTR_ACT_BADARCH = 2
ATTR_CTL_NNP = 3
ATTR_CTL_OPTIMIZE = 8
CMP_EQ = 4
CMP_MASKED_EQ = 7
ARCH_X86_64 = 0xC000003E
ARCH_AARCH64 = 0xC00000B7
NOTIFY_API_LEVEL = 5  # seccomp_api_get() >= 5: SCMP_ACT_NOTIFY and the notify calls work

PROT_WRITE, PROT_EXEC = mmap.PROT_WRITE, mmap.PROT_EXEC
SHM_EXEC = 0o100000
S_ISUID, S_ISGID = 0o4000, 0o2000
O_CREAT = os.O_CREAT
# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET, and CLONE_NEWTIME (also in
# systemd's namespace_flag_map); RestrictNamespaces=yes refuses each of them.
CLONE_NEW_ANY = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
)
PERSONALITY_QUERY = 0xFFFFFFFF


class Unsupported(RuntimeError):
    """The unit uses a setting (or a form of one) this module does not emulate."""


class SandboxUnavailable(RuntimeError):
    """Something the sandbox needs is missing here (libseccomp, systemd-analyze, kernel support)."""


# ------------------------------------------------------------------------------------ policy

# An allow rule: (argument index, comparison, datum_a, datum_b), all of them must hold.
Cond = tuple[int, int, int, int]


@dataclass(frozen=True)
class Policy:
    allowed: frozenset[str]  # system calls SystemCallFilter= allows
    known: frozenset[str]  # systemd's @known: a denied call in here gets `errno`, else ENOSYS
    errno: int  # SystemCallErrorNumber=
    families: frozenset[int] | None  # RestrictAddressFamilies= allow list (None: unrestricted)
    deny_write_execute: bool
    restrict_namespaces: bool
    lock_personality: bool
    restrict_suid_sgid: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed": sorted(self.allowed),
            "known": sorted(self.known),
            "errno": self.errno,
            "families": None if self.families is None else sorted(self.families),
            "deny_write_execute": self.deny_write_execute,
            "restrict_namespaces": self.restrict_namespaces,
            "lock_personality": self.lock_personality,
            "restrict_suid_sgid": self.restrict_suid_sgid,
        }

    def argument_rules(self, personality: int) -> dict[str, list[list[Cond]]]:
        """Per system call, the alternatives (OR) under which an allowed call stays allowed.

        A call listed here with an empty list is refused whatever its arguments."""
        rules: dict[str, list[list[Cond]]] = {}
        if self.deny_write_execute:
            # seccomp_memory_deny_write_execute(): mmap with PROT_WRITE and PROT_EXEC both set,
            # mprotect/pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC.
            rules["mmap"] = [
                [(2, CMP_MASKED_EQ, PROT_WRITE, 0)],
                [(2, CMP_MASKED_EQ, PROT_EXEC, 0)],
            ]
            for name in ("mprotect", "pkey_mprotect"):
                rules[name] = [[(2, CMP_MASKED_EQ, PROT_EXEC, 0)]]
            rules["shmat"] = [[(2, CMP_MASKED_EQ, SHM_EXEC, 0)]]
        if self.families is not None:
            rules["socket"] = [[(0, CMP_EQ, family, 0)] for family in sorted(self.families)]
        if self.restrict_namespaces:
            # seccomp_restrict_namespaces(0): clone3 (flags unreadable) -> ENOSYS, setns refused,
            # clone/unshare refused with any CLONE_NEW* flag.
            rules["clone3"] = []
            rules["setns"] = []
            for name in ("clone", "unshare"):
                rules[name] = [[(0, CMP_MASKED_EQ, CLONE_NEW_ANY, 0)]]
        if self.lock_personality:
            rules["personality"] = [[(0, CMP_EQ, personality, 0)]]
        if self.restrict_suid_sgid:
            # seccomp_restrict_suid_sgid(): a mode with S_ISUID or S_ISGID is refused.
            suid = S_ISUID | S_ISGID
            for name, arg in (("chmod", 1), ("fchmod", 1), ("mkdir", 1), ("mknod", 1)):
                rules[name] = [[(arg, CMP_MASKED_EQ, suid, 0)]]
            for name, arg in (("creat", 1), ("fchmodat", 2), ("mkdirat", 2), ("mknodat", 2)):
                rules[name] = [[(arg, CMP_MASKED_EQ, suid, 0)]]
            rules["open"] = [[(1, CMP_MASKED_EQ, O_CREAT, 0)], [(2, CMP_MASKED_EQ, suid, 0)]]
            rules["openat"] = [[(2, CMP_MASKED_EQ, O_CREAT, 0)], [(3, CMP_MASKED_EQ, suid, 0)]]
            rules["openat2"] = []
        return rules

    def denial_errno(self, name: str | None) -> int:
        """The errno systemd's filters return for a call our filter sent to the supervisor."""
        if name is None or name not in self.allowed:
            # systemd >= 247: allow-list misses in @known get SystemCallErrorNumber=, newer
            # (unknown) system calls ENOSYS so that libc falls back.
            return self.errno if name in self.known else errno.ENOSYS
        if name == "socket":
            return errno.EAFNOSUPPORT
        if name == "clone3":
            return errno.ENOSYS
        return errno.EPERM


def syscall_groups(analyze: str | None = None) -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: group name -> members (names or nested ``@group``)."""
    exe = analyze or shutil.which("systemd-analyze")
    if exe is None:
        raise SandboxUnavailable("systemd-analyze not found (Debian package: systemd)")
    result = subprocess.run(
        [exe, "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise SandboxUnavailable(f"systemd-analyze syscall-filter failed: {result.stderr.strip()}")
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in result.stdout.splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not line[0].isspace():
            if not text.startswith("@"):
                raise ValueError(f"unexpected systemd-analyze line: {line!r}")
            current = groups.setdefault(text, [])
        elif current is not None:
            current.append(text)
    if "@system-service" not in groups or "@known" not in groups:
        raise SandboxUnavailable("systemd-analyze syscall-filter lists no @system-service/@known")
    return groups


def expand(
    groups: Mapping[str, list[str]], name: str, _seen: frozenset[str] = frozenset()
) -> set[str]:
    """A group's system calls, nested groups expanded; a plain name stands for itself."""
    if not name.startswith("@"):
        return {name}
    if name not in groups:
        raise Unsupported(f"unknown system call group {name}")
    if name in _seen:
        raise ValueError(f"system call group cycle at {name}")
    out: set[str] = set()
    for member in groups[name]:
        out |= expand(groups, member, _seen | {name})
    return out


def unit_settings(path: Path) -> dict[str, list[str]]:
    """The ``[Service]`` assignments of a unit file, every value of each key, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _boolean(key: str, values: list[str]) -> bool:
    if not values:
        return False
    value = values[-1].lower()
    if value in {"1", "yes", "true", "on"}:
        return True
    if value in {"0", "no", "false", "off", ""}:
        return False
    raise Unsupported(f"{key}={values[-1]} (only a boolean is emulated)")


def _system_call_filter(values: list[str], groups: Mapping[str, list[str]]) -> frozenset[str]:
    allowed: set[str] | None = None
    for value in values:
        if not value:  # an empty assignment resets the filter
            allowed = None
            continue
        invert = value.startswith("~")
        names = value.lstrip("~").split()
        if any(":" in name for name in names):
            raise Unsupported(f"SystemCallFilter={value}: per-call errno is not emulated")
        if allowed is None:
            if invert:
                raise Unsupported("a SystemCallFilter= deny list first (deny-list mode)")
            allowed = expand(groups, "@default")  # systemd adds @default to every allow list
        for name in names:
            calls = expand(groups, name)
            allowed = allowed - calls if invert else allowed | calls
    if allowed is None:
        raise Unsupported("no SystemCallFilter= in the unit")
    return frozenset(allowed)


def _families(values: list[str]) -> frozenset[int] | None:
    if not values or not values[-1]:
        return None
    value = values[-1]
    if value.startswith("~"):
        raise Unsupported(f"RestrictAddressFamilies={value} (deny list)")
    if value == "none":
        return frozenset()
    families = set()
    for name in value.split():
        family = getattr(socket, name, None)
        if not name.startswith("AF_") or not isinstance(family, int):
            raise Unsupported(f"address family {name} unknown to Python's socket module")
        families.add(int(family))
    return frozenset(families)


def policy_from_unit(unit: Path, analyze: str | None = None) -> Policy:
    settings = unit_settings(unit)
    groups = syscall_groups(analyze)
    archs = settings.get("SystemCallArchitectures", [])
    if archs[-1:] != ["native"]:
        raise Unsupported(f"SystemCallArchitectures={archs} (only 'native' is emulated)")
    error_name = (settings.get("SystemCallErrorNumber") or [""])[-1]
    error = getattr(errno, error_name, None) if error_name.isupper() else None
    if not isinstance(error, int):
        raise Unsupported(f"SystemCallErrorNumber={error_name!r} (only an errno name is emulated)")
    namespaces = settings.get("RestrictNamespaces", [])
    if namespaces and namespaces[-1].lower() not in {"yes", "true", "1", "no", "false", "0"}:
        raise Unsupported(f"RestrictNamespaces={namespaces[-1]} (only a boolean is emulated)")
    if "SystemCallLog" in settings:
        raise Unsupported("SystemCallLog= is not emulated")
    return Policy(
        allowed=_system_call_filter(settings.get("SystemCallFilter", []), groups),
        known=frozenset(expand(groups, "@known")),
        errno=error,
        families=_families(settings.get("RestrictAddressFamilies", [])),
        deny_write_execute=_boolean(
            "MemoryDenyWriteExecute", settings.get("MemoryDenyWriteExecute", [])
        ),
        restrict_namespaces=_boolean("RestrictNamespaces", namespaces),
        lock_personality=_boolean("LockPersonality", settings.get("LockPersonality", [])),
        restrict_suid_sgid=_boolean("RestrictSUIDSGID", settings.get("RestrictSUIDSGID", [])),
    )


# ---------------------------------------------------------------------------------- libseccomp


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class _Data(ctypes.Structure):
    _fields_ = (
        ("nr", ctypes.c_int),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    )


class _Notif(ctypes.Structure):
    _fields_ = (
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", _Data),
    )


class _Resp(ctypes.Structure):
    _fields_ = (
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    )


class LibSeccomp:
    """The few libseccomp calls needed, over ctypes (no compiler, no Python binding)."""

    def __init__(self, probe_kernel: bool = True) -> None:
        """``probe_kernel=False``: name lookups only, no seccomp() calls (usable when filtered)."""
        if platform.system() != "Linux":
            raise SandboxUnavailable("seccomp needs Linux")
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as exc:
            raise SandboxUnavailable(
                f"libseccomp.so.2 not loadable (Debian: libseccomp2): {exc}"
            ) from exc
        c_void_p, c_int, c_uint, c_uint32 = (
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint32,
        )
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "seccomp_api_get": (c_uint, []),
            "seccomp_arch_native": (c_uint32, []),
            "seccomp_init": (c_void_p, [c_uint32]),
            "seccomp_attr_set": (c_int, [c_void_p, c_int, c_uint32]),
            "seccomp_rule_add_array": (
                c_int,
                [c_void_p, c_uint32, c_int, c_uint, ctypes.POINTER(_ArgCmp)],
            ),
            "seccomp_syscall_resolve_name": (c_int, [ctypes.c_char_p]),
            "seccomp_syscall_resolve_num_arch": (c_void_p, [c_uint32, c_int]),
            "seccomp_load": (c_int, [c_void_p]),
            "seccomp_notify_fd": (c_int, [c_void_p]),
            "seccomp_notify_alloc": (
                c_int,
                [ctypes.POINTER(ctypes.POINTER(_Notif)), ctypes.POINTER(ctypes.POINTER(_Resp))],
            ),
            "seccomp_notify_receive": (c_int, [c_int, ctypes.POINTER(_Notif)]),
            "seccomp_notify_respond": (c_int, [c_int, ctypes.POINTER(_Resp)]),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name, None)
            if function is None:
                raise SandboxUnavailable(f"libseccomp has no {name} (need libseccomp >= 2.5)")
            function.restype = restype
            function.argtypes = argtypes
        self._lib = lib
        self._libc = ctypes.CDLL(None)
        self._libc.free.argtypes = [c_void_p]
        self.arch = int(lib.seccomp_arch_native())
        if not probe_kernel:
            return
        # Also makes libseccomp probe the kernel now, before the supervisor is forked.
        self.api_level = int(lib.seccomp_api_get())
        if self.api_level < NOTIFY_API_LEVEL:
            raise SandboxUnavailable(
                f"libseccomp API level {self.api_level} < {NOTIFY_API_LEVEL}: no seccomp user "
                "notification (needs libseccomp >= 2.5 and Linux >= 5.0)"
            )
        if self.arch not in (ARCH_X86_64, ARCH_AARCH64):
            raise SandboxUnavailable(f"native seccomp arch {self.arch:#x} is not x86-64/arm64")

    def resolve(self, name: str) -> int | None:
        nr = int(self._lib.seccomp_syscall_resolve_name(name.encode()))
        return nr if nr >= 0 else None  # negative: unknown, or a pseudo call not on this arch

    def name_of(self, nr: int) -> str | None:
        pointer = self._lib.seccomp_syscall_resolve_num_arch(self.arch, nr)
        if not pointer:
            return None
        try:
            return ctypes.string_at(pointer).decode()
        finally:
            self._libc.free(pointer)

    def build(self, policy: Policy) -> int:
        """A filter context: policy -> ALLOW, everything else -> NOTIFY, other ABIs -> kill."""
        ctx = self._lib.seccomp_init(ACT_NOTIFY)
        if not ctx:
            raise SandboxUnavailable("seccomp_init failed")
        self._check(self._lib.seccomp_attr_set(ctx, ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "badarch")
        self._check(self._lib.seccomp_attr_set(ctx, ATTR_CTL_NNP, 1), "no_new_privs")
        self._check(self._lib.seccomp_attr_set(ctx, ATTR_CTL_OPTIMIZE, 2), "binary tree")
        rules = policy.argument_rules(current_personality())
        for name in sorted(policy.allowed):
            nr = self.resolve(name)
            if nr is None:
                continue  # like systemd: a name this arch does not have is skipped
            for conds in rules.get(name, [[]]):
                array = (_ArgCmp * max(1, len(conds)))(*(_ArgCmp(*c) for c in conds))
                self._check(
                    self._lib.seccomp_rule_add_array(ctx, ACT_ALLOW, nr, len(conds), array),
                    f"rule for {name}",
                )
        return int(ctx)

    def load(self, ctx: int) -> int:
        """Load the filter on this thread; return the user-notification listener fd."""
        self._check(self._lib.seccomp_load(ctx), "seccomp_load")
        fd = int(self._lib.seccomp_notify_fd(ctx))
        if fd < 0:
            raise SandboxUnavailable("seccomp_load gave no notification listener")
        return fd

    def notify_buffers(self) -> tuple[Any, Any]:
        req = ctypes.POINTER(_Notif)()
        resp = ctypes.POINTER(_Resp)()
        self._check(self._lib.seccomp_notify_alloc(ctypes.byref(req), ctypes.byref(resp)), "alloc")
        return req, resp

    def receive(self, fd: int, req: Any) -> bool:
        ctypes.memset(req, 0, ctypes.sizeof(_Notif))  # the kernel wants a zeroed buffer
        return int(self._lib.seccomp_notify_receive(fd, req)) == 0

    def respond(self, fd: int, resp: Any) -> None:
        self._lib.seccomp_notify_respond(fd, resp)  # -ENOENT: the caller is gone; nothing to do

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc < 0:
            raise SandboxUnavailable(f"libseccomp {what}: {os.strerror(-rc)}")


def current_personality() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.personality.argtypes = [ctypes.c_ulong]
    return int(libc.personality(PERSONALITY_QUERY))


# ---------------------------------------------------------------------------------- supervisor


def _describe(name: str | None, args: list[int]) -> str:
    """A short human reading of the arguments the rules look at."""
    if name == "socket":
        try:
            return socket.AddressFamily(args[0]).name
        except ValueError:
            return f"family {args[0]}"
    if name in {"mmap", "mprotect", "pkey_mprotect"}:
        prot = [flag for flag, bit in (("R", 1), ("W", 2), ("X", 4)) if args[2] & bit]
        return "PROT_" + ("|".join(prot) or "NONE")
    if name in {"clone", "unshare"}:
        return f"flags {args[0]:#x}"
    owner = {"fchown": 1, "chown": 1, "lchown": 1, "fchownat": 2}.get(name or "")
    if owner is not None:
        uid, gid = (-1 if a == 0xFFFFFFFF else a for a in args[owner : owner + 2])
        return f"to {uid}:{gid}"
    return ""


def _thread_name(tid: int) -> str:
    try:
        return Path(f"/proc/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def supervise(
    lib: LibSeccomp, policy: Policy, sock: socket.socket, log_fd: int, target: int
) -> None:
    """Answer and record every denied call until the filtered processes are gone."""
    listener = socket.recv_fds(sock, 16, 1)[1]
    if len(listener) != 1:
        return
    fd = listener[0]
    try:
        pidfd = os.pidfd_open(target)
    except OSError:
        return
    sock.send(b"ready")
    sock.close()
    req, resp = lib.notify_buffers()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    target_gone_at: float | None = None
    while True:
        events = dict(poller.poll(200))
        if events.get(fd, 0) & select.POLLIN:
            if lib.receive(fd, req):
                _answer(lib, policy, fd, req.contents, resp, log_fd)
            continue
        if events.get(fd, 0) & (select.POLLHUP | select.POLLERR):
            return  # no filtered task is left
        if events.get(pidfd, 0) & select.POLLIN and target_gone_at is None:
            target_gone_at = time.monotonic()
        if target_gone_at is not None and time.monotonic() - target_gone_at > 2.0:
            return  # the command exited; any child of it would have had 2 s to finish


def _answer(lib: LibSeccomp, policy: Policy, fd: int, note: _Notif, resp: Any, log_fd: int) -> None:
    name = lib.name_of(note.data.nr)
    args = [int(a) for a in note.data.args]
    error = policy.denial_errno(name)
    record = {
        "time": time.time(),
        "tid": note.pid,
        "thread": _thread_name(note.pid),
        "syscall": name or f"#{note.data.nr}",
        "nr": note.data.nr,
        "args": [hex(a) for a in args],
        "detail": _describe(name, args),
        "errno": errno.errorcode.get(error, str(error)),
    }
    os.write(log_fd, (json.dumps(record) + "\n").encode())
    resp.contents.id = note.id
    resp.contents.val = 0
    resp.contents.error = -error
    resp.contents.flags = 0
    lib.respond(fd, resp)


def run(policy: Policy, denials: Path, argv: list[str]) -> NoReturn:
    """Become ``argv`` under ``policy``; a forked, unfiltered supervisor answers denials."""
    lib = LibSeccomp()
    ctx = lib.build(policy)
    log_fd = os.open(denials, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    target = os.getpid()
    pid = os.fork()
    if pid == 0:  # the supervisor: no stdio (the caller reads our pipes to EOF), no signals
        code = 0
        try:
            parent.close()
            for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            devnull = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(devnull, std)
            keep = sorted({0, 1, 2, child.fileno(), log_fd})
            for low, high in zip(keep, [*keep[1:], 65536], strict=True):
                os.closerange(low + 1, high)
            supervise(lib, policy, child, log_fd, target)
        except BaseException as exc:  # report into the denial log, never into the command
            os.write(log_fd, (json.dumps({"supervisor_error": repr(exc)}) + "\n").encode())
            code = 1
        os._exit(code)
    child.close()
    try:
        listener = lib.load(ctx)
        socket.send_fds(parent, [b"listener"], [listener])
        os.close(listener)
        parent.settimeout(10)
        if parent.recv(16) != b"ready":
            raise SandboxUnavailable("the supervisor did not start")
    except (OSError, SandboxUnavailable) as exc:
        print(f"sandbox: setup failed: {exc}", file=sys.stderr, flush=True)
        os._exit(SETUP_FAILED)
    parent.close()
    os.close(log_fd)
    os.execv(argv[0], argv)


# -------------------------------------------------------------------------------------- probe


def _outcome(action: Callable[[], object]) -> str:
    try:
        result = action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok" if result is None or isinstance(result, bool | int | bytes) else str(result)


def probe() -> dict[str, Any]:
    """Harmless calls each rule must refuse (plus some it must allow); run inside ``run``.

    Every refused call would succeed, or fail differently, without the filter."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.personality.argtypes = [ctypes.c_ulong]

    def checked(rc: int) -> None:
        if rc == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def anon(prot: int) -> None:
        mmap.mmap(-1, 4096, prot=prot).close()

    def mprotect_exec() -> None:
        page = libc.mmap(None, 4096, PROT_WRITE | mmap.PROT_READ, 0x22, -1, 0)  # PRIVATE|ANON
        checked(libc.mprotect(page, 4096, mmap.PROT_READ | PROT_EXEC))

    mount = LibSeccomp(probe_kernel=False).resolve("mount")

    def mount_nothing() -> None:  # not in @system-service; ENOENT when not filtered
        checked(libc.syscall(mount, b"none", b"/nonexistent-ingestd-probe", b"tmpfs", 0, None))

    def thread() -> None:  # glibc tries clone3 first, falls back to clone on ENOSYS
        done = threading.Event()
        worker = threading.Thread(target=done.set)
        worker.start()
        worker.join(10)
        if not done.is_set():
            raise OSError(errno.ETIMEDOUT, "thread did not run")

    def other_abi() -> str:  # x32 getpid from a child: SystemCallArchitectures=native kills it
        pid = os.fork()
        if pid == 0:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            libc.syscall(0x40000000 | 39)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return signal.Signals(os.WTERMSIG(status)).name
        return f"exit {os.WEXITSTATUS(status)}"

    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as tmp:
        plain = Path(tmp) / "file"
        plain.write_bytes(b"")
        checks: dict[str, Callable[[], object]] = {
            "mmap_write_exec": lambda: anon(mmap.PROT_READ | PROT_WRITE | PROT_EXEC),
            "mmap_read_exec": lambda: anon(mmap.PROT_READ | PROT_EXEC),
            "mmap_read_write": lambda: anon(mmap.PROT_READ | PROT_WRITE),
            "mprotect_exec": mprotect_exec,
            "setuid_same_uid": lambda: os.setuid(os.getuid()),  # @privileged
            "setpriority_same": lambda: os.setpriority(
                os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0)
            ),  # @resources
            "mount": mount_nothing,
            "unknown_syscall": lambda: checked(libc.syscall(1023)),
            "socket_netlink": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close(),
            "socket_inet6": lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close(),
            "socket_unix": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close(),
            "thread": thread,
            "unshare_uts": lambda: checked(libc.unshare(0x04000000)),
            "personality_query": lambda: checked(libc.personality(PERSONALITY_QUERY)),
            "chmod_setuid": lambda: os.chmod(plain, 0o4755),
            "chmod_plain": lambda: os.chmod(plain, 0o644),
        }
        if platform.machine() == "x86_64":
            checks["other_abi_child"] = other_abi
        results = {name: _outcome(action) for name, action in checks.items()}
    status = dict(
        line.split(":\t", 1)
        for line in Path("/proc/self/status").read_text().splitlines()
        if ":\t" in line
    )
    results["Seccomp"] = status.get("Seccomp", "?").strip()
    results["NoNewPrivs"] = status.get("NoNewPrivs", "?").strip()
    return results


# ---------------------------------------------------------------------------------------- main


def read_denials(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_denials(records: Iterable[Mapping[str, Any]]) -> str:
    return "\n".join(
        f"  {r.get('syscall')}({', '.join(r.get('args', [])[:3])}) {r.get('detail', '')} "
        f"-> {r.get('errno')} [thread {r.get('thread')}]"
        if "syscall" in r
        else f"  {r}"
        for r in records
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--unit", type=Path, required=True)
    run_parser.add_argument("--denials", type=Path, required=True)
    run_parser.add_argument("argv", nargs="+")
    policy_parser = sub.add_parser("policy")
    policy_parser.add_argument("--unit", type=Path, required=True)
    sub.add_parser("probe")
    args = parser.parse_args(argv)
    if args.command == "probe":
        print(json.dumps(probe()))
        return 0
    try:
        policy = policy_from_unit(args.unit)
        if args.command == "policy":
            print(json.dumps(policy.to_json(), indent=1))
            return 0
        run(policy, args.denials, args.argv)
    except (SandboxUnavailable, Unsupported, OSError) as exc:
        print(f"sandbox: setup failed: {exc}", file=sys.stderr)
        return SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
