"""`/api/containers/{id}/files`: list, read, write, mkdir, delete, move workspace files.

Paths are workdir-rooted as in WebContainer: `src/App.tsx`, `/src/App.tsx` and
`../../src/App.tsx` all name `/home/project/src/App.tsx`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep, caller
from cloudcontainer.api.errors import ERROR_RESPONSES
from cloudcontainer.api.handparsed import hand_parsed, query_value, sub_response
from cloudcontainer.api.locks import LOCKED_HEADER, Lock
from cloudcontainer.api.schemas import RequestModel
from cloudcontainer.auth.credentials import Principal
from cloudcontainer.errors import BadRequest
from cloudcontainer.files.ordering import (
    CLIENT_ID_PATTERN,
    CLIENT_SEQ_PATTERN,
    parse_order,
)
from cloudcontainer.files.service import etag_of, mime_of
from cloudcontainer.state import Services

router = APIRouter(prefix="/api/containers/{container_id}", tags=["files"])

# No resource is named with a NUL; saying so in the schema lets clients (and fuzzers) know.
NO_NUL = r"^[^\x00]*$"
FilePath = Annotated[str, Field(min_length=1, max_length=4096, pattern=NO_NUL)]
UrlPath = Annotated[str, FastApiPath(pattern=NO_NUL)]
IfMatch = Annotated[str | None, Header(description="Write only while the file has this ETag.")]
MAX_OPERATIONS = 1000
# Exactly the strings base64.b64decode(validate=True) accepts: the schema ties `content` to
# `encoding`, so a body the schema allows is never refused for its base64.
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
TextContent = Annotated[str, Field(max_length=64 * 1024 * 1024)]
Base64Content = Annotated[str, Field(max_length=64 * 1024 * 1024, pattern=BASE64)]


class Entry(BaseModel):
    path: str = Field(description="Workdir-rooted, e.g. /src/App.tsx.")
    name: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mtime: float = Field(description="Seconds since the epoch.")
    mode: int


class Written(Entry):
    etag: str


class Changed(Entry):
    """A changed entry, with the advisory locks that cover it."""

    locks: list[Lock] = Field(default_factory=list)


class WrittenChanged(Changed):
    etag: str


class Listing(BaseModel):
    path: str
    entries: list[Entry]


class FileJson(BaseModel):
    path: str
    content: str
    encoding: Literal["utf-8", "base64"]
    mime: str
    etag: str
    size: int
    mtime: float


# -- writes: one file or folder, or a batch ---------------------------------------------------


class TextWrite(RequestModel):
    path: FilePath
    type: Literal["file"] = "file"
    content: TextContent = ""
    encoding: Literal["utf-8"] = "utf-8"
    mkdirs: bool = Field(False, description="Create missing parent folders.")


class Base64Write(RequestModel):
    path: FilePath
    type: Literal["file"] = "file"
    content: Base64Content = ""
    encoding: Literal["base64"]
    mkdirs: bool = Field(False, description="Create missing parent folders.")


class FolderWrite(RequestModel):
    path: FilePath
    type: Literal["directory"]
    mkdirs: bool = Field(False, description="Create missing parent folders.")


class WriteOp(RequestModel):
    op: Literal["write"]
    path: FilePath
    content: TextContent = ""
    encoding: Literal["utf-8"] = "utf-8"
    mkdirs: bool = False


class Base64WriteOp(RequestModel):
    op: Literal["write"]
    path: FilePath
    content: Base64Content = ""
    encoding: Literal["base64"]
    mkdirs: bool = False


class MkdirOp(RequestModel):
    op: Literal["mkdir"]
    path: FilePath
    recursive: bool = False


class DeleteOp(RequestModel):
    op: Literal["delete"]
    path: FilePath
    recursive: bool = False
    force: bool = Field(False, description="A missing path is no error.")


class MoveOp(RequestModel):
    op: Literal["move"]
    from_: FilePath = Field(alias="from")
    to: FilePath


def _field(value: Any, name: str, default: Any = None) -> Any:
    """A field of a body being validated (a dict) or already validated (a model)."""
    if isinstance(value, dict):
        return value.get(name, default)
    return getattr(value, name, default)


def _operation_tag(value: Any) -> str | None:
    op = _field(value, "op")
    if op == "write" and _field(value, "encoding") == "base64":
        return "write-base64"
    return op if isinstance(op, str) else None


def _write_tag(value: Any) -> str:
    if (isinstance(value, dict) and "operations" in value) or isinstance(value, Batch):
        return "batch"
    if _field(value, "type") == "directory":
        return "directory"
    return "base64" if _field(value, "encoding") == "base64" else "utf-8"


Operation = Annotated[
    Annotated[WriteOp, Tag("write")] | Annotated[Base64WriteOp, Tag("write-base64")]
    | Annotated[MkdirOp, Tag("mkdir")] | Annotated[DeleteOp, Tag("delete")]
    | Annotated[MoveOp, Tag("move")],
    Discriminator(_operation_tag),
]  # fmt: skip


class Batch(RequestModel):
    operations: list[Operation] = Field(min_length=1, max_length=MAX_OPERATIONS)
    atomic: bool = Field(True, description="All or nothing; else each is tried and reported.")


WriteBody = Annotated[
    Annotated[TextWrite, Tag("utf-8")] | Annotated[Base64Write, Tag("base64")]
    | Annotated[FolderWrite, Tag("directory")] | Annotated[Batch, Tag("batch")],
    Discriminator(_write_tag),
]  # fmt: skip


class OperationError(BaseModel):
    code: str
    message: str
    status: int = Field(description="The HTTP status this error has on its own.")


class OperationResult(BaseModel):
    ok: bool
    entry: Written | Entry | None = None
    error: OperationError | None = None


class BatchResult(BaseModel):
    atomic: bool
    results: list[OperationResult]
    locks: list[Lock] = Field(description="Advisory locks covering any path the batch named.")


class Move(RequestModel):
    from_: FilePath = Field(alias="from")
    to: FilePath


# -- per-client order and lock reports --------------------------------------------------------


async def client_order(  # async: a plain def dependency would run in the thread pool
    x_client_id: Annotated[
        str | None,
        Header(
            description="An opaque id of the client; with X-Client-Seq, its file calls are "
            "applied in seq order.",
            json_schema_extra={"pattern": CLIENT_ID_PATTERN, "maxLength": 64},
        ),
    ] = None,
    x_client_seq: Annotated[
        str | None,
        Header(
            description="1, 2, 3, ... for each file call of this client (with X-Client-Id).",
            json_schema_extra={"pattern": CLIENT_SEQ_PATTERN},
        ),
    ] = None,
) -> tuple[str | None, str | None]:
    return x_client_id, x_client_seq


Order = Annotated[tuple[str | None, str | None], Depends(client_order)]


def turn(
    services: Services, principal: Principal, container_id: str,
    headers: tuple[str | None, str | None],
) -> AbstractAsyncContextManager[None]:  # fmt: skip
    """This request's turn among its client's calls (at once without order headers)."""
    if headers == (None, None):
        return _NOW
    return _ordered_turn(services, principal, container_id, headers)


_NOW: AbstractAsyncContextManager[None] = nullcontext()


@asynccontextmanager
async def _ordered_turn(
    services: Services, principal: Principal, container_id: str,
    headers: tuple[str | None, str | None],
) -> AsyncIterator[None]:  # fmt: skip
    """The container is checked first: only its owner's requests take part in its order, and
    a missing container is a 404 before malformed headers are a 400."""
    await services.containers.agent(principal.user_id, container_id)
    order = parse_order(*headers, lambda m: BadRequest(m, code="bad_client_order"))
    async with services.order.turn(container_id, order):
        yield


async def report_locks(
    services: Services, container_id: str, paths: Iterable[str], response: Response
) -> list[Lock]:
    """The locks covering changed paths; also named in X-Cloudcontainer-Locked."""
    locks = [Lock(**lock) for lock in await services.locks.covering(container_id, paths)]
    if locks:
        response.headers[LOCKED_HEADER] = ", ".join(lock.id for lock in locks)
    return locks


def _expected(if_match: str | None) -> str | None:
    """The SHA-256 an If-Match header asks for (None: no condition). A weak or foreign tag
    never equals a content hash, so the agent refuses the write with 412."""
    return None if if_match is None else if_match.strip().strip('"')


@router.get("/files")
async def list_files(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep,
    order: Order, path: Annotated[str, Query(max_length=4096, pattern=NO_NUL)] = "/",
    recursive: bool = False,
) -> Listing:  # fmt: skip
    async with turn(services, principal, container_id, order):
        entries = await services.files.list(principal.user_id, container_id, path, recursive)
    return Listing(path=path, entries=[Entry(**entry) for entry in entries])


async def read_file(
    container_id: str, path: UrlPath, principal: CurrentPrincipal, services: ServicesDep,
    order: Order, format: Literal["raw", "json"] = "raw",
) -> Response:  # fmt: skip
    """The file's bytes (with its MIME type and ETag), or JSON with `?format=json`."""
    async with turn(services, principal, container_id, order):
        content = await services.files.read(principal.user_id, container_id, path)
    mime = mime_of(content.path, content.data)
    etag = etag_of(content.sha256)
    if format == "json":
        try:
            text, encoding = content.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(content.data).decode(), "base64"
        body = FileJson(
            path=content.path, content=text, encoding=encoding, mime=mime, etag=etag,
            size=content.size, mtime=content.mtime,
        )  # fmt: skip
        return JSONResponse(body.model_dump(), headers={"ETag": etag})
    return Response(content.data, media_type=mime, headers={"ETag": etag})


