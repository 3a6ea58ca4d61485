"""Processes in a container's sandbox: the one service through which terminals, `exec` and the
AI runner start, feed, watch and end them.

The agent owns the processes (they outlive a gateway's connections); this service reaches
them through the container's agent link (`agentlink/procs.py`) and gives each caller:

- the same errors: the agent's errno codes become the file API's (`agentlink.errors.agent_errors`);
- a `Process` handle bound to the link it was found on, so a restarted agent (which numbers
  processes from 1 again) is never asked about an id of its predecessor;
- activity: a process's input and output keep its container from being stopped as idle.
"""

from __future__ import annotations

import asyncio
import signal as signals
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from cloudcontainer.agent.messages_proc import (
    AttachReply,
    ExitEvent,
    LaggedEvent,
    ProcessInfo,
    RunReply,
    RunRequest,
    SpawnRequest,
)
from cloudcontainer.agentlink import procs
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import agent_errors
from cloudcontainer.sandbox.service import ContainerService

__all__ = ["OutputListener", "Process", "ProcessService", "SpawnRequest"]

OutputListener = procs.OutputListener


@dataclass(frozen=True, slots=True)
class Process:
    """One process of one agent run; every call maps the agent's errors to API errors."""

    link: AgentClient
    proc_id: int
    on_activity: Callable[[], None]

    async def write(self, data: bytes) -> None:
        """Input for its stdin or PTY (the caller paces it: terminals/limits.py InputRate)."""
        self.on_activity()
        await procs.write(self.link, self.proc_id, data)

    async def close_stdin(self) -> None:
        with agent_errors():
            await procs.close_stdin(self.link, self.proc_id)

    async def resize(self, cols: int, rows: int) -> None:
        with agent_errors():
            await procs.resize(self.link, self.proc_id, cols, rows)

    async def kill(self, signal: int = signals.SIGKILL) -> None:
        with agent_errors():
            await procs.kill(self.link, self.proc_id, signal)

    async def wait(self) -> int | None:
        """Its exit code (128+n after signal n), once its output has all arrived."""
        with agent_errors():
            return await procs.wait(self.link, self.proc_id)

    async def attach(self, on_answer: Callable[[AttachReply], None]) -> AttachReply:
        """Have its output sent here again, from `on_answer` (run before any later output)."""
        with agent_errors():
            return await procs.attach(self.link, self.proc_id, on_answer)

    async def detach(self) -> None:
        with agent_errors():
            await procs.detach(self.link, self.proc_id)

    def kill_soon(self, signal: int = signals.SIGKILL) -> None:
        """`kill` without waiting for it (from an output listener)."""
        _soon(self.kill(signal), name="kill process")

    def detach_soon(self) -> None:
        """`detach` without waiting for it (from a caller that may be cancelled)."""
        _soon(self.detach(), name="detach process")

    def listen(
        self, stdout: OutputListener, stderr: OutputListener | None = None
    ) -> Callable[[], None]:
        """Its output as it is read from the link (no task, no queue: the listeners keep what
        they need, bounded); answers the function that stops listening."""
        return procs.listen(
            self.link, self.proc_id, self._active(stdout),
            None if stderr is None else self._active(stderr),
        )  # fmt: skip

    def on_exit(self, listener: Callable[[int | None], None]) -> Callable[[], None]:
        """`listener(code)` as it exits; answers the function that stops listening."""

        def heard(event: ExitEvent) -> None:
            if event["proc_id"] == self.proc_id:
                listener(event["code"])

        return procs.on_exit(self.link, heard)

    def on_lagged(self, listener: Callable[[], None]) -> Callable[[], None]:
        """`listener()` when the agent dropped output of this process for this link (the link
        was more than 4 MiB behind: this gateway did not keep up); answers its remover."""

        def heard(event: LaggedEvent) -> None:
            if event["proc_id"] == self.proc_id:
                listener()

        return procs.on_lagged(self.link, heard)

    def _active(self, listener: OutputListener) -> OutputListener:
        def heard(data: bytes) -> None:
            self.on_activity()
            listener(data)

        return heard


_unawaited: set[asyncio.Task[None]] = set()


def _soon(call: Coroutine[Any, Any, None], name: str) -> None:
    """Run an agent call nobody waits for. Its failure does not matter: it can only be the
    process or the link ending meanwhile, which is what the call was for anyway."""
    task = asyncio.create_task(call, name=name)
    _unawaited.add(task)  # a strong reference until it ends
    task.add_done_callback(_forget)


def _forget(task: asyncio.Task[None]) -> None:
    _unawaited.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved


class ProcessService:
    def __init__(self, containers: ContainerService) -> None:
        self._containers = containers

    async def link(self, owner_id: str, container_id: str) -> AgentClient:
        """The container's agent link (starting the container when it is stopped)."""
        return await self._containers.agent(owner_id, container_id)

    def process(self, container_id: str, link: AgentClient, proc_id: int) -> Process:
        return Process(link, proc_id, lambda: self._containers.touch(container_id))

    async def spawn(
        self, owner_id: str, container_id: str, request: SpawnRequest
    ) -> tuple[Process, ProcessInfo]:
        """Start a process; this gateway's link is attached to it until `detach`."""
        link = await self.link(owner_id, container_id)
        with agent_errors():
            info = await procs.spawn(link, request)
        return self.process(container_id, link, info["proc_id"]), info

    async def list(self, owner_id: str, container_id: str) -> tuple[AgentClient, list[ProcessInfo]]:
        """The agent's processes, running and recently exited, with the link they belong to."""
        link = await self.link(owner_id, container_id)
        with agent_errors():
            return link, await procs.list_processes(link)

    async def run(
        self, link: AgentClient, request: RunRequest, timeout: float | None = 30.0
    ) -> RunReply:
        """A small command to completion, its whole output in the answer."""
        with agent_errors():
            return await procs.run(link, request, timeout)
