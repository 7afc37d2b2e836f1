"""Waiting on a process's long-running tasks: until a stop is asked for or one of them ends."""

from __future__ import annotations

import asyncio


async def until_stopped(
    stop: asyncio.Event, tasks: list[asyncio.Task[None]]
) -> list[tuple[str, BaseException]]:
    """Wait for `stop`, or for any of `tasks` to end; return the name and exception of each task
    that ended by raising (none: a stop, or a task that returned)."""
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    crashed = []
    for task in done:
        if task is not stopper and not task.cancelled():
            error = task.exception()
            if error is not None:
                crashed.append((task.get_name(), error))
    return crashed
