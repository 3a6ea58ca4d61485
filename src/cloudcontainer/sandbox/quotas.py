"""Per-user quotas on containers, cores, memory and disk.

A check and the insert it allows must be one step, or concurrent creates (several requests,
several gateways on one PostgreSQL) all pass the check and together exceed the quota: the
creating transaction first takes the owner's lock (`lock_owner`), checks, inserts, and
commits, which releases it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudcontainer.config import Settings
from cloudcontainer.db import Container, User
from cloudcontainer.errors import Forbidden

__all__ = ["Resources", "check_quota", "lock_owner"]


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int | None = None  # None: the `default_disk_mb` setting; 0: no limit


async def lock_owner(session: AsyncSession, owner_id: str) -> None:
    """Hold the owner's lock until the session's transaction ends.

    PostgreSQL: the owner's row, `FOR NO KEY UPDATE` (other owners, and inserts that only
    reference the row, are not held up). SQLite has no row locks and begins a transaction at
    its first write: a write that changes nothing, made first, takes the database's write
    lock now (waiting out `busy_timeout`) rather than at the insert."""
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(update(User).where(User.id == owner_id).values(id=User.id))
    else:
        await session.execute(
            select(User.id).where(User.id == owner_id).with_for_update(key_share=True)
        )


async def check_quota(
    session: AsyncSession, s: Settings, owner_id: str, wanted: Resources, disk_mb: int
) -> None:
    """Forbidden (`quota_exceeded`) unless the owner's containers leave room for one more
    of `wanted`; atomic with the insert only under `lock_owner`."""
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
