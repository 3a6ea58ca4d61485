"""Per-user quotas on containers, cores, memory and disk."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudcontainer.config import Settings
from cloudcontainer.db import Container
from cloudcontainer.errors import Forbidden

__all__ = ["Resources", "check_quota"]


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int | None = None  # None: the `default_disk_mb` setting; 0: no limit


async def check_quota(
    session: AsyncSession, s: Settings, owner_id: str, wanted: Resources, disk_mb: int
) -> None:
    count, cpu, memory, disk = (
        await session.execute(
            select(
                func.count(Container.id),
                func.coalesce(func.sum(Container.cpu), 0.0),
                func.coalesce(func.sum(Container.memory_mb), 0),
                func.coalesce(func.sum(Container.disk_mb), 0),
            ).where(Container.owner_id == owner_id)
        )
    ).one()
    problems = []
    if count + 1 > s.max_containers_per_user:
        problems.append(f"containers {count + 1} > {s.max_containers_per_user}")
    if cpu + wanted.cpu > s.max_cpu_per_user:
        problems.append(f"cpu {cpu + wanted.cpu:g} > {s.max_cpu_per_user:g} cores")
    if memory + wanted.memory_mb > s.max_memory_mb_per_user:
        problems.append(f"memory {memory + wanted.memory_mb} > {s.max_memory_mb_per_user} MB")
    if disk + disk_mb > s.max_disk_mb_per_user:
        problems.append(f"disk {disk + disk_mb} > {s.max_disk_mb_per_user} MB")
    if problems:
        raise Forbidden(
            "This would exceed your quota: " + "; ".join(problems) + ".",
            code="quota_exceeded",
        )
