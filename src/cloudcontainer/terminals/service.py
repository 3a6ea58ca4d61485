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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from cloudcontainer.agent.jsh import split_after_markers
from cloudcontainer.agent.protocol import PROC_OUTPUT
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import agent_errors
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
        self, link: AgentClient, proc_id: int, input_rate: InputRate,
        on_empty: Callable[[], None], on_activity: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.link = link
        self.proc_id = proc_id
        self.input_rate = input_rate
        self.clients: set[TerminalClient] = set()
        self._on_empty = on_empty
        # Input and output keep the container from being idle-stopped (issue 9): a dict
        # write per chunk, no database.
        self._on_activity = on_activity
        self._stop_listening: list[Callable[[], None]] = []

    async def join(self, client: TerminalClient) -> dict[str, Any]:
        """Attach `client`; answers the terminal as the agent describes it."""
        if not self._stop_listening:
            self._stop_listening = [
                self.link.on_stream(PROC_OUTPUT, self.proc_id, self._output),
                self.link.on_event(self._event),
            ]
        try:
            return await self._attach(client)
        except BaseException:
            self.leave(client)
            raise

    async def resync(self, client: TerminalClient) -> None:
        """After falling behind: `lagged`, the scrollback again, then live output."""
        await self._attach(client, notice={"type": "lagged"})

    async def _attach(
        self, client: TerminalClient, notice: Control | None = None
    ) -> dict[str, Any]:
        def start(answer: dict[str, Any]) -> None:
            client.restart(decode(answer["scrollback"], "proc.attach"), notice)
            self.clients.add(client)

        with agent_errors():
            answer: dict[str, Any] = await self.link.call_in_order(
                "proc.attach", start, proc_id=self.proc_id
            )
        return answer

    async def type(self, data: bytes) -> None:
        """Input from any client, at most the terminal's input rate (it waits beyond)."""
        await self.input_rate.take(len(data))
        self._on_activity()
        await self.link.send_input(self.proc_id, data)

    async def resize(self, cols: int, rows: int) -> None:
        with agent_errors():
            await self.link.call("proc.resize", proc_id=self.proc_id, cols=cols, rows=rows)

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
        if not self.link.closed.is_set():
            detach = self.link.call("proc.detach", proc_id=self.proc_id)
            task = asyncio.ensure_future(detach)
            task.add_done_callback(_ignore_failure)

    def _output(self, _: int, data: bytes) -> None:
        self._on_activity()
        for client in self.clients:
            client.put(data)

    def _event(self, name: str, data: dict[str, Any]) -> None:
        if name == "link.closed":
            self._tell_all({"type": "error", "code": "agent_unavailable",
                            "message": "The container's agent went away."})  # fmt: skip
        elif data.get("proc_id") != self.proc_id:
            return
        elif name == "proc.exit":
            self._tell_all({"type": "exit", "code": data.get("code")})
        elif name == "proc.lagged":  # the agent dropped output for this gateway: start over
            for client in self.clients:
                client.fall_behind()

    def _tell_all(self, message: Control) -> None:
        for client in self.clients:
            client.put(message)


def _ignore_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a detach racing the link's end does not matter


def terminal_id(link: AgentClient, proc_id: int) -> str:
    return f"{_boot(link)}-{proc_id}"


def _boot(link: AgentClient) -> str:
    return format(int(float(link.hello.get("started_at", 0)) * 1000), "x")


def describe(link: AgentClient, process: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": terminal_id(link, process["proc_id"]), "command": process["command"],
        "args": process["args"], "cwd": process["cwd"], "cols": process["cols"],
        "rows": process["rows"], "state": process["state"], "exit_code": process["exit_code"],
        "started_at": process["started_at"],
    }  # fmt: skip


