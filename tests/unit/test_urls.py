"""URL and address policy as pure functions: no connection is ever made here."""

import random
from urllib.parse import parse_qsl, urlsplit

import pytest

from ingestd.policy.urls import (
    address_is_public,
    check_url,
    fresher_url,
    host_matches,
    is_expired,
    may_be_past,
    past_expiry,
    redact,
    url_expiry,
)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fc00::1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:0001::",  # 6to4 wrapping 127.0.0.1
        "not-an-ip",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not address_is_public(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_is_public(address)


def test_host_matching_exact_and_wildcard() -> None:
    allowed = ("cdn.example.com", "*.tiktokcdn-us.com")
    assert host_matches("cdn.example.com", allowed)
    assert host_matches("CDN.Example.com.", allowed)
    assert host_matches("v77.tiktokcdn-us.com", allowed)
    assert host_matches("a.b.tiktokcdn-us.com", allowed)
    assert not host_matches("tiktokcdn-us.com", allowed)
    assert not host_matches("eviltiktokcdn-us.com", allowed)
    assert not host_matches("example.com", allowed)


def test_check_url_with_allowlist() -> None:
    allowed = ("localhost",)
    assert check_url("https://localhost:8443/v/1.mp4?x=1", allowed).allowed
    verdict = check_url("https://127.0.0.1:8443/v/1.mp4", allowed)
    assert not verdict.allowed and verdict.reason == "host_not_allowed"
    # A listed host may resolve anywhere: no address check is requested.
    assert not check_url("https://localhost/", allowed).check_addresses


def test_check_url_without_allowlist() -> None:
    ok = check_url("https://v77.tiktokcdn-us.com/video/?a=1", ())
    assert ok.allowed and ok.check_addresses
    for url, reason in [
        ("ftp://cdn.example.com/x", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("https:///nohost", "no_host"),
        ("https://user:pw@cdn.example.com/", "credentials_in_url"),
        ("https://localhost/x", "non_public_address"),
        ("https://127.0.0.1/x", "non_public_address"),
        ("https://[::1]/x", "non_public_address"),
        ("http://169.254.169.254/latest/meta-data", "non_public_address"),
        ("https://cdn.example.com:99999/", "malformed_url"),
        ("https://cdn.example.com/a b", "control_characters"),
        ("https://cdn.example.com/" + "a" * 9000, "url_too_long"),
    ]:
        verdict = check_url(url, ())
        assert not verdict.allowed, url
        assert verdict.reason == reason, url


def test_expiry_parsing() -> None:
    assert url_expiry("https://h/p?a=1&expire=1795759200&b=2") == 1795759200
    assert url_expiry("https://h/p?x-expires=1700000000") == 1700000000
    assert url_expiry("https://h/p?VExpiration=1700000000") == 1700000000
    assert url_expiry("https://h/p?expire=1795759200000") == 1795759200  # milliseconds
    assert url_expiry("https://h/p?expire=soon") is None
    assert url_expiry("https://h/p") is None
    assert is_expired("https://h/p?expire=100", now=200)
    assert not is_expired("https://h/p?expire=300", now=200)
    assert not is_expired("https://h/p", now=200)


def test_fresher_url_prefers_later_expiry() -> None:
    old = "https://h/p?expire=100"
    new = "https://h/p?expire=200"
    assert fresher_url(old, new) == new
    assert fresher_url(new, old) == new
    assert fresher_url("https://h/a", "https://h/b") == "https://h/b"


def test_redact_drops_query_and_credentials() -> None:
    url = "https://user:pw@v77.tiktokcdn-us.com:8443/video/o1/?signature=abc&expire=1"
    assert redact(url) == "https://v77.tiktokcdn-us.com:8443/video/o1/"
    assert "signature" not in redact("https://h/p?signature=s")
    assert redact("https://[::1]:9/x?y") == "https://[::1]:9/x"


def test_expiry_fast_path_reads_queries_as_parse_qsl_does() -> None:
    def reference(url: str) -> int | None:
        for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=False):
            if key.lower() in {"expire", "x-expires", "vexpiration"}:
                value = value.strip()
                if value.isascii() and value.isdigit() and len(value) <= 16:
                    epoch = int(value)
                    return epoch // 1000 if epoch > 100_000_000_000 else epoch
        return None

    rng = random.Random(5)
    pieces = ["expire", "X-Expires", "VExpiration", "a", "=", "&", "1700000000", "17", " ", "+"]
    pieces += ["%65", "%3D", "%26", "1795759200000", "x", "", "==", "&&"]
    for _ in range(5000):
        query = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        url = f"https://cdn.example/v.mp4?{query}"
        assert url_expiry(url) == reference(url), url


def test_dead_urls_at_merge_are_found_as_url_expiry_finds_them() -> None:
    # past_expiry (per URL) and may_be_past (500 URLs at a time) are the merge's cheap look for
    # dead URLs: never "dead" where url_expiry says alive, and never "none dead" where
    # past_expiry would find one. Only an expiry key written percent-encoded escapes them.
    now = 1_700_000_000
    rng = random.Random(11)
    keys = ["expire", "X-Expires", "VExpiration", "EXPIRE", "expires", "xexpire", "expiration"]
    values = ["1699999999", "1700000001", "1699999999000", "1700000001000", "17", "", "12a"]
    values += ["%31%37", "+1700000001", "99999999999", "999999999999", "1" * 17]
    other = ["a=1", "cd=0%7C0", "b=expire", "=", "&", "#f", "?", "x=1+2", "l=\u00e9"]
    bases = ["https://h/v.mp4?", "https://h/expire=1/v?", "?"]
    urls = []
    for _ in range(20_000):
        parts = [
            rng.choice(other) if rng.random() < 0.5 else f"{rng.choice(keys)}={rng.choice(values)}"
            for _ in range(rng.randint(0, 5))
        ]
        urls.append(rng.choice(bases) + "&".join(parts))
    found = 0
    for url in urls:
        exact = url_expiry(url)
        dead = past_expiry(url, now)
        if dead is not None:
            found += 1
            assert dead == exact and exact <= now, url
        elif exact is not None and exact <= now:
            assert "%" in url, f"{url}: dead ({exact}), not found"
    assert found > 1_000
    for start in range(0, len(urls), 50):
        batch = urls[start : start + 50]
        if not may_be_past(batch, now):
            assert all(past_expiry(url, now) is None for url in batch), batch
    assert not may_be_past([f"https://h/{i}?expire={now + i + 1}" for i in range(500)], now)
    assert may_be_past([f"https://h/{i}?expire={now + i}" for i in range(500)], now)
    assert not may_be_past(["https://h/v", "https://h/w?e=1"], now)


def test_origin_of_agrees_with_urlsplit() -> None:
    from urllib.parse import urlsplit

    from ingestd.policy.urls import origin_of

    def reference(url: str) -> str:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            return ""
        return f"{(parts.hostname or '').lower()}:{port}"

    for url in [
        "https://V16.TikTok.com/v/1.mp4?x=1",
        "http://a.b:8080/x",
        "https://[::1]:8443/x",
        "https://[::1]/x",
        "https://u:p@h.com:99/x",
        "https://h.com?x=1",
        "https://h.com#f",
        "https://localhost:44997/v/a.mp4?expire=1&signature=x",
        "https://h:99999/x",
        "https://h:abc/x",
    ]:
        assert origin_of(url) == reference(url), url
