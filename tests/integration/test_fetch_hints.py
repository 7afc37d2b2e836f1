"""Failures that carry a hint for the operator, through every HTTP stack net.fetch drives.

Only loopback: a real HTTPS origin whose CA the client is not told about, and names that
resolve to loopback ("127.1" passes the URL check as a name, and resolves to 127.0.0.1).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestd.net.fetch import Fetcher, FetchFailed, HttpSettings
from ingestd.policy.retry import HINT_CA_BUNDLE, HINT_NON_PUBLIC, HINT_NOT_ALLOWED, Reason
from support.origin import OriginServer

STACKS = [
    pytest.param(True, "builtin", id="our-http2"),
    pytest.param(True, "h2", id="httpx-h2"),
    pytest.param(False, "builtin", id="httpx-http1.1"),
]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    server = OriginServer(tmp_path_factory.mktemp("hint-origin"))
    server.start()
    yield server
    server.stop()


def fetcher(http2: bool, client: str, ca: Path | None, allowed: tuple[str, ...]) -> Fetcher:
    return Fetcher(
        HttpSettings(http2, 5.0, "ingestd-test", "https://r/", ca, 4, allowed, http2_client=client)
    )


async def failure(f: Fetcher, url: str) -> FetchFailed:
    try:
        with pytest.raises(FetchFailed) as info:
            async with f.get(url, {}):
                pass
    finally:
        await f.aclose()
    return info.value


@pytest.mark.parametrize(("http2", "client"), STACKS)
async def test_an_untrusted_certificate_hints_at_ca_bundle(
    origin: OriginServer, http2: bool, client: str
) -> None:
    f = fetcher(http2, client, None, ("localhost",))
    refused = await failure(f, origin.url("untrusted"))
    assert refused.reason is Reason.UNREACHABLE
    assert "CERTIFICATE_VERIFY_FAILED" in refused.detail, refused.detail
    assert refused.hint == HINT_CA_BUNDLE
    assert origin.request_count("untrusted") == 0


@pytest.mark.parametrize(("http2", "client"), STACKS)
async def test_other_connect_failures_carry_no_hint(
    origin: OriginServer, http2: bool, client: str
) -> None:
    # A name the certificate does not cover: trusting another CA would not help.
    f = fetcher(http2, client, Path(origin.ca_pem_path), ("127.0.0.2",))
    refused = await failure(f, origin.url("other-name", host="127.0.0.2"))
    assert refused.reason is Reason.UNREACHABLE and refused.hint == "", refused


@pytest.mark.parametrize(("http2", "client"), STACKS)
async def test_a_name_resolving_to_loopback_hints_at_allowed_hosts(
    origin: OriginServer, http2: bool, client: str
) -> None:
    f = fetcher(http2, client, Path(origin.ca_pem_path), ())
    refused = await failure(f, origin.url("guarded", host="127.1"))
    assert refused.reason is Reason.UNSAFE_URL
    assert refused.detail == (
        "non_public_address: 127.1 resolves to a non-public address (127.0.0.1)"
    )
    assert refused.hint == HINT_NON_PUBLIC
    f = fetcher(http2, client, Path(origin.ca_pem_path), ("localhost",))
    refused = await failure(f, origin.url("guarded", host="127.1"))
    assert refused.reason is Reason.UNSAFE_URL and refused.hint == HINT_NOT_ALLOWED
    assert origin.request_count("guarded") == 0