async def put_file(
    container_id: str, path: UrlPath, request: Request, response: Response,
    principal: CurrentPrincipal, services: ServicesDep, order: Order, mkdirs: bool = False,
    if_match: IfMatch = None,
) -> WrittenChanged:  # fmt: skip
    """Replace the file with the raw request body, atomically."""
    data = await request.body()
    async with turn(services, principal, container_id, order):
        written = await services.files.write(
            principal.user_id, container_id, path, data, mkdirs=mkdirs,
            expect_sha256=_expected(if_match),
        )  # fmt: skip
    locks = await report_locks(services, container_id, [written["path"]], response)
    return WrittenChanged(**written, locks=locks)


# -- the hot path: reading and saving one file, with arguments parsed by hand ------------------

_FORMAT: TypeAdapter[Literal["raw", "json"]] = TypeAdapter(Literal["raw", "json"])
_FLAG = TypeAdapter(bool)


def _file_call(request: Request, services: Services, principal: Principal) -> dict[str, Any]:
    """The arguments every one-file route takes (the path cannot hold a NUL: see urlguard)."""
    headers = request.headers
    return {
        "container_id": request.path_params["container_id"], "path": request.path_params["path"],
        "principal": principal, "services": services,
        "order": (headers.get("x-client-id"), headers.get("x-client-seq")),
    }  # fmt: skip


