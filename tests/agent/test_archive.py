"""The agent's archive streams: download credit (backpressure), cancelled uploads, the worker."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import zipfile

from cloudcontainer.agent.archive import READ_CHUNK, WINDOW
from cloudcontainer.agent.protocol import ARCHIVE_ACK, ARCHIVE_DATA, ARCHIVE_END
from cloudcontainer.agentlink.client import AgentClient
from tests.agent.conftest import RunningAgent, listen, until


async def test_download_sends_no_more_than_its_window_until_acknowledged(
    agent: RunningAgent, client: AgentClient
) -> None:
    blob = os.urandom(4 * WINDOW)  # random bytes do not compress: the archive is larger
    (agent.workspace / "big.bin").write_bytes(blob)
    opened = await client.call("archive.create", path="/", format="tar.gz")
    stream_id = opened["stream_id"]
    received = listen(client, ARCHIVE_DATA, stream_id, eof_kind=ARCHIVE_END)
    await until(lambda: len(received.data) >= WINDOW - READ_CHUNK, "a window of bytes")
    await asyncio.sleep(0.3)  # room for bytes that should not come
    assert len(received.data) <= WINDOW + READ_CHUNK
    acked = 0
    while not received.eof:
        if len(received.data) > acked:
            count = len(received.data) - acked
            await client.send_stream(ARCHIVE_ACK, stream_id, count.to_bytes(4, "big"))
            acked += count
        await asyncio.sleep(0.01)
    with tarfile.open(fileobj=io.BytesIO(bytes(received.data)), mode="r:gz") as archive:
        member = archive.extractfile("big.bin")
        assert member is not None
        assert member.read() == blob


async def test_cancelled_upload_writes_nothing_and_leaves_no_staging(
    agent: RunningAgent, client: AgentClient
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("complete.txt", b"a whole archive, yet cancelled")
    opened = await client.call("archive.extract", path="/dest", format="zip",
                               max_bytes=1 << 20, max_entries=10)  # fmt: skip
    staging = [p.name for p in agent.workspace.iterdir() if p.name.startswith(".cc-extract-")]
    assert len(staging) == 1
    await client.send_stream(ARCHIVE_DATA, opened["stream_id"], buffer.getvalue())
    await client.call("archive.cancel", stream_id=opened["stream_id"])
    assert sorted(p.name for p in agent.workspace.iterdir()) == []


async def test_finished_upload_answers_what_it_wrote(
    agent: RunningAgent, client: AgentClient
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/b.txt", b"b")
        archive.writestr("c.txt", b"c")
    opened = await client.call("archive.extract", path="/dest", format="zip",
                               max_bytes=1 << 20, max_entries=10)  # fmt: skip
    await client.send_stream(ARCHIVE_DATA, opened["stream_id"], buffer.getvalue())
    result = await client.call("archive.finish", stream_id=opened["stream_id"])
    assert result == {"count": 2, "files": ["/dest/a/b.txt", "/dest/c.txt"], "skipped": []}
    assert (agent.workspace / "dest" / "a" / "b.txt").read_bytes() == b"b"
    assert sorted(p.name for p in agent.workspace.iterdir()) == ["dest"]
