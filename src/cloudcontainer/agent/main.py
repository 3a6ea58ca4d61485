"""Agent entry point: `python3 agent.pyz --listen fd:3 --secret-file - ...`.

The agent runs as the sandbox's user, beside the tenant's processes. Before anything else it
makes itself undumpable, so those processes (same uid) can neither ptrace it nor read its
memory or /proc/PID/environ: the secret it reads from its stdin stays its own."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from cloudcontainer.agent import (
    PROTOCOL_VERSION,
    __version__,
    batch,
    fs,
    lazy,
    ports,
    procs,
    snapshot,
    tunnel,
    watch,
)
from cloudcontainer.agent.protocol import WORKSPACE
from cloudcontainer.agent.server import Agent, Session

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import Hello, Ping


def _rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def build(
    secret: str, workspace: str, env: Dict[str, str], own_port: Optional[int] = None
) -> Agent:
    agent = Agent(secret)
    files = fs.Files(workspace)
    fs.register(agent.registry, files)
    batch.register(agent.registry, files)
    batch.clean(files)  # what a batch interrupted by a crash left behind
    snapshot.register(agent.registry, snapshot.Snapshots(files))
    table = procs.ProcessTable(env, workspace)
    table.bind(agent.broadcast)
    procs.register(agent.registry, table)
    agent.processes = table  # type: ignore[attr-defined]
    ports_watcher = ports.PortWatcher(
        agent.broadcast, table.live, exclude=[own_port] if own_port else []
    )
    table.on_change = ports_watcher.wake
    ports.register(agent.registry, ports_watcher)
    tunnels = tunnel.Tunnels()
    tunnel.register(agent.registry, tunnels)
    watcher = watch.Watcher(files.root)
    watch.register(agent.registry, watcher)
    lazy.register(agent, files)  # search and archives: imported on first use
    started = time.time()

    async def hello(session: Session, args: Dict[str, Any]) -> Hello:
        return {
            "version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
            "uid": os.getuid(), "python": "%d.%d.%d" % sys.version_info[:3],
            "workspace": files.root,
            "started_at": started,
        }  # fmt: skip

    async def ping(session: Session, args: Dict[str, Any]) -> Ping:
        return {
            "time": time.time(), "cpu_seconds": table.cpu_seconds(), "live_procs": table.live(),
            "rss_bytes": _rss_bytes(), "polling_ports": ports_watcher.polling,
            "watch": watcher.stats(),
        }  # fmt: skip

    agent.registry.add("hello", hello)
    agent.registry.add("ping", ping)

    def forget(session: Session) -> None:
        for proc in table.procs.values():
            proc.subscribers.discard(session)
            proc.lagging.discard(session)

    agent.on_session_closed.append(forget)
    agent.on_session_closed.append(tunnels.close_session)
    agent.on_session_closed.append(watcher.forget_session)
    return agent


USAGE = (
    "usage: agent.pyz --listen fd:N|unix:PATH|tcp:HOST:PORT [--secret-file FILE|-] "
    "[--workspace DIR] [--log-level LEVEL]"
)
PR_SET_DUMPABLE = 4
# The agent's log lands on the host (a file, or Docker's log): however much a sandbox makes
# it complain, one run writes at most this much.
LOG_LIMIT_BYTES = 1024 * 1024


class _CappedStream:
    """A text stream that passes on the first LOG_LIMIT_BYTES characters, then one notice."""

    def __init__(self, stream: Any, limit: int = LOG_LIMIT_BYTES) -> None:
        self._stream = stream
        self._left = limit

    def write(self, text: str) -> int:
        if self._left <= 0:
            return len(text)
        self._left -= len(text)
        self._stream.write(text if self._left > 0 else "agent WARNING log limit reached\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


OPTIONS = {"--listen": "listen", "--secret-file": "secret_file", "--workspace": "workspace",
           "--log-level": "log_level"}  # fmt: skip


def parse(argv: Optional[List[str]]) -> Dict[str, str]:
    """`--name value` pairs (argparse alone would add ~0.5 MiB to every agent)."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = {"workspace": WORKSPACE, "log_level": "warning", "secret_file": ""}
    while args:
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if flag not in OPTIONS or not args:
            sys.exit(USAGE)
        options[OPTIONS[flag]] = args.pop(0)
    if "listen" not in options:
        sys.exit(USAGE)
    return options


def main(argv: Optional[List[str]] = None) -> None:
    options = parse(argv)
    logging.basicConfig(level=options["log_level"].upper(), stream=_CappedStream(sys.stderr),
                        format="agent %(levelname)s %(message)s")  # fmt: skip
    _make_undumpable()
    secret = _read_secret(options["secret_file"])
    if not secret:
        sys.exit("cloudcontainer-agent: no secret given")
    agent = build(secret, options["workspace"], dict(os.environ), _tcp_port(options["listen"]))
    os.makedirs(options["workspace"], exist_ok=True)
    asyncio.run(_serve(agent, options["listen"]))


def _make_undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): processes of the same uid (everything the tenant runs) may
    no longer ptrace the agent or open its /proc/PID/mem and environ. Children are dumpable
    again after their execve, as usual."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
    except (ImportError, OSError, AttributeError) as exc:
        logging.getLogger("cloudcontainer.agent").warning(
            "could not make the agent undumpable (%s): sandbox processes can ptrace it", exc
        )


def _read_secret(source: str) -> str:
    """The secret, from stdin (`-`: the first line; stdin is then /dev/null, so nothing
    started later inherits the pipe) or from a file."""
    if source == "-":
        secret = sys.stdin.readline().strip()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        return secret
    if not source:
        return ""
    with open(source) as handle:
        return handle.read().strip()


def _tcp_port(listen: str) -> Optional[int]:
    """The agent's own port when it listens on TCP (never reported as a sandbox port)."""
    if not listen.startswith("tcp:"):
        return None
    port = listen.rpartition(":")[2]
    return int(port) if port.isdigit() else None


async def _serve(agent: Agent, listen: str) -> None:
    loop = asyncio.get_event_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    server = asyncio.ensure_future(agent.serve_forever(listen))
    done, _ = await asyncio.wait([server, stop], return_when=asyncio.FIRST_COMPLETED)
    table: procs.ProcessTable = agent.processes  # type: ignore[attr-defined]
    table.kill_all()
    # Reap them before the loop closes: python 3.9 otherwise prints "Event loop is closed"
    # tracebacks from the transports of children that were still exiting.
    exiting = [asyncio.ensure_future(p.done.wait()) for p in table.procs.values() if p.running]
    if exiting:
        await asyncio.wait(exiting, timeout=2.0)
    server.cancel()
    if server in done:
        server.result()  # surface a failure to listen
