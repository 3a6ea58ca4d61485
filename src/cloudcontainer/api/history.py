"""`/api/containers/{id}/versions`: earlier contents of files written through the file API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi import Path as FastApiPath
from pydantic import BaseModel, Field

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.files import NO_NUL, Written
from cloudcontainer.db import FileVersion
from cloudcontainer.files.service import etag_of, mime_of

router = APIRouter(prefix="/api/containers/{container_id}", tags=["history"])

VersionId = Annotated[str, FastApiPath(max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


class VersionOut(BaseModel):
    id: str
    path: str = Field(description="Workdir-rooted, e.g. /src/App.tsx.")
    size: int
    sha256: str
    created_at: datetime
    created_by: str | None = Field(description="The user whose request replaced this content.")
    reason: str = Field(description="write, delete, move, overwrite or restore.")

    @classmethod
    def of(cls, version: FileVersion) -> VersionOut:
        return cls(
            id=version.id, path=version.path, size=version.size, sha256=version.sha256,
            created_at=version.created_at, created_by=version.created_by, reason=version.reason,
        )  # fmt: skip


@router.get("/versions")
async def list_versions(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep,
    path: Annotated[str, Query(min_length=1, max_length=4096, pattern=NO_NUL)],
) -> list[VersionOut]:  # fmt: skip
    """The kept versions of one file, newest first."""
    versions = await services.files.versions(principal.user_id, container_id, path)
    return [VersionOut.of(version) for version in versions]


@router.get(
    "/versions/{version_id}",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The bytes."}},
)
async def read_version(
    container_id: str, version_id: VersionId, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """The bytes of one version, with the MIME type its path suggests."""
    version, data = await services.files.version(principal.user_id, container_id, version_id)
    return Response(
        data, media_type=mime_of(version.path, data), headers={"ETag": etag_of(version.sha256)}
    )


@router.post("/versions/{version_id}/restore")
async def restore_version(
    container_id: str, version_id: VersionId, principal: CurrentPrincipal, services: ServicesDep
) -> Written:
    """Write the version's bytes back to its path; what they replace becomes a version too."""
    written = await services.files.restore_version(principal.user_id, container_id, version_id)
    return Written(**written)
