"""`/api/containers/{id}/locks`: advisory locks on workspace paths (see files/locks.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import Description, Name, RequestModel, WholeNumber

router = APIRouter(prefix="/api/containers/{container_id}", tags=["locks"])

MAX_TTL_SECONDS = 7 * 86_400
LOCKED_HEADER = "X-Cloudcontainer-Locked"


class Lock(BaseModel):
    id: str
    path: str = Field(description="Workdir-rooted; a folder covers everything below it.")
    owner: str = Field(description="Who holds it, e.g. an AI run.")
    reason: str
    created_by: str = Field(description="The user who acquired it.")
    created_at: datetime
    expires_at: datetime


class LockList(BaseModel):
    locks: list[Lock]


class LockRequest(RequestModel):
    path: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
    owner: Name
    reason: Description = ""
    ttl_seconds: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS), WholeNumber] | None = None


@router.post("/locks", status_code=status.HTTP_201_CREATED)
async def acquire_lock(
    container_id: str, body: LockRequest, principal: CurrentPrincipal, services: ServicesDep
) -> Lock:
    """Lock a path for an owner. Advisory: writes still happen, but report this lock.
    409 `locked` when another owner holds a lock on an overlapping path."""
    lock = await services.locks.acquire(
        principal.user_id, container_id, body.path, body.owner, body.reason, body.ttl_seconds
    )
    return Lock(**lock)


@router.get("/locks")
async def list_locks(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> LockList:
    locks = await services.locks.held(principal.user_id, container_id)
    return LockList(locks=[Lock(**lock) for lock in locks])


@router.delete("/locks/{lock_id}", status_code=status.HTTP_204_NO_CONTENT)
async def release_lock(
    container_id: str, lock_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    await services.locks.release(principal.user_id, container_id, lock_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
