"""Wire format shared by the agent and the gateway (agentlink). Stdlib only, python >= 3.9.

Text frames carry JSON:
    request   {"id": 7, "op": "fs.read", "args": {...}}
    response  {"id": 7, "ok": true, "result": ...}
              {"id": 7, "ok": false, "error": {"code": "ENOENT", "message": "..."}}
    event     {"event": "proc.exit", "data": {...}}
Binary frames carry stream bytes: 1 byte kind, 4 bytes channel id (big-endian), payload.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Tuple

if TYPE_CHECKING:
    from cloudcontainer.agent.messages import Error

AUTH_HEADER = "Authorization"
# Where a sandbox's workspace is: every runtime mounts it here and starts the agent with it
# (the agent's default `--workspace`); the gateway strips it from the paths in errors.
WORKSPACE = "/home/project"
AGENT_SUBPROTOCOL = "cloudcontainer-agent.v1"

# Binary frame kinds
PROC_OUTPUT = 1  # agent -> gateway: bytes a process wrote
PROC_INPUT = 2  # gateway -> agent: bytes for a process's stdin / PTY
TUNNEL_DATA = 3  # both ways: bytes of a TCP tunnel
TUNNEL_EOF = 4  # both ways: the sender will send no more on this tunnel
PROC_STDERR = 5  # agent -> gateway: stderr of a process without a PTY
ARCHIVE_DATA = 6  # both ways: archive bytes of a download (agent ->) or an upload (-> agent)
ARCHIVE_END = 7  # agent -> gateway: a download ended; payload {"ok": true|false, "error"?}
ARCHIVE_ACK = 8  # gateway -> agent: payload 4-byte big-endian count of download bytes consumed
TUNNEL_ACK = 9  # both ways: payload 4-byte big-endian count of tunnel bytes the receiver passed on

# Each direction of a tunnel may have this many bytes sent and not yet acknowledged (TUNNEL_ACK):
# a stream whose reader is slow holds at most this much on the link and in the receiver, so a
# 100 MB download can neither fill a queue that a keystroke or an HMR message waits behind nor
# make either end buffer without bound.
TUNNEL_WINDOW = 256 * 1024
# A receiver acknowledges once it owes this much, not after every frame: a sender still has
# three quarters of its window to go on with, and a small request and its answer cost two
# frames on the link instead of four.
TUNNEL_ACK_EVERY = TUNNEL_WINDOW // 4

# The largest message an agent may send, and the gateway takes (issue 9: the agent is the
# tenant's, and the gateway holds one link per sandbox, so this is what one hostile sandbox can
# make it buffer at once). Every answer of an honest agent fits: fs.read travels in chunks of
# READ_CHUNK_BYTES (10.7 MiB as base64), watch batches are split at 4 MiB (a file's event over
# that, at most 8 MiB of content, travels alone), proc.run keeps 8 MiB of output, proc.attach
# replays 8 MiB of scrollback, kept previous versions are capped at 4 MiB; an answer that
# would still be larger (a recursive listing of a huge tree) is an EFBIG error instead
# (agent/server.py).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 8 * 1024 * 1024
# What the gateway sends at most in one message: fs.write sends larger files in parts.
WRITE_CHUNK_BYTES = 8 * 1024 * 1024

_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size


def pack_frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, channel) + payload


def unpack_frame(frame: bytes) -> Tuple[int, int, bytes]:
    if len(frame) < HEADER_SIZE:
        raise ValueError("binary frame shorter than its header")
    kind, channel = _HEADER.unpack_from(frame)
    return kind, channel, frame[HEADER_SIZE:]


class AgentError(Exception):
    """A failure reported to the caller as `{"code", "message"}` (codes follow errno names)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> Error:
        return {"code": self.code, "message": self.message}
