"""`/api/admin/audit`: the audit log, for administrators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from cloudcontainer.api.deps import AdminPrincipal, ServicesDep, client_ip
from cloudcontainer.audit import AuditQuery, actions
from cloudcontainer.auth.credentials import Principal
from cloudcontainer.db import AuditEvent
from cloudcontainer.state import Services

router = APIRouter(prefix="/api/admin", tags=["admin"])

FLUSH_WAIT_SECONDS = 2.0


class AuditEventOut(BaseModel):
    id: str
    at: datetime
    action: str = Field(description="One of: " + ", ".join(actions.ACTIONS) + ".")
    actor_id: str | None = Field(description="The user who acted; null when none is known.")
    actor_email: str | None = Field(
        description="The user's address then; for `login_failed`, the address tried."
    )
    target_type: str | None = Field(description="user, api_key, session or container.")
    target_id: str | None
    source_ip: str | None = Field(description="The client's address, as the gateway saw it.")
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventOut:
        return cls(
            id=event.id, at=event.at, action=event.action, actor_id=event.actor_id,
            actor_email=event.actor_email, target_type=event.target_type,
            target_id=event.target_id, source_ip=event.source_ip, detail=event.detail or {},
        )  # fmt: skip


class AuditPageOut(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: no more."
    )


Filter = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


@router.get("/audit")
async def list_audit_events(
    _: AdminPrincipal, services: ServicesDep, actor: Filter = None, action: Filter = None,
    since: Annotated[AwareDatetime | None, Query(description="From this time (inclusive).")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=256, pattern=r"^[^\x00]*$")] = None,
) -> AuditPageOut:  # fmt: skip
    """Audit events, newest first, for administrators. `actor` is a user id."""
    await services.audit.flush_for(FLUSH_WAIT_SECONDS)
    page = await services.audit.query(
        AuditQuery(actor_id=actor, action=action, since=since, until=until, limit=limit,
                   cursor=cursor)
    )  # fmt: skip
    return AuditPageOut(
        items=[AuditEventOut.of(e) for e in page.items], next_cursor=page.next_cursor
    )


async def record(
    request: Request, action: str, principal: Principal | None = None, **fields: Any
) -> None:
    """Put `action` in the audit log: by `principal` (unless `fields` name the actor), from
    the client's address as the gateway determines it."""
    services: Services = request.app.state.services
    if principal is not None:
        fields.setdefault("actor_id", principal.user_id)
        fields.setdefault("actor_email", principal.user.email)
    await services.audit.record(action, source_ip=client_ip(request), **fields)
