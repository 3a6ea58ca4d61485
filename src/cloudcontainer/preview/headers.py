"""Header rules: what the proxy changes on the way up and on the way back (PREVIEWS.md A, B)."""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[str, str]]

# RFC 9110 7.6.1: never forwarded; Transfer-Encoding is re-framed by the proxy itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Next.js >= 16.2 (vercel/next.js#91507) answers 403 on these paths to a non-localhost Origin.
_REPLACED = frozenset({"x-forwarded-proto", "x-forwarded-host"})
_NEXT_DEV_MARKS = ("/_next", "/__nextjs")
_NEXT_OPEN_PREFIXES = ("/_next/image", "/_next/static/media")


def get(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of `name` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """The lower-cased tokens of every `Connection` header."""
    return {
        token.strip().lower()
        for key, value in headers
        if key == "connection"
        for token in value.split(",")
        if token.strip()
    }


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers and those named by `Connection`."""
    named = connection_tokens(headers) | HOP_BY_HOP
    return [(k, v) for k, v in headers if k not in named]


def strip_cc_cookies(value: str) -> str:
    """`value` of a Cookie header without the gateway's own `cc_*` cookies."""
    kept = [part.strip() for part in value.split(";")]
    return "; ".join(p for p in kept if p and not p.split("=", 1)[0].strip().startswith("cc_"))


def next_dev_path(path: str) -> bool:
    """Whether Next's dev-origin check guards `path`."""
    if path.startswith(_NEXT_OPEN_PREFIXES):
        return False
    return any(mark in path for mark in _NEXT_DEV_MARKS)


def upstream_request_headers(
    headers: Iterable[tuple[str, str]],
    *,
    path: str,
    client_ip: str,
    scheme: str,
    upstream_port: int,
    identity: bool,
    websocket: bool,
) -> Headers:
    """The request headers sent upstream, with every rule of PREVIEWS.md A applied."""
    source = list(headers)
    host = get(source, "host") or ""
    out: Headers = []
    forwarded_for: str | None = None
    for key, value in strip_hop_by_hop(source):
        if key == "cookie":
            value = strip_cc_cookies(value)
            if not value:
                continue
        elif key == "x-forwarded-for":
            forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        elif key in _REPLACED or (key == "accept-encoding" and identity):
            continue
        elif key == "origin" and value == f"{scheme}://{host}" and next_dev_path(path):
            value = f"http://localhost:{upstream_port}"
        out.append((key, value))
    out.append(("x-forwarded-for", f"{forwarded_for}, {client_ip}" if forwarded_for else client_ip))
    out.append(("x-forwarded-proto", scheme))
    if host:
        out.append(("x-forwarded-host", host))
    if identity:
        out.append(("accept-encoding", "identity"))
    if websocket:
        out.extend((("connection", "Upgrade"), ("upgrade", get(source, "upgrade") or "websocket")))
    return out


def _without_frame_ancestors(policy: str) -> str:
    directives = [d.strip() for d in policy.split(";")]
    return "; ".join(
        d for d in directives if d and d.split(None, 1)[0].lower() != "frame-ancestors"
    )


def is_html(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether the response is `text/html`."""
    value = get(headers, "content-type") or ""
    return value.split(";", 1)[0].strip().lower() == "text/html"


def client_response_headers(
    headers: Headers,
    *,
    coep: str | None,
    extra: Iterable[tuple[str, str]],
    origin: str | None,
    cors_origins: frozenset[str],
) -> Headers:
    """The response headers sent to the browser (PREVIEWS.md B, plus CORS between own ports)."""
    html = is_html(headers)
    out: Headers = []
    for key, value in headers:
        if key in ("cross-origin-resource-policy", "x-frame-options"):
            continue
        if key == "cross-origin-embedder-policy" and html and coep is not None:
            continue
        if key == "content-security-policy":
            value = _without_frame_ancestors(value)
            if not value:
                continue
        out.append((key, value))
    out.append(("cross-origin-resource-policy", "cross-origin"))
    if html and coep is not None:
        out.append(("cross-origin-embedder-policy", coep))
    out.extend(extra)
    if origin and origin in cors_origins and get(headers, "access-control-allow-origin") is None:
        out.extend(cors_headers(origin))
    return out


def cors_headers(origin: str) -> Headers:
    """What lets a container's other port read this one's responses with credentials."""
    return [
        ("access-control-allow-origin", origin),
        ("access-control-allow-credentials", "true"),
        ("vary", "Origin"),
    ]


def encode_head(first_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A message head on the wire; values go back out as latin-1, as they came."""
    lines = [first_line, *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
