"""Terminals: PTY processes in the agent, shared by the WebSocket clients attached to them.

A terminal is an agent process with a PTY. It belongs to the agent, not to a connection, so it
outlives its clients and a gateway restart; its scrollback is the agent's ring buffer. Its id
names the agent run too (`<agent boot>-<proc id>`): a restarted agent numbers processes from 1
again, and an old id must not reach a new process.

Each terminal attached on this gateway has one `Hub`: the link's output for that process, handed
to every client. A client joins exactly at the agent's answer to `proc.attach`, which carries the
scrollback up to that moment, so it gets every later byte once. A client more than
`max_pending` bytes behind loses what is queued for it and is sent the scrollback again after
a `lagged` message: a slow reader never makes the gateway buffer without bound.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from cloudcontainer.agent.jsh import split_after_markers
from cloudcontainer.agent.messages_proc import (
    AttachReply,
    CommandEndEvent,
    CommandStartEvent,
    ProcessInfo,
)
from cloudcontainer.agentlink import procs
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.schema import decode
from cloudcontainer.db import Container
from cloudcontainer.errors import CloudContainerError, NotFound
from cloudcontainer.sandbox.service import ContainerService
from cloudcontainer.terminals.commands import (
    CommandLog,
    clean_exit_code,
    clean_reported_line,
)
from cloudcontainer.terminals.limits import CommandPolicy, InputRate, ReportBudget
from cloudcontainer.terminals.processes import Process, ProcessService

__all__ = ["Control", "Hub", "TerminalClient", "TerminalService", "TerminalSpec"]

Control = dict[str, Any]  # a JSON control message for the client: exit, lagged, ...
CLIENT_MAX_PENDING = 1024 * 1024
CONTROL_BYTES = 64  # what a queued control message counts for, against max_pending
HISTORY_SEED_LINES = 1000
MAX_OPEN_REPORTS = 256  # command lines reported started and not yet ended, per container
PRUNE_EVERY = 100  # reported rows written per project between two prunings
# Put the project's lines (stdin) before what jsh's history file (agent/jsh.py) holds, once per
# sandbox home: a terminal opened at once may have made the file already.
SEED_HISTORY_SCRIPT = (
    'f="$HOME/.jsh_history"; [ -e "$f.seeded" ] && exit 0; '
    'cat - "$f" > "$f.seed" 2>/dev/null; mv "$f.seed" "$f" && : > "$f.seeded"'
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TerminalSpec:
    command: str
    args: list[str]
    cwd: str | None
    env: dict[str, str]
    cols: int
    rows: int


@dataclass(eq=False)
class TerminalClient:
    """One attached client: what is to be sent to it, in order (bytes, or a control message)."""

    max_pending: int = CLIENT_MAX_PENDING
    queue: collections.deque[bytes | Control] = field(default_factory=collections.deque)
    pending: int = 0
    lagged: bool = False
    closed: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Where the scrollback it was last sent starts in the process's whole output (the
    # `attached` and `lagged` messages say so, for a client that resumes).
    offset: int = 0

    def put(self, item: bytes | Control) -> None:
        if self.lagged or self.closed:
            return
        # A control message counts too: they come from agent events, and an agent (the
        # tenant's) may send a flood of them (issue 9).
        size = len(item) if isinstance(item, bytes) else CONTROL_BYTES
        if self.pending + size > self.max_pending:
            self.fall_behind()
            return
        self.pending += size
        self.queue.append(item)
        self.ready.set()

    async def next(self) -> bytes | Control | None:
        """The next item; None once the client should resynchronise (`lagged`)."""
        while not self.queue and not self.lagged:
            self.ready.clear()
            await self.ready.wait()
        if self.lagged:
            return None
        item = self.queue.popleft()
        self.pending -= len(item) if isinstance(item, bytes) else CONTROL_BYTES
        return item

    def fall_behind(self) -> None:
        """Drop what is queued: its writer asks the hub for the scrollback again."""
        self.queue.clear()
        self.pending = 0
        self.lagged = True
        self.ready.set()

    def restart(self, scrollback: bytes, notice: Control | None = None) -> None:
        """Start over from the agent's scrollback (a first attach, or after lagging)."""
        self.queue.clear()
        self.pending = 0
        self.lagged = False
        if notice is not None:
            self.queue.append(notice)
            self.pending = CONTROL_BYTES
        if scrollback:
            # A bolt shell's replay is cut as its live output is: one marker per frame at most.
            self.queue.extend(split_after_markers(scrollback))
            self.pending += len(scrollback)
        self.ready.set()


