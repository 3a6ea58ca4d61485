"""`/api/containers/{id}/archive`: a folder as a zip or tar.gz download, and the reverse."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cloudcontainer.agent.messages import ArchiveFormat, ExtractLimits
from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.files import NO_NUL
from cloudcontainer.files.archives import Download, upload

router = APIRouter(prefix="/api/containers/{container_id}", tags=["archives"])

Format = ArchiveFormat
# Bounds that keep the longest URL the schema allows (every character percent-encoded as four
# UTF-8 bytes) inside the 64 KiB request line uvicorn accepts; past it the HTTP server answers a
# plain-text 400 before the app sees the request.
FolderPath = Annotated[str, Query(min_length=1, max_length=1024, pattern=NO_NUL)]
Glob = Annotated[str, Field(max_length=128, pattern=NO_NUL)]
MAX_EXCLUDES = 16
MEDIA_TYPES = {"zip": "application/zip", "tar.gz": "application/gzip"}


class Skipped(BaseModel):
    path: str
    reason: str


class Extracted(BaseModel):
    count: int = Field(description="Files and symlinks written.")
    files: list[str] = Field(description="Their workdir-rooted paths (the first 1,000).")
    skipped: list[Skipped] = Field(description="Entries not extracted, and why.")


def _disposition(name: str, fmt: str) -> str:
    """`attachment` with the folder's name; non-ASCII names go in `filename*` (RFC 6266)."""
    filename = f"{name or 'project'}.{fmt}"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in filename)  # fmt: skip
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


@router.get(
    "/archive",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}, "application/gzip": {}},
                     "description": "The archive, streamed."}},
)  # fmt: skip
async def download_archive(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep,
    path: FolderPath = "/", format: Format = "zip",
    exclude: Annotated[list[Glob], Query(max_length=MAX_EXCLUDES)] = [],  # noqa: B006 (FastAPI copies it)
) -> StreamingResponse:  # fmt: skip
    """The folder as an archive of its contents (names relative to it), streamed as it is
    made. Symlinks are stored as symlinks, never followed. `exclude` globs (repeatable, the
    dialect of docs/api.md, Globs): `node_modules` at any depth, `dist/assets` from the
    workspace root."""
    link = await services.containers.agent(principal.user_id, container_id)
    download = await Download.open(link, services.tasks, path, format, exclude)
    headers = {"Content-Disposition": _disposition(download.name, format)}
    return StreamingResponse(download.chunks(), media_type=MEDIA_TYPES[format], headers=headers)


@router.post(
    "/archive",
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def upload_archive(
    container_id: str, request: Request, principal: CurrentPrincipal, services: ServicesDep,
    path: FolderPath = "/", format: Format = "zip",
) -> Extracted:  # fmt: skip
    """Extract a zip or tar.gz (the raw body, up to `max_file_bytes`) into the folder, created
    if missing: all entries or none. Absolute names and `..` are refused; symlinks pointing
    outside the workspace, hard links and devices are skipped and listed in `skipped`."""
    link = await services.containers.agent(principal.user_id, container_id)
    settings = services.settings
    limits: ExtractLimits = {"max_bytes": settings.archive_max_uncompressed_bytes,
                             "max_entries": settings.archive_max_entries}  # fmt: skip
    result = await upload(link, path, format, request.stream(), limits)
    return Extracted(**result)