async def _read_arguments(request: Request) -> dict[str, Any]:
    services, principal = await caller(request)
    return {
        **_file_call(request, services, principal),
        "format": query_value(request, "format", _FORMAT, "raw"),
    }


async def _put_arguments(request: Request) -> dict[str, Any]:
    services, principal = await caller(request)
    return {
        **_file_call(request, services, principal), "request": request,
        "response": sub_response(),
        "mkdirs": query_value(request, "mkdirs", _FLAG, False),
        "if_match": request.headers.get("if-match"),
    }  # fmt: skip


# Its routes go straight into the app's own list (see app.py), so they carry the app-wide
# error responses themselves.
hot_router = APIRouter(
    prefix="/api/containers/{container_id}", tags=["files"], responses=ERROR_RESPONSES
)
hot_router.add_api_route(
    "/files/{path:path}", read_file, methods=["GET"],
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The bytes."}},
    route_class_override=hand_parsed(_read_arguments),
)  # fmt: skip
hot_router.add_api_route(
    "/files/{path:path}", put_file, methods=["PUT"], response_model=WrittenChanged,
    route_class_override=hand_parsed(_put_arguments),
)  # fmt: skip


@router.post(
    "/files", status_code=status.HTTP_200_OK, response_model=WrittenChanged | Changed | BatchResult
)
async def write_file(
    container_id: str, body: Annotated[WriteBody, Body()], response: Response,
    principal: CurrentPrincipal, services: ServicesDep, order: Order, if_match: IfMatch = None,
) -> Any:  # fmt: skip
    """Create or replace a file from JSON (`content` as utf-8 or base64), make a folder, or
    apply a batch of operations (`{"operations": [...], "atomic": true}`)."""
    if isinstance(body, Batch):
        return await _batch(container_id, body, response, principal, services, order, if_match)
    files = services.files
    async with turn(services, principal, container_id, order):
        if isinstance(body, FolderWrite):
            made = await files.mkdir(principal.user_id, container_id, body.path, body.mkdirs)
        else:
            data = _bytes(body.content, body.encoding)
            made = await files.write(
                principal.user_id, container_id, body.path, data, mkdirs=body.mkdirs,
                expect_sha256=_expected(if_match),
            )  # fmt: skip
    locks = await report_locks(services, container_id, [made["path"]], response)
    return WrittenChanged(**made, locks=locks) if "etag" in made else Changed(**made, locks=locks)


