"""A host name that does not resolve is the host's failure, not the item's: proven by injecting
a resolver failure into the network backend (the event loop's getaddrinfo), never real DNS."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from ingestd.net.fetch import Fetcher, FetchFailed, HttpSettings
from ingestd.policy.hosts import HostHealth
from ingestd.policy.retry import HOST_FAULTS, Action, Failure, Reason, RetryPolicy, decide


def settings(http2: bool) -> HttpSettings:
    return HttpSettings(
        http2=http2,
        timeout=2.0,
        user_agent="test",
        referer="https://example.test/",
        ca_bundle=None,
        max_connections=4,
        allowed_hosts=(),  # addresses are checked at connect time: the resolver is asked
    )


@pytest.mark.parametrize("http2", [True, False], ids=["http2", "httpx"])
async def test_a_name_that_does_not_resolve_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, http2: bool
) -> None:
    asked: list[str] = []

    async def no_such_name(host: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_name)
    fetcher = Fetcher(settings(http2))
    try:
        with pytest.raises(FetchFailed) as failed:
            async with fetcher.get("https://cdn.example.invalid/v/1.mp4?expire=1", {}):
                pass
    finally:
        await fetcher.aclose()
    assert asked == ["cdn.example.invalid"]
    assert failed.value.reason is Reason.UNREACHABLE and failed.value.reason in HOST_FAULTS
    assert "resolve" in failed.value.detail or "Name or service" in failed.value.detail
    assert "expire" not in failed.value.detail

    # What the pool then does with it: no attempt spent, and the host cools down.
    decision = decide(Failure(failed.value.reason), 5, RetryPolicy(5, 1.0, 60.0), 0.5)
    assert (decision.action, decision.count_attempt) == (Action.RETRY, False)
    hosts = HostHealth(backoff_base=1.0, backoff_max=900.0, slots=8)
    events = []
    for now in (0.0, 1.0):
        assert hosts.admit("cdn.example.invalid:443", now, "item") is None
        events.append(
            hosts.finished(
                "cdn.example.invalid:443",
                now,
                "item",
                host_fault=True,
                reason=decision.reason.value,
            )
        )
    assert events[0] is None and events[1] is not None
    assert events[1].event == "host_unavailable" and events[1].reason == "unreachable"
