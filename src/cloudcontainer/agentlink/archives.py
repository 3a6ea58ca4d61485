"""Archive streams in an agent (agent/archive.py), typed; their bytes travel as ARCHIVE_*
stream frames on the link."""

from __future__ import annotations

from cloudcontainer.agent.messages import (
    ArchiveCreateArgs,
    ArchiveExtractArgs,
    ArchiveFormat,
    ArchiveOpened,
    DownloadOpened,
    Extracted,
    ExtractLimits,
    StreamArgs,
)
from cloudcontainer.agentlink.client import AgentClient

__all__ = ["cancel_archive", "finish_extract", "open_download", "open_extract"]


async def open_download(
    link: AgentClient, path: str, fmt: ArchiveFormat, *, exclude: list[str]
) -> DownloadOpened:
    """Start the worker that archives the folder; its bytes follow on the answer's stream."""
    args: ArchiveCreateArgs = {"path": path, "format": fmt, "exclude": exclude}
    opened: DownloadOpened = await link.call("archive.create", **args)
    return opened


async def open_extract(
    link: AgentClient, path: str, fmt: ArchiveFormat, limits: ExtractLimits
) -> ArchiveOpened:
    """Start the worker that extracts into the folder what is sent on the answer's stream."""
    args: ArchiveExtractArgs = {"path": path, "format": fmt, **limits}
    opened: ArchiveOpened = await link.call("archive.extract", **args)
    return opened


async def finish_extract(link: AgentClient, stream_id: int, *, timeout: float) -> Extracted:
    """All bytes were sent: extract them, all entries or none."""
    args: StreamArgs = {"stream_id": stream_id}
    extracted: Extracted = await link.call("archive.finish", timeout=timeout, **args)
    return extracted


async def cancel_archive(link: AgentClient, stream_id: int, *, timeout: float) -> None:
    args: StreamArgs = {"stream_id": stream_id}
    await link.call("archive.cancel", timeout=timeout, **args)
