"""Guards on the shape of the code: layering, the public package surface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from cloudcontainer.agent import messages, messages_proc
from cloudcontainer.agent.main import build
from cloudcontainer.agentlink import schema
from cloudcontainer.api.search import SearchRequest

ROOT = Path(__file__).resolve().parent.parent


def test_layers_point_one_way() -> None:
    """import-linter contracts in pyproject.toml: api -> services -> db, never back."""
    result = subprocess.run(
        [Path(sys.executable).parent / "lint-imports", "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_importing_the_app_module_does_no_work() -> None:
    """Nothing happens at import: no settings read, no database, no files."""
    code = (
        "import os, cloudcontainer.app, cloudcontainer.cli;"
        "assert not os.path.exists('.cloudcontainer'), 'import created state'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_settings_are_read_from_the_environment_in_config_alone() -> None:
    """docs/architecture.md: config.py reads the gateway's settings; other modules only pass
    the environment on to a program they run. A new reader is a setting that no flag, TOML
    file or `docs/configuration.md` knows of."""
    passing_on = {
        "images/rootfs.py",  # the caller's proxies and apt settings, to debootstrap and apt
        "runtimes/local.py",  # PATH, for the helpers it starts
    }
    src = ROOT / "src" / "cloudcontainer"
    readers = {
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "agent" not in path.relative_to(src).parts[:1]
        and any(
            needle in line
            for line in path.read_text().splitlines()
            if not line.lstrip().startswith("#")
            for needle in ("os.environ", "os.getenv", "getenv(")
        )
    }
    assert readers <= {"config.py", *passing_on}, readers - {"config.py", *passing_on}


def _direct_agent_calls(path: Path) -> list[tuple[int, str | None]]:
    """(line, op) of every `.call(...)` / `.call_in_order(...)` in the module; op is None
    when it is not a string literal."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("call", "call_in_order")
        ):  # fmt: skip
            first = node.args[0] if node.args else None
            op = first.value if isinstance(first, ast.Constant) else None
            calls.append((node.lineno, op if isinstance(op, str) else None))
    return calls


def test_services_reach_the_agent_only_through_the_typed_facade() -> None:
    """`AgentClient.call` answers Any: outside agentlink/ nothing calls it, so mypy checks
    every agent call (issue 10)."""
    package = ROOT / "src" / "cloudcontainer"
    offending = []
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).as_posix()
        if module.startswith(("agent/", "agentlink/")):
            continue
        for line, op in _direct_agent_calls(path):
            offending.append(f"{module}:{line} calls {op or 'an op'} directly")
    assert offending == []


def test_every_op_has_a_message_type_and_a_reply_check(tmp_path: Path) -> None:
    """The agent's op table, the message types and the gateway's schema name the same ops,
    and the same events."""
    registry = build("secret", str(tmp_path), {}).registry
    typed = set(messages.OPS) | set(messages_proc.OPS)
    assert set(registry.handlers) == typed
    assert set(schema.RESULTS) == typed
    assert set(schema.EVENTS) == set(messages.EVENTS) | set(messages_proc.EVENTS)


def test_the_agent_loads_no_message_types(tmp_path: Path) -> None:
    """The agent imports its message types for the checker only: they cost a sandbox
    nothing."""
    probe = (
        "import sys; from cloudcontainer.agent.main import build; build('s', sys.argv[1], {}); "
        "print(any(m in sys.modules for m in "
        "('cloudcontainer.agent.messages', 'cloudcontainer.agent.messages_proc')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "False"


def test_the_search_request_is_the_agents_search_query() -> None:
    """api/search.py hands the validated request to the agent as a SearchQuery: the two
    must name the same fields."""
    query = messages.SearchQuery
    assert set(SearchRequest.model_fields) == query.__required_keys__ | query.__optional_keys__
