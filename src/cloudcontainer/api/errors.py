"""Render every failure as `{"error": {"code", "message"}}`; never a traceback."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cloudcontainer.db.errors import DATABASE_ERRORS, database_error
from cloudcontainer.errors import CloudContainerError, TooManyRequests

__all__ = ["ERROR_RESPONSES", "ErrorBody", "error_response", "install_error_handlers"]

log = structlog.get_logger(__name__)


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """The shape of every error answer."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": HTTPStatus(status).phrase}
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503)
}

_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
    429: "too_many_requests",
}  # fmt: skip


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CloudContainerError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    if exc.status_code == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(
        exc.status_code, exc.code, exc.message, details=exc.details, headers=headers
    )


def _describe(error: Any) -> dict[str, Any]:
    # The offending input is not echoed back: it may be large or a secret.
    return {
        "loc": list(error.get("loc", ())),
        "message": error.get("msg", ""),
        "type": error.get("type", ""),
    }


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, "invalid_json", "The request body is not valid JSON.")
    return error_response(
        422, "validation_error", "The request is not valid.", details=[_describe(e) for e in errors]
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path, for `Allow` on a 405.

    The router's own `Allow` names only the first route matching the path, while GET and POST
    of one path are two routes; so each method is tried against every route.
    """
    allowed = []
    for method in _METHODS:
        probe = {
            "type": "http", "method": method, "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""), "headers": [], "query_string": b"",
        }  # fmt: skip
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _CODES.get(status, "error")
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else phrase
    headers = exc.headers
    if status == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
    return error_response(status, code, message, headers=headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database error that escaped `Database.session()` (a query made another way)."""
    mapped = database_error(exc)
    if mapped is None:
        return await _unexpected_error(request, exc)
    log.warning("database error answered 503", path=request.url.path, code=mapped.code,
                error=str(exc)[:500])  # fmt: skip
    return await _service_error(request, mapped)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    request_id = getattr(request.state, "request_id", "")
    return error_response(
        500, "internal_error", f"An internal error occurred (request id {request_id})."
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CloudContainerError, _service_error)
    for database_exception in DATABASE_ERRORS:
        app.add_exception_handler(database_exception, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
