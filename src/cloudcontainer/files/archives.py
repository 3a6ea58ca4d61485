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

from cloudcontainer.agent.messages import ArchiveFormat, Extracted, ExtractLimits
from cloudcontainer.agent.protocol import ARCHIVE_ACK, ARCHIVE_DATA, ARCHIVE_END
from cloudcontainer.agentlink.archives import (
    cancel_archive,
    finish_extract,
    open_download,
    open_extract,
)
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import (
    AgentOpError,
    AgentUnavailable,
    ErrorTable,
    agent_errors,
)
from cloudcontainer.errors import BadRequest, CloudContainerError, Conflict, PayloadTooLarge
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
# Download bytes held here, not yet passed on: the agent keeps its window (1 MiB) of
# unacknowledged bytes, so an agent past twice that ignores the protocol and the download
# ends (the agent is the tenant's: it must not fill this process's memory).
MAX_HELD_BYTES = 2 * 1024 * 1024
_OVERFLOW = -1


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
    held: int = 0

    @classmethod
    async def open(
        cls, link: AgentClient, tasks: TaskSet, path: str, fmt: ArchiveFormat, exclude: list[str]
    ) -> Download:
        with agent_errors(_ERRORS):
            opened = await open_download(link, path, fmt, exclude=exclude)
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        return cls(link, tasks, opened["stream_id"], opened["name"], queue)

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
                if kind == _OVERFLOW:
                    raise ArchiveStreamError(
                        "The sandbox's agent sent more than the download window allows.",
                        code="sandbox_protocol_error",
                    )
                if kind == ARCHIVE_END:
                    ended = True
                    _check_end(payload)
                    return
                yield payload
                self.held -= len(payload)
                await self.link.send_stream(ARCHIVE_ACK, self.stream_id,
                                            len(payload).to_bytes(4, "big"))  # fmt: skip
        finally:
            for remove in unsubscribe:
                remove()
            if not ended:  # the client went away: stop the worker (this task may be cancelled)
                self.tasks.spawn(self._cancel(), name=f"archive-cancel:{self.stream_id}")

    async def _cancel(self) -> None:
        with contextlib.suppress(AgentUnavailable, AgentOpError):
            await cancel_archive(self.link, self.stream_id, timeout=5)

    def _on_frame(self, kind: int, payload: bytes) -> None:
        if self.held > MAX_HELD_BYTES:
            return  # _OVERFLOW is queued: nothing more is taken
        self.held += len(payload)
        if self.held > MAX_HELD_BYTES:
            payload, kind = b"", _OVERFLOW
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


def _check_end(payload: bytes) -> None:
    """An ARCHIVE_END frame: `{"ok": true}`, or the failure (ArchiveStreamError)."""
    try:
        end = json.loads(payload)
    except (ValueError, RecursionError):
        end = None
    if not isinstance(end, dict) or not isinstance(end.get("ok"), bool):
        raise ArchiveStreamError(
            "The sandbox's agent ended the download with a malformed frame.",
            code="sandbox_protocol_error",
        )
    if not end["ok"]:
        error = end.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        raise ArchiveStreamError(message[:8192] if isinstance(message, str) else "archive failed")


async def upload(
    link: AgentClient, path: str, fmt: ArchiveFormat, body: AsyncIterator[bytes],
    limits: ExtractLimits,
) -> Extracted:  # fmt: skip
    """Send the body to the agent as it arrives; the worker extracts it all or nothing."""
    with agent_errors(_ERRORS):
        opened = await open_extract(link, path, fmt, limits)
    stream_id = opened["stream_id"]
    finished = False
    try:
        async for chunk in body:
            for start in range(0, len(chunk), SEND_CHUNK):
                await link.send_stream(ARCHIVE_DATA, stream_id, chunk[start : start + SEND_CHUNK])
        finished = True
        with agent_errors(_ERRORS):
            result = await finish_extract(link, stream_id, timeout=FINISH_SECONDS)
    finally:
        if not finished:  # the body failed (too large, client gone): nothing may be written
            with contextlib.suppress(AgentUnavailable, AgentOpError):
                await cancel_archive(link, stream_id, timeout=5)
    return result
