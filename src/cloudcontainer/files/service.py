"""Workspace files of a container, through its agent. The gateway never opens workspace paths
itself, so a symlink made inside a sandbox resolves inside that sandbox only."""

from __future__ import annotations

import functools
import mimetypes
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloudcontainer.agent.messages import (
    Entry,
    KeepArgs,
    Kept,
    StepDone,
    StepFailed,
    WriteOptions,
)
from cloudcontainer.agent.paths import workdir_rooted
from cloudcontainer.agentlink import fs
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentProtocolError, agent_errors, api_error
from cloudcontainer.agentlink.files import read_file, write_file
from cloudcontainer.db import FileVersion
from cloudcontainer.errors import CloudContainerError, NotFound
from cloudcontainer.files.history import FileHistory
from cloudcontainer.runtimes.base import WORKSPACE
from cloudcontainer.sandbox.service import ContainerService

__all__ = ["BatchOutcome", "FileContent", "FileService", "etag_of", "mime_of", "workdir_path"]

BATCH_SECONDS = 120.0


def workdir_path(path: str) -> str:
    """A path as answers and history name it: `/home/project/src/a.ts`, `src/a.ts` and
    `../src/a.ts` are all `/src/a.ts` (agent/paths.py)."""
    return workdir_rooted(path, WORKSPACE)


def etag_of(sha256: str) -> str:
    return f'"{sha256}"'


def mime_of(path: str, data: bytes) -> str:
    """By extension first; otherwise text when the bytes are UTF-8, else binary."""
    guessed = _mime_of_name(posixpath.basename(path))
    if guessed:
        return guessed
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


@functools.lru_cache(maxsize=4096)
def _mime_of_name(name: str) -> str | None:
    """The MIME type a file name implies (cached: guess_type parses it as a URL each time)."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed:
        return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed
    return None


@dataclass(frozen=True, slots=True)
class FileContent:
    path: str
    data: bytes
    sha256: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Per-operation results (`{"ok": true, "entry"}` or `{"ok": false, "error"}`), or, for an
    atomic batch that was undone, the index of the operation that failed and its error."""

    results: list[dict[str, Any]]
    failed: int | None = None
    error: CloudContainerError | None = None
    rolled_back: bool = True  # False: some undo step failed (a process changed things too)


def _step_answer(step: StepDone | StepFailed) -> dict[str, Any]:
    """One batch step as the client sees it: `{"ok": true, "entry"}` or `{"ok": false,
    "error"}`."""
    if step["ok"] is False:
        error = api_error(step["error"]["code"], step["error"]["message"])
        return {
            "ok": False,
            "error": {"code": error.code, "message": error.message, "status": error.status_code},
        }
    value = step.get("result")
    if value is None or "path" not in value:  # a delete answers nothing but what it removed
        return {"ok": True, "entry": None}
    entry = _entry(value)
    if "sha256" in value:
        entry["etag"] = etag_of(value["sha256"])
    return {"ok": True, "entry": entry}


def _entry(raw: Entry) -> dict[str, Any]:
    return {
        "path": workdir_path(raw["path"]), "name": raw["name"], "type": raw["type"],
        "size": raw["size"], "mtime": raw["mtime"], "mode": raw["mode"],
    }  # fmt: skip


