"""CoalescingTransport on real sockets: one write per loop turn, order kept, nothing lost on
close, nothing sent after an abort."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from cloudcontainer.coalesce import CoalescingTransport


@dataclass
class Pair:
    transport: CoalescingTransport
    writes: list[bytes]  # what reached the real transport, write by write
    peer: socket.socket


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    ours, peer = socket.socketpair()
    real, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    writes: list[bytes] = []
    real_write = real.write

    def recording_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        real_write(data)

    real.write = recording_write  # type: ignore[method-assign]
    yield Pair(CoalescingTransport(real), writes, peer)  # type: ignore[arg-type]
    real.abort()
    peer.close()


async def received(peer: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    peer.setblocking(False)
    chunks = []
    while chunk := await loop.sock_recv(peer, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_writes_of_one_turn_leave_as_one_write(pair: Pair) -> None:
    for part in (b"HTTP/1.1 200 OK\r\n\r\n", b"body", bytearray(b"-"), memoryview(b"end")):
        pair.transport.write(part)
    assert pair.writes == []  # held until the turn ends
    assert pair.transport.get_write_buffer_size() == 27
    await asyncio.sleep(0)
    assert pair.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody-end"]
    pair.transport.write(b"next")
    await asyncio.sleep(0)
    assert pair.writes[1:] == [b"next"]
    pair.transport.write(b"")  # nothing to send schedules nothing
    pair.transport.close()
    assert await received(pair.peer) == b"HTTP/1.1 200 OK\r\n\r\nbody-endnext"


async def test_close_sends_what_is_held_first(pair: Pair) -> None:
    pair.transport.writelines([b"last ", b"words"])
    pair.transport.close()
    assert pair.transport.is_closing()
    assert await received(pair.peer) == b"last words"


async def test_abort_sends_nothing_held(pair: Pair) -> None:
    pair.transport.write(b"never")
    pair.transport.abort()
    await asyncio.sleep(0)  # the scheduled flush finds nothing
    assert pair.writes == []
    assert await received(pair.peer) == b""
