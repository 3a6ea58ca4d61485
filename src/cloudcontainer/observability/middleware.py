"""Per-request context: a request id, one access-log line, and the HTTP metrics."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudcontainer.internals.fastapi import route_template
from cloudcontainer.observability.logging import REQUEST_ID
from cloudcontainer.observability.metrics import Metrics

__all__ = ["RequestContextMiddleware"]

log = structlog.get_logger("cloudcontainer.access")
access_logger = logging.getLogger("cloudcontainer.access")  # its level, checked before a line

REQUEST_ID_HEADER = b"x-request-id"
# A client-supplied id is kept only when it is short and plain, so it is safe in logs.
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


# Generated ids: 32 hex digits like a UUID's, a random per-process prefix and a counter. They
# need to be unique, not unguessable, and this costs no system call a request.
_ID_PREFIX = secrets.token_hex(10)
_ID_COUNTER = itertools.count()


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return str(value.decode("ascii"))
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def _route_label(scope: Scope, status: int) -> str:
    """The route template, so metrics do not get a series per id; fixed paths otherwise."""
    route = route_template(scope)
    if route is not None:
        return route
    # Only successful non-API routes (/docs, /openapi.json) are labelled by their path; anything
    # else without a route (404s, early 413s) shares one label so clients cannot grow the series.
    return str(scope.get("path", "")) if status < 400 else "<unmatched>"


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so streaming responses and WebSockets pass untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        bound = REQUEST_ID.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and status == 500:
                status = 403  # closed before the handshake: refused
            await send(message)

        self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.http_in_flight.dec()
            elapsed = time.perf_counter() - started
            route = _route_label(scope, status)
            method = scope.get("method", "WS")
            if scope["type"] == "http":
                self.metrics.http_request_done(method, route, status, elapsed)
            # The query string stays out of the log: it can carry tickets and tokens.
            if access_logger.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    method=method,
                    path=scope.get("path", ""),
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    client=(scope.get("client") or ("", 0))[0],
                )
            REQUEST_ID.reset(bound)
