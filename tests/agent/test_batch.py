"""`fs.batch` on the real agent: atomic batches undo every change; non-atomic ones go on."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from cloudcontainer.agentlink.client import AgentClient
from tests.agent.conftest import RunningAgent


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | None]]:
    """Every entry below `root`: type, mode and content, to compare before and after."""
    found: dict[str, tuple[str, int, bytes | None]] = {}
    for folder, directories, files in os.walk(root):
        for name in directories + files:
            path = Path(folder) / name
            st = path.lstat()
            kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
            content = path.read_bytes() if kind == "file" and not path.is_symlink() else None
            found[str(path.relative_to(root))] = (kind, st.st_mode, content)
    return found


def prepare(workspace: Path) -> None:
    (workspace / "src" / "deep").mkdir(parents=True)
    (workspace / "src" / "a.txt").write_bytes(b"old a")
    (workspace / "src" / "deep" / "b.txt").write_bytes(b"old b")
    (workspace / "run.sh").write_bytes(b"#!/bin/sh\n")
    (workspace / "run.sh").chmod(0o755)


GOOD = [
    {"op": "write", "path": "src/a.txt", "data": b64(b"new a")},
    {"op": "write", "path": "new/file.txt", "data": b64(b"n"), "mkdirs": True},
    {"op": "mkdir", "path": "made/here", "recursive": True},
    {"op": "write", "path": "run.sh", "data": b64(b"#!/bin/sh\necho\n")},
]

FAILING_FIFTH: list[tuple[str, dict[str, Any], str]] = [
    ("missing-parent", {"op": "write", "path": "nope/x.txt", "data": b64(b"x")}, "ENOENT"),
    ("write-to-folder", {"op": "write", "path": "src", "data": b64(b"x")}, "EISDIR"),
    ("delete-root", {"op": "delete", "path": "/", "recursive": True}, "EPERM"),
    ("move-into-itself", {"op": "move", "from": "src", "to": "src/deep/x"}, "EINVAL"),
    ("bad-base64", {"op": "write", "path": "x", "data": "%%%"}, "EINVAL"),
    ("mkdir-exists", {"op": "mkdir", "path": "src"}, "EEXIST"),
    ("move-file-over-folder", {"op": "move", "from": "src/a.txt", "to": "src"}, "EISDIR"),
]


@pytest.mark.parametrize(
    ("failing", "code"), [pytest.param(f, c, id=i) for i, f, c in FAILING_FIFTH]
)
async def test_an_atomic_batch_failing_at_its_fifth_step_changes_nothing(
    agent: RunningAgent, client: AgentClient, failing: dict[str, Any], code: str
) -> None:
    prepare(agent.workspace)
    before = snapshot(agent.workspace)
    operations = [
        *GOOD[:2],
        {"op": "delete", "path": "src/deep", "recursive": True},
        {"op": "move", "from": "run.sh", "to": "src/a.txt"},
        failing,
    ]
    answer = await client.call("fs.batch", operations=operations, atomic=True)
    assert answer["failed"] == 4, answer
    assert answer["error"]["code"] == code
    assert answer["rolled_back"] is True
    assert snapshot(agent.workspace) == before


async def test_an_atomic_batch_that_succeeds_leaves_no_trash(
    agent: RunningAgent, client: AgentClient
) -> None:
    prepare(agent.workspace)
    operations = [
        *GOOD,
        {"op": "delete", "path": "src/deep", "recursive": True},
        {"op": "move", "from": "src/a.txt", "to": "moved.txt"},
    ]
    answer = await client.call("fs.batch", operations=operations, atomic=True)
    assert [r["ok"] for r in answer["results"]] == [True] * 6
    assert (agent.workspace / "moved.txt").read_bytes() == b"new a"
    assert not (agent.workspace / "src" / "deep").exists()
    assert (agent.workspace / "run.sh").stat().st_mode & 0o777 == 0o755  # mode kept on rewrite
    assert not [p for p in os.listdir(agent.workspace) if p.startswith(".cc-")]


async def test_a_batch_leftover_is_removed_and_reserved_names_are_refused(
    agent: RunningAgent, client: AgentClient
) -> None:
    leftover = agent.workspace / ".cc-batch-0123456789ab"
    (leftover / "1").mkdir(parents=True)
    answer = await client.call(
        "fs.batch", operations=[{"op": "write", "path": "/.cc-batch-x/y", "data": ""}]
    )
    assert answer["error"]["code"] == "EINVAL"
    assert not leftover.exists()


async def test_a_non_atomic_batch_reports_each_operation(
    agent: RunningAgent, client: AgentClient
) -> None:
    prepare(agent.workspace)
    answer = await client.call(
        "fs.batch",
        atomic=False,
        operations=[
            {"op": "write", "path": "one.txt", "data": b64(b"1")},
            {"op": "write", "path": "nope/x.txt", "data": b64(b"x")},
            {"op": "delete", "path": "src/a.txt"},
        ],
    )
    oks = [r["ok"] for r in answer["results"]]
    assert oks == [True, False, True]
    assert answer["results"][1]["error"]["code"] == "ENOENT"
    assert (agent.workspace / "one.txt").read_bytes() == b"1"
    assert not (agent.workspace / "src" / "a.txt").exists()