def _bytes(content: str, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.b64decode(content, validate=True)  # the schema's pattern vouches for it
    return content.encode("utf-8", "surrogatepass")


def _agent_operation(
    operation: WriteOp | Base64WriteOp | MkdirOp | DeleteOp | MoveOp,
) -> dict[str, Any]:
    """An operation as fs.batch takes it (content as base64 `data`)."""
    if isinstance(operation, WriteOp | Base64WriteOp):
        data = (
            operation.content
            if operation.encoding == "base64"
            else base64.b64encode(operation.content.encode("utf-8", "surrogatepass")).decode()
        )
        return {"op": "write", "path": operation.path, "data": data, "mkdirs": operation.mkdirs}
    if isinstance(operation, MoveOp):
        return {"op": "move", "from": operation.from_, "to": operation.to}
    return operation.model_dump()


def _named_paths(batch: Batch) -> list[str]:
    paths: list[str] = []
    for operation in batch.operations:
        paths.extend(
            [operation.from_, operation.to] if isinstance(operation, MoveOp) else [operation.path]
        )
    return paths


async def _batch(
    container_id: str, body: Batch, response: Response, principal: Principal,
    services: Services, order: tuple[str | None, str | None], if_match: str | None,
) -> BatchResult | JSONResponse:  # fmt: skip
    if if_match is not None:
        await services.containers.agent(principal.user_id, container_id)  # 404 comes first
        raise BadRequest("If-Match applies to single writes, not batches.", code="bad_request")
    operations = [_agent_operation(operation) for operation in body.operations]
    async with turn(services, principal, container_id, order):
        outcome = await services.files.batch(
            principal.user_id, container_id, operations, body.atomic
        )
    if outcome.error is not None:
        error = outcome.error
        answer: dict[str, Any] = {
            "code": error.code, "message": error.message, "operation": outcome.failed,
        }  # fmt: skip
        if not outcome.rolled_back:
            answer["rolled_back"] = False
        return JSONResponse({"error": answer}, status_code=error.status_code)
    locks = await report_locks(services, container_id, _named_paths(body), response)
    return BatchResult(
        atomic=body.atomic,
        results=[OperationResult(**result) for result in outcome.results],
        locks=locks,
    )


@router.delete("/files/{path:path}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(
    container_id: str, path: UrlPath, principal: CurrentPrincipal, services: ServicesDep,
    order: Order, recursive: bool = False,
) -> Response:  # fmt: skip
    """Delete a file, or a folder with `recursive=true`. The workspace root cannot go.
    Advisory locks covering the path are named in `X-Cloudcontainer-Locked`."""
    async with turn(services, principal, container_id, order):
        await services.files.delete(principal.user_id, container_id, path, recursive)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    await report_locks(services, container_id, [path], response)
    return response


@router.post("/files:move")
async def move_file(
    container_id: str, body: Move, response: Response, principal: CurrentPrincipal,
    services: ServicesDep, order: Order,
) -> Changed:  # fmt: skip
    """Rename or move; a folder cannot move into itself."""
    async with turn(services, principal, container_id, order):
        moved = await services.files.move(principal.user_id, container_id, body.from_, body.to)
    locks = await report_locks(services, container_id, [body.from_, body.to], response)
    return Changed(**moved, locks=locks)
