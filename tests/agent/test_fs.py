"""File operations: WebContainer path semantics, Node-style errors, atomic writes."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from tests.agent.conftest import RunningAgent


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def write(client: AgentClient, path: str, data: bytes, **options: Any) -> dict[str, Any]:
    result: dict[str, Any] = await client.call("fs.write", path=path, data=b64(data), **options)
    return result


async def read(client: AgentClient, path: str) -> bytes:
    return base64.b64decode((await client.call("fs.read", path=path))["data"])


async def failure(client: AgentClient, op: str, **args: Any) -> AgentOpError:
    with pytest.raises(AgentOpError) as caught:
        await client.call(op, **args)
    return caught.value


async def test_write_then_read_returns_the_same_bytes(
    agent: RunningAgent, client: AgentClient
) -> None:
    data = bytes(range(256)) * 100
    entry = await write(client, "/bin.dat", data)
    assert entry["path"] == str(agent.workspace / "bin.dat")
    assert entry["type"] == "file"
    assert entry["size"] == len(data)
    assert await read(client, "/bin.dat") == data
    assert (agent.workspace / "bin.dat").read_bytes() == data


async def test_write_replaces_content_and_keeps_the_mode(
    agent: RunningAgent, client: AgentClient
) -> None:
    await write(client, "run.sh", b"#!/bin/sh\necho one, a longer line\n")
    os.chmod(agent.workspace / "run.sh", 0o755)
    await write(client, "run.sh", b"#!/bin/sh\n")
    assert (agent.workspace / "run.sh").read_bytes() == b"#!/bin/sh\n"
    assert (agent.workspace / "run.sh").stat().st_mode & 0o777 == 0o755


async def test_write_leaves_no_temporary_files(agent: RunningAgent, client: AgentClient) -> None:
    for index in range(20):
        await write(client, "/src/app.js", f"v{index}".encode(), mkdirs=True)
    await failure(client, "fs.write", path="/src/app.js", data="***not base64***")
    assert sorted(os.listdir(agent.workspace / "src")) == ["app.js"]
    assert await read(client, "/src/app.js") == b"v19"


async def test_write_with_missing_parent_is_enoent_unless_mkdirs(
    agent: RunningAgent, client: AgentClient
) -> None:
    error = await failure(client, "fs.write", path="/a/b/c.txt", data=b64(b"x"))
    assert error.errno == "ENOENT"
    await write(client, "/a/b/c.txt", b"x", mkdirs=True)
    assert (agent.workspace / "a/b/c.txt").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("../../x.txt", "x.txt"),
        ("../../src/App.tsx", "src/App.tsx"),
        ("src/../../../etc/passwd", "etc/passwd"),
        ("/./deep/./file", "deep/file"),
    ],
)
async def test_paths_are_clamped_inside_the_workspace(
    agent: RunningAgent, client: AgentClient, given: str, expected: str
) -> None:
    entry = await write(client, given, b"clamped", mkdirs=True)
    assert entry["path"] == str(agent.workspace / expected)
    assert (agent.workspace / expected).read_bytes() == b"clamped"


async def test_absolute_workspace_path_means_the_same_file(
    agent: RunningAgent, client: AgentClient
) -> None:
    await write(client, "/same.txt", b"one")
    assert await read(client, str(agent.workspace / "same.txt")) == b"one"


async def test_path_with_nul_byte_is_einval(client: AgentClient) -> None:
    error = await failure(client, "fs.read", path="/a\x00b")
    assert error.errno == "EINVAL"
    error = await failure(client, "fs.write", path="/a\x00b", data=b64(b"x"))
    assert error.errno == "EINVAL"


async def test_reading_a_missing_file_is_enoent_with_a_node_style_message(
    agent: RunningAgent, client: AgentClient
) -> None:
    error = await failure(client, "fs.read", path="/missing.txt")
    assert error.errno == "ENOENT"
    assert str(error).startswith("ENOENT: no such file or directory")
    assert f"'{agent.workspace / 'missing.txt'}'" in str(error)


async def test_reading_a_directory_is_eisdir(client: AgentClient) -> None:
    await client.call("fs.mkdir", path="/dir")
    error = await failure(client, "fs.read", path="/dir")
    assert error.errno == "EISDIR"
    assert str(error).startswith("EISDIR: ")


async def test_listing_a_file_is_enotdir(client: AgentClient) -> None:
    await write(client, "/file.txt", b"x")
    error = await failure(client, "fs.list", path="/file.txt")
    assert error.errno == "ENOTDIR"
    assert str(error).startswith("ENOTDIR: not a directory")


async def test_listing_a_missing_directory_is_enoent(client: AgentClient) -> None:
    assert (await failure(client, "fs.list", path="/nope")).errno == "ENOENT"


async def test_list_names_entries_with_their_types(
    agent: RunningAgent, client: AgentClient
) -> None:
    await write(client, "/src/index.js", b"1", mkdirs=True)
    await write(client, "/package.json", b"{}")
    (agent.workspace / "link").symlink_to("package.json")
    top = await client.call("fs.list", path="/")
    assert [(e["name"], e["type"]) for e in top] == [
        ("link", "symlink"), ("package.json", "file"), ("src", "directory"),
    ]  # fmt: skip
    everything = await client.call("fs.list", path="/", recursive=True)
    assert str(agent.workspace / "src/index.js") in {e["path"] for e in everything}


async def test_mkdir_without_recursive_follows_node(client: AgentClient) -> None:
    assert (await failure(client, "fs.mkdir", path="/x/y")).errno == "ENOENT"
    await client.call("fs.mkdir", path="/x")
    assert (await failure(client, "fs.mkdir", path="/x")).errno == "EEXIST"


async def test_mkdir_recursive_is_idempotent_even_at_the_root(
    agent: RunningAgent, client: AgentClient
) -> None:
    await client.call("fs.mkdir", path="/x/y/z", recursive=True)
    await client.call("fs.mkdir", path="/x/y/z", recursive=True)
    await client.call("fs.mkdir", path="../..", recursive=True)
    assert (agent.workspace / "x/y/z").is_dir()


async def test_remove_deletes_files_and_needs_recursive_for_directories(
    agent: RunningAgent, client: AgentClient
) -> None:
    await write(client, "/d/f.txt", b"x", mkdirs=True)
    assert (await failure(client, "fs.remove", path="/d")).errno == "EISDIR"
    await client.call("fs.remove", path="/d/f.txt")
    assert not (agent.workspace / "d/f.txt").exists()
    await write(client, "/d/g.txt", b"x")
    await client.call("fs.remove", path="/d", recursive=True)
    assert not (agent.workspace / "d").exists()


async def test_remove_missing_is_enoent_unless_forced(client: AgentClient) -> None:
    assert (await failure(client, "fs.remove", path="/gone")).errno == "ENOENT"
    await client.call("fs.remove", path="/gone", force=True)


@pytest.mark.parametrize("path", ["/", "", "../..", "/.."])
async def test_remove_of_the_workspace_root_is_refused(
    agent: RunningAgent, client: AgentClient, path: str
) -> None:
    await write(client, "/keep.txt", b"x")
    error = await failure(client, "fs.remove", path=path, recursive=True, force=True)
    assert error.errno == "EPERM"
    assert (agent.workspace / "keep.txt").exists()


async def test_remove_of_a_symlink_to_a_directory_keeps_the_target(
    agent: RunningAgent, client: AgentClient
) -> None:
    await write(client, "/real/file.txt", b"x", mkdirs=True)
    (agent.workspace / "alias").symlink_to("real")
    await client.call("fs.remove", path="/alias", recursive=True)
    assert not (agent.workspace / "alias").is_symlink()
    assert (agent.workspace / "real/file.txt").exists()


async def test_rename_moves_a_file(agent: RunningAgent, client: AgentClient) -> None:
    await write(client, "/old.txt", b"content")
    entry = await client.call("fs.rename", source="/old.txt", target="/new/../moved.txt")
    assert entry["path"] == str(agent.workspace / "moved.txt")
    assert not (agent.workspace / "old.txt").exists()
    assert (agent.workspace / "moved.txt").read_bytes() == b"content"


async def test_rename_into_itself_is_refused(agent: RunningAgent, client: AgentClient) -> None:
    await client.call("fs.mkdir", path="/dir/sub", recursive=True)
    error = await failure(client, "fs.rename", source="/dir", target="/dir/sub/dir")
    assert error.errno == "EINVAL"
    assert (agent.workspace / "dir/sub").is_dir()


async def test_rename_of_the_root_is_refused(client: AgentClient) -> None:
    await client.call("fs.mkdir", path="/dir")
    assert (await failure(client, "fs.rename", source="/", target="/dir/x")).errno == "EPERM"
    assert (await failure(client, "fs.rename", source="/dir", target="..")).errno == "EPERM"


async def test_rename_of_a_missing_file_is_enoent(client: AgentClient) -> None:
    assert (await failure(client, "fs.rename", source="/a", target="/b")).errno == "ENOENT"


async def test_stat_reports_type_size_and_mode(agent: RunningAgent, client: AgentClient) -> None:
    await write(client, "/s.txt", b"12345")
    entry = await client.call("fs.stat", path="/s.txt")
    assert (entry["type"], entry["size"], entry["mode"]) == ("file", 5, 0o644)
    assert entry["ino"] == Path(agent.workspace / "s.txt").stat().st_ino


async def test_a_fifo_or_a_device_is_refused_without_blocking_the_agent(
    agent: RunningAgent, client: AgentClient
) -> None:
    """A FIFO's open waits for a writer, for ever; a link to /dev/zero never ends. The
    sandbox can put either where a file was: reading one is EINVAL at once, and the agent
    (its loop and its file thread) keeps answering."""
    os.mkfifo(agent.workspace / "pipe")
    (agent.workspace / "zero").symlink_to("/dev/zero")
    for path in ("/pipe", "/zero"):
        assert (await failure(client, "fs.read", path=path)).errno == "EINVAL"
        assert (await failure(client, "fs.read", path=path, length=1 << 20)).errno == "EINVAL"
    assert (await client.call("ping"))["time"] > 0
    await write(client, "/after.txt", b"still here")
    assert await read(client, "/after.txt") == b"still here"
