"""Folders, removal, moves and batches through an agent, typed (whole files: `files.py`).

Each function is one agent op (agent/fs.py, agent/batch.py) with its arguments and reply
typed by `cloudcontainer.agent.messages`; the reply was validated by `schema.py` on arrival.
Refusals raise AgentOpError: map them with `errors.agent_errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloudcontainer.agent.messages import (
    BatchArgs,
    BatchReply,
    Entry,
    KeepArgs,
    ListArgs,
    MkdirArgs,
    Moved,
    RemoveArgs,
    RenameArgs,
    Replaced,
)
from cloudcontainer.agentlink.client import AgentClient

__all__ = ["apply_batch", "list_dir", "make_dir", "remove", "rename"]


async def list_dir(link: AgentClient, path: str, *, recursive: bool) -> list[Entry]:
    args: ListArgs = {"path": path, "recursive": recursive}
    entries: list[Entry] = await link.call("fs.list", **args)
    return entries


async def make_dir(link: AgentClient, path: str, *, recursive: bool) -> Entry:
    args: MkdirArgs = {"path": path, "recursive": recursive}
    entry: Entry = await link.call("fs.mkdir", **args)
    return entry


async def remove(
    link: AgentClient, path: str, *, recursive: bool, keep: KeepArgs
) -> Replaced | None:
    """Delete; with `keep`, the answer holds a removed file's content (file history)."""
    args: RemoveArgs = {"path": path, "recursive": recursive}
    if "keep_previous" in keep:
        args["keep_previous"] = keep["keep_previous"]
    removed: Replaced | None = await link.call("fs.remove", **args)
    return removed


async def rename(link: AgentClient, source: str, target: str, *, keep: KeepArgs) -> Moved:
    """Move; with `keep`, the answer holds the moved file's and a replaced file's content."""
    args: RenameArgs = {"source": source, "target": target, **keep}
    moved: Moved = await link.call("fs.rename", **args)
    return moved


async def apply_batch(
    link: AgentClient, operations: Sequence[dict[str, Any]], *, atomic: bool, keep: KeepArgs,
    timeout: float,
) -> BatchReply:  # fmt: skip
    """Apply the file API's batch operations in one request (agent/batch.py)."""
    args: BatchArgs = {"operations": list(operations), "atomic": atomic, **keep}
    reply: BatchReply = await link.call("fs.batch", timeout=timeout, **args)
    return reply
