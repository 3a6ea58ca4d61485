"""Deleting what a user owns: a project with its containers and snapshots, or a whole account.

An account is deleted in this order: its credentials end first (sessions and API keys revoked,
tickets dropped, open WebSockets closed), so nothing new starts while the rest goes; then each
container through the ordinary container delete (the sandbox stopped and destroyed, its file
history dropped), each project with its snapshots, and last the user row, whose foreign keys
take what is left (e-mail tokens, revoked keys and sessions, locks, command records).
"""

from __future__ import annotations

import contextlib

import structlog
from sqlalchemy import delete, select, update

from cloudcontainer.audit import AuditLog, actions
from cloudcontainer.auth.revocations import Revocations
from cloudcontainer.db import ApiKey, AuthSession, Container, Database, Project, User, WsTicket
from cloudcontainer.db.types import utcnow
from cloudcontainer.errors import NotFound
from cloudcontainer.projects.service import ProjectService
from cloudcontainer.sandbox.service import ContainerService
from cloudcontainer.snapshots import SnapshotService

__all__ = ["Removal"]

log = structlog.get_logger(__name__)

# Containers made by requests already past authentication when the credentials ended are
# caught by another pass; each pass finds fewer.
PASSES = 3


class Removal:
    def __init__(
        self, *, database: Database, containers: ContainerService, projects: ProjectService,
        snapshots: SnapshotService, revocations: Revocations,
        audit: AuditLog,
    ) -> None:  # fmt: skip
        self._db = database
        self._audit = audit
        self._containers = containers
        self._projects = projects
        self._snapshots = snapshots
        self._revocations = revocations

    async def delete_project(self, owner_id: str, project_id: str) -> None:
        """The project, its containers (sandboxes destroyed) and its snapshots; NotFound if
        `owner_id` has no such project."""
        await self._projects.get(owner_id, project_id)
        await self._containers.delete_project_containers(owner_id, project_id)
        await self._projects.delete(owner_id, project_id)
        await self._snapshots.forget_project(project_id)

    async def delete_account(self, user: User, *, actor: str, source_ip: str | None) -> None:
        """Everything of `user`, then the account. `actor` says who asked (`self` through the
        API, `cli` for an operator), `source_ip` from where."""
        await self._end_credentials(user.id)
        for _ in range(PASSES):
            containers, projects = await self._owned(user.id)
            if not containers and not projects:
                break
            for container_id in containers:
                with contextlib.suppress(NotFound):  # deleted meanwhile
                    await self._containers.delete(user.id, container_id)
            for project_id in projects:
                with contextlib.suppress(NotFound):
                    await self.delete_project(user.id, project_id)
        async with self._db.session() as session:
            await session.execute(delete(User).where(User.id == user.id))
        await self._revocations.end(user_id=user.id, reason="account deleted")
        log.info("account deleted", user_id=user.id, actor=actor, source_ip=source_ip)
        await self._audit.record(
            actions.ACCOUNT_DELETED, actor_id=user.id if actor == "self" else None,
            actor_email=user.email, source_ip=source_ip, target_type="user", target_id=user.id,
            detail={"by": actor},
        )  # fmt: skip

    async def _end_credentials(self, user_id: str) -> None:
        now = utcnow()
        async with self._db.session() as session:
            await session.execute(
                update(AuthSession)
                .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason="account_deleted")
            )
            await session.execute(
                update(ApiKey)
                .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await session.execute(delete(WsTicket).where(WsTicket.user_id == user_id))
        await self._revocations.end(user_id=user_id, reason="account deleted")

    async def _owned(self, user_id: str) -> tuple[list[str], list[str]]:
        async with self._db.session() as session:
            containers = await session.scalars(
                select(Container.id).where(Container.owner_id == user_id)
            )
            projects = await session.scalars(select(Project.id).where(Project.owner_id == user_id))
            return list(containers), list(projects)
