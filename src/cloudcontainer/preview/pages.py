"""What the proxy answers on its own: the "starting" page, small message pages and JSON
errors."""

from __future__ import annotations

import html
import json
from http import HTTPStatus

from cloudcontainer.preview.headers import Headers, encode_head, get

STARTING_MARK = ("x-cloudcontainer-preview", "starting")

# The page lives in bolt's cross-origin-isolated iframe: no external resource, and CORP/COEP
# on the response (added by the caller) so that it renders at all (PARITY.md "Ports and previews").
_STARTING = """<!doctype html>
<html><head><meta charset="utf-8"><title>Starting…</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;color:#444;background:#fafafa;display:flex;
align-items:center;justify-content:center;height:100vh;margin:0}
main{text-align:center;max-width:32em;padding:1em}
.dot{display:inline-block;width:.6em;height:.6em;border-radius:50%;background:#888;
animation:p 1s infinite alternate}
@keyframes p{to{opacity:.2}}
small{color:#888}
</style></head>
<body><main>
<p><span class="dot"></span> Waiting for the server on port {port}…</p>
<p><small>{reason}</small></p>
</main>
<script>
(function retry() {
  setTimeout(function () {
    fetch(location.href, {cache: "no-store", credentials: "include"}).then(function (r) {
      if (r.headers.get("x-cloudcontainer-preview") === "starting") retry();
      else location.reload();
    }, retry);
  }, 1000);
})();
</script>
</body></html>
"""


def starting_page(port: int, reason: str) -> tuple[int, Headers, bytes]:
    """503 that retries by itself every second and reloads once the server answers."""
    body = (
        _STARTING.replace("{port}", str(port)).replace("{reason}", html.escape(reason))
    ).encode()
    headers: Headers = [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "no-store"),
        ("retry-after", "1"),
        STARTING_MARK,
        ("cross-origin-embedder-policy", "credentialless"),
    ]
    return 503, headers, body


def message_page(status: int, message: str) -> bytes:
    """A small self-contained page for a refused document (private, rate-limited)."""
    text = html.escape(message)
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Preview</title>"
        "<style>body{font:15px system-ui,sans-serif;color:#333;display:flex;height:100vh;"
        "margin:0;align-items:center;justify-content:center;text-align:center}</style></head>"
        f"<body><p><b>{status}</b><br>{text}</p></body></html>"
    ).encode()


def json_error(status: int, code: str, message: str) -> tuple[int, Headers, bytes]:
    """The API's error shape: `{"error": {"code", "message"}}`."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return status, [("content-type", "application/json"), ("cache-control", "no-store")], body


def render(status: int, headers: Headers, body: bytes, *, close: bool, head_only: bool) -> bytes:
    """A whole response the proxy answers itself, with CORP so it shows in bolt's iframe."""
    drop = {"content-length", "transfer-encoding", "connection"}
    out = [(k.lower(), v) for k, v in headers if k.lower() not in drop]
    if get(out, "cross-origin-resource-policy") is None:
        out.append(("cross-origin-resource-policy", "cross-origin"))
    bodiless = status in (204, 304)
    if not bodiless:
        out.append(("content-length", str(len(body))))
    if close:
        out.append(("connection", "close"))
    head = encode_head(f"HTTP/1.1 {status} {_phrase(status)}".rstrip(), out)
    return head if head_only or bodiless else head + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
