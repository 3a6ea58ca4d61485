"""Processes owned by the agent: PTY or pipes, scrollback, attach/detach, exit codes.

Processes outlive connections: output goes to a byte-bounded ring buffer and to every
attached session; re-attaching replays the buffer. Exit codes follow the shell: a signal n
gives 128+n; a program that cannot be started gives 127 with a "command not found" line.
Python >= 3.9, stdlib only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import signal
import struct
import termios
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

from cloudcontainer.agent import jsh
from cloudcontainer.agent.protocol import PROC_INPUT, PROC_OUTPUT, PROC_STDERR, AgentError
from cloudcontainer.agent.server import (
    OUTPUT_PAUSE_BYTES,
    OUTPUT_RESUME_BYTES,
    Registry,
    Session,
)

if TYPE_CHECKING:  # the checker's only: a sandbox's agent never loads the message types
    from cloudcontainer.agent.messages_proc import (
        AttachReply,
        ExitEvent,
        ProcessInfo,
        RunReply,
        WaitReply,
    )

DEFAULT_SCROLLBACK = 256 * 1024
MAX_EXITED_KEPT = 200
EXEC_OUTPUT_LIMIT = 8 * 1024 * 1024  # proc.run's answer stays under the message limit
READ_CHUNK = 65536
MAX_REPLAY_BYTES = 8 * 1024 * 1024  # scrollback an attach replays, whatever was kept


def _controlling_tty() -> None:
    """Run in the child: a new session whose controlling terminal is the PTY on fd 0."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _clamp_size(value: Any, default: int) -> int:
    size = int(value) if value is not None else default
    if not 1 <= size <= 1000:
        raise AgentError("EINVAL", "terminal size must be between 1 and 1000")
    return size


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class Process:
    def __init__(self, proc_id: int, command: str, args: List[str], cwd: str, pty: bool,
                 cols: int, rows: int, scrollback: int) -> None:  # fmt: skip
        self.proc_id = proc_id
        self.command = command
        self.args = args
        self.cwd = cwd
        self.pty = pty
        self.cols = cols
        self.rows = rows
        self.pid: Optional[int] = None
        self.exit_code: Optional[int] = None
        self.started_at = time.time()
        self.subscribers: Set[Session] = set()
        self.lagging: Set[Session] = set()
        self.buffer = bytearray()
        self.buffer_limit = scrollback
        self.output_total = 0  # bytes of output ever sent: the buffer is the last of them
        self.master_fd: Optional[int] = None
        self.stdin: Optional[asyncio.StreamWriter] = None
        self.pending_input = bytearray()
        self.done = asyncio.Event()
        self.sink: Any = None  # also receives every output chunk (used by proc.run)
        self.argv = [command, *args]  # what runs: `/bin/jsh` is bash with jsh's rc
        self.framer: Optional[jsh.OutputFramer] = None  # a jsh's output goes through it
        self.gate: Optional[jsh.InputGate] = None  # a bolt shell's input goes through it
        self.reaper: Optional[asyncio.Future[None]] = None  # a task needs a strong reference
        self.reader_paused: Optional[asyncio.Future[None]] = None  # waits for sessions to drain

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def describe(self) -> ProcessInfo:
        return {
            "proc_id": self.proc_id, "pid": self.pid, "command": self.command, "args": self.args,
            "cwd": self.cwd, "pty": self.pty, "cols": self.cols, "rows": self.rows,
            "state": "running" if self.running else "exited", "exit_code": self.exit_code,
            "started_at": self.started_at,
        }  # fmt: skip

    def output(self, data: bytes, kind: int = PROC_OUTPUT) -> None:
        if self.sink is not None:
            self.sink(data, kind)
        self.output_total += len(data)
        self.buffer += data
        excess = len(self.buffer) - self.buffer_limit
        if excess > 0:
            del self.buffer[:excess]
        for session in list(self.subscribers):
            if session.closed:
                self.subscribers.discard(session)
            elif not session.send_stream(kind, self.proc_id, data, droppable=True):
                if session not in self.lagging:
                    self.lagging.add(session)
                    session.event("proc.lagged", {"proc_id": self.proc_id})
            else:
                self.lagging.discard(session)

    def congested(self) -> bool:
        """A session this process writes to has so much output queued that reading more
        would only pile it up (or drop it): the reader waits for `drained` instead."""
        return any(s.urgent_bytes() > OUTPUT_PAUSE_BYTES for s in self.subscribers if not s.closed)

    async def drained(self) -> None:
        for session in list(self.subscribers):
            await session.drained(OUTPUT_RESUME_BYTES, urgent=True)


