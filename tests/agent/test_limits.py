"""The agent keeps its messages under the link's limit (issue 9): large files travel in
chunks both ways, an answer that would be too large is an EFBIG error, not a dropped link."""

from __future__ import annotations

import base64
import hashlib
import os
from functools import partial

import pytest

from cloudcontainer.agent.protocol import READ_CHUNK_BYTES, WRITE_CHUNK_BYTES
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from cloudcontainer.agentlink.files import read_file, write_file
from tests.agent.conftest import RunningAgent, until
from tests.agent.test_watch import Feed, subscribe


def leftovers(agent: RunningAgent) -> list[str]:
    return [
        name for _, _, names in os.walk(agent.workspace) for name in names
        if name.startswith(".cc-write-")
    ]  # fmt: skip


async def test_a_large_file_is_written_and_read_in_chunks(
    agent: RunningAgent, client: AgentClient
) -> None:
    data = os.urandom(2 * WRITE_CHUNK_BYTES + 12345)
    (agent.workspace / "large.bin").write_bytes(b"old")
    written = await write_file(client, "/large.bin", data, mkdirs=True, keep_previous=1024)
    assert written["sha256"] == hashlib.sha256(data).hexdigest()
    assert written["previous"]["data"] == base64.b64encode(b"old").decode()
    assert (agent.workspace / "large.bin").read_bytes() == data
    assert leftovers(agent) == []
    read = await read_file(client, "/large.bin", max_bytes=len(data))
    assert read.data == data
    assert read.sha256 == written["sha256"]
    part = await client.call("fs.read", path="/large.bin", length=READ_CHUNK_BYTES)
    assert part["eof"] is False
    assert "sha256" not in part
    assert len(base64.b64decode(part["data"])) == READ_CHUNK_BYTES


async def test_a_file_over_the_callers_limit_is_refused(
    agent: RunningAgent, client: AgentClient
) -> None:
    from cloudcontainer.errors import PayloadTooLarge

    (agent.workspace / "big.bin").write_bytes(b"x" * 5000)
    with pytest.raises(PayloadTooLarge):
        await read_file(client, "/big.bin", max_bytes=4096)


async def test_a_write_whose_target_changed_into_a_folder_leaves_nothing(
    agent: RunningAgent, client: AgentClient
) -> None:
    await client.call("fs.write.part", upload="u1", path="/x.bin", data="AAAA")
    (agent.workspace / "x.bin").mkdir()
    with pytest.raises(AgentOpError) as caught:
        await client.call("fs.write", upload="u1", path="/x.bin", data="")
    assert caught.value.errno == "EISDIR"
    assert leftovers(agent) == []
    with pytest.raises(AgentOpError):  # the upload is gone with its failure
        await client.call("fs.write", upload="u1", path="/x.bin", data="")


async def test_an_upload_is_removed_when_its_connection_ends(agent: RunningAgent) -> None:
    client = await agent.connect()
    await client.call("fs.write.part", upload="u1", path="/y.bin", data="AAAA")
    assert len(leftovers(agent)) == 1
    await client.aclose()
    await until(lambda: not leftovers(agent), "the upload's temp file to go")
    assert not (agent.workspace / "y.bin").exists()


async def test_an_answer_over_the_limit_is_an_efbig_error(
    agent: RunningAgent, client: AgentClient
) -> None:
    """A listing of ~17 MiB (long paths): EFBIG, and the link carries on."""
    deep = agent.workspace
    for level in range(14):
        deep = deep / (f"{level:02d}" + "d" * 250)
    deep.mkdir(parents=True)
    for n in range(4200):
        (deep / (f"{n:05d}" + "f" * 240)).touch()
    with pytest.raises(AgentOpError) as caught:
        await client.call("fs.list", path="/", recursive=True, timeout=60)
    assert caught.value.errno == "EFBIG"
    assert "16 MiB" in caught.value.message
    assert (await client.call("fs.stat", path="/"))["type"] == "directory"


def has_bytes(feed: Feed, path: str, buffer: str) -> bool:
    return any(e["path"] == path and e.get("buffer") == buffer for e in feed.events)


async def test_watch_batches_with_content_stay_under_the_limit(
    agent: RunningAgent, client: AgentClient
) -> None:
    """Three 7 MiB files written at once: each message under the limit, nothing lost."""
    from cloudcontainer.agent.protocol import MAX_MESSAGE_BYTES

    feed, _ = await subscribe(client)
    blobs = {f"f{n}.bin": os.urandom(7 * 1024 * 1024) for n in range(3)}
    for name, data in blobs.items():
        (agent.workspace / name).write_bytes(data)
    for name, data in blobs.items():
        path, wanted = str(agent.workspace / name), base64.b64encode(data).decode()
        # Its last bytes come with an add_file or a later change.
        await until(partial(has_bytes, feed, path, wanted), f"all of {name}")
    for message in feed.messages:
        assert sum(len(e.get("buffer", "")) for e in message["events"]) < MAX_MESSAGE_BYTES
    assert not client.closed.is_set()
