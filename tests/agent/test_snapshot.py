"""The agent's side of file history (previous content on write/remove/rename) and of
snapshots (manifest with hashes and excludes, prune, apply)."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import pytest

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from tests.agent.conftest import RunningAgent


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_write_returns_the_previous_content_when_asked(
    agent: RunningAgent, client: AgentClient
) -> None:
    where = str(agent.workspace / "a.txt")
    first = await client.call("fs.write", path="/a.txt", data=b64(b"one"), keep_previous=10)
    assert "previous" not in first  # nothing was there
    second = await client.call("fs.write", path="/a.txt", data=b64(b"two"), keep_previous=10)
    assert second["previous"] == {"path": where, "data": b64(b"one"), "size": 3}
    plain = await client.call("fs.write", path="/a.txt", data=b64(b"x" * 20))
    assert "previous" not in plain  # not asked
    big = await client.call("fs.write", path="/a.txt", data=b64(b"y"), keep_previous=10)
    assert big["previous"] == {"path": where, "size": 20}  # over the cap: size only
    again = await client.call("fs.write", path="/a.txt", data=b64(b"y"), keep_previous=10)
    assert "previous" not in again  # the same bytes saved again: nothing to keep


async def test_remove_and_rename_return_what_they_replace(
    agent: RunningAgent, client: AgentClient
) -> None:
    await client.call("fs.write", path="/a.txt", data=b64(b"A"))
    await client.call("fs.write", path="/b.txt", data=b64(b"B"))
    moved = await client.call("fs.rename", source="/a.txt", target="/b.txt", keep_previous=10)
    assert moved["previous"] == {
        "path": str(agent.workspace / "a.txt"),
        "data": b64(b"A"),
        "size": 1,
    }
    assert moved["replaced"]["data"] == b64(b"B")
    removed = await client.call("fs.remove", path="/b.txt", keep_previous=10)
    assert removed == {
        "previous": {"path": str(agent.workspace / "b.txt"), "data": b64(b"A"), "size": 1}
    }
    await client.call("fs.mkdir", path="/d")
    assert await client.call("fs.remove", path="/d", recursive=True, keep_previous=10) is None


async def test_manifest_hashes_files_and_honours_excludes(
    agent: RunningAgent, client: AgentClient
) -> None:
    root = agent.workspace
    (root / "src").mkdir()
    (root / "src" / "a.ts").write_bytes(b"export {}\n")
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("src/a.ts", root / "link")
    (root / "empty").mkdir()
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "i.js").write_bytes(b"1")
    (root / "web" / "node_modules").mkdir(parents=True)
    (root / ".next" / "cache").mkdir(parents=True)
    (root / ".next" / "cache" / "c").write_bytes(b"c")
    (root / ".next" / "keep").write_bytes(b"k")
    answer = await client.call("fs.manifest", exclude=["node_modules", ".next/cache"])
    entries = {entry["path"]: entry for entry in answer["entries"]}
    assert set(entries) == {
        "/src", "/src/a.ts", "/run.sh", "/link", "/empty", "/web", "/.next", "/.next/keep",
    }  # fmt: skip
    assert entries["/src/a.ts"]["sha256"] == hashlib.sha256(b"export {}\n").hexdigest()
    assert entries["/src/a.ts"]["size"] == 10
    assert entries["/run.sh"]["mode"] == 0o755
    assert entries["/link"] == {"path": "/link", "type": "symlink", "target": "src/a.ts",
                                "mode": entries["/link"]["mode"], "size": 0}  # fmt: skip
    assert entries["/empty"]["type"] == "directory"
    # A changed file is hashed again (the cache is keyed by inode, size and mtime).
    (root / "src" / "a.ts").write_bytes(b"export const x = 1;\n")
    again = await client.call("fs.manifest", exclude=[])
    by_path = {entry["path"]: entry for entry in again["entries"]}
    assert by_path["/src/a.ts"]["sha256"] == hashlib.sha256(b"export const x = 1;\n").hexdigest()
    assert "/node_modules/x/i.js" in by_path


async def test_prune_and_apply_make_the_workspace_equal(
    agent: RunningAgent, client: AgentClient
) -> None:
    root = agent.workspace
    (root / "old").mkdir()
    (root / "old" / "f").write_bytes(b"f")
    (root / "keep.txt").write_bytes(b"stale")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "m").write_bytes(b"m")
    (root / "was-dir").mkdir()
    removed = await client.call(
        "fs.prune",
        keep={"/keep.txt": "file", "/was-dir": "file", "/new": "directory"},
        exclude=["node_modules"],
    )
    assert removed == 2  # /old (with its file) and /was-dir (a folder, wanted as a file)
    entries: list[dict[str, Any]] = [
        {"path": "/new", "type": "directory", "mode": 0o750},
        {"path": "/new/x.sh", "type": "file", "mode": 0o755, "data": b64(b"#!")},
        {"path": "/keep.txt", "type": "file", "mode": 0o600, "data": b64(b"fresh")},
        {"path": "/was-dir", "type": "symlink", "mode": 0o777, "target": "keep.txt"},
    ]
    assert await client.call("fs.apply", entries=entries) == 4
    assert (root / "keep.txt").read_bytes() == b"fresh"
    assert (root / "keep.txt").stat().st_mode & 0o777 == 0o600
    assert (root / "new" / "x.sh").stat().st_mode & 0o777 == 0o755
    assert (root / "new").stat().st_mode & 0o777 == 0o750
    assert os.readlink(root / "was-dir") == "keep.txt"
    assert (root / "node_modules" / "m").read_bytes() == b"m"  # excluded: untouched
    assert not (root / "old").exists()


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "/x", "type": "fifo"},
        {"path": "/x", "type": "file", "data": "%%%"},
        {"path": "/x", "type": "file", "mode": -1},
        {"path": "/x", "type": "symlink"},
        {"path": "/", "type": "directory"},
        "nope",
    ],
)
async def test_apply_refuses_bad_entries(client: AgentClient, entry: Any) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("fs.apply", entries=[entry])
    assert caught.value.errno == "EINVAL"
