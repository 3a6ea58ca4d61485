"""Search and archives load on first use, with the ops and concurrency their modules declare."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cloudcontainer.agent import lazy
from cloudcontainer.agent.fs import Files
from cloudcontainer.agent.server import Registry
from cloudcontainer.agentlink.client import AgentClient
from tests.agent.conftest import RunningAgent


@pytest.mark.parametrize("module_name", sorted(lazy.FEATURES))
def test_stub_tables_match_the_modules(module_name: str, tmp_path: Path) -> None:
    service_class, ops, kinds = lazy.FEATURES[module_name]
    module = importlib.import_module(module_name)
    registry = Registry()
    module.register(registry, getattr(module, service_class)(Files(str(tmp_path))))
    declared = {op: concurrent for op, (_, concurrent) in registry.handlers.items()}
    assert declared == ops
    declared_kinds = {kind: False for kind in registry.binary}
    declared_kinds.update({kind: True for kind in registry.ordered_binary})
    assert declared_kinds == kinds


def test_a_new_agent_has_not_loaded_them(tmp_path: Path) -> None:
    probe = (
        "import sys; from cloudcontainer.agent.main import build; build('s', sys.argv[1], {}); "
        "print(sorted(m for m in ('cloudcontainer.agent.search', 'cloudcontainer.agent.archive')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


async def test_the_first_call_loads_and_answers(agent: RunningAgent, client: AgentClient) -> None:
    (agent.workspace / "a.txt").write_text("needle\n")
    result = await client.call("search.text", search_id="s1", query="needle")
    assert result["matches"] == 1
