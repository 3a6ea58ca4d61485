"""Workspace files of a container, through its agent. The gateway never opens workspace paths
itself, so a symlink made inside a sandbox resolves inside that sandbox only."""

from __future__ import annotations

import functools
import mimetypes
import posixpath
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cloudcontainer.agent.paths import workdir_rooted
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentProtocolError
from cloudcontainer.agentlink.files import read_file, write_file
from cloudcontainer.db import FileVersion
from cloudcontainer.errors import (
    BadRequest,
    CloudContainerError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
)
from cloudcontainer.files.history import FileHistory
from cloudcontainer.runtimes.base import WORKSPACE
from cloudcontainer.sandbox.service import ContainerService

__all__ = [
    "BatchOutcome", "FileContent", "FileService", "api_error", "etag_of", "mime_of",
    "workdir_path",
]  # fmt: skip

BATCH_SECONDS = 120.0

ErrorTable = dict[str, tuple[type[CloudContainerError], str]]

_ERRORS: ErrorTable = {
    "ENOENT": (NotFound, "file_not_found"),
    "EISDIR": (Conflict, "is_a_directory"),
    "ENOTDIR": (Conflict, "not_a_directory"),
    "EEXIST": (Conflict, "already_exists"),
    "ENOTEMPTY": (Conflict, "directory_not_empty"),
    "ETAGMISMATCH": (PreconditionFailed, "etag_mismatch"),
    "EINVAL": (BadRequest, "invalid_request"),
    "ENAMETOOLONG": (BadRequest, "path_too_long"),
    "EPERM": (Forbidden, "operation_not_permitted"),
    "EACCES": (Forbidden, "permission_denied"),
    "ENOSPC": (InsufficientStorage, "no_space"),
    "EXDEV": (Conflict, "cross_device"),
    "EDQUOT": (InsufficientStorage, "quota_exceeded"),
    "EFBIG": (PayloadTooLarge, "too_large"),
}


def api_error(errno: str, message: str) -> CloudContainerError:
    """The API error for an agent's errno code (its Node-style message is kept)."""
    error_class, code = _ERRORS.get(errno, (BadRequest, errno.lower()))
    return error_class(message.replace(WORKSPACE, "") or errno, code=code)


@contextmanager
def agent_errors(own: ErrorTable | None = None) -> Iterator[None]:
    """Map the agent's errno codes to API errors; a feature's `own` codes (search's EREGEX,
    an archive's EUNSAFE) come first, with the agent's message as it is."""
    try:
        yield
    except AgentOpError as exc:
        if own is not None and exc.errno in own:
            error_class, code = own[exc.errno]
            raise error_class(exc.message, code=code) from exc
        raise api_error(exc.errno, exc.message) from exc


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


def _result(raw: dict[str, Any]) -> dict[str, Any]:
    if not raw["ok"]:
        error = api_error(raw["error"]["code"], raw["error"]["message"])
        return {
            "ok": False,
            "error": {"code": error.code, "message": error.message, "status": error.status_code},
        }
    value = raw["result"]
    if value is None:
        return {"ok": True, "entry": None}
    entry = _entry(value)
    if "sha256" in value:
        entry["etag"] = etag_of(value["sha256"])
    return {"ok": True, "entry": entry}


def _entry(raw: dict[str, Any]) -> dict[str, Any]:
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
            entries = await agent.call("fs.list", path=path, recursive=recursive)
        return [_entry(entry) for entry in entries]

    async def read(self, owner_id: str, container_id: str, path: str) -> FileContent:
        """The whole file (read in chunks past the link's message size); 413 past
        `max_file_bytes`."""
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            read = await read_file(agent, path, max_bytes=self.max_file_bytes)
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
        args: dict[str, Any] = {"mkdirs": mkdirs, **self._keep_previous()}
        if expect_sha256 is not None:
            args["expect_sha256"] = expect_sha256
        with agent_errors():
            raw = await write_file(agent, path, data, **args)
        self._record(owner_id, container_id, raw.get("previous"), reason, raw["sha256"])
        return {**_entry(raw), "etag": etag_of(raw["sha256"])}

    def _keep_previous(self) -> dict[str, int]:
        if self.history is None or not self.history.enabled:
            return {}
        return {"keep_previous": self.history.keep_previous}

    def _record(
        self, owner_id: str, container_id: str, previous: dict[str, Any] | None, reason: str,
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
            return _entry(await agent.call("fs.mkdir", path=path, recursive=recursive))

    async def delete(self, owner_id: str, container_id: str, path: str, recursive: bool) -> None:
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            raw = await agent.call(
                "fs.remove", path=path, recursive=recursive, **self._keep_previous()
            )
        if raw is not None:
            self._record(owner_id, container_id, raw.get("previous"), "delete")

    async def move(
        self, owner_id: str, container_id: str, source: str, target: str
    ) -> dict[str, Any]:
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            raw = await agent.call(
                "fs.rename", source=source, target=target, **self._keep_previous()
            )
        self._record(owner_id, container_id, raw.get("previous"), "move")
        self._record(owner_id, container_id, raw.get("replaced"), "overwrite")
        return _entry(raw)

    async def batch(
        self, owner_id: str, container_id: str, operations: Sequence[dict[str, Any]], atomic: bool
    ) -> BatchOutcome:
        """Apply operations in the agent in one request (see agent/batch.py)."""
        agent = await self._agent(owner_id, container_id)
        with agent_errors():
            raw = await agent.call(
                "fs.batch", timeout=BATCH_SECONDS, operations=list(operations), atomic=atomic,
                **self._keep_previous(),
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
        for operation, result in zip(operations, raw["results"], strict=True):
            self._record_batch_step(owner_id, container_id, operation["op"], result)
        return BatchOutcome(results=[_result(result) for result in raw["results"]])

    def _record_batch_step(
        self, owner_id: str, container_id: str, op: str, result: dict[str, Any]
    ) -> None:
        """A batch step keeps what it replaced, as the single-file calls do."""
        value = result.get("result") if result.get("ok") else None
        if not isinstance(value, dict):
            return
        previous, replaced = value.pop("previous", None), value.pop("replaced", None)
        if not value:  # a delete answers nothing but what it removed
            result["result"] = None
        reasons = {"write": "write", "delete": "delete", "move": "move"}
        if op in reasons:
            self._record(owner_id, container_id, previous, reasons[op],
                         value.get("sha256") if op == "write" else None)  # fmt: skip
        self._record(owner_id, container_id, replaced, "overwrite")

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
