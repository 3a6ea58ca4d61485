"""FastAPI's and Starlette's internals that the hand-parsed hot routes and the request
middleware rely on.

Private or undocumented names used (verified on FastAPI 0.165.0 with Starlette 1.10.0,
`VERIFIED_VERSIONS`):

- `fastapi.routing.APIRoute.app`: the ASGI app `APIRoute.__init__` builds from FastAPI's
  handler (dependency solver, two exit stacks a request), which Starlette's `Route.handle`
  calls; `set_plain_handler` replaces it after `__init__`.
- `starlette.routing.request_response(func)`: wraps `async (Request) -> Response` as an ASGI
  app, with Starlette's per-request exception handling and nothing more.
- `Starlette.exception_handlers`, looked up along the exception's MRO as Starlette's private
  `starlette._exception_handler._lookup_exception_handler` does, the catch-all `Exception`
  handler left to `ServerErrorMiddleware` as `Starlette.build_middleware_stack` does.
- `MutableHeaders.raw`: the header list itself, not a copy, so extending it adds headers.
- `scope["route"]`: the matched route, set by `APIRoute.matches` and Starlette's router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import Scope

__all__ = [
    "VERIFIED_VERSIONS",
    "add_headers",
    "exception_handler_for",
    "route_template",
    "set_plain_handler",
]

VERIFIED_VERSIONS = {"fastapi": frozenset({"0.165.0"}), "starlette": frozenset({"1.10.0"})}

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def set_plain_handler(route: APIRoute, respond: Callable[[Request], Awaitable[Response]]) -> None:
    """Make `route` answer with `respond(request)`, wrapped by Starlette's `request_response`
    rather than FastAPI's handler (which opens two exit stacks a request for dependencies with
    `yield`); FastAPI still documents the route from its endpoint."""
    route.app = request_response(respond)


def exception_handler_for(scope: Scope, exc: Exception) -> ExceptionHandler | None:
    """The app's handler for this exception's class or nearest base, as Starlette's exception
    middleware picks it; the catch-all `Exception` handler belongs to the server-error one."""
    handlers = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            handler: ExceptionHandler = handlers[cls]
            return handler
    return None


def add_headers(response: Response, headers: Response) -> None:
    """Add every header of `headers` to `response`, repeated ones too (`set-cookie`)."""
    response.headers.raw.extend(headers.headers.raw)


def route_template(scope: Scope) -> str | None:
    """The path template of the route that matched the request (`/api/projects/{id}`), if any."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return None if path is None else str(path)
