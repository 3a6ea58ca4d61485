"""The agent's proc.* ops, typed: the only place the gateway names them.

Each function is one call on the link with its request and answer typed by
`agent/messages_proc.py`, the definition the agent's handlers return; `schema.py` has checked
the answer against the same shape before it gets here. Errors are the link's (AgentOpError,
AgentUnavailable): mapping them to API errors is the caller's (terminals/processes.py).
"""

from __future__ import annotations

import signal as signals
from collections.abc import Callable
from typing import Any, TypeVar, cast

from cloudcontainer.agent.messages_proc import (
    AttachReply,
    CommandEndEvent,
    CommandStartEvent,
    ExitEvent,
    LaggedEvent,
    ProcessInfo,
    RunReply,
    RunRequest,
    SpawnRequest,
    WaitReply,
)
from cloudcontainer.agent.protocol import PROC_OUTPUT, PROC_STDERR
from cloudcontainer.agentlink.client import AgentClient

__all__ = [
    "attach", "close_stdin", "detach", "kill", "list_processes", "listen", "on_command",
    "on_exit", "on_lagged", "resize", "run", "spawn", "wait", "write",
]  # fmt: skip

OutputListener = Callable[[bytes], None]
Event = TypeVar("Event")


async def spawn(link: AgentClient, request: SpawnRequest) -> ProcessInfo:
    """Start a process; this link is attached to it (its output comes to `listen`)."""
    info: ProcessInfo = await link.call("proc.spawn", **request)
    return info


async def run(link: AgentClient, request: RunRequest, timeout: float | None = 30.0) -> RunReply:
    """Run a small command to completion (its output, up to 8 MiB, comes in the answer)."""
    reply: RunReply = await link.call("proc.run", timeout=timeout, **request)
    return reply


async def attach(
    link: AgentClient, proc_id: int, on_answer: Callable[[AttachReply], None]
) -> AttachReply:
    """Attach to a process: `on_answer` runs as the answer (with the scrollback) is read, before
    any output that follows it, so a caller neither misses nor repeats a byte."""
    reply: AttachReply = await link.call_in_order("proc.attach", on_answer, proc_id=proc_id)
    return reply


async def detach(link: AgentClient, proc_id: int) -> None:
    await link.call("proc.detach", proc_id=proc_id)


async def resize(link: AgentClient, proc_id: int, cols: int, rows: int) -> None:
    await link.call("proc.resize", proc_id=proc_id, cols=cols, rows=rows)


async def kill(link: AgentClient, proc_id: int, signal: int = signals.SIGKILL) -> None:
    """Signal the process's whole group."""
    await link.call("proc.kill", proc_id=proc_id, signal=int(signal))


async def close_stdin(link: AgentClient, proc_id: int) -> None:
    await link.call("proc.close_stdin", proc_id=proc_id)


async def list_processes(link: AgentClient, timeout: float | None = 30.0) -> list[ProcessInfo]:
    """The agent's processes, running and recently exited."""
    processes: list[ProcessInfo] = await link.call("proc.list", timeout=timeout)
    return processes


async def wait(link: AgentClient, proc_id: int) -> int | None:
    """The exit code, once the process ended and all its output was sent (no time limit)."""
    reply: WaitReply = await link.call("proc.wait", timeout=None, proc_id=proc_id)
    return reply["code"]


async def write(link: AgentClient, proc_id: int, data: bytes) -> None:
    """Bytes for the process's stdin or PTY."""
    await link.send_input(proc_id, data)


def listen(
    link: AgentClient, proc_id: int, stdout: OutputListener, stderr: OutputListener | None = None
) -> Callable[[], None]:
    """Hand the process's output to `stdout` (a PTY's is all there) and `stderr`, as it is
    read from the link; answers the function that stops it."""
    stops = [link.on_stream(PROC_OUTPUT, proc_id, lambda _, data: stdout(data))]
    if stderr is not None:
        stops.append(link.on_stream(PROC_STDERR, proc_id, lambda _, data: stderr(data)))

    def stop() -> None:
        for each in stops:
            each()

    return stop


def on_exit(link: AgentClient, listener: Callable[[ExitEvent], None]) -> Callable[[], None]:
    """`proc.exit` of any process of this agent; answers the function that stops it."""
    return _on(link, "proc.exit", listener)


def on_lagged(link: AgentClient, listener: Callable[[LaggedEvent], None]) -> Callable[[], None]:
    """`proc.lagged`: the agent dropped a process's output for this link (it was behind)."""
    return _on(link, "proc.lagged", listener)


def on_command(
    link: AgentClient, listener: Callable[[CommandStartEvent | CommandEndEvent], None]
) -> Callable[[], None]:
    """`proc.command`: a jsh terminal reports a command line starting or ending."""
    return _on(link, "proc.command", listener)


def _on(link: AgentClient, name: str, listener: Callable[[Event], None]) -> Callable[[], None]:
    def heard(event: str, data: dict[str, Any]) -> None:
        if event == name:
            listener(cast(Event, data))  # its shape was checked on arrival (schema.EVENTS)

    return link.on_event(heard)
