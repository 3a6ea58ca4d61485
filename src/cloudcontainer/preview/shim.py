"""What the proxy adds to previews: the script injected into documents (the client's
`setPreviewScript` text and the error-forwarding shim).

The injection is one external `<script src>` at the start of `<head>` (a page's CSP that
allows its own origin's scripts allows it; an inline script would need `unsafe-inline`),
served by the proxy under `/__cloudcontainer/`. With `forwardPreviewErrors`, the shim posts
uncaught errors and unhandled rejections to the embedding page as WebContainer does; the
client (`@cloudcontainer/api`) turns them into `preview-message` events.
"""

from __future__ import annotations

__all__ = ["SCRIPT_PATH", "script", "snippet"]

SCRIPT_PATH = "/__cloudcontainer/preview.js"

_SHIM = """(function () {
  if (window.__cloudcontainerPreview) return;
  window.__cloudcontainerPreview = true;
  var port = %d;
  function post(type, message, stack) {
    try {
      window.parent.postMessage({
        __cloudcontainer: 'preview-message', type: type, message: String(message),
        stack: stack ? String(stack) : '', port: port, pathname: location.pathname,
        search: location.search, hash: location.hash
      }, '*');
    } catch (e) {}
  }
  window.addEventListener('error', function (event) {
    var error = event.error;
    post('PREVIEW_UNCAUGHT_EXCEPTION', error && error.message || event.message,
         error && error.stack);
  });
  window.addEventListener('unhandledrejection', function (event) {
    var reason = event.reason;
    post('PREVIEW_UNHANDLED_REJECTION', reason && reason.message || String(reason),
         reason && reason.stack);
  });
})();
"""


def snippet() -> bytes:
    """What goes right after `<head>`."""
    return f'<script src="{SCRIPT_PATH}"></script>'.encode()


def script(registered: str, forward_errors: bool, port: int) -> bytes:
    parts = [_SHIM % port] if forward_errors else []
    if registered:
        parts.append(registered)
    return "\n".join(parts).encode()
