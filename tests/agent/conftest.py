"""The real agent, as shipped: the zipapp run by Debian's python3 (not the venv), over a unix
socket, driven through the gateway's AgentClient."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cloudcontainer.agentlink.bundle import build_agent_zipapp
from cloudcontainer.agentlink.client import AgentAddress, AgentClient

# Debian's python3, not the venv's: the agent must need nothing but its zipapp. Point this at
# another interpreter (python3.9 is the oldest supported) to run the suite against it.
SYSTEM_PYTHON = os.environ.get("CLOUDCONTAINER_TEST_AGENT_PYTHON", "/usr/bin/python3")
SECRET = "test-secret-0123456789"
WAIT_SECONDS = 15.0  # an upper bound for things that must happen, never a measured timing

T = TypeVar("T")


async def until(probe: Callable[[], T], what: str, timeout: float = WAIT_SECONDS) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def until_true(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Like `until`, for a probe that has to ask the agent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Events:
    """Every event a client receives, in order."""

    def __init__(self, client: AgentClient) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        client.on_event(lambda name, data: self.seen.append((name, data)))

    def matching(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            data
            for event, data in self.seen
            if event == name and all(data.get(k) == v for k, v in fields.items())
        ]

    async def wait(self, name: str, **fields: Any) -> dict[str, Any]:
        found = await until(lambda: self.matching(name, **fields), f"event {name} {fields}")
        return found[0]


@dataclass
class Stream:
    """Bytes received on one (kind, channel), and whether an EOF frame came."""

    data: bytearray = field(default_factory=bytearray)
    eof: bool = False

    async def wait_for(self, needle: bytes) -> bytes:
        await until(lambda: needle in self.data, f"{needle!r} in {bytes(self.data)[-500:]!r}")
        return bytes(self.data)

    async def wait_eof(self) -> bytes:
        await until(lambda: self.eof, "end of stream")
        return bytes(self.data)


def listen(client: AgentClient, kind: int, channel: int, eof_kind: int | None = None) -> Stream:
    stream = Stream()
    client.on_stream(kind, channel, lambda _kind, payload: stream.data.extend(payload))
    if eof_kind is not None:
        client.on_stream(eof_kind, channel, lambda _kind, _payload: setattr(stream, "eof", True))
    return stream


@dataclass
class RunningAgent:
    process: asyncio.subprocess.Process
    address: AgentAddress
    workspace: Path
    log: Path
    stack: AsyncExitStack

    async def connect(self, secret: str = SECRET) -> AgentClient:
        client = AgentClient(self.address, secret)
        await client.connect()
        self.stack.push_async_callback(client.aclose)
        return client


@pytest.fixture(scope="session")
def agent_zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent_zipapp(tmp_path_factory.mktemp("bundle"))


@asynccontextmanager
async def run_agent(
    zipapp: Path, directory: Path, listen: str | None, python: str
) -> AsyncIterator[RunningAgent]:
    directory.mkdir(parents=True, exist_ok=True)
    secret_file = directory / "secret"
    secret_file.write_text(SECRET + "\n")
    workspace = directory / "project"
    socket_path = directory / "agent.sock"
    log = directory / "agent.log"
    if listen is None:
        listen = f"unix:{socket_path}"
        address = AgentAddress(unix_path=str(socket_path))
    else:
        host, _, port = listen.removeprefix("tcp:").rpartition(":")
        address = AgentAddress(host=host, port=int(port))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(directory), "LANG": "C.UTF-8"}
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            python, str(zipapp), "--listen", listen, "--secret-file", str(secret_file),
            "--workspace", str(workspace), "--log-level", "info",
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        )  # fmt: skip
    try:
        await until(lambda: _listening(process, address, log), f"the agent to listen on {listen}")
        async with AsyncExitStack() as stack:
            yield RunningAgent(process, address, workspace, log, stack)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
    assert "ERROR" not in text, text


def _listening(process: asyncio.subprocess.Process, address: AgentAddress, log: Path) -> bool:
    if process.returncode is not None:
        raise AssertionError("the agent exited early: " + log.read_text(errors="replace"))
    # A whole HTTP request, answered 401 once the agent accepts connections (a unix socket
    # exists a moment before it listens; a bare connect would log a failed handshake).
    try:
        if address.unix_path is not None:
            probe = socket.socket(socket.AF_UNIX)
            target: Any = address.unix_path
        else:
            probe = socket.socket(socket.AF_INET6 if ":" in str(address.host) else socket.AF_INET)
            target = (address.host, address.port)
        with probe:
            probe.settimeout(1)
            probe.connect(target)
            probe.sendall(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
            return probe.recv(100).startswith(b"HTTP/1.1 401")
    except OSError:
        return False


AgentFactory = Callable[..., Awaitable[RunningAgent]]


@pytest.fixture
async def agent_factory(agent_zipapp: Path, tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """`await agent_factory(listen=None, python=SYSTEM_PYTHON)` starts an agent; all are
    stopped after the test."""
    async with AsyncExitStack() as stack:
        count = 0

        async def start(listen: str | None = None, python: str = SYSTEM_PYTHON) -> RunningAgent:
            nonlocal count
            count += 1
            directory = tmp_path / f"agent{count}"
            return await stack.enter_async_context(
                run_agent(agent_zipapp, directory, listen, python)
            )

        yield start


@pytest.fixture
async def agent(agent_factory: AgentFactory) -> RunningAgent:
    return await agent_factory()


@pytest.fixture
async def client(agent: RunningAgent) -> AgentClient:
    return await agent.connect()
