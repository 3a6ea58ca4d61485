"""Snapshots: a project's workspace as a manifest plus content-addressed blobs.

The agent lists the workspace with content hashes (`fs.manifest`, excludes from
`snapshot_exclude`); only contents whose hash the project's prefix lacks are read and uploaded,
so a second snapshot of a barely changed workspace moves only the changed files. A snapshot
is the manifest (a named object) and a `snapshots` row. A restore prunes what the snapshot
lacks and writes the rest through the agent in batches; the gateway never touches host paths.

Layout in the store, per project: `projects/<id>/blobs/ab/cdef…` and
`projects/<id>/snapshots/<snapshot id>.json`. The newest `snapshot_keep` snapshots are kept;
blobs no kept manifest names are swept, under the project's lock, after each snapshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cloudcontainer.agent.messages import ApplyEntry, ManifestEntry
from cloudcontainer.agentlink import snapshots as agent_snapshots
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, agent_errors
from cloudcontainer.agentlink.files import read_file
from cloudcontainer.config import Settings
from cloudcontainer.db import Container, Database, Snapshot
from cloudcontainer.errors import CloudContainerError, Conflict, NotFound, PayloadTooLarge
from cloudcontainer.sandbox.service import ContainerService, Status
from cloudcontainer.storage import ObjectMissing, ObjectStorage, StorageError

__all__ = ["SnapshotService"]

log = structlog.get_logger(__name__)

MANIFEST_VERSION = 1
AGENT_TIMEOUT = 300.0  # a manifest of a large workspace hashes every changed file
BATCH_BYTES = 8 * 1024 * 1024  # restore batches stay far below the agent's message limit
# The largest file a snapshot keeps (read in chunks, held whole in memory; restored in one
# fs.apply with a batch, which the agent takes up to its 128 MiB message limit).
FILE_BYTES = 64 * 1024 * 1024
BATCH_ENTRIES = 500
ON_STOP_SECONDS = 120.0  # a snapshot never holds a stop longer than this


def project_prefix(project_id: str) -> str:
    return f"projects/{project_id}"


def manifest_name(project_id: str, snapshot_id: str) -> str:
    return f"{project_prefix(project_id)}/snapshots/{snapshot_id}.json"


def snapshot_id() -> str:
    """Ids that sort by creation, so the newest snapshot is exact even within a second."""
    return f"snp_{time.time_ns():016x}{secrets.token_hex(4)}"


def digest_of(entries: list[ManifestEntry]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


class SnapshotService:
    def __init__(
        self, *, settings: Settings, database: Database, storage: ObjectStorage,
        containers: ContainerService,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.storage = storage
        self._db = database
        self._containers = containers
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def install(self) -> None:
        """Hook into container life: restore on first start, snapshot on stop."""
        hooks = self._containers.hooks
        hooks.seed = self.seed
        if self.settings.snapshot_on_stop:
            hooks.stopping.append(self.on_stop)

    # -- queries --------------------------------------------------------------------------

    async def of_project(self, project_id: str) -> list[Snapshot]:
        """A project's snapshots, newest first (the caller checked the project is theirs)."""
        async with self._db.session() as session:
            return list(
                await session.scalars(
                    select(Snapshot)
                    .where(Snapshot.project_id == project_id)
                    .order_by(Snapshot.id.desc())
                )
            )

    async def latest(self, project_id: str) -> Snapshot | None:
        async with self._db.session() as session:
            return await session.scalar(
                select(Snapshot)
                .where(Snapshot.project_id == project_id)
                .order_by(Snapshot.id.desc())
                .limit(1)
            )

    # -- requests -------------------------------------------------------------------------

    async def take(self, owner_id: str, container_id: str) -> Snapshot:
        """A manual snapshot of a container's workspace (starting the container if stopped)."""
        container = await self._containers.get(owner_id, container_id)
        link = await self._containers.agent(owner_id, container_id)
        snapshot = await self._take(container, link, "manual", only_if_changed=False)
        assert snapshot is not None
        return snapshot

    async def restore(self, owner_id: str, container_id: str, snapshot_id: str) -> Snapshot:
        """Make the container's workspace equal to one of its project's snapshots."""
        container = await self._containers.get(owner_id, container_id)
        async with self._db.session() as session:
            snapshot = await session.scalar(
                select(Snapshot).where(
                    Snapshot.id == snapshot_id, Snapshot.project_id == container.project_id
                )
            )
        if snapshot is None:
            raise NotFound("No such snapshot.", code="snapshot_not_found")
        link = await self._containers.agent(owner_id, container_id)
        await self._restore(link, snapshot)
        return snapshot

    async def forget_project(self, project_id: str) -> None:
        """Delete a project's snapshots and blobs from the store (rows go with the project)."""
        async with self._project_lock(project_id):
            await self.storage.delete_prefix(project_prefix(project_id))
        self._locks.pop(project_id, None)

    @contextlib.asynccontextmanager
    async def _project_lock(self, project_id: str) -> AsyncIterator[None]:
        """One take, restore, prune or forget of a project at a time, across gateways too:
        a take uploads blobs before its manifest names them, and a prune elsewhere would
        sweep them. This process's tasks queue on their own lock first, so they hold one
        database connection (or, on SQLite, one waiting thread) between them."""
        async with self._locks[project_id], self._db.exclusive(f"snapshots:{project_id}"):
            yield

    # -- container hooks ------------------------------------------------------------------

    async def seed(self, container: Container, link: AgentClient) -> bool:
        """On a container's first start: restore the project's latest snapshot, if any."""
        snapshot = await self.latest(container.project_id)
        if snapshot is None:
            return False
        await self._restore(link, snapshot)
        log.info("workspace restored", container_id=container.id, snapshot_id=snapshot.id)
        return True

    async def on_stop(self, container_id: str, link: AgentClient) -> None:
        if link.closed.is_set():
            return  # the sandbox is already gone; nothing can be read from it
        container = await self._containers.get(None, container_id)
        if container.ephemeral:
            return  # one session's scratch space, never the project's saved workspace
        async with asyncio.timeout(ON_STOP_SECONDS):
            await self._take(container, link, "stop", only_if_changed=True)

    async def run_periodically(self) -> None:
        """Snapshot every running container whose workspace changed since its last snapshot."""
        interval = self.settings.snapshot_interval_seconds
        while True:
            await asyncio.sleep(interval)
            for container_id, link in list(self._containers.links.items()):
                try:
                    container = await self._containers.get(None, container_id)
                    if container.status != Status.RUNNING or link.closed.is_set():
                        continue
                    if container.ephemeral:
                        continue
                    await self._take(container, link, "auto", only_if_changed=True)
                except (CloudContainerError, TimeoutError, OSError, SQLAlchemyError) as exc:
                    # One container's failure (or its project deleted meanwhile) must not end
                    # the loop for all the others.
                    log.warning(
                        "automatic snapshot failed", container_id=container_id, error=str(exc)
                    )

    # -- taking ---------------------------------------------------------------------------

    async def _take(
        self, container: Container, link: AgentClient, reason: str, *, only_if_changed: bool
    ) -> Snapshot | None:
        project_id = container.project_id
        prefix = project_prefix(project_id)
        async with self._project_lock(project_id):
            with agent_errors(failed="snapshot"):
                listed = await agent_snapshots.manifest(
                    link, exclude=self.settings.snapshot_exclude, timeout=AGENT_TIMEOUT
                )
            entries = listed["entries"]
            if only_if_changed:
                latest = await self.latest(project_id)
                if latest is not None and latest.digest == digest_of(entries):
                    return None
            stored = await self.storage.list_blobs(prefix)
            kept: list[ManifestEntry] = []
            uploaded_count = uploaded_bytes = 0
            for entry in entries:
                if entry["type"] == "file" and entry["sha256"] not in stored:
                    data = await self._read(link, entry["path"])
                    if data is None:
                        continue  # gone since the listing
                    entry["sha256"] = await self.storage.put_blob(prefix, data)
                    entry["size"] = len(data)
                    stored.add(entry["sha256"])
                    uploaded_count += 1
                    uploaded_bytes += len(data)
                kept.append(entry)
            snapshot = Snapshot(
                id=snapshot_id(), project_id=project_id, container_id=container.id,
                reason=reason, file_count=sum(1 for e in kept if e["type"] == "file"),
                total_bytes=sum(e["size"] for e in kept if e["type"] == "file"),
                uploaded_count=uploaded_count, uploaded_bytes=uploaded_bytes,
                digest=digest_of(kept),
            )  # fmt: skip
            manifest = {
                "version": MANIFEST_VERSION, "id": snapshot.id, "project_id": project_id,
                "container_id": container.id, "entries": kept,
            }  # fmt: skip
            await self.storage.put_object(
                manifest_name(project_id, snapshot.id), json.dumps(manifest).encode()
            )
            async with self._db.session() as session:
                session.add(snapshot)
            await self._prune(project_id)
        log.info(
            "snapshot taken", container_id=container.id, snapshot_id=snapshot.id, reason=reason,
            files=snapshot.file_count, uploaded=uploaded_count,
        )  # fmt: skip
        return snapshot

    async def _read(self, link: AgentClient, path: str) -> bytes | None:
        try:
            read = await read_file(link, path, max_bytes=FILE_BYTES, timeout=AGENT_TIMEOUT)
        except AgentOpError as exc:
            if exc.errno in ("ENOENT", "EISDIR"):
                return None
            raise Conflict(
                f"The snapshot could not read {path}: {exc.message}", code="snapshot_failed"
            ) from exc
        except PayloadTooLarge as exc:  # skipping it would delete it on restore: fail
            raise Conflict(
                f"The snapshot could not keep {path}: it is larger than {FILE_BYTES >> 20} MiB "
                "(exclude it with snapshot_exclude).", code="snapshot_failed",
            ) from exc  # fmt: skip
        return read.data

    async def _prune(self, project_id: str) -> None:
        """Keep the newest `snapshot_keep` snapshots; sweep blobs none of them names."""
        async with self._db.session() as session:
            old = list(
                await session.scalars(
                    select(Snapshot)
                    .where(Snapshot.project_id == project_id)
                    .order_by(Snapshot.id.desc())
                    .offset(self.settings.snapshot_keep)
                )
            )
            for snapshot in old:
                await session.delete(snapshot)
        if not old:
            return
        for snapshot in old:
            await self.storage.delete_object(manifest_name(project_id, snapshot.id))
        named: set[str] = set()
        for snapshot in await self.of_project(project_id):
            named.update(e["sha256"] for e in await self._manifest(snapshot) if e["type"] == "file")
        prefix = project_prefix(project_id)
        for sha256 in await self.storage.list_blobs(prefix) - named:
            await self.storage.delete_blob(prefix, sha256)

    # -- restoring ------------------------------------------------------------------------

    async def _manifest(self, snapshot: Snapshot) -> list[ManifestEntry]:
        try:
            raw = await self.storage.get_object(manifest_name(snapshot.project_id, snapshot.id))
        except ObjectMissing as exc:
            raise StorageError(
                f"Snapshot {snapshot.id} is missing from object storage.", code="snapshot_missing"
            ) from exc
        entries: list[ManifestEntry] = json.loads(raw)["entries"]
        return entries

    async def _restore(self, link: AgentClient, snapshot: Snapshot) -> None:
        """Prune what the snapshot lacks, then write folders, files and links in batches.
        Folders are first made writable and get their own modes last."""
        async with self._project_lock(snapshot.project_id):
            entries = await self._manifest(snapshot)
            prefix = project_prefix(snapshot.project_id)
            keep = {e["path"]: e["type"] for e in entries}
            folders = [e for e in entries if e["type"] == "directory"]
            with agent_errors(failed="restore"):
                await agent_snapshots.prune(
                    link, keep, exclude=self.settings.snapshot_exclude, timeout=AGENT_TIMEOUT
                )
                await self._apply(link, [_folder(e, e["mode"] | 0o700) for e in folders])
                batch: list[ApplyEntry] = []
                size = 0
                for entry in entries:
                    if entry["type"] == "directory":
                        continue
                    item: ApplyEntry = {
                        "path": entry["path"], "type": entry["type"], "mode": entry["mode"]
                    }  # fmt: skip
                    if entry["type"] == "symlink":
                        item["target"] = entry["target"]
                    else:
                        data = await self._blob(prefix, entry["sha256"])
                        item["data"] = base64.b64encode(data).decode()
                        size += len(data)
                    batch.append(item)
                    if size >= BATCH_BYTES or len(batch) >= BATCH_ENTRIES:
                        await self._apply(link, batch)
                        batch, size = [], 0
                await self._apply(link, batch)
                await self._apply(
                    link, [_folder(e, e["mode"]) for e in folders if e["mode"] & 0o700 != 0o700]
                )

    async def _blob(self, prefix: str, sha256: str) -> bytes:
        try:
            return await self.storage.get_blob(prefix, sha256)
        except ObjectMissing as exc:
            raise StorageError(
                f"Blob {sha256} of the snapshot is missing from object storage.",
                code="snapshot_missing",
            ) from exc

    @staticmethod
    async def _apply(link: AgentClient, entries: list[ApplyEntry]) -> None:
        if entries:
            await agent_snapshots.apply_entries(link, entries, timeout=AGENT_TIMEOUT)


def _folder(entry: ManifestEntry, mode: int) -> ApplyEntry:
    return {"path": entry["path"], "type": "directory", "mode": mode}
