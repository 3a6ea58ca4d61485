"""A workspace's manifest, and laying one down, through an agent (agent/snapshot.py), typed.

Refusals raise AgentOpError: map them with `errors.agent_errors(failed=...)`.
"""

from __future__ import annotations

from cloudcontainer.agent.messages import (
    ApplyArgs,
    ApplyEntry,
    ExcludeArgs,
    Manifest,
    ManifestType,
    PruneArgs,
)
from cloudcontainer.agentlink.client import AgentClient

__all__ = ["apply_entries", "manifest", "prune"]


async def manifest(link: AgentClient, *, exclude: list[str], timeout: float) -> Manifest:
    """Every entry of the workspace, files with their SHA-256, but what `exclude` matches."""
    args: ExcludeArgs = {"exclude": exclude}
    listed: Manifest = await link.call("fs.manifest", timeout=timeout, **args)
    return listed


async def prune(
    link: AgentClient, keep: dict[str, ManifestType], *, exclude: list[str], timeout: float
) -> int:
    """Remove what `keep` ({path: type}) lacks or types differently; answers how many."""
    args: PruneArgs = {"keep": keep, "exclude": exclude}
    removed: int = await link.call("fs.prune", timeout=timeout, **args)
    return removed


async def apply_entries(link: AgentClient, entries: list[ApplyEntry], *, timeout: float) -> int:
    """Lay the entries down in order (files with their data, links with their target)."""
    args: ApplyArgs = {"entries": entries}
    applied: int = await link.call("fs.apply", timeout=timeout, **args)
    return applied
