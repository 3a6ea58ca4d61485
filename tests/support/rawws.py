"""A WebSocket client that stops reading for real: a socket with a tiny receive buffer that
sends the upgrade, reads the 101, and then reads nothing until told to (a client library
would keep reading into its own buffers). Server frames are parsed by hand."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

WAIT = 60.0  # an upper bound for things that must happen, never a measured timing


@asynccontextmanager
async def stalled(url: str, request: bytes) -> AsyncIterator[socket.socket]:
    """A socket to the server of `url` with a tiny receive buffer; `request` is sent, and
    nothing is read until the caller reads."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        await loop.sock_sendall(sock, request)
        yield sock
    finally:
        sock.close()


async def read_head(sock: socket.socket) -> bytes:
    loop, head = asyncio.get_running_loop(), b""
    async with asyncio.timeout(WAIT):
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 1)
            assert chunk, head
            head += chunk
    return head


def upgrade(url: str) -> bytes:
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def text_frame(payload: bytes) -> bytes:
    """A masked client text frame (payloads under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


class ServerFrames:
    """Unmasked frames from a server, parsed from bytes as they come: (opcode, payload)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= 2:
            opcode, length, offset = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F, 2
            if length == 126:
                if len(self._buffer) < 4:
                    break
                length, offset = struct.unpack_from("!H", self._buffer, 2)[0], 4
            elif length == 127:
                if len(self._buffer) < 10:
                    break
                length, offset = struct.unpack_from("!Q", self._buffer, 2)[0], 10
            if len(self._buffer) < offset + length:
                break
            frames.append((opcode, bytes(self._buffer[offset : offset + length])))
            del self._buffer[: offset + length]
        return frames
