"""Routes whose arguments are parsed by a hand-written function instead of FastAPI's solver.

On the mixed file benchmark (P4), FastAPI's dependency solving, parameter validation and
response-model pass cost the gateway ~230 µs of CPU per file call, more than all the rest of
the call. Reading and saving one file are the calls an editor and an AI agent make all the
time, so those routes parse their few arguments by hand. The endpoint stays
the same function with the same signature, so OpenAPI documents it as before; only the way its
arguments are found differs. Errors keep their shapes: a bad query value raises FastAPI's own
`RequestValidationError`, rendered as every other 422.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cloudcontainer.internals.fastapi import add_headers, set_plain_handler

__all__ = ["HandParsedRoute", "Parse", "hand_parsed", "query_value", "sub_response"]

T = TypeVar("T")
# Builds the endpoint's keyword arguments from the request. An endpoint that sets headers on a
# `response` argument (FastAPI's "sub-response") gets one from `sub_response()`; its headers are
# merged into what the endpoint returns.
Parse = Callable[[Request], Awaitable[dict[str, Any]]]


def query_value(request: Request, name: str, adapter: TypeAdapter[T], default: T) -> T:
    """A query parameter validated as FastAPI would (the last of repeated values)."""
    if not request.scope["query_string"]:
        return default
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        errors = [{**error, "loc": ("query", name)} for error in exc.errors()]
        raise RequestValidationError(errors) from exc


class HandParsedRoute(APIRoute):
    """A route whose endpoint is called with the arguments its `parse` function finds."""

    parse: Parse

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        set_plain_handler(self, self.respond)  # these routes have no dependencies to solve

    async def respond(self, request: Request) -> Response:
        arguments = await self.parse(request)
        result = await self.endpoint(**arguments)
        if isinstance(result, Response):
            return result
        if not isinstance(result, BaseModel):
            raise TypeError(f"{self.endpoint.__name__} must answer a model or a Response")
        response = Response(
            result.model_dump_json(), status_code=self.status_code or 200,
            media_type="application/json",
        )  # fmt: skip
        if (sub := arguments.get("response")) is not None:
            add_headers(response, sub)
        return response


def sub_response() -> Response:
    """A response for an endpoint to set headers on, with no content-length of its own."""
    response = Response()
    del response.headers["content-length"]
    return response


def hand_parsed(parse: Parse) -> type[HandParsedRoute]:
    """A HandParsedRoute class with this `parse` (FastAPI takes a route class, not a route)."""
    return type("HandParsedRoute", (HandParsedRoute,), {"parse": staticmethod(parse)})