class FileService:
    def __init__(
        self, containers: ContainerService, history: FileHistory | None = None, *,
        max_file_bytes: int = 50 * 1024 * 1024,
    ) -> None:  # fmt: skip
        self._containers = containers
        self.history = history
        self.max_file_bytes = max_file_bytes

    async def _agent(self, owner_id: str, container_id: str) -> AgentClient:
        return await self._containers.agent(owner_id, container_id)

    async def list(
        self, owner_id: str, container_id: str, path: str, recursive: bool
    ) -> list[dict[str, Any]]:
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            entries = await fs.list_dir(agent, path, recursive=recursive)
        return [_entry(entry) for entry in entries]

    async def read(
        self, owner_id: str, container_id: str, path: str, max_bytes: int | None = None
    ) -> FileContent:
        """The whole file (read in chunks past the link's message size); 413 past
        `max_bytes` (default `max_file_bytes`)."""
        agent = await self._agent(owner_id, container_id)
        limit = self.max_file_bytes if max_bytes is None else min(max_bytes, self.max_file_bytes)
        with agent_errors():
            read = await read_file(agent, path, max_bytes=limit)
        return FileContent(
            path=workdir_path(read.entry["path"]), data=read.data, sha256=read.sha256,
            size=len(read.data), mtime=read.entry["mtime"],
        )  # fmt: skip

    async def write(
        self, owner_id: str, container_id: str, path: str, data: bytes, *,
        mkdirs: bool = False, expect_sha256: str | None = None, reason: str = "write",
    ) -> dict[str, Any]:  # fmt: skip
        """Write atomically; with `expect_sha256` only if the file still has that content."""
        agent = await self._agent(owner_id, container_id)
        options: WriteOptions = {"mkdirs": mkdirs}
        if expect_sha256 is not None:
            options["expect_sha256"] = expect_sha256
        keep = self._keep_previous()
        if "keep_previous" in keep:
            options["keep_previous"] = keep["keep_previous"]
        with agent_errors():
            raw = await write_file(agent, path, data, **options)
        self._record(owner_id, container_id, raw.get("previous"), reason, raw["sha256"])
        return {**_entry(raw), "etag": etag_of(raw["sha256"])}

    def _keep_previous(self) -> KeepArgs:
        if self.history is None or not self.history.enabled:
            return {}
        return {"keep_previous": self.history.keep_previous}

    def _record(
        self, owner_id: str, container_id: str, previous: Kept | None, reason: str,
        unchanged: str | None = None,
    ) -> None:  # fmt: skip
        """Keep the replaced content as a version (in the background)."""
        if self.history is not None and previous is not None:
            self.history.record_later(
                container_id, workdir_path(previous["path"]), previous,
                user_id=owner_id, reason=reason, unchanged=unchanged,
            )  # fmt: skip

    async def mkdir(
        self, owner_id: str, container_id: str, path: str, recursive: bool
    ) -> dict[str, Any]:
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            return _entry(await fs.make_dir(agent, path, recursive=recursive))

    async def delete(self, owner_id: str, container_id: str, path: str, recursive: bool) -> None:
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            raw = await fs.remove(agent, path, recursive=recursive, keep=self._keep_previous())
        if raw is not None:
            self._record(owner_id, container_id, raw.get("previous"), "delete")

    async def move(
        self, owner_id: str, container_id: str, source: str, target: str
    ) -> dict[str, Any]:
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            raw = await fs.rename(agent, source, target, keep=self._keep_previous())
        self._record(owner_id, container_id, raw.get("previous"), "move")
        self._record(owner_id, container_id, raw.get("replaced"), "overwrite")
        return _entry(raw)

    async def batch(
        self, owner_id: str, container_id: str, operations: Sequence[dict[str, Any]], atomic: bool
    ) -> BatchOutcome:
        """Apply operations in the agent in one request (see agent/batch.py)."""
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            raw = await fs.apply_batch(
                agent, operations, atomic=atomic, keep=self._keep_previous(),
                timeout=BATCH_SECONDS,
            )  # fmt: skip
        if "failed" in raw:
            error = api_error(raw["error"]["code"], raw["error"]["message"])
            return BatchOutcome(
                results=[], failed=raw["failed"], error=error, rolled_back=raw["rolled_back"]
            )
        if len(raw["results"]) != len(operations):
            raise AgentProtocolError(
                f"The sandbox's agent answered {len(raw['results'])} results to a batch of "
                f"{len(operations)} operations."
            )
        for operation, step in zip(operations, raw["results"], strict=True):
            self._record_batch_step(owner_id, container_id, operation["op"], step)
        return BatchOutcome(results=[_step_answer(step) for step in raw["results"]])

    def _record_batch_step(
        self, owner_id: str, container_id: str, op: str, step: StepDone | StepFailed
    ) -> None:
        """A batch step keeps what it replaced, as the single-file calls do."""
        value = step.get("result") if step["ok"] else None
        if value is None:
            return
        reasons = {"write": "write", "delete": "delete", "move": "move"}
        if op in reasons:
            written = value.get("sha256") if op == "write" and "path" in value else None
            self._record(owner_id, container_id, value.get("previous"), reasons[op], written)
        self._record(owner_id, container_id, value.get("replaced"), "overwrite")

    # -- history --------------------------------------------------------------------------

    def _history(self) -> FileHistory:
        if self.history is None:
            raise NotFound("File history is not kept on this server.", code="history_disabled")
        return self.history

    async def versions(self, owner_id: str, container_id: str, path: str) -> Sequence[FileVersion]:
        """The kept versions of a file, newest first (the path is workdir-rooted)."""
        await self._containers.get(owner_id, container_id)
        return await self._history().versions(container_id, workdir_path(path))

    async def version(
        self, owner_id: str, container_id: str, version_id: str
    ) -> tuple[FileVersion, bytes]:
        await self._containers.get(owner_id, container_id)
        return await self._history().get(container_id, version_id)

    async def restore_version(
        self, owner_id: str, container_id: str, version_id: str
    ) -> dict[str, Any]:
        """Write a version's bytes back to its path (the content it replaces becomes a
        version itself)."""
        version, data = await self.version(owner_id, container_id, version_id)
        return await self.write(
            owner_id, container_id, version.path, data, mkdirs=True, reason="restore"
        )
