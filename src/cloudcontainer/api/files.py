"""`/api/containers/{id}/files`: list, read, write, mkdir, delete, move workspace files.

Paths are workdir-rooted as in WebContainer: `src/App.tsx`, `/src/App.tsx` and
`../../src/App.tsx` all name `/home/project/src/App.tsx`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import RequestModel
from cloudcontainer.errors import ValidationFailed
from cloudcontainer.files.service import etag_of, mime_of

router = APIRouter(prefix="/api/containers/{container_id}", tags=["files"])

# No resource is named with a NUL; saying so in the schema lets clients (and fuzzers) know.
NO_NUL = r"^[^\x00]*$"
FilePath = Annotated[str, Field(min_length=1, max_length=4096, pattern=NO_NUL)]
UrlPath = Annotated[str, FastApiPath(pattern=NO_NUL)]
IfMatch = Annotated[str | None, Header(description="Write only while the file has this ETag.")]


class Entry(BaseModel):
    path: str = Field(description="Workdir-rooted, e.g. /src/App.tsx.")
    name: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mtime: float = Field(description="Seconds since the epoch.")
    mode: int


class Written(Entry):
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


class FileWrite(RequestModel):
    path: FilePath
    type: Literal["file", "directory"] = "file"
    content: Annotated[str, Field(max_length=64 * 1024 * 1024)] = ""
    encoding: Literal["utf-8", "base64"] = "utf-8"
    mkdirs: bool = Field(False, description="Create missing parent folders.")


class Move(RequestModel):
    from_: FilePath = Field(alias="from")
    to: FilePath


def _expected(if_match: str | None) -> str | None:
    """The SHA-256 an If-Match header asks for (None: no condition). A weak or foreign tag
    never equals a content hash, so the agent refuses the write with 412."""
    return None if if_match is None else if_match.strip().strip('"')


@router.get("/files")
async def list_files(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep,
    path: Annotated[str, Query(max_length=4096, pattern=NO_NUL)] = "/", recursive: bool = False,
) -> Listing:  # fmt: skip
    entries = await services.files.list(principal.user_id, container_id, path, recursive)
    return Listing(path=path, entries=[Entry(**entry) for entry in entries])


@router.get(
    "/files/{path:path}",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The bytes."}},
)
async def read_file(
    container_id: str, path: UrlPath, principal: CurrentPrincipal, services: ServicesDep,
    format: Literal["raw", "json"] = "raw",
) -> Response:  # fmt: skip
    """The file's bytes (with its MIME type and ETag), or JSON with `?format=json`."""
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


@router.put("/files/{path:path}")
async def put_file(
    container_id: str, path: UrlPath, request: Request, principal: CurrentPrincipal,
    services: ServicesDep, mkdirs: bool = False,
    if_match: IfMatch = None,
) -> Written:  # fmt: skip
    """Replace the file with the raw request body, atomically."""
    data = await request.body()
    written = await services.files.write(
        principal.user_id, container_id, path, data, mkdirs=mkdirs,
        expect_sha256=_expected(if_match),
    )  # fmt: skip
    return Written(**written)


@router.post("/files", status_code=status.HTTP_200_OK)
async def write_file(
    container_id: str, body: FileWrite, principal: CurrentPrincipal, services: ServicesDep,
    if_match: IfMatch = None,
) -> Written | Entry:  # fmt: skip
    """Create or replace a file from JSON (`content` as utf-8 or base64), or make a folder."""
    files = services.files
    if body.type == "directory":
        return Entry(**await files.mkdir(principal.user_id, container_id, body.path, body.mkdirs))
    if body.encoding == "base64":
        try:
            data = base64.b64decode(body.content, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII text
            raise ValidationFailed("content is not valid base64.", code="invalid_base64") from exc
    else:
        data = body.content.encode("utf-8", "surrogatepass")
    written = await files.write(
        principal.user_id, container_id, body.path, data, mkdirs=body.mkdirs,
        expect_sha256=_expected(if_match),
    )  # fmt: skip
    return Written(**written)


@router.delete("/files/{path:path}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(
    container_id: str, path: UrlPath, principal: CurrentPrincipal, services: ServicesDep,
    recursive: bool = False,
) -> Response:  # fmt: skip
    """Delete a file, or a folder with `recursive=true`. The workspace root cannot go."""
    await services.files.delete(principal.user_id, container_id, path, recursive)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/files:move")
async def move_file(
    container_id: str, body: Move, principal: CurrentPrincipal, services: ServicesDep
) -> Entry:
    """Rename or move; a folder cannot move into itself."""
    moved = await services.files.move(principal.user_id, container_id, body.from_, body.to)
    return Entry(**moved)
