"""Per-client FIFO over HTTP on real sandboxes: unawaited calls apply in the order issued."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, sh

LATE = 5  # the calls that arrive after all the others


async def setup(api: Api) -> tuple[TestUser, str, str]:
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    return user, cid, f"/api/containers/{cid}/files"


def bolt_like_calls() -> list[tuple[str, str, dict[str, Any]]]:
    """What bolt fires without awaiting: 40 saves of one file, folders then files in them,
    and a chain of folders each made (non-recursively) inside the previous one."""
    calls: list[tuple[str, str, dict[str, Any]]] = []
    chain = "chain"
    for i in range(40):
        calls.append(("PUT", "/same.txt", {"content": f"v{i}".encode()}))
        if i % 4 == 0:
            calls.append(("POST", "", {"json": {"path": f"dir{i}", "type": "directory"}}))
            calls.append(("PUT", f"/dir{i}/f.txt", {"content": f"in {i}".encode()}))
            calls.append(("POST", "", {"json": {"path": chain, "type": "directory"}}))
            chain += f"/{i}"
    return calls


async def test_calls_issued_shuffled_apply_in_seq_order(sandbox_api: Api) -> None:
    user, cid, files = await setup(sandbox_api)
    calls = bolt_like_calls()
    early = len(calls) - LATE
    others_waiting = asyncio.Event()

    async def release_the_first_calls() -> None:
        """Once every later call is waiting for its predecessors, the first ones go."""
        while sandbox_api.services.order.waiting(cid, "tab-1") < early:
            await asyncio.sleep(0.005)
        others_waiting.set()

    async def send(seq: int) -> int:
        method, path, kwargs = calls[seq - 1]
        if seq <= LATE:
            await others_waiting.wait()  # the first calls are the last to arrive
        headers = {**user.headers, "X-Client-Id": "tab-1", "X-Client-Seq": str(seq)}
        response = await sandbox_api.client.request(method, files + path, headers=headers, **kwargs)
        assert response.status_code == 200, (seq, calls[seq - 1], response.text)
        return seq

    seqs = list(range(1, len(calls) + 1))
    random.Random(4).shuffle(seqs)
    await asyncio.gather(release_the_first_calls(), *(send(seq) for seq in seqs))
    state = await sh(
        sandbox_api, user, cid,
        "cat same.txt; echo; for f in dir*/f.txt; do cat $f; echo; done | sort | tr '\\n' ,; "
        "find chain -type d | wc -l",
    )  # fmt: skip
    expected_files = ",".join(sorted(f"in {i}" for i in range(0, 40, 4))) + ","
    assert state.stdout == f"v39\n{expected_files}10\n"


async def test_a_gap_times_out_and_a_late_call_goes_at_once(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api = await sandbox_api_factory(fifo_wait_seconds=0.3)
    user, cid, files = await setup(api)

    async def put(seq: int, content: bytes) -> None:
        headers = {**user.headers, "X-Client-Id": "tab-2", "X-Client-Seq": str(seq)}
        response = await api.client.put(f"{files}/a.txt", content=content, headers=headers)
        assert response.status_code == 200, response.text

    await put(1, b"1")
    await put(3, b"3")  # 2 is lost: 3 waits for it, then goes
    assert (await sh(api, user, cid, "cat a.txt")).stdout == "3"
    await put(2, b"2")  # late: its turn has passed, it goes at once
    assert (await sh(api, user, cid, "cat a.txt")).stdout == "2"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Client-Id": "tab", "X-Client-Seq": "abc"}, id="seq-not-a-number"),
        pytest.param({"X-Client-Id": "tab", "X-Client-Seq": "0"}, id="seq-zero"),
        pytest.param({"X-Client-Id": "tab", "X-Client-Seq": "-1"}, id="seq-negative"),
        pytest.param({"X-Client-Id": "x" * 65, "X-Client-Seq": "1"}, id="id-too-long"),
        pytest.param({"X-Client-Id": "a b", "X-Client-Seq": "1"}, id="id-with-space"),
        pytest.param({"X-Client-Id": "tab"}, id="id-without-seq"),
        pytest.param({"X-Client-Seq": "1"}, id="seq-without-id"),
    ],
)
async def test_malformed_order_headers_are_refused(
    sandbox_api: Api, headers: dict[str, str]
) -> None:
    user, cid, files = await setup(sandbox_api)
    for method, url, kwargs in (
        ("PUT", f"{files}/x.txt", {"content": b"x"}),
        ("GET", f"{files}/package.json", {}),
        ("POST", files, {"json": {"operations": [{"op": "mkdir", "path": "d"}]}}),
    ):
        response = await sandbox_api.client.request(
            method, url, headers={**user.headers, **headers}, **kwargs
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_client_order"
    assert (await sh(sandbox_api, user, cid, "ls x.txt d 2>&1 | wc -l")).stdout == "2\n"
