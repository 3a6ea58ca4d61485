"""The agent's proc.* ops as types: what the gateway sends, what the agent answers, and the
events it broadcasts. One definition for both sides — the agent's handlers (`procs.py`) return
these, the gateway's facade (`agentlink/procs.py`) takes and gives them, so mypy checks both
ends; `agentlink/schema.py` still checks every answer at run time (the agent is the tenant's).

Stdlib only, python >= 3.9: optional keys are a `total=False` class over the required ones
(NotRequired is 3.11). Process output itself is not here: it travels as binary frames
(PROC_OUTPUT, PROC_STDERR, PROC_INPUT in protocol.py) on the channel of the process's id.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Tuple, TypedDict, Union

__all__ = [
    "EVENTS",
    "OPS",
    "AttachReply",
    "CommandEndEvent",
    "CommandStartEvent",
    "ExitEvent",
    "KillRequest",
    "LaggedEvent",
    "ProcRef",
    "ProcessInfo",
    "ResizeRequest",
    "RunReply",
    "RunRequest",
    "SpawnRequest",
    "WaitReply",
]  # fmt: skip


class _Command(TypedDict):
    command: str


class SpawnRequest(_Command, total=False):
    """`proc.spawn`: a process on pipes (stdout and stderr apart) or on a PTY."""

    args: List[str]
    cwd: Optional[str]  # default: the workspace
    env: Dict[str, str]  # added to the agent's environment
    pty: bool
    cols: int  # 1..1000, on a PTY
    rows: int
    scrollback: int  # bytes of output the agent keeps for a re-attach


class RunRequest(SpawnRequest, total=False):
    """`proc.run`: spawn on pipes, feed `stdin`, wait; the whole output in the answer."""

    stdin: str  # base64
    # Not `timeout`: AgentClient.call takes that name for the call itself.
    timeout_seconds: float


class ProcRef(TypedDict):
    """`proc.attach`, `proc.detach`, `proc.close_stdin`, `proc.wait`."""

    proc_id: int


class ResizeRequest(ProcRef):
    cols: int
    rows: int


class KillRequest(ProcRef, total=False):
    signal: int  # default SIGTERM; the whole process group gets it


class ProcessInfo(TypedDict):
    """A process as `proc.spawn`, `proc.list` and the `proc.start` event describe it."""

    proc_id: int
    pid: Optional[int]  # None when the program could not be started
    command: str
    args: List[str]
    cwd: str
    pty: bool
    cols: int
    rows: int
    state: Literal["running", "exited"]
    exit_code: Optional[int]  # 128+n after signal n; 127: no such program
    started_at: float  # seconds since the epoch


class AttachReply(ProcessInfo):
    scrollback: str  # base64: the kept output; live output follows the answer
    # Where the scrollback starts in all the output the process ever sent: a client that
    # re-attaches skips what it already has, and knows what it missed.
    scrollback_offset: int


class WaitReply(TypedDict):
    """`proc.wait`: once the process exited and its output was sent."""

    proc_id: int
    code: Optional[int]


class RunReply(TypedDict):
    code: Optional[int]
    stdout: str  # base64
    stderr: str  # base64


class ExitEvent(TypedDict):
    """`proc.exit`."""

    proc_id: int
    code: Optional[int]


class LaggedEvent(TypedDict):
    """`proc.lagged`: this connection was not reading; output was dropped for it."""

    proc_id: int


class CommandStartEvent(TypedDict):
    """`proc.command` as a jsh on a PTY starts a command line."""

    proc_id: int
    phase: Literal["start"]
    command: str


class CommandEndEvent(TypedDict):
    """`proc.command` as that line ends."""

    proc_id: int
    phase: Literal["end"]
    code: Optional[int]


# -- the tables (as agent/messages.py's for the other ops) ------------------------------------

# op -> (its arguments, its reply)
OPS: Dict[str, Tuple[Any, Any]] = {
    "proc.spawn": (SpawnRequest, ProcessInfo),
    "proc.run": (RunRequest, RunReply),
    "proc.attach": (ProcRef, AttachReply),
    "proc.detach": (ProcRef, None),
    "proc.resize": (ResizeRequest, None),
    "proc.kill": (KillRequest, None),
    "proc.close_stdin": (ProcRef, None),
    "proc.list": (None, List[ProcessInfo]),
    "proc.wait": (ProcRef, WaitReply),
}

EVENTS: Dict[str, Any] = {
    "proc.start": ProcessInfo,
    "proc.exit": ExitEvent,
    "proc.lagged": LaggedEvent,
    "proc.command": Union[CommandStartEvent, CommandEndEvent],
}
