"""The agent's connection layer: hello, ping, authentication, request dispatch."""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import signal
import subprocess

import pytest
from websockets.asyncio.client import unix_connect

from cloudcontainer.agent import PROTOCOL_VERSION
from cloudcontainer.agent.protocol import AUTH_HEADER, PROC_OUTPUT, TUNNEL_DATA, TUNNEL_EOF
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from tests.agent.conftest import (
    SECRET,
    SYSTEM_PYTHON,
    AgentFactory,
    Events,
    RunningAgent,
    listen,
)
from tests.support.net import free_port


async def test_hello_describes_the_agent_running_on_system_python(
    agent: RunningAgent, client: AgentClient
) -> None:
    system_version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    hello = client.hello
    assert hello["protocol"] == PROTOCOL_VERSION
    assert hello["pid"] == agent.process.pid
    assert hello["python"] == system_version
    assert hello["workspace"] == str(agent.workspace)
    assert agent.workspace.is_dir()


async def test_ping_counts_live_processes(client: AgentClient) -> None:
    assert (await client.call("ping"))["live_procs"] == 0
    await client.call("proc.spawn", command="sleep", args=["60"])
    pong = await client.call("ping")
    assert pong["live_procs"] == 1
    assert pong["rss_bytes"] > 0


async def test_connect_with_wrong_secret_is_refused(agent: RunningAgent) -> None:
    with pytest.raises(AgentUnavailable, match="refused"):
        await agent.connect(secret="not-the-secret")


async def test_connect_without_credentials_gets_401(agent: RunningAgent) -> None:
    from websockets.exceptions import InvalidStatus

    assert agent.address.unix_path is not None
    with pytest.raises(InvalidStatus) as caught:
        await unix_connect(agent.address.unix_path, uri="ws://agent/")
    assert caught.value.response.status_code == 401


async def test_unknown_op_answers_enosys(client: AgentClient) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("no.such.op")
    assert caught.value.errno == "ENOSYS"


async def test_missing_argument_answers_einval_and_the_session_survives(
    client: AgentClient,
) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("fs.read")
    assert caught.value.errno == "EINVAL"
    assert (await client.call("ping"))["live_procs"] == 0


async def test_malformed_request_answers_eproto(agent: RunningAgent) -> None:
    assert agent.address.unix_path is not None
    headers = {AUTH_HEADER: f"Bearer {SECRET}"}
    async with unix_connect(
        agent.address.unix_path, uri="ws://agent/", additional_headers=headers
    ) as ws:
        await ws.send("{not json")
        reply = json.loads(await ws.recv())
        assert reply["ok"] is False
        assert reply["error"]["code"] == "EPROTO"
        await ws.send(json.dumps({"id": 2, "op": "ping", "args": {}}))
        assert json.loads(await ws.recv())["ok"] is True


def find_python39() -> str | None:
    """A working python3.9: on PATH, or one pyenv built (its shim may not be enabled)."""
    candidates = [shutil.which("python3.9") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
        )
        if probe.returncode == 0:
            return probe.stdout.strip()
    return None


async def test_agent_runs_on_python_3_9(agent_factory: AgentFactory) -> None:
    """The oldest python3 an image may bring: files, a PTY, port discovery and a tunnel."""
    python = find_python39()
    if python is None:
        pytest.skip("no python3.9 on this machine")
    agent = await agent_factory(python=python)
    client = await agent.connect()
    events = Events(client)
    assert client.hello["python"].startswith("3.9.")
    await client.call(
        "fs.write", path="/index.html", data=base64.b64encode(b"<h1>3.9</h1>").decode()
    )
    port = free_port()
    args = ["-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = await client.call("proc.spawn", command=python, args=args, pty=True)
    await events.wait("port", port=port, state="open")
    tunnel_id = (await client.call("tunnel.open", port=port))["tunnel_id"]
    response = listen(client, TUNNEL_DATA, tunnel_id, eof_kind=TUNNEL_EOF)
    await client.send_stream(TUNNEL_DATA, tunnel_id, b"GET /index.html HTTP/1.0\r\n\r\n")
    assert (await response.wait_eof()).endswith(b"\r\n\r\n<h1>3.9</h1>")
    log = listen(client, PROC_OUTPUT, proc["proc_id"])
    await client.call("proc.attach", proc_id=proc["proc_id"])
    await client.call("proc.kill", proc_id=proc["proc_id"])
    assert (await client.call("proc.wait", proc_id=proc["proc_id"]))["code"] == 128 + signal.SIGTERM
    await events.wait("port", port=port, state="close")
    assert b"GET /index.html" in log.data