class TerminalService:
    def __init__(
        self, containers: ContainerService, commands: CommandLog, *, scrollback_bytes: int,
        input_bytes_per_second: int, deny_patterns: Sequence[str] = (),
        history_reports_per_minute: int = 600, history_max_per_project: int = 10_000,
    ) -> None:  # fmt: skip
        self._containers = containers
        self.commands = commands
        self.report_budget = ReportBudget(history_reports_per_minute)
        self._history_max = history_max_per_project
        self._reported_since_prune: dict[str, int] = {}
        self._scrollback_bytes = scrollback_bytes
        self._input_rate = input_bytes_per_second
        self.policy = CommandPolicy(deny_patterns)
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
            await link.call(
                "proc.run", command="sh", args=["-c", SEED_HISTORY_SCRIPT],
                stdin=base64.b64encode(lines.encode()).decode(), timeout_seconds=10,
            )  # fmt: skip
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

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name != "proc.command" or not isinstance(data.get("proc_id"), int):
                return
            proc_id: int = data["proc_id"]
            if data.get("phase") == "start":
                if proc_id not in started and len(started) >= MAX_OPEN_REPORTS:
                    return
                if not self.report_budget.allow(container.project_id):
                    if self.report_budget.dropped % 1000 == 1:
                        log.warning("shell history reports dropped: over the rate",
                                    project_id=container.project_id)  # fmt: skip
                    return
                started[proc_id] = self._containers.tasks.spawn(
                    self._report(container, str(data.get("command", ""))),
                    name="command started",
                )  # fmt: skip
            elif data.get("phase") == "end" and proc_id in started:
                record = started.pop(proc_id)
                self._containers.tasks.spawn(
                    self._finish(record, clean_exit_code(data.get("code"))),
                    name="command finished",
                )

        link.on_event(on_event)

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
        link = await self._containers.agent(owner_id, container_id)
        with agent_errors():
            process = await link.call(
                "proc.spawn", command=spec.command, args=spec.args, cwd=spec.cwd, env=spec.env,
                pty=True, cols=spec.cols, rows=spec.rows, scrollback=self._scrollback_bytes,
            )  # fmt: skip
            # The spawning connection is attached: output flows to a hub once a client joins.
            await link.call("proc.detach", proc_id=process["proc_id"])
        return describe(link, process)

    async def list(self, owner_id: str, container_id: str) -> list[dict[str, Any]]:
        link = await self._containers.agent(owner_id, container_id)
        with agent_errors():
            processes = await link.call("proc.list")
        return [describe(link, p) for p in processes if p["pty"]]

    async def get(self, owner_id: str, container_id: str, terminal: str) -> dict[str, Any]:
        link, process = await self._find(owner_id, container_id, terminal)
        return describe(link, process)

    async def kill(self, owner_id: str, container_id: str, terminal: str) -> None:
        """Hang up and kill the terminal's whole process group."""
        link, process = await self._find(owner_id, container_id, terminal)
        if process["state"] == "running":
            with agent_errors():
                await link.call("proc.kill", proc_id=process["proc_id"], signal=9)

    @contextlib.asynccontextmanager
    async def attach(
        self, owner_id: str, container_id: str, terminal: str, client: TerminalClient
    ) -> AsyncIterator[tuple[Hub, dict[str, Any]]]:
        """Join the terminal's hub for the `with` block; answers the hub and the terminal."""
        link, process = await self._find(owner_id, container_id, terminal)
        key = (container_id, process["proc_id"])
        hub = self._hubs.get(key)
        if hub is None or hub.link is not link:
            rate = InputRate(self._input_rate, burst=max(self._input_rate // 4, 4096))
            hub = Hub(
                link, process["proc_id"], rate, lambda: self._forget(key, hub),
                lambda: self._containers.touch(container_id),
            )  # fmt: skip
            self._hubs[key] = hub
        try:
            attached = await hub.join(client)
            yield hub, describe(link, attached)
        finally:
            hub.leave(client)

    def _forget(self, key: tuple[str, int], hub: Hub | None) -> None:
        if self._hubs.get(key) is hub:
            del self._hubs[key]

    async def _find(
        self, owner_id: str, container_id: str, terminal: str
    ) -> tuple[AgentClient, dict[str, Any]]:
        link = await self._containers.agent(owner_id, container_id)
        boot, _, number = terminal.partition("-")
        if boot == _boot(link) and number.isdigit():
            with agent_errors():
                processes = await link.call("proc.list")
            for process in processes:
                if process["proc_id"] == int(number) and process["pty"]:
                    return link, process
        raise NotFound("No such terminal.", code="terminal_not_found")
