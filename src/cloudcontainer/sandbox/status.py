"""A container's row: its status and what the gateway keeps of it, and the status events.

States: creating → starting → running → stopping → stopped → deleted, or failed (with a
reason). `desired` records what the user asked for, so the supervisor and a restarted gateway
know what to bring back.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import select, update

from cloudcontainer.db import Container, Database
from cloudcontainer.errors import NotFound
from cloudcontainer.events import EventBus

__all__ = ["SETTLED", "ContainerRecords", "Status"]


class Status(enum.StrEnum):
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETED = "deleted"
    FAILED = "failed"


SETTLED = {Status.RUNNING, Status.STOPPED, Status.FAILED, Status.DELETED}


class ContainerRecords:
    """Reads and writes container rows; every status change is published as an event."""

    def __init__(self, database: Database, events: EventBus) -> None:
        self._db = database
        self.events = events

    async def list(self, owner_id: str | None) -> list[Container]:
        query = select(Container).order_by(Container.created_at.desc(), Container.id)
        if owner_id is not None:
            query = query.where(Container.owner_id == owner_id)
        async with self._db.session() as session:
            return list(await session.scalars(query))

    async def get(self, owner_id: str | None, container_id: str) -> Container:
        """The container, if `owner_id` owns it (None: any owner); else NotFound."""
        query = select(Container).where(Container.id == container_id)
        if owner_id is not None:
            query = query.where(Container.owner_id == owner_id)
        async with self._db.session() as session:
            container = await session.scalar(query)
        if container is None:
            raise NotFound("No such container.", code="container_not_found")
        return container

    async def update(self, container_id: str, **values: Any) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(Container).where(Container.id == container_id).values(**values)
            )

    async def set_status(self, container_id: str, status: Status, reason: str = "") -> None:
        await self.update(container_id, status=status, status_reason=reason)
        event: dict[str, Any] = {"type": "status", "status": status}
        if reason:
            event["reason"] = reason
        self.events.publish(container_id, event)

    async def bump_restarts(self, container_id: str) -> int:
        async with self._db.session() as session:
            container = await session.get_one(Container, container_id)
            container.restart_count += 1
            return container.restart_count

    async def remove(self, container_id: str) -> None:
        """Delete the row; afterwards the id is unknown (404)."""
        async with self._db.session() as session:
            container = await session.get(Container, container_id)
            if container is not None:
                await session.delete(container)
        self.events.publish(container_id, {"type": "status", "status": Status.DELETED})
