"""Refuse request bodies over the configured size with 413, without reading them whole."""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudcontainer.api.errors import error_response

__all__ = ["BodySizeLimitMiddleware"]

TOO_LARGE = "The request body is larger than this server accepts."
_FILE_ROUTE = re.compile(r"^/api/containers/[^/]+/(files|archive)(/|$)")


class BodySizeLimitMiddleware:
    """Answers 413 at once for a too-large `Content-Length`; counts streamed bodies as they come."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_file_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_file_bytes = max_file_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = None, False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is None and not chunked:  # HTTP/1.1: no body at all (most GETs)
            await self.app(scope, receive, send)
            return
        # File and archive uploads carry whole files; every other body is a small JSON document.
        is_file = _FILE_ROUTE.match(scope["path"]) is not None
        limit = self.max_file_bytes if is_file else self.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status, code = (
                (413, "payload_too_large") if declared.isdigit() else (400, "bad_request")
            )
            message = TOO_LARGE if status == 413 else "Content-Length is not a number."
            await error_response(status, code, message)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the app's body read; the error handlers render it as 413.
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, counting_receive, send)
