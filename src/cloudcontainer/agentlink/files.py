"""Reading and writing a whole file through an agent, in chunks that fit the link's limits.

A file larger than WRITE_CHUNK_BYTES is written in parts (`fs.write.part`) staged by the agent
in a temp file beside the target; the last part is an `fs.write` naming the upload, which
renames it into place, so a reader still never sees half a file.

`fs.read` answers at most READ_CHUNK_BYTES per call; a larger file is read chunk by chunk,
each answer checked against the first (same inode, size and mtime: else the file changed
under the read and it starts over). The size the agent reports is only used to refuse a file
larger than the caller's limit, never to allocate: what is held is what arrived, and the read
stops once that passes the limit, whatever the agent claims.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Unpack

from cloudcontainer.agent.messages import (
    Chunk,
    LastPartArgs,
    ReadArgs,
    UploadArgs,
    WriteArgs,
    WriteOptions,
    WritePartArgs,
    Written,
)
from cloudcontainer.agent.protocol import READ_CHUNK_BYTES, WRITE_CHUNK_BYTES
from cloudcontainer.agentlink.client import REQUEST_SENT, AgentClient
from cloudcontainer.agentlink.schema import decode
from cloudcontainer.errors import Conflict, PayloadTooLarge

__all__ = ["FileRead", "read_file", "write_file"]

ATTEMPTS = 3  # reads started over when the file keeps changing under them


@dataclass(frozen=True, slots=True)
class FileRead:
    entry: Chunk  # the first answer, without its data: path, size, mtime, mode...
    data: bytes
    sha256: str


async def read_file(
    link: AgentClient, path: str, *, max_bytes: int, timeout: float | None = 30.0
) -> FileRead:
    """The file's bytes; PayloadTooLarge (`file_too_large`) past `max_bytes`."""
    for _ in range(ATTEMPTS):
        first = await _read(link, {"path": path, "length": READ_CHUNK_BYTES}, timeout)
        data = decode(first["data"], "fs.read")
        first["data"] = ""  # held as bytes from here on
        _check_size(path, max(first["size"], len(data)), max_bytes)
        if first.get("eof", True) and "sha256" in first:
            return FileRead(first, data, first["sha256"])
        whole = await _rest(link, path, first, data, max_bytes, timeout)
        if whole is not None:
            return FileRead(first, whole, hashlib.sha256(whole).hexdigest())
    raise Conflict(f"{path} kept changing while it was read.", code="file_changed")


async def _rest(
    link: AgentClient, path: str, first: Chunk, data: bytes, max_bytes: int,
    timeout: float | None,
) -> bytes | None:  # fmt: skip
    """The chunks after the first, joined with it; None when the file changed meanwhile."""
    parts, total = [data], len(data)
    while True:
        args: ReadArgs = {"path": path, "offset": total, "length": READ_CHUNK_BYTES}
        chunk = await _read(link, args, timeout)
        if (chunk["ino"], chunk["size"], chunk["mtime"]) != (
            first["ino"],
            first["size"],
            first["mtime"],
        ):
            return None
        data = decode(chunk["data"], "fs.read")
        total += len(data)
        _check_size(path, total, max_bytes)
        parts.append(data)
        if chunk.get("eof", True) or not data:
            return b"".join(parts)


async def _read(link: AgentClient, args: ReadArgs, timeout: float | None) -> Chunk:
    chunk: Chunk = await link.call("fs.read", timeout=timeout, **args)
    return chunk


def _check_size(path: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{path} is larger than the {max_bytes} bytes a file may have here.",
            code="file_too_large",
        )


async def write_file(
    link: AgentClient, path: str, data: bytes, **options: Unpack[WriteOptions]
) -> Written:
    """`fs.write` of `data` with `options` (mkdirs, expect_sha256, keep_previous); in parts
    when it is larger than one message should carry."""
    if len(data) <= WRITE_CHUNK_BYTES:
        return await _write(link, {"path": path, "data": _base64(data), **options})
    upload = secrets.token_hex(8)
    last = (len(data) - 1) // WRITE_CHUNK_BYTES * WRITE_CHUNK_BYTES
    mkdirs = options.get("mkdirs", False)
    # The parts do not let the client's next file request go (api/ordering): the write is
    # only on its way with its last part.
    token = REQUEST_SENT.set(None)
    try:
        for start in range(0, last, WRITE_CHUNK_BYTES):
            part: WritePartArgs = {
                "upload": upload, "path": path, "mkdirs": mkdirs,
                "data": _base64(data[start : start + WRITE_CHUNK_BYTES]),
            }  # fmt: skip
            await link.call("fs.write.part", **part)
    except BaseException:
        _abort(link, upload)
        raise
    finally:
        REQUEST_SENT.reset(token)
    last_part: LastPartArgs = {
        "path": path, "data": _base64(data[last:]), "upload": upload, **options
    }  # fmt: skip
    return await _write(link, last_part)


async def _write(link: AgentClient, args: WriteArgs) -> Written:
    written: Written = await link.call("fs.write", **args)
    return written


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_aborts: set[asyncio.Task[Any]] = set()


def _abort(link: AgentClient, upload: str) -> None:
    """Drop what the agent staged (it does too when the link closes), without waiting: the
    caller may be cancelled."""
    if link.closed.is_set():
        return
    args: UploadArgs = {"upload": upload}
    task = asyncio.ensure_future(link.call("fs.write.abort", timeout=10, **args))
    _aborts.add(task)
    task.add_done_callback(_forget_abort)


def _forget_abort(task: asyncio.Task[Any]) -> None:
    _aborts.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failed abort changes nothing
