"""The connect-time address guard under httpx: refusal happens before any TCP connection.

Only loopback is used: a listening socket on 127.0.0.1 that must see no connection when the
policy refuses, and exactly one when a listed host is allowed.
"""

import socket
from collections.abc import Iterator

import pytest

from ingestd.net.fetch import Fetcher, FetchFailed, HttpSettings, _GuardedBackend, _HostPolicy
from ingestd.policy.retry import Reason


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def accepted(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


async def test_backend_refuses_names_resolving_to_loopback(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    backend = _GuardedBackend(_HostPolicy(()))
    for host in ("localhost", "127.0.0.1"):
        with pytest.raises(Exception, match="non-public"):
            await backend.connect_tcp(host, port, timeout=5.0)
    assert accepted(listener) == 0


async def test_backend_refuses_hosts_outside_the_allowlist(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    backend = _GuardedBackend(_HostPolicy(("localhost",)))
    with pytest.raises(Exception, match="not in allowed_hosts"):
        await backend.connect_tcp("127.0.0.1", port, timeout=5.0)
    assert accepted(listener) == 0
    stream = await backend.connect_tcp("localhost", port, timeout=5.0)
    await stream.aclose()


async def test_fetcher_refuses_loopback_without_allowlist(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    settings = HttpSettings(True, 5.0, "ua", "https://ref/", None, 4, ())
    fetcher = Fetcher(settings)
    try:
        for url in (f"https://localhost:{port}/v.mp4?sig=1", f"http://127.0.0.2:{port}/v.mp4"):
            with pytest.raises(FetchFailed) as info:
                async with fetcher.get(url, {}):
                    pass
            assert info.value.reason is Reason.UNSAFE_URL
    finally:
        await fetcher.aclose()
    assert accepted(listener) == 0
