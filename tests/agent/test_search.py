"""The agent's ripgrep search: events before the answer, a missing rg, cancellation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from tests.agent.conftest import SYSTEM_PYTHON, AgentFactory, Events, RunningAgent


async def test_file_events_come_before_the_answer(agent: RunningAgent, client: AgentClient) -> None:
    for name in ("a.txt", "b.txt"):
        (agent.workspace / name).write_text("needle\n")
    events = Events(client)
    result = await client.call("search.text", search_id="s1", query="needle")
    assert result == {"files": 2, "matches": 2, "truncated": False, "timed_out": False}
    paths = sorted(data["path"] for data in events.matching("search.file", search_id="s1"))
    assert paths == [str(agent.workspace / "a.txt"), str(agent.workspace / "b.txt")]


async def test_a_sandbox_without_rg_says_so(agent_factory: AgentFactory, tmp_path: Path) -> None:
    # The agent's own PATH finds rg (as a sandbox's would); this one has none.
    script = tmp_path / "python-without-rg"
    script.write_text(f'#!/bin/sh\nPATH=/nonexistent exec {SYSTEM_PYTHON} "$@"\n')
    script.chmod(0o755)
    agent = await agent_factory(python=str(script))
    client = await agent.connect()
    with pytest.raises(AgentOpError) as caught:
        await client.call("search.text", search_id="s1", query="x")
    assert caught.value.errno == "ENOTSUP"
    assert "ripgrep (rg) is not installed" in caught.value.message
