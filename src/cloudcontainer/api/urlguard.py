"""Refuse a request whose URL carries a NUL character with 400, before any route sees it."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from cloudcontainer.api.errors import error_response

__all__ = ["NulInUrlMiddleware"]


class NulInUrlMiddleware:
    """No resource is named with a NUL, and PostgreSQL refuses text holding one.

    Without this, `/api/projects/%00` reached the database as a path parameter and failed there
    with a 500 on PostgreSQL (SQLite answered 404).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = error_response(400, "bad_request", "The URL contains a NUL character.")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
