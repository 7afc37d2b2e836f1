"""WATCHDOG=1 comes from the event loop itself: a blocked loop sends none."""

import asyncio
import itertools
import socket
import threading
import time
import uuid
from pathlib import Path

from ingestd.config import load_config
from ingestd.log import get_logger
from ingestd.notify import Notifier
from ingestd.service.daemon import Daemon


async def test_pings_at_half_the_timeout_and_none_from_a_blocked_loop(tmp_path: Path) -> None:
    name = f"@ingestd-wd-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(0.05)
    stamps: list[float] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                if sock.recv(64) == b"WATCHDOG=1":
                    stamps.append(time.monotonic())
            except TimeoutError:
                pass

    reader = threading.Thread(target=receive)
    reader.start()
    config = load_config(env={}, overrides={"data_dir": tmp_path, "state_dir": tmp_path})
    notifier = Notifier(name, watchdog_usec=200_000)  # pings every 0.1 s
    task = asyncio.create_task(Daemon(config, get_logger(), notifier)._watchdog())
    try:
        await asyncio.sleep(0.6)
        blocked_from = time.monotonic()
        time.sleep(1.0)  # the loop is blocked: no ping may be sent now
        blocked_to = time.monotonic()
        await asyncio.sleep(0.6)
    finally:
        task.cancel()
        done.set()
        reader.join(timeout=5)
        sock.close()
        notifier.close()
    before = [t for t in stamps if t < blocked_from]
    during = [t for t in stamps if blocked_from + 0.05 < t < blocked_to - 0.05]
    after = [t for t in stamps if t > blocked_to]
    assert len(before) >= 4, stamps
    assert during == []
    assert len(after) >= 4
    gaps = [b - a for a, b in itertools.pairwise(before)]
    assert all(0.05 < g < 0.3 for g in gaps), gaps
