"""Advisory locks on workspace paths, for AI operations that edit a part of the project.

A lock names a path (a folder covers everything below it), an owner (who edits: an AI run, a
person) and a reason. Locks are advisory as in PARITY: writes are never refused, but every
file change reports the locks covering the paths it changed, so a client can tell its user
"the AI is editing src/". Overlapping locks of different owners conflict (409). Locks live in
the database, go with their container, and expire: a timer removes each one at its
`expires_at` and every read drops any that a restarted gateway did not time. Each change is
published on the container's event stream as `{"type": "lock", "action", "lock"}`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from cloudcontainer.agent.paths import covers
from cloudcontainer.db import Database, FileLock
from cloudcontainer.db.types import new_id, utcnow
from cloudcontainer.errors import Conflict, NotFound
from cloudcontainer.events import EventBus
from cloudcontainer.files.service import workdir_path
from cloudcontainer.sandbox.service import ContainerService
from cloudcontainer.tasks import TaskSet

__all__ = ["LockService"]


def _as_dict(lock: FileLock) -> dict[str, Any]:
    return {
        "id": lock.id, "path": lock.path, "owner": lock.owner, "reason": lock.reason,
        "created_by": lock.created_by, "created_at": lock.created_at,
        "expires_at": lock.expires_at,
    }  # fmt: skip


class LockService:
    def __init__(
        self, *, database: Database, containers: ContainerService, events: EventBus,
        tasks: TaskSet, default_ttl_seconds: float,
    ) -> None:  # fmt: skip
        self._db = database
        self._containers = containers
        self._events = events
        self._tasks = tasks
        self.default_ttl_seconds = default_ttl_seconds
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Check-then-insert of one container's locks runs one at a time (one gateway).
        self._mutex: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Containers known to hold no live lock, so most file changes need no query. An
        # acquire bumps the container's generation after its commit; a query that saw none
        # marks the container free only if no acquire committed meanwhile.
        self._free: set[str] = set()
        self._generation: defaultdict[str, int] = defaultdict(int)

    async def held(self, user_id: str, container_id: str) -> list[dict[str, Any]]:
        await self._containers.get(user_id, container_id)
        async with self._db.session() as session:
            return [_as_dict(lock) for lock in await self._live(session, container_id)]

    async def acquire(
        self, user_id: str, container_id: str, path: str, owner: str, reason: str,
        ttl_seconds: float | None,
    ) -> dict[str, Any]:  # fmt: skip
        """Lock `path` for `owner`; 409 when another owner holds an overlapping lock."""
        await self._containers.get(user_id, container_id)
        path = workdir_path(path)
        now = utcnow()
        ttl = ttl_seconds if ttl_seconds is not None else self.default_ttl_seconds
        async with self._mutex[container_id], self._db.session() as session:
            for held in await self._live(session, container_id):
                if held.owner != owner and (covers(held.path, path) or covers(path, held.path)):
                    raise Conflict(
                        f"{held.path} is locked by {held.owner!r}"
                        + (f" ({held.reason})" if held.reason else "")
                        + f" until {held.expires_at.isoformat()}.",
                        code="locked",
                        details={"lock": _json(_as_dict(held))},
                    )
            lock = FileLock(
                id=new_id("lck"), container_id=container_id, path=path, owner=owner,
                reason=reason, created_by=user_id, created_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )  # fmt: skip
            session.add(lock)
        self._generation[container_id] += 1
        self._free.discard(container_id)
        self._publish(container_id, "acquired", lock)
        self._arm(lock)
        return _as_dict(lock)

    async def release(self, user_id: str, container_id: str, lock_id: str) -> None:
        await self._containers.get(user_id, container_id)
        async with self._db.session() as session:
            lock = await session.scalar(
                select(FileLock).where(
                    FileLock.id == lock_id,
                    FileLock.container_id == container_id,
                    FileLock.expires_at > utcnow(),
                )
            )
            if lock is None:
                raise NotFound("No such lock.", code="lock_not_found")
            await session.delete(lock)
        self._disarm(lock.id)
        self._publish(container_id, "released", lock)

    async def covering(self, container_id: str, paths: Iterable[str]) -> list[dict[str, Any]]:
        """The live locks covering any of these (workdir-rooted) paths: what a change reports."""
        if container_id in self._free:
            return []
        generation = self._generation[container_id]
        wanted = {workdir_path(path) for path in paths}
        async with self._db.session() as session:
            locks = list(
                await session.scalars(
                    select(FileLock)
                    .where(FileLock.container_id == container_id, FileLock.expires_at > utcnow())
                    .order_by(FileLock.created_at, FileLock.id)
                )
            )
        if not locks and self._generation[container_id] == generation:
            self._free.add(container_id)
        return [_as_dict(lock) for lock in locks if any(covers(lock.path, p) for p in wanted)]

    def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # -- expiry ---------------------------------------------------------------------------

    async def _live(self, session: Any, container_id: str) -> list[FileLock]:
        """The container's unexpired locks, removing (and announcing) expired ones."""
        now = utcnow()
        locks = list(
            await session.scalars(
                select(FileLock)
                .where(FileLock.container_id == container_id)
                .order_by(FileLock.created_at, FileLock.id)
            )
        )
        expired = [lock for lock in locks if lock.expires_at <= now]
        if expired:
            await session.execute(delete(FileLock).where(FileLock.id.in_([x.id for x in expired])))
            for lock in expired:
                self._disarm(lock.id)
                self._publish(container_id, "expired", lock)
        return [lock for lock in locks if lock.expires_at > now]

    def _arm(self, lock: FileLock) -> None:
        # A little late rather than early: the loop's clock is not the wall clock.
        delay = max(0.0, (lock.expires_at - utcnow()).total_seconds()) + 0.05
        loop = asyncio.get_running_loop()
        self._timers[lock.id] = loop.call_later(
            delay, lambda: self._tasks.spawn(self._expire(lock), name=f"lock-expiry:{lock.id}")
        )

    def _disarm(self, lock_id: str) -> None:
        timer = self._timers.pop(lock_id, None)
        if timer is not None:
            timer.cancel()

    async def _expire(self, lock: FileLock) -> None:
        self._timers.pop(lock.id, None)
        async with self._db.session() as session:
            gone = await session.execute(
                delete(FileLock).where(FileLock.id == lock.id, FileLock.expires_at <= utcnow())
            )
        if getattr(gone, "rowcount", 0):
            self._publish(lock.container_id, "expired", lock)

    def _publish(self, container_id: str, action: str, lock: FileLock) -> None:
        self._events.publish(
            container_id, {"type": "lock", "action": action, "lock": _json(_as_dict(lock))}
        )


def _json(lock: dict[str, Any]) -> dict[str, Any]:
    """As the API renders a lock (UTC times end in `Z`, as pydantic writes them)."""
    return {
        k: v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v
        for k, v in lock.items()
    }
