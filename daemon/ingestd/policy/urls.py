"""URL policy: which URLs may be fetched, which addresses may be connected to, expiry, redaction."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_URL_LENGTH = 8192
_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # controls and space: never in a URL we send
EXPIRY_PARAMS = frozenset({"expire", "x-expires", "vexpiration"})
# Epochs above this are taken to be milliseconds (year 5138 in seconds).
_MILLIS_THRESHOLD = 100_000_000_000
# What follows "expir" in each of EXPIRY_PARAMS (past_expiry looks at no more of the key).
_EXPIRY_TAILS = ("expire=", "expires=", "expiration=")
# Each such value's digits, and the character after them unless it ends the value.
_EXPIRY_VALUES = re.compile(r"expir(?:e|es|ation)=([0-9]*[^0-9&\n]?)")


@dataclass(frozen=True, slots=True)
class UrlVerdict:
    """Whether a URL may be requested, and whether its host's addresses still need checking."""

    allowed: bool
    reason: str = ""
    check_addresses: bool = False
    host: str = ""


def normalize_host(host: str) -> str:
    """Lower-case a host name and drop a trailing dot and IPv6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def host_matches(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    """True when `host` equals an entry, or is a strict subdomain of a `*.suffix` entry."""
    host = normalize_host(host)
    for entry in allowed_hosts:
        pattern = normalize_host(entry)
        if pattern.startswith("*."):
            suffix = pattern[1:]  # ".example.com"
            if host.endswith(suffix) and len(host) > len(suffix):
                return True
        elif host == pattern:
            return True
    return False


def address_is_public(address: str) -> bool:
    """True only for globally routable unicast addresses (no loopback, private, link-local...)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
        elif ip.teredo is not None:
            ip = ip.teredo[1]
    return bool(ip.is_global) and not ip.is_multicast and not ip.is_reserved


def _literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_url(url: str, allowed_hosts: tuple[str, ...]) -> UrlVerdict:
    """Decide whether `url` may be requested under the host policy.

    With `allowed_hosts` set, only listed hosts pass (they may resolve anywhere). Without it,
    any host passes here but its resolved addresses must all be public (`check_addresses`).
    """
    if len(url) > MAX_URL_LENGTH:
        return UrlVerdict(False, "url_too_long")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return UrlVerdict(False, "malformed_url")
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return UrlVerdict(False, "scheme_not_allowed")
    if not host:
        return UrlVerdict(False, "no_host")
    if parts.username is not None or parts.password is not None:
        return UrlVerdict(False, "credentials_in_url")
    if not sendable(url):
        return UrlVerdict(False, "control_characters")
    host = normalize_host(host)
    if allowed_hosts:
        if host_matches(host, allowed_hosts):
            return UrlVerdict(True, host=host)
        return UrlVerdict(False, "host_not_allowed", host=host)
    if host == "localhost" or host.endswith(".localhost"):
        return UrlVerdict(False, "non_public_address", host=host)
    if _literal_ip(host) and not address_is_public(host):
        return UrlVerdict(False, "non_public_address", host=host)
    return UrlVerdict(True, check_addresses=True, host=host)


def sendable(url: str) -> bool:
    """Whether `url` is free of control characters and spaces (a request line cannot carry
    them; check_url refuses such a URL as `control_characters`)."""
    return _CONTROL.search(url) is None


def url_expiry(url: str) -> int | None:
    """The epoch second at which a signed URL expires (`expire`, `x-expires`, `VExpiration`)."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    # parse_qsl's reading, but only the keys, and unquoting only what needs it: signed CDN
    # URLs carry twenty-odd parameters, and this runs for every transfer.
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if not eq or not value:
            continue
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        if key.lower() in EXPIRY_PARAMS:
            value = unquote_plus(value).strip()
            if value.isascii() and value.isdigit() and len(value) <= 16:
                return _seconds(int(value))
    return None


def is_expired(url: str, now: float) -> bool:
    """True when the URL carries an expiry that is already in the past."""
    expiry = url_expiry(url)
    return expiry is not None and expiry <= now


def expired_at(url: str, now: float) -> str | None:
    """When a signed URL expired, as ISO 8601 UTC (`2026-11-26T09:00:00Z`): its own expiry, if
    it carries one that has passed by `now`; else None (not known when it died)."""
    expiry = url_expiry(url)
    if expiry is None or expiry > now:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry))
    except (OverflowError, OSError, ValueError):  # an expiry before the epoch, say
        return None


def may_be_past(urls: Iterable[str], now: float) -> bool:
    """False when no URL of `urls` is past its expiry at `now` (past_expiry would say None for
    each); True when some may be. A merge asks this of its new records 500 at a time: a few
    scans in C of their text together, where past_expiry is a Python call per URL."""
    values = _EXPIRY_VALUES.findall("\n".join(urls).lower())
    if not values:
        return False
    digits = "".join(values)
    lengths = set(map(len, values))
    if not (digits.isascii() and digits.isdigit()) or min(lengths) == 0 or max(lengths) > 11:
        return True  # not a plain number of seconds: look closer
    # Of digit strings of one length, the smallest as text is the smallest as a number.
    return (int(min(values)) if len(lengths) == 1 else min(map(int, values))) <= now


def past_expiry(url: str, now: float) -> int | None:
    """The URL's expiry (url_expiry) when it is at or before `now`, else None.

    A merge asks this of every new record, so a URL whose expiry keys all carry a plain future
    epoch is told apart by a scan, several times cheaper than reading its query; any other URL
    with an expiry key is read exactly. A key only written percent-encoded ("%65xpire") is
    missed here: the download path's is_expired still refuses such a URL before any request."""
    lowered = url.lower()
    at = lowered.find("expir")  # in each of the keys
    while at >= 0:
        for tail in _EXPIRY_TAILS:
            if lowered.startswith(tail, at):
                start = at + len(tail)
                end = lowered.find("&", start)
                value = lowered[start:end] if end >= 0 else lowered[start:]
                plain = value.isascii() and value.isdigit() and len(value) <= 16
                if not plain or _seconds(int(value)) <= now:
                    expiry = url_expiry(url)
                    return expiry if expiry is not None and expiry <= now else None
                break
        at = lowered.find("expir", at + 5)
    return None


def _seconds(epoch: int) -> int:
    return epoch // 1000 if epoch > _MILLIS_THRESHOLD else epoch


def fresher_url(current: str, incoming: str) -> str:
    """Of two URLs for one video, the one to keep: the later expiry wins, ties go to incoming."""
    a, b = url_expiry(current), url_expiry(incoming)
    if a is not None and b is not None and b < a:
        return current
    return incoming


def redact(url: str) -> str:
    """Scheme, host and path only: never the signed query string or credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<malformed-url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def parse_loopback_address(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) on loopback, or ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    host = host.strip("[]")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"metrics are served on loopback only, got {host!r}")
    return host, int(port)


def origin_of(url: str) -> str:
    """The origin a URL's requests go to, `host:port`: the key of host health, in the pool and
    in the manifest's SQL alike. By hand, not urlsplit: it runs several times per file."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ""
    netloc = rest.partition("/")[0].partition("?")[0].partition("#")[0].rpartition("@")[2]
    if netloc.startswith("["):
        host, _, tail = netloc[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = netloc.partition(":")
    if not port:
        port = "443" if scheme.lower() == "https" else "80"
    elif not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return ""
    return f"{host.lower()}:{int(port)}"
