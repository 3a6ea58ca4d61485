"""Previews of a container's ports: list them, make one public or private again, and
register the script injected into every preview document (`setPreviewScript`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request, status
from fastapi import Path as FastApiPath
from pydantic import BaseModel, Field

from cloudcontainer.api.audit import record
from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import RequestModel
from cloudcontainer.audit import actions
from cloudcontainer.preview.service import Preview, PreviewService

router = APIRouter(tags=["previews"])

Port = Annotated[int, FastApiPath(ge=1, le=65535, description="The port inside the container.")]
MAX_SCRIPT_CHARS = 256 * 1024


class PreviewOut(BaseModel):
    port: int = Field(description="The port a process in the container listens on.")
    url: str = Field(
        description="Where to open it: http://PUBLIC_HOST:EXTERNAL_PORT/, with `?cc_token=` "
        "while the port is private (the first visit trades it for a cookie)."
    )
    origin: str = Field(description="The preview's origin, without a token or a slash.")
    external_port: int = Field(description="Stable for the container's life.")
    status: Literal["open", "ready", "closed"] = Field(
        description="open: something listens; ready: it answers HTTP; closed: nothing listens "
        "now (the URL stays reserved and shows a page that waits for the server)."
    )
    public: bool = Field(description="Anyone with the URL may open it (no token, no cookie).")
    protocol: Literal["http", "websocket", "tcp"] | None = Field(
        description="What the port answered a plain HTTP request with; null until probed."
    )

    @classmethod
    def of(cls, previews: PreviewService, preview: Preview) -> PreviewOut:
        return cls.model_validate(previews.describe(preview))


class PreviewUpdate(RequestModel):
    public: bool


class PreviewScript(RequestModel):
    script: Annotated[str, Field(max_length=MAX_SCRIPT_CHARS)] = Field(
        "", description="JavaScript run at the start of every preview document (empty: none)."
    )
    forward_errors: bool = Field(
        False, description="Post uncaught errors and unhandled rejections to the parent page."
    )


@router.get("/api/containers/{container_id}/previews")
async def list_previews(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> list[PreviewOut]:
    """Every port of the container that has had a listener, open or not."""
    previews = services.previews
    found = await previews.list(principal.user_id, container_id)
    return [PreviewOut.of(previews, preview) for preview in found]


@router.patch("/api/containers/{container_id}/previews/{port}")
async def update_preview(
    container_id: str, port: Port, body: PreviewUpdate, request: Request,
    principal: CurrentPrincipal, services: ServicesDep,
) -> PreviewOut:  # fmt: skip
    """Make a port public (anyone with its URL) or private again (its token or cookie)."""
    previews = services.previews
    preview = await previews.set_public(principal.user_id, container_id, port, body.public)
    if body.public:
        await record(
            request, actions.PORT_MADE_PUBLIC, principal, target_type="container",
            target_id=container_id, detail={"port": port, "url": previews.origin(preview)},
        )  # fmt: skip
    return PreviewOut.of(previews, preview)


@router.put(
    "/api/containers/{container_id}/previews:script", status_code=status.HTTP_204_NO_CONTENT
)
async def set_preview_script(
    container_id: str, body: PreviewScript, principal: CurrentPrincipal, services: ServicesDep
) -> None:
    """What the client's `setPreviewScript` and `boot({forwardPreviewErrors})` register."""
    await services.previews.set_script(
        principal.user_id, container_id, body.script, body.forward_errors
    )
