"""File history: the earlier contents of workspace files written through the file API.

The agent hands back the bytes a write, delete or move replaced (when asked, and only for
regular files up to `history_max_file_bytes`); they become a blob under the container's prefix
in object storage and a `file_versions` row. Each path keeps at most `history_max_versions`;
older rows go, and so do blobs no remaining row names. Everything goes with the container.

Keeping a version costs a blob write and a database transaction, a few milliseconds that a
file save should not wait for: versions are kept by a background task per container, in the
order of the writes, and every read of the history first waits for that container's pending
ones, so an API client always sees the versions of the writes it was answered for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from typing import Any

import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from cloudcontainer.config import Settings
from cloudcontainer.db import Database, FileVersion
from cloudcontainer.errors import NotFound
from cloudcontainer.storage import ObjectMissing, ObjectStorage, StorageError
from cloudcontainer.tasks import TaskSet

__all__ = ["FileHistory"]

log = structlog.get_logger(__name__)


def version_id() -> str:
    """Ids that sort by creation (nanoseconds, then random), so "newest first" is exact."""
    return f"ver_{time.time_ns():016x}{secrets.token_hex(4)}"


def history_prefix(container_id: str) -> str:
    return f"containers/{container_id}/history"


class FileHistory:
    def __init__(
        self, *, settings: Settings, database: Database, storage: ObjectStorage, tasks: TaskSet
    ) -> None:
        self.max_versions = settings.history_max_versions
        self.max_file_bytes = settings.history_max_file_bytes
        self._db = database
        self._storage = storage
        self._tasks = tasks
        self._tails: dict[str, asyncio.Task[None]] = {}  # container id → its last pending keep

    def record_later(
        self, container_id: str, path: str, previous: dict[str, Any] | None, *,
        user_id: str | None, reason: str, unchanged: str | None = None,
    ) -> None:  # fmt: skip
        """`record` in the background, after the container's earlier pending ones."""
        if previous is None or "data" not in previous or not self.enabled:
            return
        before = self._tails.get(container_id)

        async def keep() -> None:
            if before is not None:
                await asyncio.wait([before])
            try:
                await self.record(
                    container_id, path, previous, user_id=user_id, reason=reason,
                    unchanged=unchanged,
                )  # fmt: skip
            except SQLAlchemyError as exc:  # e.g. the container was deleted meanwhile
                log.warning("file history not kept", container_id=container_id, error=str(exc))

        task = self._tasks.spawn(keep(), name=f"history:{container_id}")
        self._tails[container_id] = task
        task.add_done_callback(lambda done: self._forget_tail(container_id, done))

    def _forget_tail(self, container_id: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(container_id) is task:
            del self._tails[container_id]

    async def settle(self, container_id: str) -> None:
        """Wait until the versions of every write answered so far are kept."""
        tail = self._tails.get(container_id)
        if tail is not None:
            await asyncio.wait([tail])

    @property
    def enabled(self) -> bool:
        return self.max_versions > 0

    @property
    def keep_previous(self) -> int:
        """The agent's `keep_previous` argument: the size cap, or 0 when history is off."""
        return max(self.max_file_bytes, 1) if self.enabled else 0

    async def record(
        self, container_id: str, path: str, previous: dict[str, Any] | None, *,
        user_id: str | None, reason: str, unchanged: str | None = None,
    ) -> FileVersion | None:  # fmt: skip
        """Keep `previous` (the agent's answer) as a version of `path`, if it carries bytes.

        The write it belongs to has already happened, so a storage failure is logged and
        answered with None rather than failing the request. `unchanged` is the SHA-256 of the
        new content: a write of the same bytes keeps no version.
        """
        if previous is None or "data" not in previous or not self.enabled:
            return None
        data = base64.b64decode(previous["data"])
        if len(data) > self.max_file_bytes:
            return None
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 == unchanged:
            return None  # saved again with the same bytes (editors' autosave): nothing to keep
        try:
            # Small blobs are written without asking first: one request instead of two.
            await self._storage.put_blob(history_prefix(container_id), data, check=False)
        except StorageError as exc:
            log.warning("file history not kept", container_id=container_id, error=exc.message)
            return None
        version = FileVersion(
            id=version_id(), container_id=container_id, path=path, size=len(data),
            sha256=sha256, created_by=user_id, reason=reason,
        )  # fmt: skip
        async with self._db.session() as session:
            session.add(version)
            stale = await self._stale(session, container_id, path)
        if stale:
            await self._sweep(container_id, stale)
        return version

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
                select(FileVersion).where(
                    FileVersion.id == version_id, FileVersion.container_id == container_id
                )
            )
        if version is None:
            raise NotFound("No such version.", code="version_not_found")
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

    async def _stale(self, session: AsyncSession, container_id: str, path: str) -> set[str]:
        """Delete the versions of `path` beyond the newest `max_versions` (inside the
        caller's transaction); answer their SHA-256s."""
        stale = list(
            await session.scalars(
                select(FileVersion)
                .where(FileVersion.container_id == container_id, FileVersion.path == path)
                .order_by(FileVersion.id.desc())
                .offset(self.max_versions)
            )
        )
        for version in stale:
            await session.delete(version)
        return {version.sha256 for version in stale}

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
