"""File calls on the event WebSocket (api/calls.py), on real sandboxes: WebContainer's fs
semantics as the JS client sends them, their order when nobody waits, and bad calls."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from cloudcontainer.api.calls import MAX_CALLS_IN_FLIGHT, SOCKET_CONTENT_BYTES
from tests.conftest import Api, TestUser
from tests.sandbox_helpers import events_socket_url, live_server, new_container, sh

WAIT = 120.0  # an upper bound for what must happen, never a measured timing


class Caller:
    """Sends calls without waiting and collects their answers by call number."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.answers: dict[int, dict[str, Any]] = {}
        self.others: list[dict[str, Any]] = []
        self.order: list[int] = []  # call numbers in the order their answers came
        self._next = 0

    async def send(self, op: str, **args: Any) -> int:
        self._next += 1
        await self.socket.send(json.dumps({"type": "call", "call": self._next, "op": op,
                                           "args": args}))  # fmt: skip
        return self._next

    async def answer(self, call: int) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while call not in self.answers:
                frame = json.loads(await self.socket.recv())
                if frame["type"] == "result":
                    self.answers[frame["call"]] = frame
                    self.order.append(frame["call"])
                else:
                    self.others.append(frame)
        return self.answers[call]

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        return await self.answer(await self.send(op, **args))


@asynccontextmanager
async def caller(api: Api, user: TestUser, base: str, cid: str) -> AsyncIterator[Caller]:
    async with connect(await events_socket_url(api, user, base, cid), max_size=None) as socket:
        yield Caller(socket)


def content(answer: dict[str, Any]) -> bytes:
    result = answer["result"]
    if result["encoding"] == "base64":
        return base64.b64decode(result["content"])
    return str(result["content"]).encode()


async def test_fs_calls_follow_webcontainer_semantics(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    async with live_server(sandbox_api) as base, caller(sandbox_api, user, base, cid) as c:
        # bolt's AI paths: `../../src/x` is /home/project/src/x.
        made = await c.call("fs.mkdir", path="../../src", recursive=True)
        assert made["result"] == {"path": "/src"}
        written = await c.call("fs.write", path="../../src/App.tsx", content="héllo")
        assert written["result"]["path"] == "/src/App.tsx"
        assert written["result"]["size"] == len("héllo".encode())
        assert content(await c.call("fs.read", path="/home/project/src/App.tsx")) == (
            "héllo".encode()
        )
        binary = bytes(range(256)) * 3
        await c.call("fs.write", path="bin.dat", content=base64.b64encode(binary).decode(),
                     encoding="base64")  # fmt: skip
        read = await c.call("fs.read", path="/bin.dat")
        assert read["result"]["encoding"] == "base64"
        assert content(read) == binary
        shell = await sh(sandbox_api, user, cid, "sha256sum bin.dat | cut -c1-16; cat src/App.tsx")
        assert shell.stdout.splitlines()[1] == "héllo"  # one namespace with processes

        listed = await c.call("fs.list", path="/")
        assert {"name": "src", "type": "directory"} in listed["result"]["entries"]
        assert {"name": "bin.dat", "type": "file"} in listed["result"]["entries"]

        missing = await c.call("fs.read", path="nope.txt")
        assert missing["error"]["code"] == "file_not_found"
        assert missing["error"]["errno"] == "ENOENT"
        assert missing["error"]["message"].startswith("ENOENT")
        assert (await c.call("fs.read", path="src"))["error"]["errno"] == "EISDIR"
        no_parent = await c.call("fs.write", path="a/b/c.txt", content="x")
        assert no_parent["error"]["errno"] == "ENOENT"
        assert (await c.call("fs.mkdir", path="src"))["error"]["errno"] == "EEXIST"
        assert "result" in await c.call("fs.mkdir", path="src", recursive=True)

        not_recursive = await c.call("fs.delete", path="src")
        assert not_recursive["error"]["code"] in ("is_a_directory", "directory_not_empty")
        assert "result" in await c.call("fs.delete", path="gone.txt", force=True)
        assert (await c.call("fs.delete", path="gone.txt"))["error"]["errno"] == "ENOENT"
        moved = await c.call("fs.move", **{"from": "src/App.tsx", "to": "src/Main.tsx"})
        assert moved["result"] == {"path": "/src/Main.tsx"}
        assert "result" in await c.call("fs.delete", path="src", recursive=True)
        assert (await c.call("fs.list", path="src"))["error"]["errno"] == "ENOENT"


async def test_unawaited_calls_run_in_the_order_sent(sandbox_api: Api) -> None:
    """PARITY.md: bolt restores a snapshot with unawaited mkdirs then writes. 200 folders,
    each made and then written into without `mkdirs`, and one file written 200 times: any
    overtaking would fail a write or leave an older content last."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    async with live_server(sandbox_api) as base, caller(sandbox_api, user, base, cid) as c:
        calls = []
        for n in range(200):
            calls.append(await c.send("fs.mkdir", path=f"d{n}"))
            calls.append(await c.send("fs.write", path=f"d{n}/f.txt", content=str(n)))
            calls.append(await c.send("fs.write", path="last.txt", content=str(n)))
        answers = [await c.answer(call) for call in calls]
        assert [a for a in answers if "error" in a] == []
        assert content(await c.call("fs.read", path="last.txt")) == b"199"
        count = await sh(sandbox_api, user, cid, "cat d*/f.txt | wc -l; ls -d d* | wc -l")
        assert count.stdout.split() == ["0", "200"]  # no newline in the files: 0 lines
        # Answers may come in any order, but a slow call never lost one.
        assert sorted(c.order) == sorted(set(c.order))
        assert len(c.order) == len(calls) + 1


async def test_bad_calls_get_clear_errors_and_the_socket_goes_on(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    async with live_server(sandbox_api) as base, caller(sandbox_api, user, base, cid) as c:
        await c.socket.send(json.dumps({"type": "call", "call": 1, "op": "fs.chmod"}))
        bad_op = await c.socket.recv()
        while json.loads(bad_op)["type"] == "status":
            bad_op = await c.socket.recv()
        assert json.loads(bad_op)["error"]["code"] == "invalid_command"

        no_path = await c.call("fs.read")
        assert no_path["error"]["code"] == "invalid_call"
        assert "path" in no_path["error"]["message"]
        extra = await c.call("fs.write", path="a", content="x", mode=511)
        assert extra["error"]["code"] == "invalid_call"
        not_b64 = await c.call("fs.write", path="a", content="***", encoding="base64")
        assert not_b64["error"]["code"] == "invalid_call"
        nul = await c.call("fs.read", path="a\x00b")
        assert nul["error"]["code"] == "invalid_call"

        big = "x" * (SOCKET_CONTENT_BYTES + 1)
        too_big = await c.call("fs.write", path="big.txt", content=big)
        assert too_big["error"]["code"] in ("payload_too_large", "invalid_call")
        await sh(sandbox_api, user, cid, f"head -c {SOCKET_CONTENT_BYTES + 1} /dev/zero > big")
        assert (await c.call("fs.read", path="big"))["error"]["code"] == "file_too_large"
        exists = await sh(sandbox_api, user, cid, "ls big.txt 2>&1 || true")
        assert "No such file" in exists.stdout  # nothing was written

        # More calls than may be in flight at once: the socket is read more slowly, and
        # every call is still answered.
        calls = [await c.send("fs.list", path="/") for _ in range(MAX_CALLS_IN_FLIGHT * 4)]
        answers = [await c.answer(call) for call in calls]
        assert all("result" in answer for answer in answers)
        assert (await c.call("fs.write", path="ok.txt", content="fine"))["result"]
