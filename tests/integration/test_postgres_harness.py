"""The test PostgreSQL server (tests/support/postgres.py): real, isolated, socket-only."""

import os
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from support.postgres import PostgresCluster, PostgresError, find_bindir, pid_alive


def test_connects_and_queries(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            "SELECT current_database(), current_user, %s::int * 6, 'ü'::text", (7,)
        ).fetchone()
        conn.execute("CREATE TABLE item (id int PRIMARY KEY, url text NOT NULL)")
        conn.execute("INSERT INTO item VALUES (1, 'https://example.test/v/1.mp4')")
        urls = conn.execute("SELECT url FROM item").fetchall()
        encoding = conn.execute("SHOW server_encoding").fetchone()
    assert row == (conninfo_to_dict(postgres_url)["dbname"], "postgres", 42, "ü")
    assert urls == [("https://example.test/v/1.mp4",)]
    assert encoding == ("UTF8",)


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_its_own_empty_database(postgres_url: str, run: int) -> None:
    # Both runs create the same table: a shared database would fail the second one.
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog',"
            " 'information_schema')"
        ).fetchone()
        conn.execute("CREATE TABLE marker (run int)")
        conn.execute("INSERT INTO marker VALUES (%s)", (run,))
    assert tables == (0,)


def test_databases_are_isolated(postgres_cluster: PostgresCluster, postgres_url: str) -> None:
    other = postgres_cluster.new_database()
    try:
        assert other != postgres_url
        with psycopg.connect(postgres_url) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT to_regclass('only_here')").fetchone() == ("only_here",)
    finally:
        postgres_cluster.drop_database(other)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(other, connect_timeout=5)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listening_inodes(table: str) -> set[int]:
    """Inodes of the listening sockets in /proc/net/<table> (tcp, tcp6: state 0A; unix: 01)."""
    lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    if table == "unix":
        return {int(f[6]) for f in map(str.split, lines) if f[3] == "00010000" and f[5] == "01"}
    return {int(f[9]) for f in map(str.split, lines) if f[3] == "0A"}


def test_listens_on_the_unix_socket_only(
    postgres_cluster: PostgresCluster, postgres_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_url) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()
        socket_dirs = conn.execute("SHOW unix_socket_directories").fetchone()
        server_addr = conn.execute("SELECT inet_server_addr()").fetchone()
    assert listen == ("",)
    assert socket_dirs == (str(postgres_cluster.dir),)
    assert server_addr == (None,)  # NULL: this session came over a Unix socket

    pid = int((postgres_cluster.data_dir / "postmaster.pid").read_text().split()[0])
    owned = _socket_inodes(pid)
    assert owned & _listening_inodes("unix"), "the postmaster holds no listening Unix socket"
    assert not owned & (_listening_inodes("tcp") | _listening_inodes("tcp6"))
    assert postgres_cluster.socket_path.is_socket()

    # The same URL aimed at a directory without the socket finds no server.
    with pytest.raises(psycopg.OperationalError, match="No such file or directory"):
        psycopg.connect(postgres_url, host=str(tmp_path), connect_timeout=5)


def test_concurrent_connections(postgres_url: str) -> None:
    # Several nodes' (and workers') connections at once, each its own server process.
    workers = 4
    barrier = threading.Barrier(workers, timeout=10)
    pids: list[int] = []
    errors: list[BaseException] = []
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE hit (worker int)")

    def work(worker: int) -> None:
        try:
            with psycopg.connect(postgres_url, autocommit=True, connect_timeout=10) as conn:
                barrier.wait()  # all workers hold a connection at once
                conn.execute("INSERT INTO hit VALUES (%s)", (worker,))
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                assert row is not None
                pids.append(row[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        rows = conn.execute("SELECT worker FROM hit ORDER BY worker").fetchall()
    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    assert len(set(pids)) == workers
    assert rows == [(n,) for n in range(workers)]


def test_missing_binaries_point_at_ci_run(tmp_path: Path) -> None:
    (tmp_path / "16" / "bin").mkdir(parents=True)  # a version dir without the server
    with pytest.raises(PostgresError, match=r"\.ci/run"):
        find_bindir(tmp_path, pg_config=None)


def test_a_cluster_stops_and_leaves_nothing_behind() -> None:
    with PostgresCluster(timeout=30) as cluster:
        url = cluster.new_database()
        where = cluster.dir
        pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        held = psycopg.connect(url)  # stop() must not wait for this client to leave
        assert held.execute("SELECT 1").fetchone() == (1,)
    try:
        assert not where.exists()
        assert not pid_alive(pid)
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()
