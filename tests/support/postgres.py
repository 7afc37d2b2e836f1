"""A throwaway PostgreSQL server for tests: its own temp dir, reachable only by a Unix socket.

``PostgresCluster.start()`` runs ``initdb`` and ``pg_ctl start -w`` from Debian's server package
(``/usr/lib/postgresql/<N>/bin``, newest first, else ``pg_config --bindir``), as the ``postgres``
system user when the tests run as root (initdb and pg_ctl refuse root). The server listens on no
TCP address; its socket lives in the temp dir, and durability is off (``fsync``,
``full_page_writes``, ``synchronous_commit``), which is fine for data that dies with the tests.
``new_database()`` gives each test an empty database of its own; ``stop()`` stops the server and
removes the dir.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

SETUP_HINT = "install Debian's postgresql-15 (.ci/run does, as root, when initdb is missing)"
DEFAULT_LIB_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
# The socket file is named after the port; nothing listens on TCP, so any port will do.
PORT = 5432
# sun_path holds 108 bytes, NUL included.
_MAX_SOCKET_PATH = 107


class PostgresError(RuntimeError):
    """The test server could not be found, started or stopped."""


def _version_key(bindir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return ()


def find_bindir(lib_root: Path = DEFAULT_LIB_ROOT, pg_config: str | None = "pg_config") -> Path:
    """The newest server binaries under ``lib_root``, else ``pg_config --bindir``'s."""
    for bindir in sorted(lib_root.glob("*/bin"), key=_version_key, reverse=True):
        if _has_server(bindir):
            return bindir
    config = shutil.which(pg_config) if pg_config else None
    if config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            if _has_server(Path(out.stdout.strip())):
                return Path(out.stdout.strip())
    raise PostgresError(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in {lib_root}/*/bin "
        f"or from pg_config --bindir: {SETUP_HINT}"
    )


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (the postmaster is not our child) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _conf_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresCluster:
    """One initdb'd data directory and the server running on it; see the module docstring."""

    def __init__(
        self,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        timeout: float = 60.0,
        max_connections: int = 200,
    ) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        self.timeout = timeout
        self.max_connections = max_connections
        self._base_dir = base_dir
        self._dir: Path | None = None
        self._admin: psycopg.Connection[TupleRow] | None = None
        self._lock = threading.Lock()
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresError(
                    f"running as root, and there is no {SERVER_USER!r} user to run the server "
                    f"as (Debian's postgresql-common creates it): {SETUP_HINT}"
                ) from None
            self._owner = (user.pw_uid, user.pw_gid)
            self._as_user = [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--init-groups",
                "--",
            ]

    @property
    def dir(self) -> Path:
        """The temp dir: ``data/``, ``server.log`` and the socket."""
        if self._dir is None:
            raise PostgresError("the cluster is not started")
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def socket_path(self) -> Path:
        return self.dir / f".s.PGSQL.{PORT}"

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname``: user ``postgres``, the Unix socket, no password."""
        return f"postgresql://{SERVER_USER}@/{dbname}?host={quote(str(self.dir))}&port={PORT}"

    def start(self) -> None:
        """initdb and start the server; returns once it accepts connections."""
        if self._dir is not None:
            raise PostgresError("the cluster is already started")
        self._dir = Path(tempfile.mkdtemp(prefix="ingestd-pg-", dir=self._base_dir))
        try:
            if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
                raise PostgresError(f"socket path too long for a Unix socket: {self.socket_path}")
            if self._owner is not None:
                os.chown(self._dir, *self._owner)
            self._run(
                "initdb",
                f"--pgdata={self.data_dir}",
                f"--username={SERVER_USER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            )
            settings = {
                "listen_addresses": _conf_string(""),
                "unix_socket_directories": _conf_string(str(self.dir)),
                "port": str(PORT),
                "max_connections": str(self.max_connections),
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
            }
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# tests/support/postgres.py\n")
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
            self._pg_ctl("start", f"--log={self.log_path}")
        except BaseException:
            self.stop()
            raise

    def new_database(self, owner: str = SERVER_USER) -> str:
        """Create an empty database (a copy of template0) and return its URL."""
        name = f"test_{next(self._names)}"
        self._admin_execute(
            sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
        return self.url(name)

    def new_password_user(self, user: str, password: str) -> str:
        """Create the login role `user`, which must give `password` (SCRAM: the server checks
        it, unlike the trusted `postgres`), and a database it owns; return that database's URL
        for `user`, with no password in it."""
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(f"local all {user} scram-sha-256\n" + hba.read_text())
        self._admin_execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )
        self._admin_execute(sql.SQL("SELECT pg_reload_conf()").format())
        url = self.new_database(owner=user).replace(f"{SERVER_USER}@", f"{user}@", 1)
        deadline = time.monotonic() + self.timeout
        while True:  # the server reads pg_hba.conf again a moment after it is told to
            try:
                psycopg.connect(url, password="", connect_timeout=2).close()
            except psycopg.OperationalError:
                return url
            if time.monotonic() > deadline:
                raise PostgresError(f"{user} still logs in without a password")
            time.sleep(0.05)

    def drop_database(self, url: str) -> None:
        """Drop the database ``url`` names, ending any sessions still on it."""
        name = str(conninfo_to_dict(url)["dbname"])
        self._admin_execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove the temp dir."""
        if self._dir is None:
            return
        with self._lock:
            if self._admin is not None:
                with contextlib.suppress(Exception):
                    self._admin.close()
                self._admin = None
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._shut_down()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def halt(self) -> None:
        """Stop the server, keeping its data (an outage): `resume` starts it again."""
        with self._lock:
            if self._admin is not None:
                with contextlib.suppress(Exception):
                    self._admin.close()
                self._admin = None
        self._shut_down()

    def resume(self) -> None:
        """Start the server again after `halt`; returns once it accepts connections."""
        self._pg_ctl("start", f"--log={self.log_path}")

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _admin_execute(self, query: sql.Composed) -> None:
        with self._lock:
            if self._admin is None:
                self._admin = psycopg.connect(
                    self.url(),
                    autocommit=True,
                    connect_timeout=max(2, int(self.timeout)),
                    options=f"-c statement_timeout={int(self.timeout * 1000)}",
                )
            self._admin.execute(query)

    def _shut_down(self) -> None:
        pid = self._postmaster_pid()
        try:
            self._pg_ctl("stop", "--mode=fast")
        except PostgresError:
            try:
                self._pg_ctl("stop", "--mode=immediate")
            except PostgresError:
                if pid is None:
                    raise
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if pid is None:
            return
        # pg_ctl returns once the pid file is gone, a moment before the postmaster exits.
        deadline = time.monotonic() + self.timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                raise PostgresError(f"the postmaster ({pid}) did not exit")
            time.sleep(0.01)  # it is not our child, so there is nothing to wait() on

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run(
            "pg_ctl",
            action,
            f"--pgdata={self.data_dir}",
            "--wait",
            f"--timeout={max(1, int(self.timeout))}",
            "--silent",
            *args,
            timeout=self.timeout + 10,
        )

    def _run(self, tool: str, *args: str, timeout: float | None = None) -> None:
        # The caller's PGPORT, PGDATA and friends must not reach initdb, pg_ctl or the server.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        argv = [*self._as_user, str(self.bindir / tool), *args]
        try:
            result = subprocess.run(
                argv,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{tool} {args[0]}: no answer in {exc.timeout} s") from None
        if result.returncode != 0:
            raise PostgresError(
                f"{' '.join(argv)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-20:]
        except OSError:
            return ""
        return "server.log:\n" + "\n".join(lines)
