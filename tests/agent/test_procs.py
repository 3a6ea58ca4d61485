"""Processes: PTYs and pipes, input, resize, signals, scrollback, and outliving connections."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import unix_connect

from cloudcontainer.agent.messages_proc import AttachReply, ExitEvent, ProcessInfo, RunReply
from cloudcontainer.agent.protocol import AUTH_HEADER, PROC_OUTPUT, PROC_STDERR, unpack_frame
from cloudcontainer.agentlink import procs
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from cloudcontainer.agentlink.schema import PROCESS_FIELDS
from tests.agent.conftest import SECRET, WAIT_SECONDS, Events, RunningAgent, listen, until


async def spawn(client: AgentClient, command: str, *args: str, **options: Any) -> dict[str, Any]:
    proc: dict[str, Any] = await client.call(
        "proc.spawn", command=command, args=list(args), **options
    )
    return proc


async def test_pty_output_arrives_as_stream_frames(client: AgentClient) -> None:
    proc = await spawn(client, "sh", "-c", "echo hello from the pty", pty=True)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    assert proc["pty"] is True
    # A PTY turns \n into \r\n: the bytes really went through a terminal.
    await output.wait_for(b"hello from the pty\r\n")


async def test_pty_input_reaches_the_process(client: AgentClient) -> None:
    proc = await spawn(client, "cat", pty=True)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    await client.send_input(proc["proc_id"], b"marco polo\n")
    data = await output.wait_for(b"marco polo\r\nmarco polo\r\n")  # the echo, then cat's copy
    assert data.count(b"marco polo") == 2


async def test_pty_starts_at_the_requested_size_and_resize_changes_it(client: AgentClient) -> None:
    script = "stty size; read line; stty size; read line"
    proc = await spawn(client, "sh", "-c", script, pty=True, cols=90, rows=20)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    await output.wait_for(b"20 90\r\n")
    await client.call("proc.resize", proc_id=proc["proc_id"], cols=132, rows=43)
    await client.send_input(proc["proc_id"], b"\n")
    await output.wait_for(b"43 132\r\n")
    listed = {p["proc_id"]: p for p in await client.call("proc.list")}
    assert (listed[proc["proc_id"]]["cols"], listed[proc["proc_id"]]["rows"]) == (132, 43)


async def test_pty_defaults_to_80_by_24(client: AgentClient) -> None:
    proc = await spawn(client, "stty", "size", pty=True)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    await output.wait_for(b"24 80\r\n")


async def test_resize_out_of_range_is_einval(client: AgentClient) -> None:
    proc = await spawn(client, "sleep", "60", pty=True)
    with pytest.raises(AgentOpError) as caught:
        await client.call("proc.resize", proc_id=proc["proc_id"], cols=0, rows=24)
    assert caught.value.errno == "EINVAL"


async def test_kill_ends_the_process_with_128_plus_the_signal(client: AgentClient) -> None:
    events = Events(client)
    proc = await spawn(client, "sleep", "600", pty=True)
    await client.call("proc.kill", proc_id=proc["proc_id"])
    waited = await client.call("proc.wait", proc_id=proc["proc_id"])
    assert waited["code"] == 128 + signal.SIGTERM
    exited = await events.wait("proc.exit", proc_id=proc["proc_id"])
    assert exited["code"] == 128 + signal.SIGTERM


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_kill_ends_the_whole_process_group(client: AgentClient) -> None:
    proc = await spawn(client, "sh", "-c", "sleep 600 & echo child=$!; wait", pty=True)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    data = await output.wait_for(b"\r\n")
    child = int(data.split(b"child=")[1].split(b"\r")[0])
    assert alive(child)
    await client.call("proc.kill", proc_id=proc["proc_id"], signal=int(signal.SIGKILL))
    assert (await client.call("proc.wait", proc_id=proc["proc_id"]))["code"] == 128 + signal.SIGKILL
    await until(lambda: not alive(child), "the background child to die")


async def test_exit_code_of_a_normal_exit_is_reported(client: AgentClient) -> None:
    events = Events(client)
    proc = await spawn(client, "sh", "-c", "exit 7")
    assert (await client.call("proc.wait", proc_id=proc["proc_id"]))["code"] == 7
    assert (await events.wait("proc.exit", proc_id=proc["proc_id"]))["code"] == 7
    started = await events.wait("proc.start", proc_id=proc["proc_id"])
    assert started["command"] == "sh"


async def test_unknown_signal_is_einval(client: AgentClient) -> None:
    proc = await spawn(client, "sleep", "60")
    with pytest.raises(AgentOpError) as caught:
        await client.call("proc.kill", proc_id=proc["proc_id"], signal=999)
    assert caught.value.errno == "EINVAL"


async def test_missing_program_exits_127_with_command_not_found(client: AgentClient) -> None:
    proc = await spawn(client, "no-such-program-xyz", pty=True)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    assert (await client.call("proc.wait", proc_id=proc["proc_id"]))["code"] == 127
    await output.wait_for(b"command not found: no-such-program-xyz")


async def test_missing_cwd_is_reported_and_exits_1(client: AgentClient) -> None:
    proc = await spawn(client, "true", cwd="/no/such/dir")
    errors = listen(client, PROC_STDERR, proc["proc_id"])
    assert (await client.call("proc.wait", proc_id=proc["proc_id"]))["code"] == 1
    await errors.wait_for(b"cannot change directory to /no/such/dir")


async def test_without_pty_stderr_is_a_separate_stream(client: AgentClient) -> None:
    proc = await spawn(client, "sh", "-c", "echo to-out; echo to-err >&2")
    stdout = listen(client, PROC_OUTPUT, proc["proc_id"])
    stderr = listen(client, PROC_STDERR, proc["proc_id"])
    assert (await client.call("proc.wait", proc_id=proc["proc_id"]))["code"] == 0
    await stdout.wait_for(b"to-out\n")
    await stderr.wait_for(b"to-err\n")
    assert b"to-err" not in stdout.data
    assert b"to-out" not in stderr.data


async def test_without_pty_input_goes_to_stdin(client: AgentClient) -> None:
    proc = await spawn(client, "head", "-n", "1")
    stdout = listen(client, PROC_OUTPUT, proc["proc_id"])
    await client.send_input(proc["proc_id"], b"one line\nanother\n")
    assert (await client.call("proc.wait", proc_id=proc["proc_id"]))["code"] == 0
    assert await stdout.wait_for(b"one line\n") == b"one line\n"


async def test_spawn_runs_in_the_workspace_with_merged_env(
    agent: RunningAgent, client: AgentClient
) -> None:
    proc = await spawn(
        client, "sh", "-c", 'pwd; echo "$GREETING"; echo "$HOME"', env={"GREETING": "hi"}
    )
    stdout = listen(client, PROC_OUTPUT, proc["proc_id"])
    await client.call("proc.wait", proc_id=proc["proc_id"])
    data = await stdout.wait_for(b"hi\n")
    assert data.splitlines() == [
        str(agent.workspace).encode(),
        b"hi",
        str(agent.workspace.parent).encode(),
    ]


async def test_run_returns_code_stdout_and_stderr(client: AgentClient) -> None:
    result = await client.call("proc.run", command="sh", args=["-c", "cat; echo oops >&2; exit 3"],
                               stdin=base64.b64encode(b"from stdin").decode())  # fmt: skip
    assert result["code"] == 3
    assert base64.b64decode(result["stdout"]) == b"from stdin"
    assert base64.b64decode(result["stderr"]) == b"oops\n"


async def test_run_past_its_timeout_is_etimedout_and_killed(client: AgentClient) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("proc.run", command="sleep", args=["600"], timeout_seconds=0.2)
    assert caught.value.errno == "ETIMEDOUT"
    assert (await client.call("ping"))["live_procs"] == 0


async def test_run_of_a_missing_program_is_127(client: AgentClient) -> None:
    result = await client.call("proc.run", command="no-such-program-xyz")
    assert result["code"] == 127
    assert b"command not found" in base64.b64decode(result["stderr"])


async def test_run_does_not_block_other_requests(client: AgentClient) -> None:
    slow = asyncio.ensure_future(client.call("proc.run", command="sleep", args=["600"], timeout=60))
    while not (listed := await client.call("proc.list")):
        assert not slow.done()
    assert [(p["command"], p["state"]) for p in listed] == [("sleep", "running")]
    await client.call("proc.kill", proc_id=listed[0]["proc_id"])
    assert (await slow)["code"] == 128 + signal.SIGTERM


async def test_attach_replays_the_scrollback(client: AgentClient) -> None:
    proc = await spawn(client, "sh", "-c", "echo first line; echo second line; sleep 600", pty=True)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    await output.wait_for(b"second line")
    attached = await client.call("proc.attach", proc_id=proc["proc_id"])
    assert attached["state"] == "running"
    assert base64.b64decode(attached["scrollback"]) == bytes(output.data)


async def test_scrollback_keeps_only_the_newest_bytes(client: AgentClient) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; sleep 600"
    proc = await spawn(client, "sh", "-c", script, scrollback=1000)
    output = listen(client, PROC_OUTPUT, proc["proc_id"])
    await output.wait_for(b"line-299\n")
    scrollback = base64.b64decode(
        (await client.call("proc.attach", proc_id=proc["proc_id"]))["scrollback"]
    )
    assert len(scrollback) == 1000
    assert scrollback.endswith(b"line-299\n")
    assert bytes(output.data).endswith(scrollback)


async def test_processes_survive_the_client_and_a_new_client_attaches(agent: RunningAgent) -> None:
    first = await agent.connect()
    script = "echo before; read answer; echo after:$answer; sleep 600"
    proc = await spawn(first, "sh", "-c", script, pty=True)
    await listen(first, PROC_OUTPUT, proc["proc_id"]).wait_for(b"before")
    await first.aclose()

    second = await agent.connect()
    listed = {p["proc_id"]: p for p in await second.call("proc.list")}
    assert listed[proc["proc_id"]]["state"] == "running"
    output = listen(second, PROC_OUTPUT, proc["proc_id"])
    attached = await second.call("proc.attach", proc_id=proc["proc_id"])
    assert b"before" in base64.b64decode(attached["scrollback"])
    await second.send_input(proc["proc_id"], b"still here\n")
    await output.wait_for(b"after:still here")


async def test_detached_client_gets_no_more_output(agent: RunningAgent) -> None:
    first, second = await agent.connect(), await agent.connect()
    proc = await spawn(first, "cat", pty=True)
    output = listen(first, PROC_OUTPUT, proc["proc_id"])
    await first.send_input(proc["proc_id"], b"one\n")
    await output.wait_for(b"one\r\none\r\n")
    await first.call("proc.detach", proc_id=proc["proc_id"])
    other = listen(second, PROC_OUTPUT, proc["proc_id"])
    await second.call("proc.attach", proc_id=proc["proc_id"])
    await second.send_input(proc["proc_id"], b"two\n")
    await other.wait_for(b"two\r\ntwo\r\n")
    await first.call("ping")  # answered after any output queued for `first` before it
    assert bytes(output.data) == b"one\r\none\r\n"


async def test_unknown_process_is_esrch(client: AgentClient) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("proc.attach", proc_id=4242)
    assert caught.value.errno == "ESRCH"


async def test_other_clients_see_exit_events(agent: RunningAgent) -> None:
    first, second = await agent.connect(), await agent.connect()
    watcher = Events(second)
    proc = await spawn(first, "true")
    assert (await watcher.wait("proc.exit", proc_id=proc["proc_id"]))["code"] == 0


def keys(typed: Any) -> set[str]:
    return set(typed.__required_keys__) | set(typed.__optional_keys__)


async def test_answers_and_events_have_the_shapes_the_gateway_is_typed_for(
    client: AgentClient,
) -> None:
    """agent/messages_proc.py is one definition for both sides: what the agent really sends
    has exactly its keys, and agentlink/schema.py checks the same process fields."""
    events = Events(client)
    info = await procs.spawn(client, {"command": "cat", "pty": True})
    assert set(info) == keys(ProcessInfo) == set(PROCESS_FIELDS)
    assert set(await procs.attach(client, info["proc_id"], lambda _: None)) == keys(AttachReply)
    assert [set(p) for p in await procs.list_processes(client)] == [keys(ProcessInfo)]
    await procs.kill(client, info["proc_id"])
    assert await procs.wait(client, info["proc_id"]) == 137
    assert set(await events.wait("proc.exit", proc_id=info["proc_id"])) == keys(ExitEvent)
    ran = await procs.run(client, {"command": "echo", "args": ["hi"], "timeout_seconds": 5})
    assert set(ran) == keys(RunReply)
    assert (ran["code"], base64.b64decode(ran["stdout"])) == (0, b"hi\n")


@pytest.mark.parametrize("pty", [False, True])
async def test_output_a_session_cannot_take_yet_waits_instead_of_being_dropped(
    agent: RunningAgent, pty: bool
) -> None:
    """A session that stops reading makes the process wait (as a slow terminal would), not
    lose output: 24 MB written while nobody reads all arrive, in order, with no `lagged`."""
    assert agent.address.unix_path is not None
    headers = {AUTH_HEADER: f"Bearer {SECRET}"}
    count = 3_000_000  # `seq` prints ~21 MB
    async with unix_connect(
        agent.address.unix_path, uri="ws://agent/", additional_headers=headers, max_size=None,
        max_queue=4,
    ) as ws:  # fmt: skip
        args = {"command": "seq", "args": ["1", str(count)], "pty": pty}
        await ws.send(json.dumps({"id": 1, "op": "proc.spawn", "args": args}))
        await asyncio.sleep(2)  # not reading: the agent's queue for us fills up
        output, events = bytearray(), []
        while not any(name == "proc.exit" for name, _ in events):
            message = await asyncio.wait_for(ws.recv(), WAIT_SECONDS)
            if isinstance(message, bytes):
                kind, _, payload = unpack_frame(message)
                assert kind == PROC_OUTPUT
                output.extend(payload)
            elif "event" in (parsed := json.loads(message)):
                events.append((parsed["event"], parsed["data"]))
    expected = "".join(f"{n}\n" for n in range(1, count + 1)).encode()
    if pty:
        expected = expected.replace(b"\n", b"\r\n")
    assert not [name for name, _ in events if name == "proc.lagged"]
    assert bytes(output) == expected
