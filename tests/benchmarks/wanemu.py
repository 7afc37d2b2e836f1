"""A WAN between two network namespaces, for kernels without sch_netem: delay, loss and a rate
cap applied by a userspace packet forwarder between two TUN devices.

    client namespace (ingestd-bench)            server namespace (ingestd-bench-srv)
    10.199.0.1 dev ibwan0  <-- this process -->  10.199.0.2 dev ibwan1

Every IP packet crosses this process. Each direction is its own link, as netem on both ends
would make it: a packet is dropped with probability `loss`, else it waits its turn to be sent
at `rate` (serialization, FIFO, tail drop past `limit` packets), then arrives `delay` later.
The addresses exist only inside the two namespaces this module creates (and deletes).

Run as root: `python wanemu.py --delay-ms 40 --loss 0.5 --rate-mbit 200`. It prints
`ready` once both namespaces can talk, forwards until SIGTERM/SIGINT, then removes them.
bench.py --wan starts it when the kernel has no netem.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time

CLIENT_NS, SERVER_NS = "ingestd-bench", "ingestd-bench-srv"
CLIENT_IP, SERVER_IP = "10.199.0.1", "10.199.0.2"
_DEVICES = ("ibwan0", "ibwan1")
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def _ip(*args: str, ns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    subprocess.run([*prefix, "ip", *args], check=True)


def remove_namespaces() -> None:
    """Delete both namespaces (their devices go with them)."""
    for ns in (CLIENT_NS, SERVER_NS):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def _setup() -> tuple[int, int]:
    remove_namespaces()
    fds = (_open_tun(_DEVICES[0]), _open_tun(_DEVICES[1]))
    for ns, device, mine, peer in (
        (CLIENT_NS, _DEVICES[0], CLIENT_IP, SERVER_IP),
        (SERVER_NS, _DEVICES[1], SERVER_IP, CLIENT_IP),
    ):
        subprocess.run(["ip", "netns", "add", ns], check=True)
        _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "set", device, "netns", ns)
        _ip("addr", "add", mine, "peer", peer, "dev", device, ns=ns)
        _ip("link", "set", device, "mtu", "1500", "up", ns=ns)
    return fds


class _Link:
    """One direction: loss, then serialization at `rate`, then `delay` in flight."""

    def __init__(self, out_fd: int, delay: float, loss: float, rate: float, limit: int) -> None:
        self.out_fd = out_fd
        self._delay, self._loss, self._rate, self._limit = delay, loss, rate, limit
        self._busy_until = 0.0
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.sent = self.dropped = 0

    def offer(self, packet: bytes, now: float, rng: random.Random) -> None:
        if rng.random() < self._loss or len(self.queue) >= self._limit:
            self.dropped += 1
            return
        start = max(now, self._busy_until)
        self._busy_until = start + len(packet) * 8 / self._rate
        self.queue.append((self._busy_until + self._delay, packet))

    def deliver(self, now: float) -> None:
        queue = self.queue
        while queue and queue[0][0] <= now:
            try:
                os.write(self.out_fd, queue[0][1])
            except BlockingIOError:
                return  # the device's queue is full: try again on the next pass
            except OSError:
                pass  # the namespace went away
            queue.popleft()
            self.sent += 1


def forward(delay: float, loss: float, rate: float, limit: int, seed: int = 1) -> None:
    """Set up the namespaces, print `ready`, forward until a signal, then clean up."""
    # The namespaces have fixed names: a second emulator would tear down the first one's.
    lock = os.open("/run/ingestd-wanemu.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit("another wanemu.py is running (one WAN benchmark at a time)")
    fds = _setup()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    links = {
        fds[0]: _Link(fds[1], delay, loss, rate, limit),  # client -> server
        fds[1]: _Link(fds[0], delay, loss, rate, limit),  # server -> client
    }
    rng = random.Random(seed)
    selector = selectors.DefaultSelector()
    for fd in fds:
        selector.register(fd, selectors.EVENT_READ)
    print("ready", flush=True)
    try:
        while not stopping:
            now = time.monotonic()
            due = [link.queue[0][0] for link in links.values() if link.queue]
            timeout = max(0.0, min(due) - now) if due else 0.5
            for key, _ in selector.select(timeout):
                link = links[key.fd]
                now = time.monotonic()
                for _ in range(256):  # a burst, then deliver: neither side starves
                    try:
                        packet = os.read(key.fd, 65_536)
                    except BlockingIOError:
                        break
                    link.offer(packet, now, rng)
            now = time.monotonic()
            for link in links.values():
                link.deliver(now)
    finally:
        for fd in fds:
            os.close(fd)
        remove_namespaces()
        counts = {
            n: (lk.sent, lk.dropped) for n, lk in zip(("up", "down"), links.values(), strict=True)
        }
        print(f"forwarded (sent, dropped): {counts}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=40.0, help="one way (RTT is twice)")
    parser.add_argument("--loss", type=float, default=0.5, help="percent, each direction")
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--limit", type=int, default=10_000, help="packets queued per direction")
    args = parser.parse_args()
    forward(args.delay_ms / 1000, args.loss / 100, args.rate_mbit * 1e6, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
