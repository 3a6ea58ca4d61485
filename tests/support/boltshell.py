"""bolt.diy's `BoltShell` (app/utils/shell.ts), re-done in Python to drive a `/bin/jsh --osc`.

The algorithm is bolt's, step for step, because its hazards are the contract (PARITY.md, "The
bolt shell"): a command is sent as Ctrl-C, wait for a `prompt` marker, the command and a line
feed, wait for an `exit` marker; only the first marker of each output chunk is seen; and a
command started while another one still waits for its `exit` (a dev server) makes two readers
take chunks of one stream in turn.

`ChunkStream` has the semantics of a WHATWG ReadableStream reader that matter here: read
requests are served first come, first served, and a request is queued at the moment `read()` is
called. Whoever feeds chunks must let waiting readers run between two chunks (as JavaScript runs
microtasks between two WebSocket messages): `feed` does.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect

MARKER = re.compile(r"\x1b\]654;([^\x07=]+)=?((-?\d+):(\d+))?\x07")  # bolt's own expression


class ChunkStream:
    def __init__(self) -> None:
        self._chunks: collections.deque[str] = collections.deque()
        self._readers: collections.deque[asyncio.Future[str]] = collections.deque()

    def read(self) -> asyncio.Future[str]:
        """A read request, queued now."""
        request: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self._chunks:
            request.set_result(self._chunks.popleft())
        else:
            self._readers.append(request)
        return request

    async def feed(self, chunk: str) -> None:
        while self._readers and self._readers[0].done():  # a reader that gave up
            self._readers.popleft()
        if self._readers:
            self._readers.popleft().set_result(chunk)
        else:
            self._chunks.append(chunk)
        for _ in range(3):  # the reader's continuation queues its next read before the next chunk
            await asyncio.sleep(0)


@dataclass
class Result:
    output: str
    exit_code: int


@dataclass
class ExecutionState:
    active: bool
    execution: asyncio.Task[Result] | None = None


class BoltShell:
    """`send` types into the terminal (bolt's `terminal.input`)."""

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self.send = send
        self.output = ChunkStream()
        self.state: ExecutionState | None = None
        self.transcript: list[str] = []  # every chunk, as the terminal pane would get it
        self.controls: list[dict[str, object]] = []  # the socket's JSON messages (exit, lagged)

    async def init(self) -> None:
        await self.wait_till("interactive")

    async def execute(self, command: str) -> Result:
        state = self.state
        await self.send("\x03")
        await self.wait_till("prompt")
        if state is not None and state.execution is not None:
            await state.execution
        await self.send(command.strip() + "\n")
        execution = self.wait_till("exit")
        self.state = ExecutionState(active=True, execution=execution)
        result = await execution
        self.state = ExecutionState(active=False)
        return result

    def wait_till(self, code: str) -> asyncio.Task[Result]:
        """Reads until a chunk whose first marker is `code`; its first read is queued now."""
        first = self.output.read()
        return asyncio.ensure_future(self._wait_till(code, first))

    async def _wait_till(self, code: str, request: asyncio.Future[str]) -> Result:
        output, exit_code = "", 0
        while True:
            text = await request
            output += text
            match = MARKER.search(text)
            if match is not None and match.group(1) == "exit":
                exit_code = int(match.group(4))
            if match is not None and match.group(1) == code:
                return Result(output, exit_code)
            request = self.output.read()


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[BoltShell]:
    """A `BoltShell` on a terminal WebSocket (`.../terminals/{id}?ticket=...`), initialised,
    fed as `@cloudcontainer/api` feeds bolt (`Frames`)."""
    async with connect(url, max_size=None) as socket:
        hello = json.loads(await socket.recv())
        assert hello["type"] == "attached", hello
        frames: Frames | None = None

        async def send(text: str) -> None:
            if "\x03" in text and frames is not None:
                frames.ctrl_c()
            await socket.send(text.encode())

        shell = BoltShell(send)
        frames = Frames(shell)
        pump = asyncio.ensure_future(_pump(socket, shell, frames))
        try:
            await shell.init()
            yield shell
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


JOIN_LIMIT = 1.5  # seconds; the client's JOIN_LIMIT_MS


class Frames:
    """What `@cloudcontainer/api` hands bolt for the socket's frames: each frame one chunk,
    except after a Ctrl-C typed into the shell, when frames are joined up to the next OSC 654
    marker (or for JOIN_LIMIT at most). A dev server's line already in flight when bolt's
    Ctrl-C leaves then never becomes a chunk of its own, which bolt's second reader would take
    and so miss its prompt (docs/terminals.md)."""

    def __init__(self, shell: BoltShell) -> None:
        self.shell = shell
        self._joined: str | None = None
        self._limit: asyncio.TimerHandle | None = None

    def ctrl_c(self) -> None:
        if self._joined is None:
            self._joined = ""
        if self._limit is not None:
            self._limit.cancel()
        loop = asyncio.get_running_loop()
        self._limit = loop.call_later(JOIN_LIMIT, lambda: asyncio.ensure_future(self._flush()))

    async def frame(self, text: str) -> None:
        if self._joined is None:
            await self._deliver(text)
            return
        self._joined += text
        if MARKER.search(text):
            await self._flush()

    async def _flush(self) -> None:
        if self._limit is not None:
            self._limit.cancel()
            self._limit = None
        text, self._joined = self._joined, None
        if text:
            await self._deliver(text)

    async def _deliver(self, text: str) -> None:
        self.shell.transcript.append(text)
        await self.shell.output.feed(text)


async def _pump(socket: ClientConnection, shell: BoltShell, frames: Frames) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async for frame in socket:
        if isinstance(frame, str):
            shell.controls.append(json.loads(frame))
            continue
        text = decoder.decode(frame)
        if text:
            await frames.frame(text)
