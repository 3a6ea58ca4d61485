"""File history: the earlier contents of workspace files written through the file API.

The agent hands back the bytes a write, delete or move replaced (when asked, and only for
regular files up to `history_max_file_bytes`); they become a `file_versions` row, holding the
bytes themselves when they are small (`history_inline_bytes`: most source files), else naming
a blob under the container's prefix in object storage. On this class of machine an object
write costs more CPU than the whole save. Each path keeps at most `history_max_versions`; older
rows go, and so do blobs no remaining row names. Everything goes with the container.

Keeping a version costs a blob write and a database transaction, more than the save itself:
versions are queued and kept by one background task in the order of the writes, a batch per
transaction, and every read of the history first waits for the versions queued before it, so
an API client always sees the versions of the writes it was answered for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from cloudcontainer.agent.messages import Kept
from cloudcontainer.config import Settings
from cloudcontainer.db import Database, FileVersion
from cloudcontainer.errors import NotFound
from cloudcontainer.storage import ObjectMissing, ObjectStorage, StorageError
from cloudcontainer.tasks import TaskSet

__all__ = ["FileHistory"]

log = structlog.get_logger(__name__)


# Versions that arrive within this long of each other are kept in one transaction: a burst of
# saves (an AI writing a project, an editor's autosave) costs a few transactions, not one each.
BATCH_SECONDS = 0.05


def version_id() -> str:
    """Ids that sort by creation (nanoseconds, then random), so "newest first" is exact. The
    random part only breaks ties: `random`, not `secrets` (no system call per version)."""
    return f"ver_{time.time_ns():016x}{random.getrandbits(32):08x}"


def history_prefix(container_id: str) -> str:
    return f"containers/{container_id}/history"


@dataclass(frozen=True, slots=True)
class _Pending:
    container_id: str
    path: str
    previous: Kept  # the agent's answer: the replaced content (base64) and its size
    user_id: str | None
    reason: str
    unchanged: str | None  # the SHA-256 of the new content: the same bytes keep no version


class FileHistory:
    def __init__(
        self, *, settings: Settings, database: Database, storage: ObjectStorage, tasks: TaskSet
    ) -> None:
        self.max_versions = settings.history_max_versions
        self.max_file_bytes = settings.history_max_file_bytes
        self.inline_bytes = settings.history_inline_bytes
        self._db = database
        self._storage = storage
        self._tasks = tasks
        self._queue: list[_Pending] = []  # versions to keep, in the order of their writes
        self._keeper: asyncio.Task[None] | None = None  # keeping the queue, while it has work
        self._queued = 0  # versions ever queued, and kept (or given up on): settle() compares
        self._kept = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def record_later(
        self, container_id: str, path: str, previous: Kept | None, *,
        user_id: str | None, reason: str, unchanged: str | None = None,
    ) -> None:  # fmt: skip
        """Queue `previous` (the agent's answer) to be kept as a version of `path`. The queue
        is kept in order by one task, each turn in one transaction: under a burst of saves,
        one transaction keeps all that arrived while the last one ran."""
        if previous is None or "data" not in previous or not self.enabled:
            return
        self._queue.append(_Pending(container_id, path, previous, user_id, reason, unchanged))
        self._queued += 1
        if self._keeper is None:
            self._keeper = self._tasks.spawn(self._keep_queue(), name="file-history")

    async def settle(self, container_id: str) -> None:
        """Wait until the versions of every write answered so far are kept (the container is
        named for the reader's sake: the queue is kept in order, so this waits for all)."""
        if self._kept >= self._queued:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued, waiter))
        await waiter

    @property
    def enabled(self) -> bool:
        return self.max_versions > 0

    @property
    def keep_previous(self) -> int:
        """The agent's `keep_previous` argument: the size cap, or 0 when history is off."""
        return max(self.max_file_bytes, 1) if self.enabled else 0

    async def _keep_queue(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(BATCH_SECONDS)
                batch, self._queue = self._queue, []
                # A transaction per container: one deleted meanwhile fails only its own.
                by_container: dict[str, list[_Pending]] = {}
                for pending in batch:
                    by_container.setdefault(pending.container_id, []).append(pending)
                for container_id, versions in by_container.items():
                    try:
                        await self._keep(versions)
                    except SQLAlchemyError as exc:
                        log.warning(
                            "file history not kept", container_id=container_id, error=str(exc)
                        )
                self._kept += len(batch)
                self._wake_settled()
        finally:
            self._keeper = None
            if self._queue:  # cancelled with work queued: nobody will keep it now
                self._kept += len(self._queue)
                self._queue.clear()
            self._wake_settled()

    def _wake_settled(self) -> None:
        waiting = []
        for target, waiter in self._waiters:
            if target <= self._kept:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    async def _keep(self, batch: list[_Pending]) -> None:
        """Write one container's blobs, then its rows in one transaction, dropping the versions
        each touched path has beyond `max_versions` (and blobs no row names any more).

        The writes they belong to have already happened, so a storage failure is logged and
        that version skipped rather than failing anything. A write of the same bytes (an
        editor's autosave) keeps no version."""
        container_id = batch[0].container_id
        rows: list[dict[str, Any]] = []
        blobs: dict[str, bytes] = {}
        for pending in batch:
            try:
                data = base64.b64decode(pending.previous["data"], validate=True)
            except binascii.Error:  # the agent is the tenant's: it may send anything
                log.warning("file history not kept: invalid base64", container_id=container_id)
                continue
            sha256 = hashlib.sha256(data).hexdigest()
            if len(data) > self.max_file_bytes or sha256 == pending.unchanged:
                continue
            inline = len(data) <= self.inline_bytes
            if not inline:
                blobs[sha256] = data
            rows.append({
                "id": version_id(), "container_id": container_id, "path": pending.path,
                "size": len(data), "sha256": sha256, "created_by": pending.user_id,
                "reason": pending.reason, "data": data if inline else None,
            })  # fmt: skip
        for sha256, data in list(blobs.items()):
            try:
                # Small blobs are written without asking first: one request instead of two.
                await self._storage.put_blob(history_prefix(container_id), data, check=False)
            except StorageError as exc:
                log.warning("file history not kept", container_id=container_id, error=exc.message)
                del blobs[sha256]
        rows = [row for row in rows if row["data"] is not None or row["sha256"] in blobs]
        if not rows:
            return
        async with self._db.session() as session:
            # Core, not ORM objects: one executemany, no unit of work to flush.
            await session.execute(insert(FileVersion), rows)
            stale = await self._stale(session, container_id, {row["path"] for row in rows})
        if stale:
            await self._sweep(container_id, stale)

    async def versions(self, container_id: str, path: str) -> list[FileVersion]:
        """The versions of `path`, newest first."""
        await self.settle(container_id)
        query = (
            select(FileVersion)
            .where(FileVersion.container_id == container_id, FileVersion.path == path)
            .order_by(FileVersion.id.desc())
        )
        async with self._db.session() as session:
            return list(await session.scalars(query))

    async def get(self, container_id: str, version_id: str) -> tuple[FileVersion, bytes]:
        await self.settle(container_id)
        async with self._db.session() as session:
            version = await session.scalar(
                select(FileVersion)
                .options(undefer(FileVersion.data))
                .where(FileVersion.id == version_id, FileVersion.container_id == container_id)
            )
        if version is None:
            raise NotFound("No such version.", code="version_not_found")
        if version.data is not None:
            return version, version.data
        try:
            data = await self._storage.get_blob(history_prefix(container_id), version.sha256)
        except ObjectMissing as exc:
            raise NotFound(
                "The version's content is missing from object storage.", code="version_not_found"
            ) from exc
        return version, data

    async def forget(self, container_id: str) -> None:
        """Drop every version of a container (its rows go with it by the foreign key)."""
        await self.settle(container_id)
        async with self._db.session() as session:
            await session.execute(
                delete(FileVersion).where(FileVersion.container_id == container_id)
            )
        await self._storage.delete_prefix(history_prefix(container_id))

    async def _stale(self, session: AsyncSession, container_id: str, paths: set[str]) -> set[str]:
        """Delete the versions of these paths beyond each one's newest `max_versions` (inside
        the caller's transaction, one query for all); answer the SHA-256s of those whose bytes
        are blobs."""
        ranked = (
            select(
                FileVersion.id, FileVersion.sha256, FileVersion.data.is_(None).label("is_blob"),
                func.row_number()
                .over(partition_by=FileVersion.path, order_by=FileVersion.id.desc())
                .label("rank"),
            )
            .where(FileVersion.container_id == container_id, FileVersion.path.in_(paths))
            .subquery()
        )  # fmt: skip
        stale = (
            await session.execute(
                select(ranked.c.id, ranked.c.sha256, ranked.c.is_blob).where(
                    ranked.c.rank > self.max_versions
                )
            )
        ).all()
        if stale:
            await session.execute(
                delete(FileVersion).where(FileVersion.id.in_([row[0] for row in stale]))
            )
        return {sha256 for _, sha256, is_blob in stale if is_blob}

    async def _sweep(self, container_id: str, candidates: set[str]) -> None:
        """Delete the blobs among `candidates` that no version of the container names."""
        async with self._db.session() as session:
            named = set(
                await session.scalars(
                    select(FileVersion.sha256).where(
                        FileVersion.container_id == container_id,
                        FileVersion.sha256.in_(candidates),
                    )
                )
            )
        for sha256 in candidates - named:
            try:
                await self._storage.delete_blob(history_prefix(container_id), sha256)
            except StorageError as exc:
                log.warning("history blob not pruned", sha256=sha256, error=exc.message)
