"""sd_notify messages on a real (abstract) unix datagram socket."""

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from ingestd.notify import Notifier


@pytest.fixture
def manager() -> Iterator[tuple[socket.socket, str]]:
    name = f"@ingestd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(5.0)
    yield sock, name
    sock.close()


def test_messages_reach_the_socket(manager: tuple[socket.socket, str]) -> None:
    sock, name = manager
    notifier = Notifier.from_env({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.ready("starting")
    assert sock.recv(4096) == b"READY=1\nSTATUS=starting"
    notifier.status("done 1/2\nsecond line")
    assert sock.recv(4096) == b"STATUS=done 1/2 second line"
    notifier.reloading()
    fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
    assert fields["RELOADING"] == "1" and int(fields["MONOTONIC_USEC"]) > 0
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    assert notifier.watchdog_interval is None


def test_a_vanished_manager_is_not_fatal() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": f"@nobody-{uuid.uuid4().hex}"})
    assert not notifier.ready()
    assert notifier.errors == 1


def test_watchdog_period_and_pid() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000"}
    assert Notifier.from_env(env).watchdog_interval == 1.5
    mine = Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 1.5
    other = Notifier.from_env({**env, "WATCHDOG_PID": "1"}, pid=4242)
    assert other.watchdog_interval is None
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "zero"}).watchdog_interval is None
