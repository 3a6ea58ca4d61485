"""Archive download and upload through the agent, streamed both ways.

Download: the agent's worker writes the archive; its bytes arrive as ARCHIVE_DATA frames and
are handed to the HTTP response one by one. Each chunk is acknowledged (ARCHIVE_ACK) once the
response took it, and the agent keeps at most its window (1 MiB) unacknowledged, so a slow
client slows the worker instead of filling this process's memory. Upload: the request body
goes to the agent chunk by chunk as it is read; the agent stops reading while its worker
catches up, which holds up these sends in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cloudcontainer.agent.protocol import ARCHIVE_ACK, ARCHIVE_DATA, ARCHIVE_END
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.errors import BadRequest, CloudContainerError, Conflict, PayloadTooLarge
from cloudcontainer.files.service import ErrorTable, agent_errors
from cloudcontainer.tasks import TaskSet

__all__ = ["ArchiveStreamError", "Download", "upload"]

_ERRORS: ErrorTable = {
    "EARCHIVE": (BadRequest, "invalid_archive"),
    "EUNSAFE": (BadRequest, "unsafe_archive_entry"),
    "ETOOBIG": (PayloadTooLarge, "archive_too_large"),
    "EEXIST": (Conflict, "already_exists"),
}
SEND_CHUNK = 1024 * 1024
FINISH_SECONDS = 600.0


class ArchiveStreamError(CloudContainerError):
    """A download failed after its first bytes were sent: the response is cut short."""

    status_code = 502
    default_code = "archive_failed"


@dataclass
class Download:
    link: AgentClient
    tasks: TaskSet
    stream_id: int
    name: str
    queue: asyncio.Queue[tuple[int, bytes]]

    @classmethod
    async def open(
        cls, link: AgentClient, tasks: TaskSet, path: str, fmt: str, exclude: list[str]
    ) -> Download:
        with agent_errors(_ERRORS):
            opened = await link.call("archive.create", path=path, format=fmt, exclude=exclude)
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        return cls(link, tasks, int(opened["stream_id"]), str(opened["name"]), queue)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The archive's bytes; raises ArchiveStreamError (cutting the response) on failure."""
        unsubscribe = [
            self.link.on_stream(kind, self.stream_id, self._on_frame)
            for kind in (ARCHIVE_DATA, ARCHIVE_END)
        ]
        ended = False
        try:
            while True:
                kind, payload = await self._get()
                if kind == ARCHIVE_END:
                    ended = True
                    end = json.loads(payload)
                    if not end.get("ok"):
                        error = end.get("error") or {}
                        raise ArchiveStreamError(error.get("message", "archive failed"))
                    return
                yield payload
                await self.link.send_stream(ARCHIVE_ACK, self.stream_id,
                                            len(payload).to_bytes(4, "big"))  # fmt: skip
        finally:
            for remove in unsubscribe:
                remove()
            if not ended:  # the client went away: stop the worker (this task may be cancelled)
                self.tasks.spawn(self._cancel(), name=f"archive-cancel:{self.stream_id}")

    async def _cancel(self) -> None:
        with contextlib.suppress(AgentUnavailable, AgentOpError):
            await self.link.call("archive.cancel", stream_id=self.stream_id, timeout=5)

    def _on_frame(self, kind: int, payload: bytes) -> None:
        self.queue.put_nowait((kind, payload))

    async def _get(self) -> tuple[int, bytes]:
        getter = asyncio.ensure_future(self.queue.get())
        closed = asyncio.ensure_future(self.link.closed.wait())
        try:
            await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not getter.done():
            getter.cancel()
            raise AgentUnavailable("the agent link closed during the download")
        return getter.result()


async def upload(
    link: AgentClient, path: str, fmt: str, body: AsyncIterator[bytes], limits: dict[str, int]
) -> dict[str, Any]:
    """Send the body to the agent as it arrives; the worker extracts it all or nothing."""
    with agent_errors(_ERRORS):
        opened = await link.call("archive.extract", path=path, format=fmt, **limits)
    stream_id = opened["stream_id"]
    finished = False
    try:
        async for chunk in body:
            for start in range(0, len(chunk), SEND_CHUNK):
                await link.send_stream(ARCHIVE_DATA, stream_id, chunk[start : start + SEND_CHUNK])
        finished = True
        with agent_errors(_ERRORS):
            result: dict[str, Any] = await link.call(
                "archive.finish", stream_id=stream_id, timeout=FINISH_SECONDS
            )
    finally:
        if not finished:  # the body failed (too large, client gone): nothing may be written
            with contextlib.suppress(AgentUnavailable, AgentOpError):
                await link.call("archive.cancel", stream_id=stream_id, timeout=5)
    return result
