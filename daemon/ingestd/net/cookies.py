"""The cookies of `cookies_file`: a Netscape cookies.txt (as browsers and yt-dlp export it) read
by the standard library's MozillaCookieJar, and the Cookie header each request gets from it.

Which cookies a URL gets is the jar's own policy (http.cookiejar.DefaultCookiePolicy): domain
and path matching, Secure cookies over https only, expired cookies never. Nothing here parses
the file or matches domains by hand. Responses' Set-Cookie are never stored: the file is the
only source, so what is sent is what the operator put there. Standard library only: the CLI
loads the file before the daemon starts.

Cookie values are secrets: no message built here quotes one (the standard library's own
parse errors quote the offending line, so they are replaced, never chained).
"""

from __future__ import annotations

import os
import re
import stat
import time
import urllib.request
import warnings
from http.cookiejar import CookieJar, DefaultCookiePolicy, LoadError, MozillaCookieJar
from pathlib import Path

MAX_COOKIES_FILE_BYTES = 1024 * 1024
# What a Cookie header can carry: printable ASCII, no ';' (it separates cookies); a name has no
# '=' or space either.
_VALUE = re.compile(r"[\x20-\x3a\x3c-\x7e]*")
_NAME = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")


class CookieFileError(Exception):
    """The cookies file cannot be used; the message names the path, never a cookie value."""


def load_cookie_jar(path: Path) -> MozillaCookieJar:
    """Read a Netscape cookies.txt. Session cookies are kept (an empty expiry, or 0 as yt-dlp
    and browser extensions write it); expired ones are loaded but never sent. Raises
    CookieFileError."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise CookieFileError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CookieFileError(f"{path} is not a regular file")
    if info.st_size > MAX_COOKIES_FILE_BYTES:
        raise CookieFileError(f"{path} is larger than {MAX_COOKIES_FILE_BYTES} bytes")
    # cookies.txt's second column says whether a cookie goes to subdomains too. The standard
    # policy's own DomainStrictNonDomain flag honours FALSE as browsers do: such a cookie goes
    # to its host alone (by default, Netscape rules would send one of 127.0.0.1 to
    # 10.127.0.0.1, and one of cdn.example.com to any host under it).
    policy = DefaultCookiePolicy(strict_ns_domain=DefaultCookiePolicy.DomainStrictNonDomain)
    jar = MozillaCookieJar(policy=policy)
    try:
        with warnings.catch_warnings():
            # On a malformed line the jar warns "http.cookiejar bug!" with a traceback before it
            # raises LoadError: the error below says it, once, without the line. (The filter
            # is process-wide while the file is read: a reload reads it in a worker thread,
            # where at worst another thread's warning goes unshown meanwhile.)
            warnings.simplefilter("ignore")
            jar.load(str(path), ignore_discard=True, ignore_expires=True)
    except (LoadError, ValueError):  # ValueError: the first line is not text in the locale's
        raise CookieFileError(f"{path} is not a Netscape cookies.txt file") from None
    except OSError as exc:  # after LoadError, which is one
        raise CookieFileError(f"{path}: {exc.strerror or 'cannot be read'}") from None
    for cookie in jar:
        if cookie.expires == 0:  # a session cookie, as yt-dlp writes it
            cookie.expires = None
            cookie.discard = True
        if not _NAME.fullmatch(cookie.name) or not _VALUE.fullmatch(cookie.value or ""):
            raise CookieFileError(
                f"{path}: a cookie for {cookie.domain} has characters a Cookie header cannot"
                " carry (only printable ASCII, no ';')"
            )
    return jar


def cookie_header(jar: CookieJar, url: str) -> str | None:
    """The Cookie header for a GET of `url`, as the jar's policy decides, or None."""
    try:
        request = urllib.request.Request(url)  # noqa: S310 - never opened, only matched
    except ValueError:
        return None
    jar.add_cookie_header(request)
    return request.get_header("Cookie")


def _contents(jar: CookieJar | None) -> list[tuple[object, ...]]:
    # Expired cookies are left out: the jar drops them itself as requests go out.
    if jar is None:
        return []
    now = int(time.time())
    return sorted(
        (c.domain, c.path, c.name, c.value or "", c.secure, c.expires or 0)
        for c in jar
        if not c.is_expired(now)
    )


def same_cookies(one: CookieJar | None, other: CookieJar | None) -> bool:
    """Whether two jars hold the same cookies (a reload says when they changed)."""
    return (one is None) == (other is None) and _contents(one) == _contents(other)
