"""`exec`: run a command to completion and hand its output over as typed events.

The agent does not pause a command for a slow reader, so output waits here for the caller in
`PendingOutput`, in order and bounded: at most `EXEC_MAX_PENDING_BYTES`, each queued piece
counted with `PIECE_OVERHEAD_BYTES` for the objects around its bytes (a flood of one-byte
writes is bounded like one large write). Past that bound the command is killed, the output
already queued is still delivered, then `OutputOverflow` and its `Exit` (137). Output is
queued by the link's listener as it is read, with no task and no queue item per chunk: one
task per command waits for its end (and kills it at its timeout), and a kill past the bound
is one more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from cloudcontainer.errors import CloudContainerError
from cloudcontainer.sandbox.service import ContainerService
from cloudcontainer.terminals.commands import CommandLog, command_line
from cloudcontainer.terminals.limits import CommandPolicy
from cloudcontainer.terminals.processes import Process, ProcessService

__all__ = [
    "EXEC_MAX_PENDING_BYTES", "ExecEvent", "ExecService", "ExecSpec", "Execution", "Exit",
    "Output", "OutputOverflow", "PendingOutput",
]  # fmt: skip

log = structlog.get_logger(__name__)

EXEC_MAX_PENDING_BYTES = 8 * 1024 * 1024
PIECE_OVERHEAD_BYTES = 64
# Consecutive output of one stream waiting for the reader is merged up to about this much: a
# reader that is behind gets fewer, larger events, each at most twice this.
PIECE_BYTES = 64 * 1024

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class ExecSpec:
    command: str
    args: list[str]
    cwd: str | None
    env: dict[str, str]
    timeout: float  # seconds from the start to a kill
    stdin: bytes | None = None  # written, then stdin is closed (at once when None)


@dataclass(frozen=True, slots=True)
class Output:
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class OutputOverflow:
    """More than `limit` bytes waited for the reader: the command was killed."""

    limit: int


@dataclass(frozen=True, slots=True)
class Exit:
    code: int | None  # 128+n after signal n; 137 after a timeout or an overflow
    timed_out: bool = False
    # The agent dropped some output before it reached this gateway (`proc.lagged`: the
    # gateway did not read its link fast enough). Not on the API's wire (yet).
    output_lost: bool = False


ExecEvent = Output | OutputOverflow | Exit


@dataclass(slots=True)
class _Piece:
    stream: Stream
    parts: list[bytes]
    size: int


@dataclass(slots=True)
class PendingOutput:
    """Output not yet taken, in the order it was written, within `limit` bytes. Once some
    output did not fit, none is taken any more: what is held never has a gap inside."""

    limit: int
    size: int = 0  # bytes held, each piece counted with PIECE_OVERHEAD_BYTES
    overflowed: bool = False
    _pieces: deque[_Piece] = field(default_factory=deque)

    def put(self, stream: Stream, data: bytes) -> bool:
        """Queue `data`; False (and nothing queued) once output passed the limit."""
        tail = self._pieces[-1] if self._pieces else None
        merge = tail is not None and tail.stream == stream and tail.size < PIECE_BYTES
        cost = len(data) + (0 if merge else PIECE_OVERHEAD_BYTES)
        if self.overflowed or self.size + cost > self.limit:
            self.overflowed = True
            return False
        self.size += cost
        if merge:
            assert tail is not None
            tail.parts.append(data)
            tail.size += len(data)
        else:
            self._pieces.append(_Piece(stream, [data], len(data)))
        return True

    def take(self) -> Output | None:
        """The oldest piece, or None when nothing waits."""
        if not self._pieces:
            return None
        piece = self._pieces.popleft()
        self.size -= piece.size + PIECE_OVERHEAD_BYTES
        return Output(piece.stream, b"".join(piece.parts))


class Execution:
    """A started command. `events()` is iterated once; leaving it early kills the command."""

    def __init__(self, process: Process, spec: ExecSpec, max_pending: int) -> None:
        self.process = process  # the running command, for a caller that steers it
        self._spec = spec
        # Called with the exit code (None when the reader left before the end) as events end.
        self.on_end: Callable[[int | None], Awaitable[None]] = _nothing
        self.pending = PendingOutput(max_pending)
        self._ready = asyncio.Event()
        self._timed_out = False
        self._output_lost = False
        self._stops = [
            process.listen(
                lambda data: self._heard("stdout", data), lambda data: self._heard("stderr", data)
            ),
            process.on_lagged(self._lost),
        ]

    def _stop_listening(self) -> None:
        for stop in self._stops:
            stop()

    def _heard(self, stream: Stream, data: bytes) -> None:
        if self.pending.overflowed:
            return
        if not self.pending.put(stream, data):
            # The reader is behind the command and nothing slows the command down: kill it
            # rather than hold more (issue 9).
            self.process.kill_soon()
        self._ready.set()

    def _lost(self) -> None:
        if not self._output_lost:
            log.warning("exec output lost: the agent link fell behind",
                        proc_id=self.process.proc_id)  # fmt: skip
        self._output_lost = True

    async def events(self) -> AsyncGenerator[ExecEvent, None]:
        """Output as it arrives, then `OutputOverflow` if the reader fell too far behind, then
        `Exit`. A CloudContainerError (the agent went away) ends it early."""
        waiter = asyncio.create_task(self._wait(), name="exec wait")
        waiter.add_done_callback(self._ended)
        code: int | None = None  # on record: None when the reader left before the end
        try:
            if self._spec.stdin is not None:
                await self.process.write(self._spec.stdin)
            await self.process.close_stdin()
            while True:
                if (output := self.pending.take()) is not None:
                    yield output
                elif waiter.done():
                    break
                else:
                    self._ready.clear()
                    await self._ready.wait()
            code = waiter.result()
            if self.pending.overflowed:
                yield OutputOverflow(self.pending.limit)
            yield Exit(code, self._timed_out, self._output_lost)
        finally:
            self._stop_listening()
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(CloudContainerError):
                    await self.process.kill()
            await self.on_end(code)

    async def abandon(self) -> None:
        """Kill the command whose events will not be read."""
        self._stop_listening()
        with contextlib.suppress(CloudContainerError):
            await self.process.kill()

    def _ended(self, waiter: asyncio.Task[int | None]) -> None:
        if not waiter.cancelled():
            waiter.exception()  # retrieved: `events` raises it, unless its reader left
        self._ready.set()

    async def _wait(self) -> int | None:
        try:
            async with asyncio.timeout(self._spec.timeout):
                return await self.process.wait()
        except TimeoutError:
            self._timed_out = True
            await self.process.kill()
            return await self.process.wait()


async def _nothing(code: int | None) -> None:
    pass


class ExecService:
    """`exec` for the API and the AI runner: the command policy, the command's record in the
    project's history, and its output as `ExecEvent`s."""

    def __init__(
        self, containers: ContainerService, processes: ProcessService, commands: CommandLog,
        policy: CommandPolicy, *, max_pending_bytes: int = EXEC_MAX_PENDING_BYTES,
    ) -> None:  # fmt: skip
        self._containers = containers
        self._processes = processes
        self._commands = commands
        self._policy = policy
        self._max_pending_bytes = max_pending_bytes

    async def start(self, owner_id: str, container_id: str, spec: ExecSpec) -> Execution:
        """Start the command (NotFound, `command_denied`, agent errors are raised here, before
        any output); its events follow from `Execution.events()`."""
        container = await self._containers.get(owner_id, container_id)
        self._policy.check(spec.command, spec.args)
        process, _ = await self._processes.spawn(owner_id, container_id, {
            "command": spec.command, "args": spec.args, "cwd": spec.cwd, "env": spec.env,
            "pty": False,
        })  # fmt: skip
        # Listening from here: output written while the record is made waits in the buffer.
        execution = Execution(process, spec, self._max_pending_bytes)
        try:
            record = await self._commands.started(
                project_id=container.project_id, container_id=container_id, user_id=owner_id,
                source="exec", command=command_line(spec.command, spec.args),
            )  # fmt: skip
        except BaseException:
            await execution.abandon()
            raise
        execution.on_end = functools.partial(self._commands.finished, record)
        return execution
