"""Listening-port discovery: `port` open/close events and `ports.list`."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cloudcontainer.agentlink.client import AgentClient
from tests.agent.conftest import SYSTEM_PYTHON, Events, RunningAgent, until_true
from tests.support.net import free_port


async def serve_http(client: AgentClient, port: int, bind: str = "127.0.0.1") -> dict[str, Any]:
    args = ["-m", "http.server", str(port), "--bind", bind]
    proc: dict[str, Any] = await client.call("proc.spawn", command=SYSTEM_PYTHON, args=args)
    return proc


async def test_server_on_loopback_is_announced_as_open(client: AgentClient) -> None:
    events = Events(client)
    port = free_port()
    await serve_http(client, port)
    opened = await events.wait("port", port=port, state="open")
    assert opened["address"] == "127.0.0.1"


@pytest.mark.skipif(not Path("/proc/net/tcp6").exists(), reason="no IPv6 in this kernel")
async def test_server_on_ipv6_loopback_is_announced_as_open(client: AgentClient) -> None:
    events = Events(client)
    port = free_port()
    await serve_http(client, port, bind="::1")
    opened = await events.wait("port", port=port, state="open")
    assert opened["address"] == "::1"


async def test_killing_the_server_announces_close(client: AgentClient) -> None:
    events = Events(client)
    port = free_port()
    proc = await serve_http(client, port)
    await events.wait("port", port=port, state="open")
    await client.call("proc.kill", proc_id=proc["proc_id"])
    closed = await events.wait("port", port=port, state="close")
    assert closed["address"] == "127.0.0.1"
    assert len(events.matching("port", port=port, state="open")) == 1


async def test_close_is_reported_when_a_server_outlives_its_parent_briefly(
    client: AgentClient,
) -> None:
    # The shell is reaped first; its child closes the port a moment later, when no process
    # the agent started is alive any more.
    events = Events(client)
    port = free_port()
    server = textwrap.dedent(f"""
        import signal, socket, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.3), sys.exit(0)))
        s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
        while True: time.sleep(1)
    """)
    script = f'{SYSTEM_PYTHON} -c "$0" </dev/null >/dev/null 2>&1 & wait'
    proc = await client.call("proc.spawn", command="sh", args=["-c", script, server])
    await events.wait("port", port=port, state="open")
    await client.call("proc.kill", proc_id=proc["proc_id"], signal=int(signal.SIGTERM))
    await events.wait("port", port=port, state="close")


async def idle(client: AgentClient) -> bool:
    pong = await client.call("ping")
    return not pong["live_procs"] and not pong["polling_ports"]


async def test_port_polling_runs_only_while_processes_live(client: AgentClient) -> None:
    assert await idle(client)
    proc = await client.call("proc.spawn", command="sleep", args=["600"])
    assert (await client.call("ping"))["polling_ports"] is True
    await client.call("proc.kill", proc_id=proc["proc_id"])
    await until_true(lambda: idle(client), "port polling to stop")


async def test_server_started_after_polling_stopped_is_announced(client: AgentClient) -> None:
    events = Events(client)
    first, second = free_port(), free_port()
    proc = await serve_http(client, first)
    await events.wait("port", port=first, state="open")
    await client.call("proc.kill", proc_id=proc["proc_id"])
    await events.wait("port", port=first, state="close")
    await until_true(lambda: idle(client), "port polling to stop")
    await serve_http(client, second)
    await events.wait("port", port=second, state="open")


async def test_ports_list_includes_loopback_servers(client: AgentClient) -> None:
    events = Events(client)
    port = free_port()
    await serve_http(client, port)
    await events.wait("port", port=port, state="open")
    assert {"port": port, "address": "127.0.0.1"} in await client.call("ports.list")


async def test_ports_list_sees_a_server_without_waiting_for_a_poll(
    agent: RunningAgent, client: AgentClient
) -> None:
    # Started outside the agent (the test shares the host's network namespace): only a scan
    # on demand can know about it.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        listed = await client.call("ports.list")
    assert {"port": port, "address": "127.0.0.1"} in listed
    assert port not in {entry["port"] for entry in await client.call("ports.list")}


async def test_agents_own_tcp_port_is_never_reported(agent_factory: Any) -> None:
    port = free_port()
    agent: RunningAgent = await agent_factory(listen=f"tcp:127.0.0.1:{port}")
    client = await agent.connect()
    events = Events(client)
    server_port = free_port()
    await serve_http(client, server_port)
    await events.wait("port", port=server_port, state="open")
    assert port not in {entry["port"] for entry in await client.call("ports.list")}
    assert not events.matching("port", port=port)


async def test_a_server_left_running_by_an_ended_command_is_announced(
    client: AgentClient,
) -> None:
    """`setsid server &` from a command that has ended: no process of the agent lives when
    the server starts listening, two seconds later; it is found all the same."""
    events = Events(client)
    port = free_port()
    server = (
        f"import socket, time; time.sleep(2); s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    )
    script = f'setsid {SYSTEM_PYTHON} -c "$0" </dev/null >/dev/null 2>&1 &'
    await client.call("proc.run", command="sh", args=["-c", script, server])
    await until_true(lambda: idle(client), "the fast polling to end")
    await events.wait("port", port=port, state="open")
