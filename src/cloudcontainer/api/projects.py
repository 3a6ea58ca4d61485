"""`/api/projects`: a user's projects. Other users' projects answer 404, never 403."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import Description, Name, RequestModel
from cloudcontainer.db import CommandRecord, Project
from cloudcontainer.errors import Forbidden, ValidationFailed
from cloudcontainer.terminals.commands import REPORTED_BY

router = APIRouter(prefix="/api/projects", tags=["projects"])


class ProjectCreate(RequestModel):
    name: Name
    description: Description = ""


class ProjectUpdate(RequestModel):
    # The schema states the rule `update_project` enforces: at least one field, given non-null.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [field], "properties": {field: {"type": "string"}}}
                for field in ("name", "description")
            ]
        }
    )

    name: Name | None = None
    description: Description | None = None


class ProjectOut(BaseModel):
    id: str
    owner_id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        return cls(
            id=project.id, owner_id=project.owner_id, name=project.name,
            description=project.description, created_at=project.created_at,
            updated_at=project.updated_at,
        )  # fmt: skip


class ProjectPage(BaseModel):
    items: list[ProjectOut]
    total: int
    limit: int
    offset: int


@router.get("")
async def list_projects(
    principal: CurrentPrincipal,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    all: Annotated[bool, Query(description="Admins only: everyone's projects.")] = False,
) -> ProjectPage:
    if all and not principal.user.is_admin:
        raise Forbidden(
            "Listing every user's projects needs an administrator.", code="admin_required"
        )
    owner = None if all else principal.user_id
    items, total = await services.projects.list(owner, limit=limit, offset=offset)
    return ProjectPage(
        items=[ProjectOut.of(p) for p in items], total=total, limit=limit, offset=offset
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_project(
    body: ProjectCreate, principal: CurrentPrincipal, services: ServicesDep
) -> ProjectOut:
    project = await services.projects.create(principal.user_id, body.name, body.description)
    return ProjectOut.of(project)


@router.get("/{project_id}")
async def get_project(
    project_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> ProjectOut:
    return ProjectOut.of(await services.projects.get(principal.user_id, project_id))


@router.patch("/{project_id}")
async def update_project(
    project_id: str, body: ProjectUpdate, principal: CurrentPrincipal, services: ServicesDep
) -> ProjectOut:
    if body.name is None and body.description is None:
        raise ValidationFailed("Give at least one of: name, description.")
    project = await services.projects.update(
        principal.user_id, project_id, name=body.name, description=body.description
    )
    return ProjectOut.of(project)


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(
    project_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    await services.removal.delete_project(principal.user_id, project_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class CommandOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    container_id: str
    user_id: str | None
    source: str = Field(
        description="`exec` (run through the API) or `shell` (typed in a jsh terminal)."
    )
    reported_by: Literal["gateway", "sandbox"] = Field(
        description="Who says this command ran: `gateway` wrote `exec` rows from the request it "
        "served; `sandbox` rows were reported from inside the container, which its code can "
        "forge (control characters are shown escaped, lines cut at 4,096 characters)."
    )
    command: str
    exit_code: int | None
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, record: CommandRecord) -> CommandOut:
        return cls(
            id=record.id, container_id=record.container_id, user_id=record.user_id,
            source=record.source, reported_by=REPORTED_BY.get(record.source, "sandbox"),
            command=record.command, exit_code=record.exit_code, started_at=record.started_at,
            finished_at=record.finished_at,
        )  # fmt: skip


@router.get("/{project_id}/history")
async def command_history(
    project_id: str, principal: CurrentPrincipal, services: ServicesDep,
    q: Annotated[str, Query(max_length=1024, pattern=r"^[^\x00]*$")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommandOut]:  # fmt: skip
    """Commands run in the project's containers, newest first: through the API (`source`
    `exec`, `reported_by` `gateway`) and typed into their `jsh` terminals (`shell`, reported by
    the `sandbox`: the tenant's own history, not an audit log). Who, where, the command line,
    its exit code (null while running, or when it was cut short) and when. `q` keeps the
    command lines containing it."""
    await services.projects.get(principal.user_id, project_id)
    records = await services.terminals.commands.history(project_id, q, limit)
    return [CommandOut.of(record) for record in records]