class Hub:
    """The clients of one terminal on this gateway, fed from the agent link."""

    def __init__(
        self, process: Process, input_rate: InputRate, on_empty: Callable[[], None]
    ) -> None:
        # Input and output keep the container from being idle-stopped (issue 9): the
        # process's own activity hook, a dict write per chunk, no database.
        self.process = process
        self.input_rate = input_rate
        self.clients: set[TerminalClient] = set()
        self._on_empty = on_empty
        self._stop_listening: list[Callable[[], None]] = []

    @property
    def proc_id(self) -> int:
        return self.process.proc_id

    async def join(self, client: TerminalClient) -> AttachReply:
        """Attach `client`; answers the terminal as the agent describes it."""
        if not self._stop_listening:
            self._stop_listening = [
                self.process.listen(self._output),
                self.process.on_exit(lambda code: self._tell_all({"type": "exit", "code": code})),
                self.process.on_lagged(self._lagged),
                self.process.link.on_event(self._link_event),
            ]
        try:
            return await self._attach(client)
        except BaseException:
            self.leave(client)
            raise

    async def resync(self, client: TerminalClient) -> None:
        """After falling behind: `lagged`, the scrollback again, then live output."""
        await self._attach(client, notice={"type": "lagged"})

    async def _attach(self, client: TerminalClient, notice: Control | None = None) -> AttachReply:
        def start(answer: AttachReply) -> None:
            client.offset = answer["scrollback_offset"]
            told = None if notice is None else {**notice, "offset": client.offset}
            client.restart(decode(answer["scrollback"], "proc.attach"), told)
            self.clients.add(client)

        return await self.process.attach(start)

    async def type(self, data: bytes) -> None:
        """Input from any client, at most the terminal's input rate (it waits beyond)."""
        await self.input_rate.take(len(data))
        await self.process.write(data)

    async def resize(self, cols: int, rows: int) -> None:
        await self.process.resize(cols, rows)

    def leave(self, client: TerminalClient) -> None:
        client.closed = True
        client.ready.set()
        self.clients.discard(client)
        if self.clients:
            return
        for stop in self._stop_listening:
            stop()
        self._stop_listening = []
        self._on_empty()
        if not self.process.link.closed.is_set():
            self.process.detach_soon()

    def _output(self, data: bytes) -> None:
        for client in self.clients:
            client.put(data)

    def _lagged(self) -> None:
        """The agent dropped output for this gateway: every client starts over."""
        for client in self.clients:
            client.fall_behind()

    def _link_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "link.closed":
            self._tell_all({"type": "error", "code": "agent_unavailable",
                            "message": "The container's agent went away."})  # fmt: skip

    def _tell_all(self, message: Control) -> None:
        for client in self.clients:
            client.put(message)


def terminal_id(link: AgentClient, proc_id: int) -> str:
    return f"{_boot(link)}-{proc_id}"


def _boot(link: AgentClient) -> str:
    return format(int(float(link.hello.get("started_at", 0)) * 1000), "x")


def describe(link: AgentClient, process: ProcessInfo) -> dict[str, Any]:
    return {
        "id": terminal_id(link, process["proc_id"]), "command": process["command"],
        "args": process["args"], "cwd": process["cwd"], "cols": process["cols"],
        "rows": process["rows"], "state": process["state"], "exit_code": process["exit_code"],
        "started_at": process["started_at"],
    }  # fmt: skip