class ProcessTable:
    def __init__(self, base_env: Dict[str, str], default_cwd: str, on_change: Any = None) -> None:
        self.base_env = base_env
        self.default_cwd = default_cwd
        self.procs: Dict[int, Process] = {}
        self._next_id = 1
        self._broadcast: Any = None
        self.on_change = on_change

    def bind(self, broadcast: Any) -> None:
        self._broadcast = broadcast

    def cpu_seconds(self) -> float:
        """CPU time of every process in this sandbox except the agent (from /proc)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open("/proc/%s/stat" % name, "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            except (OSError, IndexError, ValueError):
                continue
        return total / ticks

    def live(self) -> int:
        return sum(1 for p in self.procs.values() if p.running)

    # -- spawning -------------------------------------------------------------------------

    async def spawn(self, session: Optional[Session], args: Dict[str, Any],
                    sink: Any = None) -> Process:  # fmt: skip
        command = args["command"]
        argv = [str(a) for a in args.get("args") or []]
        if not isinstance(command, str) or not command:
            raise AgentError("EINVAL", "command must be a non-empty string")
        pty = bool(args.get("pty", False))
        cols = _clamp_size(args.get("cols"), 80)
        rows = _clamp_size(args.get("rows"), 24)
        cwd = args.get("cwd") or self.default_cwd
        env = dict(self.base_env)
        env.update({str(k): str(v) for k, v in (args.get("env") or {}).items()})
        scrollback = int(args.get("scrollback") or DEFAULT_SCROLLBACK)
        proc = Process(self._next_id, command, argv, cwd, pty, cols, rows, scrollback)
        proc.sink = sink
        if jsh.is_jsh(command):
            self._as_jsh(proc, env)
        self._next_id += 1
        if session is not None:
            proc.subscribers.add(session)
        try:
            if pty:
                child = await self._start_pty(proc, env)
            else:
                child = await self._start_pipes(proc, env)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            self._add(proc)
            self._not_started(proc, exc)
            return proc
        # Listed only once it has a pid: a kill must never find a process it cannot signal.
        proc.pid = child.pid
        self._add(proc)
        proc.reaper = asyncio.ensure_future(self._reap(proc, child))
        if self._broadcast:
            self._broadcast("proc.start", proc.describe())
        if self.on_change:
            self.on_change()
        return proc

    def _as_jsh(self, proc: Process, env: Dict[str, str]) -> None:
        """Run `/bin/jsh [--osc]` as bash with jsh's hooks; on a PTY its output is framed."""
        program, argv, osc = jsh.command(proc.args, env, reports=proc.pty)
        proc.argv = [program, *argv]
        if not proc.pty:
            return
        proc.framer = jsh.OutputFramer(
            proc.output, lambda report: self._command_report(proc, report),
            lambda: proc.gate.release() if proc.gate else None, quiet=osc,
        )  # fmt: skip
        if osc:
            proc.gate = jsh.InputGate(
                lambda data: self._write_now(proc, data), proc.framer.interrupted
            )

    def _command_report(self, proc: Process, report: Dict[str, Any]) -> None:
        if self._broadcast:
            self._broadcast("proc.command", {"proc_id": proc.proc_id, **report})

    async def _start_pty(self, proc: Process, env: Dict[str, str]) -> asyncio.subprocess.Process:
        master, slave = os.openpty()
        try:
            _set_size(slave, proc.cols, proc.rows)
            child = await asyncio.create_subprocess_exec(
                *proc.argv, stdin=slave, stdout=slave, stderr=slave,
                cwd=proc.cwd, env=env, preexec_fn=_controlling_tty, close_fds=True,
            )  # fmt: skip
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        proc.master_fd = master
        asyncio.get_event_loop().add_reader(master, self._pty_readable, proc)
        return child

    async def _start_pipes(self, proc: Process, env: Dict[str, str]) -> asyncio.subprocess.Process:
        child = await asyncio.create_subprocess_exec(
            *proc.argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=proc.cwd, env=env, start_new_session=True, close_fds=True,
        )  # fmt: skip
        proc.stdin = child.stdin
        proc.readers = [  # type: ignore[attr-defined]
            asyncio.ensure_future(self._pump(proc, child.stdout, PROC_OUTPUT)),
            asyncio.ensure_future(self._pump(proc, child.stderr, PROC_STDERR)),
        ]
        return child

    def _not_started(self, proc: Process, exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError) and exc.filename == proc.cwd:
            message = "cannot change directory to %s: No such file or directory" % proc.cwd
            code = 1
        else:
            message = "command not found: %s" % proc.command
            code = 127
        newline = b"\r\n" if proc.pty else b"\n"
        proc.output(
            ("jsh: %s" % message).encode() + newline, PROC_OUTPUT if proc.pty else PROC_STDERR
        )
        self._finish(proc, code)

    # -- output and exit ------------------------------------------------------------------

    def _pty_readable(self, proc: Process) -> None:
        assert proc.master_fd is not None
        try:
            data = os.read(proc.master_fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the PTY's other side has closed it
            data = b""
        if not data:
            self._close_pty(proc)
            return
        if proc.framer is not None:
            proc.framer.feed(data)
        else:
            proc.output(data)
        if proc.congested():
            asyncio.get_event_loop().remove_reader(proc.master_fd)
            proc.reader_paused = asyncio.ensure_future(self._resume_pty(proc))

    async def _resume_pty(self, proc: Process) -> None:
        """Read the PTY again once its sessions caught up (the process meanwhile blocks on
        a full terminal, which is how a slow terminal slows a program down)."""
        try:
            await proc.drained()
        finally:
            proc.reader_paused = None
            if proc.master_fd is not None:
                asyncio.get_event_loop().add_reader(proc.master_fd, self._pty_readable, proc)

    def _close_pty(self, proc: Process) -> None:
        if proc.master_fd is None:
            return
        if proc.framer is not None:
            proc.framer.flush(final=True)
        if proc.gate is not None:
            proc.gate.close()
        loop = asyncio.get_event_loop()
        loop.remove_reader(proc.master_fd)
        loop.remove_writer(proc.master_fd)
        os.close(proc.master_fd)
        proc.master_fd = None

    async def _pump(self, proc: Process, stream: Any, kind: int) -> None:
        while True:
            data = await stream.read(READ_CHUNK)
            if not data:
                return
            proc.output(data, kind)
            if proc.congested():
                await proc.drained()

    async def _reap(self, proc: Process, child: asyncio.subprocess.Process) -> None:
        returncode = await child.wait()
        if proc.pty:
            # Let output already written drain before reporting the exit; a background job
            # that keeps the PTY open must not hold the exit back for long.
            # While the reader waits for a slow session, the rest of the output is still to
            # be read: the deadline counts from when it reads again.
            deadline = time.monotonic() + 0.5
            while proc.master_fd is not None and time.monotonic() < deadline:
                if proc.reader_paused is not None:
                    await asyncio.shield(proc.reader_paused)
                    deadline = time.monotonic() + 0.5
                await asyncio.sleep(0.01)
            self._close_pty(proc)
        else:
            await asyncio.wait(proc.readers, timeout=0.5)  # type: ignore[attr-defined]
        self._finish(proc, exit_code(returncode))

    def _finish(self, proc: Process, code: int) -> None:
        proc.exit_code = code
        proc.done.set()
        if self._broadcast:
            event: ExitEvent = {"proc_id": proc.proc_id, "code": code}
            self._broadcast("proc.exit", event)
        if self.on_change:
            self.on_change()

    def _add(self, proc: Process) -> None:
        self.procs[proc.proc_id] = proc
        self._forget_old()

    def _forget_old(self) -> None:
        exited = [p for p in self.procs.values() if not p.running]
        for proc in exited[: max(0, len(exited) - MAX_EXITED_KEPT)]:
            del self.procs[proc.proc_id]

    # -- control --------------------------------------------------------------------------

    def get(self, proc_id: Any) -> Process:
        proc = self.procs.get(int(proc_id))
        if proc is None:
            raise AgentError("ESRCH", "no such process: %s" % proc_id)
        return proc

    def write(self, proc: Process, data: bytes) -> None:
        if proc.gate is not None:
            proc.gate.feed(data)
        else:
            self._write_now(proc, data)

    def _write_now(self, proc: Process, data: bytes) -> None:
        if not proc.running:
            return
        if proc.master_fd is not None:
            proc.pending_input += data
            self._flush_input(proc)
        elif proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(data)

    def _flush_input(self, proc: Process) -> None:
        loop = asyncio.get_event_loop()
        if proc.master_fd is None:
            return
        try:
            written = os.write(proc.master_fd, proc.pending_input)
        except BlockingIOError:
            written = 0
        except OSError:
            proc.pending_input.clear()
            return
        del proc.pending_input[:written]
        if proc.pending_input:
            loop.add_writer(proc.master_fd, self._flush_input, proc)
        else:
            loop.remove_writer(proc.master_fd)

    def resize(self, proc: Process, cols: Any, rows: Any) -> None:
        proc.cols, proc.rows = _clamp_size(cols, 80), _clamp_size(rows, 24)
        if proc.master_fd is not None:
            _set_size(proc.master_fd, proc.cols, proc.rows)

    def kill(self, proc: Process, sig: int = signal.SIGTERM) -> None:
        if proc.running and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            self.kill(proc, signal.SIGKILL)


def register(registry: Registry, table: ProcessTable) -> None:
    async def spawn(session: Session, args: Dict[str, Any]) -> ProcessInfo:
        return (await table.spawn(session, args)).describe()

    async def attach(session: Session, args: Dict[str, Any]) -> AttachReply:
        proc = table.get(args["proc_id"])
        proc.subscribers.add(session)
        proc.lagging.discard(session)
        # At most the last MAX_REPLAY_BYTES: the answer stays under the message limit.
        replay = proc.buffer[-MAX_REPLAY_BYTES:]
        return {
            **proc.describe(), "scrollback": base64.b64encode(replay).decode(),
            "scrollback_offset": proc.output_total - len(replay),
        }  # fmt: skip

    async def detach(session: Session, args: Dict[str, Any]) -> None:
        table.get(args["proc_id"]).subscribers.discard(session)
        return None

    async def resize(session: Session, args: Dict[str, Any]) -> None:
        table.resize(table.get(args["proc_id"]), args.get("cols"), args.get("rows"))
        return None

    async def kill(session: Session, args: Dict[str, Any]) -> None:
        sig = int(args.get("signal", signal.SIGTERM))
        if sig not in {s.value for s in signal.Signals}:
            raise AgentError("EINVAL", "unknown signal %s" % sig)
        table.kill(table.get(args["proc_id"]), sig)
        return None

    async def close_stdin(session: Session, args: Dict[str, Any]) -> None:
        proc = table.get(args["proc_id"])
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        return None

    async def listing(session: Session, args: Dict[str, Any]) -> List[ProcessInfo]:
        return [p.describe() for p in table.procs.values()]

    async def wait(session: Session, args: Dict[str, Any]) -> WaitReply:
        proc = table.get(args["proc_id"])
        await proc.done.wait()
        return {"proc_id": proc.proc_id, "code": proc.exit_code}

    async def run(session: Session, args: Dict[str, Any]) -> RunReply:
        """Run to completion and return the whole output (small commands, health checks)."""
        stdout, stderr = bytearray(), bytearray()

        def collect(data: bytes, kind: int) -> None:
            if len(stdout) + len(stderr) < EXEC_OUTPUT_LIMIT:
                (stderr if kind == PROC_STDERR else stdout).extend(data)

        proc = await table.spawn(
            None, {**args, "pty": False, "scrollback": 64 * 1024}, sink=collect
        )
        if proc.running and args.get("stdin"):
            table.write(proc, base64.b64decode(args["stdin"]))
        if proc.stdin is not None:
            proc.stdin.close()
        # Not "timeout": AgentClient.call(op, timeout=...) takes that name for the call itself.
        timeout = float(args.get("timeout_seconds") or 0) or None
        try:
            await asyncio.wait_for(proc.done.wait(), timeout)
        except asyncio.TimeoutError:
            table.kill(proc, signal.SIGKILL)
            await proc.done.wait()
            raise AgentError("ETIMEDOUT", "command timed out after %ss" % timeout) from None
        return {
            "code": proc.exit_code,
            "stdout": base64.b64encode(bytes(stdout)).decode(),
            "stderr": base64.b64encode(bytes(stderr)).decode(),
        }

    def on_input(session: Session, channel: int, payload: bytes) -> None:
        proc = table.procs.get(channel)
        if proc is not None:
            table.write(proc, payload)

    registry.add("proc.spawn", spawn)
    registry.add("proc.attach", attach)
    registry.add("proc.detach", detach)
    registry.add("proc.resize", resize)
    registry.add("proc.kill", kill)
    registry.add("proc.list", listing)
    registry.add("proc.close_stdin", close_stdin)
    registry.add("proc.wait", wait, concurrent=True)
    registry.add("proc.run", run, concurrent=True)
    registry.binary[PROC_INPUT] = on_input
