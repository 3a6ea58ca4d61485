"""Project CRUD. Every query is scoped to the caller; only admins may list everyone's."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloudcontainer.db import Database, Project
from cloudcontainer.db.types import new_id
from cloudcontainer.errors import Conflict, NotFound

__all__ = ["ProjectService"]


def _name_taken(exc: IntegrityError) -> Conflict:
    return Conflict("You already have a project with this name.", code="project_name_taken")


class ProjectService:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def list(
        self, owner_id: str | None, *, limit: int, offset: int
    ) -> tuple[list[Project], int]:
        """One page of projects, newest first, and the total; `owner_id=None` lists all."""
        query = select(Project)
        count = select(func.count()).select_from(Project)
        if owner_id is not None:
            query = query.where(Project.owner_id == owner_id)
            count = count.where(Project.owner_id == owner_id)
        query = query.order_by(Project.created_at.desc(), Project.id).limit(limit).offset(offset)
        async with self._db.session() as session:
            return list(await session.scalars(query)), await session.scalar(count) or 0

    async def create(self, owner_id: str, name: str, description: str) -> Project:
        project = Project(id=new_id("prj"), owner_id=owner_id, name=name, description=description)
        try:
            async with self._db.session() as session:
                session.add(project)
        except IntegrityError as exc:
            raise _name_taken(exc) from exc
        return project

    async def get(self, owner_id: str, project_id: str) -> Project:
        async with self._db.session() as session:
            return await self._owned(session, owner_id, project_id)

    async def update(
        self, owner_id: str, project_id: str, *, name: str | None, description: str | None
    ) -> Project:
        try:
            async with self._db.session() as session:
                project = await self._owned(session, owner_id, project_id)
                if name is not None:
                    project.name = name
                if description is not None:
                    project.description = description
                await session.flush()
                await session.refresh(project)
        except IntegrityError as exc:
            raise _name_taken(exc) from exc
        return project

    async def delete(self, owner_id: str, project_id: str) -> None:
        async with self._db.session() as session:
            await session.delete(await self._owned(session, owner_id, project_id))

    @staticmethod
    async def _owned(session: AsyncSession, owner_id: str, project_id: str) -> Project:
        project = await session.scalar(
            select(Project).where(Project.id == project_id, Project.owner_id == owner_id)
        )
        if project is None:
            # Another user's project is reported exactly like a missing one.
            raise NotFound("No such project.", code="project_not_found")
        return project
