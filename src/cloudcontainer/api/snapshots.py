"""Workspace snapshots: take one, list a project's, restore one into a container."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, status
from fastapi import Path as FastApiPath
from pydantic import BaseModel, Field

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.db import Snapshot

router = APIRouter(tags=["snapshots"])

SnapshotId = Annotated[str, FastApiPath(max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


class SnapshotOut(BaseModel):
    id: str
    project_id: str
    container_id: str | None = Field(description="The container it was taken from.")
    created_at: datetime
    reason: str = Field(description="manual, auto or stop.")
    file_count: int
    total_bytes: int
    uploaded_count: int = Field(description="Contents the store did not hold yet.")
    uploaded_bytes: int

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotOut:
        return cls(
            id=snapshot.id, project_id=snapshot.project_id, container_id=snapshot.container_id,
            created_at=snapshot.created_at, reason=snapshot.reason,
            file_count=snapshot.file_count, total_bytes=snapshot.total_bytes,
            uploaded_count=snapshot.uploaded_count, uploaded_bytes=snapshot.uploaded_bytes,
        )  # fmt: skip


@router.post("/api/containers/{container_id}/snapshots", status_code=status.HTTP_201_CREATED)
async def take_snapshot(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> SnapshotOut:
    """Snapshot the workspace now (uploading only contents the project's store lacks)."""
    return SnapshotOut.of(await services.snapshots.take(principal.user_id, container_id))


@router.post("/api/containers/{container_id}/snapshots/{snapshot_id}/restore")
async def restore_snapshot(
    container_id: str, snapshot_id: SnapshotId, principal: CurrentPrincipal,
    services: ServicesDep,
) -> SnapshotOut:  # fmt: skip
    """Make the workspace equal to a snapshot of its project (excluded paths are kept)."""
    restored = await services.snapshots.restore(principal.user_id, container_id, snapshot_id)
    return SnapshotOut.of(restored)


@router.get("/api/projects/{project_id}/snapshots")
async def list_snapshots(
    project_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> list[SnapshotOut]:
    """The project's snapshots, newest first."""
    await services.projects.get(principal.user_id, project_id)
    return [
        SnapshotOut.of(snapshot) for snapshot in await services.snapshots.of_project(project_id)
    ]
