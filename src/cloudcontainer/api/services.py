"""Services: named processes kept running in a container (dev servers, APIs), with health
from their port and restarts with backoff (preview/services.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, status
from fastapi import Path as FastApiPath
from pydantic import BaseModel, Field

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import RequestModel, WholeNumber
from cloudcontainer.preview.services import Service, ServiceManager

router = APIRouter(tags=["services"])

Name = Annotated[str, FastApiPath(max_length=32, pattern=r"^[a-z][a-z0-9-]{0,31}$")]
Text = Annotated[str, Field(max_length=4096)]


class ServiceCreate(RequestModel):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$", description="a-z, 0-9, -")]
    command: Text | None = Field(
        None, description="The program; omitted: the project's dev server, from package.json."
    )
    args: Annotated[list[Text], Field(max_length=256)] = []
    cwd: Text | None = Field(None, description="Where it runs (default /home/project).")
    env: Annotated[dict[Text, Text], Field(max_length=128)] = {}
    port: Annotated[int | None, Field(ge=1, le=65535), WholeNumber] = Field(
        None, description="The port it serves: its preview is its health, and the others' URL."
    )
    restart: Literal["always", "on-failure", "never"] = "on-failure"


class ServiceOut(BaseModel):
    name: str
    command: str
    args: list[str]
    cwd: str
    env: dict[str, str]
    port: int | None
    restart: Literal["always", "on-failure", "never"]
    framework: str | None = Field(description="The dev server detected, when no command was given.")
    status: Literal["starting", "running", "backoff", "failed", "stopped"]
    desired: Literal["running", "stopped"]
    restarts: int
    exit_code: int | None
    proc_id: int | None = Field(description="Attach to it as a terminal to see its output.")
    url: str | None = Field(description="Its preview's URL, when it has a port.")

    @classmethod
    def of(cls, manager: ServiceManager, service: Service) -> ServiceOut:
        return cls.model_validate(manager.describe(service))


def _body(body: ServiceCreate) -> dict[str, Any]:
    return body.model_dump(exclude={"name"})


@router.get("/api/containers/{container_id}/services")
async def list_services(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> list[ServiceOut]:
    manager = services.services
    found = await manager.list(principal.user_id, container_id)
    return [ServiceOut.of(manager, service) for service in found]


@router.post("/api/containers/{container_id}/services", status_code=status.HTTP_201_CREATED)
async def create_service(
    container_id: str, body: ServiceCreate, principal: CurrentPrincipal, services: ServicesDep
) -> ServiceOut:
    """Add a service and start it (the container too, if it is stopped). Every service's
    environment holds `PORT` and, for each service with a port, `CC_SERVICE_<NAME>_URL` (its
    preview origin) and `CC_SERVICE_<NAME>_LOCAL_URL` (`http://127.0.0.1:<port>`)."""
    manager = services.services
    service = await manager.create(principal.user_id, container_id, body.name, _body(body))
    return ServiceOut.of(manager, service)


@router.get("/api/containers/{container_id}/services/{name}")
async def get_service(
    container_id: str, name: Name, principal: CurrentPrincipal, services: ServicesDep
) -> ServiceOut:
    manager = services.services
    return ServiceOut.of(manager, await manager.get(principal.user_id, container_id, name))


async def _control(
    container_id: str, name: str, action: Literal["start", "stop", "restart"],
    principal: CurrentPrincipal, services: ServicesDep,
) -> ServiceOut:  # fmt: skip
    manager = services.services
    service = await manager.set_desired(principal.user_id, container_id, name, action)
    return ServiceOut.of(manager, service)


@router.post("/api/containers/{container_id}/services/{name}/start")
async def start_service(
    container_id: str, name: Name, principal: CurrentPrincipal, services: ServicesDep
) -> ServiceOut:
    """Start it (and keep it running, also across container restarts)."""
    return await _control(container_id, name, "start", principal, services)


@router.post("/api/containers/{container_id}/services/{name}/stop")
async def stop_service(
    container_id: str, name: Name, principal: CurrentPrincipal, services: ServicesDep
) -> ServiceOut:
    """Stop it and keep it stopped, also across container restarts."""
    return await _control(container_id, name, "stop", principal, services)


@router.post("/api/containers/{container_id}/services/{name}/restart")
async def restart_service(
    container_id: str, name: Name, principal: CurrentPrincipal, services: ServicesDep
) -> ServiceOut:
    return await _control(container_id, name, "restart", principal, services)


@router.delete(
    "/api/containers/{container_id}/services/{name}", status_code=status.HTTP_204_NO_CONTENT
)
async def delete_service(
    container_id: str, name: Name, principal: CurrentPrincipal, services: ServicesDep
) -> None:
    await services.services.delete(principal.user_id, container_id, name)