class TerminalService:
    def __init__(
        self, containers: ContainerService, processes: ProcessService, commands: CommandLog,
        policy: CommandPolicy, *, scrollback_bytes: int, input_bytes_per_second: int,
        history_reports_per_minute: int = 600, history_max_per_project: int = 10_000,
    ) -> None:  # fmt: skip
        self._containers = containers
        self._processes = processes
        self.commands = commands
        self.report_budget = ReportBudget(history_reports_per_minute)
        self._history_max = history_max_per_project
        self._reported_since_prune: dict[str, int] = {}
        self._scrollback_bytes = scrollback_bytes
        self._input_rate = input_bytes_per_second
        self.policy = policy
        self._hubs: dict[tuple[str, int], Hub] = {}
        containers.hooks.adopted.append(self._record_shell_commands)
        containers.hooks.adopted.append(self._start_seeding_history)

    def _start_seeding_history(self, container: Container, link: AgentClient) -> None:
        if container.started_at is None:  # a new sandbox home; a restarted one has its history
            self._containers.tasks.spawn(self._seed_history(container, link), name="seed history")

    async def _seed_history(self, container: Container, link: AgentClient) -> None:
        """A new container's shell history starts with its project's: the up arrow in its
        terminals finds what was run in the project's earlier containers."""
        records = await self.commands.history(container.project_id, "", HISTORY_SEED_LINES)
        lines = "".join(f"{r.command}\n" for r in reversed(records) if "\n" not in r.command)
        if not lines:
            return
        try:
            await self._processes.run(link, {
                "command": "sh", "args": ["-c", SEED_HISTORY_SCRIPT],
                "stdin": base64.b64encode(lines.encode()).decode(), "timeout_seconds": 10,
            })  # fmt: skip
        except CloudContainerError as exc:  # the sandbox went away meanwhile: nothing to seed
            log.info("shell history not seeded", container_id=container.id, reason=exc.message)

    def _record_shell_commands(self, container: Container, link: AgentClient) -> None:
        """Put the command lines run in the container's jsh terminals on record, as the agent
        reports them (`proc.command`): a row as a line starts, its status as it ends.

        The reports come from inside the sandbox, so they are the tenant's word (issue 9):
        cleaned (terminals/commands.py), at most `history_reports_per_minute` per project
        (more are dropped), at most `history_max_per_project` rows kept, and at most
        `MAX_OPEN_REPORTS` lines open at once."""
        started: dict[int, asyncio.Task[str]] = {}  # proc id → its running line's record

        def on_command(report: CommandStartEvent | CommandEndEvent) -> None:
            proc_id = report["proc_id"]
            if report["phase"] == "start":
                if proc_id not in started and len(started) >= MAX_OPEN_REPORTS:
                    return
                if not self.report_budget.allow(container.project_id):
                    if self.report_budget.dropped % 1000 == 1:
                        log.warning("shell history reports dropped: over the rate",
                                    project_id=container.project_id)  # fmt: skip
                    return
                started[proc_id] = self._containers.tasks.spawn(
                    self._report(container, report["command"]), name="command started"
                )
            elif proc_id in started:
                record = started.pop(proc_id)
                self._containers.tasks.spawn(
                    self._finish(record, clean_exit_code(report["code"])),
                    name="command finished",
                )

        procs.on_command(link, on_command)

    async def _report(self, container: Container, line: str) -> str:
        record = await self.commands.started(
            project_id=container.project_id, container_id=container.id,
            user_id=container.owner_id, source="shell", command=clean_reported_line(line),
        )  # fmt: skip
        count = self._reported_since_prune.get(container.project_id, 0) + 1
        self._reported_since_prune[container.project_id] = count % PRUNE_EVERY
        if count >= PRUNE_EVERY:
            await self.commands.prune_reported(container.project_id, "shell", self._history_max)
        return record

    async def _finish(self, record: asyncio.Task[str], code: int | None) -> None:
        await self.commands.finished(await record, code)

    async def create(self, owner_id: str, container_id: str, spec: TerminalSpec) -> dict[str, Any]:
        process, info = await self._processes.spawn(owner_id, container_id, {
            "command": spec.command, "args": spec.args, "cwd": spec.cwd, "env": spec.env,
            "pty": True, "cols": spec.cols, "rows": spec.rows,
            "scrollback": self._scrollback_bytes,
        })  # fmt: skip
        # The spawning connection is attached: output flows to a hub once a client joins.
        await process.detach()
        return describe(process.link, info)

    async def list(self, owner_id: str, container_id: str) -> list[dict[str, Any]]:
        link, processes = await self._processes.list(owner_id, container_id)
        return [describe(link, p) for p in processes if p["pty"]]

    async def get(self, owner_id: str, container_id: str, terminal: str) -> dict[str, Any]:
        process, info = await self._find(owner_id, container_id, terminal)
        return describe(process.link, info)

    async def kill(self, owner_id: str, container_id: str, terminal: str) -> None:
        """Hang up and kill the terminal's whole process group."""
        process, info = await self._find(owner_id, container_id, terminal)
        if info["state"] == "running":
            await process.kill()

    @contextlib.asynccontextmanager
    async def attach(
        self, owner_id: str, container_id: str, terminal: str, client: TerminalClient
    ) -> AsyncIterator[tuple[Hub, dict[str, Any]]]:
        """Join the terminal's hub for the `with` block; answers the hub and the terminal."""
        process, _ = await self._find(owner_id, container_id, terminal)
        key = (container_id, process.proc_id)
        hub = self._hubs.get(key)
        if hub is None or hub.process.link is not process.link:
            rate = InputRate(self._input_rate, burst=max(self._input_rate // 4, 4096))
            hub = Hub(process, rate, lambda: self._forget(key, hub))
            self._hubs[key] = hub
        try:
            attached = await hub.join(client)
            yield hub, describe(process.link, attached)
        finally:
            hub.leave(client)

    def _forget(self, key: tuple[str, int], hub: Hub | None) -> None:
        if self._hubs.get(key) is hub:
            del self._hubs[key]

    async def _find(
        self, owner_id: str, container_id: str, terminal: str
    ) -> tuple[Process, ProcessInfo]:
        link, processes = await self._processes.list(owner_id, container_id)
        boot, _, number = terminal.partition("-")
        if boot == _boot(link) and number.isdigit():
            for info in processes:
                if info["proc_id"] == int(number) and info["pty"]:
                    return self._processes.process(container_id, link, info["proc_id"]), info
        raise NotFound("No such terminal.", code="terminal_not_found")
