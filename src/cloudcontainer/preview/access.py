"""Who may see a private preview: the token in its URL, the cookie it becomes, the rate limit.

A private port's URL carries `?cc_token=…` (derived from the port's secret with the signing
key, so the database alone cannot give it away). The first navigation with it is answered
with a redirect to the same URL without the token and a cookie named for the port
(`cc_pt_<external port>`, HttpOnly): the address bar, the app's `location` and its Referer
headers never hold the token. Cookies ignore ports, so every `cc_*` cookie is stripped
before a request reaches any app (the proxy does it) — one tenant's dev server never sees
another's. On plain http the cookie is `SameSite=Lax`, which a page of the same host (any
port) can embed; a page of another site cannot get it sent at all, so over plain http such
embeddings need a public port, and with TLS on the preview listeners the cookie is
`SameSite=None; Secure; Partitioned` (docs/previews.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl

__all__ = [
    "COOKIE_PREFIX",
    "TOKEN_PARAM",
    "RateLimiter",
    "cookie_header",
    "cookie_name",
    "cookie_value",
    "find_cookie",
    "split_token",
    "token",
]

TOKEN_PARAM = "cc_token"  # noqa: S105 (the name of a query parameter)
COOKIE_PREFIX = "cc_pt_"
COOKIE_MAX_AGE = 7 * 24 * 3600


def _derive(key: bytes, purpose: str, secret: str) -> str:
    digest = hmac.new(key, f"{purpose}:{secret}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token(key: bytes, secret: str) -> str:
    """The token a private port's URL carries."""
    return _derive(key, "preview-token", secret)


def cookie_value(key: bytes, secret: str) -> str:
    """What the port's cookie holds: not the token, so a cookie never becomes a link."""
    return _derive(key, "preview-cookie", secret)


def cookie_name(external_port: int) -> str:
    return f"{COOKIE_PREFIX}{external_port}"


def cookie_header(external_port: int, value: str, *, secure: bool) -> str:
    """The Set-Cookie value for a port (see the module's docstring for the SameSite rule)."""
    site = "SameSite=None; Secure; Partitioned" if secure else "SameSite=Lax"
    return (
        f"{cookie_name(external_port)}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; {site}"
    )


def find_cookie(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie headers."""
    for header, value in headers:
        if header != "cookie":
            continue
        for part in value.split(";"):
            key, sep, found = part.strip().partition("=")
            if sep and key == name:
                return found
    return None


def split_token(target: str) -> tuple[str, str | None]:
    """(the request-target without its `cc_token` parameters, the token) — the rest of the
    query is kept byte for byte, in order."""
    path, sep, query = target.partition("?")
    if not sep or TOKEN_PARAM not in query:
        return target, None
    kept: list[str] = []
    found: str | None = None
    for part in query.split("&"):
        name, _, _ = part.partition("=")
        if name == TOKEN_PARAM:
            pairs = parse_qsl(part, keep_blank_values=True)
            found = pairs[0][1] if pairs else ""
        else:
            kept.append(part)
    return (f"{path}?{'&'.join(kept)}" if kept else path), found


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class RateLimiter:
    """A token bucket per client address: `rate` requests a second on average, bursts of up
    to `burst` (a dev server's first page load fetches hundreds of modules at once). The
    number of clients tracked is bounded; the least recently seen are forgotten first."""

    def __init__(self, rate: float, burst: int, *, clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.rate = rate
        self.burst = float(burst)
        self._clients = clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens, since = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._clients:
            self._buckets.popitem(last=False)
        return allowed
