"""`exec` as a service (terminals/exec.py): output waits for its reader in bounded memory, with
no task per chunk; past the bound the command is killed and the reader is told why. The
sandbox tests run on the local runtime only: the buffer is the gateway's, not a runtime's."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from cloudcontainer.agentlink import procs
from cloudcontainer.terminals.exec import (
    EXEC_MAX_PENDING_BYTES,
    PIECE_BYTES,
    PIECE_OVERHEAD_BYTES,
    ExecSpec,
    Exit,
    Output,
    OutputOverflow,
    PendingOutput,
)
from tests.conftest import Api
from tests.sandbox_helpers import new_container

WAIT = 60.0  # an upper bound for things that must happen, never a measured timing
MB = 1024 * 1024


def rss() -> int:
    """This process's resident memory (the gateway runs in it), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def zeros(size: int) -> ExecSpec:
    return ExecSpec("head", ["-c", str(size), "/dev/zero"], None, {}, timeout=600)


# -- the buffer -------------------------------------------------------------------------------


def test_pending_output_keeps_the_order_of_the_streams_and_merges_each_run() -> None:
    pending = PendingOutput(limit=1 * MB)
    for stream, data in [("stdout", b"a"), ("stdout", b"b"), ("stderr", b"c"), ("stdout", b"d")]:
        assert pending.put(stream, data)  # type: ignore[arg-type]
    assert pending.size == 4 + 3 * PIECE_OVERHEAD_BYTES
    taken = [pending.take(), pending.take(), pending.take(), pending.take()]
    assert taken == [Output("stdout", b"ab"), Output("stderr", b"c"), Output("stdout", b"d"), None]
    assert pending.size == 0


def test_pending_output_refuses_what_passes_the_limit_counting_each_piece() -> None:
    pending = PendingOutput(limit=10 * PIECE_OVERHEAD_BYTES)
    # One-byte writes alternating between the streams: each is a piece of its own, so the
    # bound is reached after 10 of them, not after `limit` of them.
    streams = ["stdout", "stderr"] * 10
    accepted = [pending.put(stream, b"x") for stream in streams]  # type: ignore[arg-type]
    # Nothing after the first refusal either, though it would fit: the output kept has no gap.
    assert accepted == [True] * 9 + [False] * 11
    assert pending.overflowed
    assert pending.size <= pending.limit


def test_pending_output_hands_a_late_reader_few_large_pieces() -> None:
    pending = PendingOutput(limit=EXEC_MAX_PENDING_BYTES)
    chunk = b"z" * 4096
    while pending.put("stdout", chunk):
        pass
    pieces = []
    while (piece := pending.take()) is not None:
        pieces.append(piece)
    assert all(PIECE_BYTES <= len(p.data) < 2 * PIECE_BYTES for p in pieces[:-1])
    assert sum(len(p.data) for p in pieces) > EXEC_MAX_PENDING_BYTES - PIECE_BYTES


# -- a real command ---------------------------------------------------------------------------


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_a_reader_that_stops_gets_the_bound_then_why_and_the_kill(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    before = rss()
    execution = await sandbox_api.services.exec.start(user.id, cid, zeros(1 << 40))
    events = execution.events()
    try:
        first = await anext(events)  # the reader takes one event, then stops reading
        process = execution.process
        async with asyncio.timeout(WAIT):  # the command ends while nobody reads
            assert await procs.wait(process.link, process.proc_id) == 137
        assert execution.pending.size <= EXEC_MAX_PENDING_BYTES
        assert rss() - before < 64 * MB
        rest = [event async for event in events]  # it reads at last
    finally:
        await events.aclose()
    *outputs, overflow, end = [first, *rest]
    assert overflow == OutputOverflow(EXEC_MAX_PENDING_BYTES)
    # The agent may also have dropped some of what it could not send fast enough (output_lost).
    assert isinstance(end, Exit)
    assert (end.code, end.timed_out) == (137, False)
    assert all(isinstance(o, Output) and o.stream == "stdout" for o in outputs)
    received = sum(len(o.data) for o in outputs if isinstance(o, Output))
    assert EXEC_MAX_PENDING_BYTES // 2 < received <= EXEC_MAX_PENDING_BYTES + len(first.data)


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_output_is_handed_over_without_a_task_per_chunk(sandbox_api: Api) -> None:
    """Tasks are counted as they are made (a task factory), when code on the output's path
    makes them (the server's own work meanwhile, health checks, is not exec's): none while
    output flows, whatever the number of chunks."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    loop = asyncio.get_running_loop()
    exec_tasks: list[str] = []
    factory = loop.get_task_factory()

    def counting(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **options: Any
    ) -> asyncio.Task[Any]:
        if made_on_the_output_path():
            exec_tasks.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **options)

    # Under the 4 MiB the agent holds for a link, so none of it can be dropped however busy
    # this machine is; `seq` writes it in 4 KiB blocks.
    spec = ExecSpec("seq", ["1", "400000"], None, {}, timeout=600)
    loop.set_task_factory(counting)  # type: ignore[arg-type]
    try:
        execution = await sandbox_api.services.exec.start(user.id, cid, spec)
        outputs, made_while_flowing = [], []
        async for event in execution.events():
            if isinstance(event, Output):
                if not outputs:
                    before = len(exec_tasks)
                outputs.append(event)
            else:
                end = event
                made_while_flowing = exec_tasks[before:]
    finally:
        loop.set_task_factory(factory)
    assert end == Exit(0)
    assert (
        b"".join(o.data for o in outputs) == "".join(f"{n}\n" for n in range(1, 400_001)).encode()
    )
    assert len(outputs) >= 10
    assert made_while_flowing == []
    assert "Execution._wait" in exec_tasks  # the one task of an exec, made before its output


# Where the output of a command passes through on its way to the reader.
OUTPUT_PATH = ("/terminals/", "/agentlink/", "/api/containers.py")


def made_on_the_output_path() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in OUTPUT_PATH):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_output_of_a_gateway_that_fell_behind_waits_for_it_and_is_all_there(
    sandbox_api: Api,
) -> None:
    """The agent holds a process back while the gateway does not read its link (the process
    blocks on its pipe, agent/server.py) instead of dropping what it wrote: a gateway that
    stalls loses nothing, and the exec's end says so."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    execution = await sandbox_api.services.exec.start(user.id, cid, zeros(64 * MB))
    time.sleep(1)  # the gateway's loop is stuck: it reads nothing from the link meanwhile
    events = [event async for event in execution.events()]
    size = sum(len(e.data) for e in events if isinstance(e, Output))
    end = events[-1]
    assert isinstance(end, Exit)
    assert end.code == 0
    assert not end.output_lost
    assert size == 64 * MB
