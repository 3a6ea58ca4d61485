"""Reading a whole file through an agent, in chunks that fit the link's message limit.

`fs.read` answers at most READ_CHUNK_BYTES per call; a larger file is read chunk by chunk,
each answer checked against the first (same inode, size and mtime: else the file changed
under the read and it starts over). The size the agent reports is only used to refuse a file
larger than the caller's limit, never to allocate: what is held is what arrived, and the read
stops once that passes the limit, whatever the agent claims.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cloudcontainer.agent.protocol import READ_CHUNK_BYTES
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.schema import decode
from cloudcontainer.errors import Conflict, PayloadTooLarge

__all__ = ["FileRead", "read_file"]

ATTEMPTS = 3  # reads started over when the file keeps changing under them


@dataclass(frozen=True, slots=True)
class FileRead:
    entry: dict[str, Any]  # the first answer without its data: path, size, mtime, mode...
    data: bytes
    sha256: str


async def read_file(
    link: AgentClient, path: str, *, max_bytes: int, timeout: float | None = 30.0
) -> FileRead:
    """The file's bytes; PayloadTooLarge (`file_too_large`) past `max_bytes`."""
    for _ in range(ATTEMPTS):
        first = await link.call("fs.read", timeout=timeout, path=path, length=READ_CHUNK_BYTES)
        data = decode(first.pop("data"), "fs.read")
        _check_size(path, max(first["size"], len(data)), max_bytes)
        if first.get("eof", True) and "sha256" in first:
            return FileRead(first, data, first["sha256"])
        whole = await _rest(link, path, first, data, max_bytes, timeout)
        if whole is not None:
            return FileRead(first, whole, hashlib.sha256(whole).hexdigest())
    raise Conflict(f"{path} kept changing while it was read.", code="file_changed")


async def _rest(
    link: AgentClient, path: str, first: dict[str, Any], data: bytes, max_bytes: int,
    timeout: float | None,
) -> bytes | None:  # fmt: skip
    """The chunks after the first, joined with it; None when the file changed meanwhile."""
    parts, total = [data], len(data)
    while True:
        chunk = await link.call(
            "fs.read", timeout=timeout, path=path, offset=total, length=READ_CHUNK_BYTES
        )
        if any(chunk[key] != first[key] for key in ("ino", "size", "mtime")):
            return None
        data = decode(chunk["data"], "fs.read")
        total += len(data)
        _check_size(path, total, max_bytes)
        parts.append(data)
        if chunk.get("eof", True) or not data:
            return b"".join(parts)


def _check_size(path: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{path} is larger than the {max_bytes} bytes a file may have here.",
            code="file_too_large",
        )
