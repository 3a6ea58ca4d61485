"""File history on real sandboxes: every write, delete and move through the API keeps what it
replaced, bounded per file; versions can be read and restored; others' containers are 404."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from sqlalchemy import func, select

from cloudcontainer.db import FileVersion
from cloudcontainer.files.history import history_prefix
from tests.conftest import Api, ApiFactory, TestUser
from tests.sandbox_helpers import new_container, sh, stopped_container


async def setup(api: Api) -> tuple[TestUser, str, str]:
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    return user, cid, f"/api/containers/{cid}"


async def versions(api: Api, user: TestUser, base: str, path: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"{base}/versions", params={"path": path}, headers=user.headers)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()
    return listed


async def test_writes_keep_previous_versions_newest_first(sandbox_api: Api) -> None:
    user, _, base = await setup(sandbox_api)
    client = sandbox_api.client
    for text in ("one", "two", "three"):
        response = await client.put(
            f"{base}/files/src/a.ts?mkdirs=true", content=text.encode(), headers=user.headers
        )
        assert response.status_code == 200, response.text
    response = await client.post(
        f"{base}/files", json={"path": "src/a.ts", "content": "four"}, headers=user.headers
    )
    assert response.status_code == 200
    # Any spelling of the path names the same file.
    for spelling in ("/src/a.ts", "src/a.ts", "../../src/a.ts", "/home/project/src/a.ts"):
        kept = await versions(sandbox_api, user, base, spelling)
        assert [v["size"] for v in kept] == [5, 3, 3], spelling
    first = kept[0]
    assert first["path"] == "/src/a.ts"
    assert first["reason"] == "write"
    assert first["created_by"] == user.id
    assert set(first) == {"id", "path", "size", "sha256", "created_at", "created_by", "reason"}
    contents = [
        (await client.get(f"{base}/versions/{v['id']}", headers=user.headers)).content for v in kept
    ]
    assert contents == [b"three", b"two", b"one"]


async def test_restore_writes_the_version_back_and_keeps_the_replaced_content(
    sandbox_api: Api,
) -> None:
    user, cid, base = await setup(sandbox_api)
    client = sandbox_api.client
    await client.put(f"{base}/files/a.txt", content=b"old", headers=user.headers)
    await client.put(f"{base}/files/a.txt", content=b"new", headers=user.headers)
    (old,) = await versions(sandbox_api, user, base, "/a.txt")
    restored = await client.post(f"{base}/versions/{old['id']}/restore", headers=user.headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["path"] == "/a.txt"
    assert (await sh(sandbox_api, user, cid, "cat a.txt")).stdout == "old"
    kept = await versions(sandbox_api, user, base, "/a.txt")
    assert [(v["reason"], v["size"]) for v in kept] == [("restore", 3), ("write", 3)]
    assert (
        await client.get(f"{base}/versions/{kept[0]['id']}", headers=user.headers)
    ).content == b"new"


async def test_delete_and_move_keep_versions_and_a_deleted_file_can_be_restored(
    sandbox_api: Api,
) -> None:
    user, cid, base = await setup(sandbox_api)
    client = sandbox_api.client
    await client.put(f"{base}/files/gone.txt", content=b"precious", headers=user.headers)
    assert (await client.delete(f"{base}/files/gone.txt", headers=user.headers)).status_code == 204
    (deleted,) = await versions(sandbox_api, user, base, "/gone.txt")
    assert deleted["reason"] == "delete"
    response = await client.post(f"{base}/versions/{deleted['id']}/restore", headers=user.headers)
    assert response.status_code == 200, response.text
    assert (await sh(sandbox_api, user, cid, "cat gone.txt")).stdout == "precious"
    # A move keeps the moved content under its old path and what it overwrote under the new.
    await client.put(f"{base}/files/b.txt", content=b"bee", headers=user.headers)
    moved = await client.post(
        f"{base}/files:move", json={"from": "gone.txt", "to": "b.txt"}, headers=user.headers
    )
    assert moved.status_code == 200, moved.text
    at_old = await versions(sandbox_api, user, base, "/gone.txt")
    assert at_old[0]["reason"] == "move"
    (overwritten,) = await versions(sandbox_api, user, base, "/b.txt")
    assert overwritten["reason"] == "overwrite"
    assert (
        await client.get(f"{base}/versions/{overwritten['id']}", headers=user.headers)
    ).content == b"bee"


@pytest.mark.parametrize("inline_bytes", [0, 16_384], ids=["blobs", "inline"])
async def test_versions_are_bounded_and_big_files_are_not_kept(
    sandbox_api_factory: Any, inline_bytes: int
) -> None:
    """Versions kept as blobs in object storage, and (small ones, by default) in their row."""
    api: Api = await sandbox_api_factory(
        history_max_versions=3, history_max_file_bytes=1024, history_inline_bytes=inline_bytes
    )
    user, cid, base = await setup(api)
    for number in range(6):
        await api.client.put(
            f"{base}/files/n.txt", content=str(number).encode(), headers=user.headers
        )
    kept = await versions(api, user, base, "/n.txt")
    contents = [
        (await api.client.get(f"{base}/versions/{v['id']}", headers=user.headers)).content
        for v in kept
    ]
    assert contents == [b"4", b"3", b"2"]
    # Old versions' blobs are pruned with them: only the kept contents remain stored; versions
    # kept in their row need no object at all.
    stored = await api.services.storage.list_blobs(f"containers/{cid}/history")
    assert stored == (set() if inline_bytes else {v["sha256"] for v in kept})
    await api.client.put(f"{base}/files/big.bin", content=b"x" * 2048, headers=user.headers)
    await api.client.put(f"{base}/files/big.bin", content=b"y", headers=user.headers)
    assert await versions(api, user, base, "/big.bin") == []
    # Saving the same bytes again (editors autosave) keeps nothing.
    for _ in range(2):
        await api.client.put(f"{base}/files/same.txt", content=b"same", headers=user.headers)
    assert await versions(api, user, base, "/same.txt") == []
    # Exactly at the cap is still kept.
    await api.client.put(f"{base}/files/edge.bin", content=b"e" * 1024, headers=user.headers)
    await api.client.put(f"{base}/files/edge.bin", content=b"f", headers=user.headers)
    assert [v["size"] for v in await versions(api, user, base, "/edge.bin")] == [1024]


async def test_history_can_be_switched_off(sandbox_api_factory: Any) -> None:
    api: Api = await sandbox_api_factory(history_max_versions=0)
    user, _, base = await setup(api)
    await api.client.put(f"{base}/files/a.txt", content=b"1", headers=user.headers)
    await api.client.put(f"{base}/files/a.txt", content=b"2", headers=user.headers)
    assert await versions(api, user, base, "/a.txt") == []


async def test_others_containers_and_bad_ids_are_not_found(sandbox_api: Api) -> None:
    user, cid, base = await setup(sandbox_api)
    client = sandbox_api.client
    await client.put(f"{base}/files/a.txt", content=b"1", headers=user.headers)
    await client.put(f"{base}/files/a.txt", content=b"2", headers=user.headers)
    (version,) = await versions(sandbox_api, user, base, "/a.txt")
    other = await sandbox_api.user("other@example.com")
    for method, url in (
        ("GET", f"{base}/versions?path=/a.txt"),
        ("GET", f"{base}/versions/{version['id']}"),
        ("POST", f"{base}/versions/{version['id']}/restore"),
    ):
        response = await client.request(method, url, headers=other.headers)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"]["code"] == "container_not_found"
    for method, url in (
        ("GET", f"{base}/versions/ver_0000"),
        ("POST", f"{base}/versions/ver_0000/restore"),
        ("GET", "/api/containers/ctr_nope/versions/ver_0000"),
    ):
        response = await client.request(method, url, headers=user.headers)
        assert response.status_code == 404, (url, response.text)
    # A version of one container is not found through another of the same user.
    second = (await new_container(sandbox_api, user))["id"]
    response = await client.get(
        f"/api/containers/{second}/versions/{version['id']}", headers=user.headers
    )
    assert response.json()["error"]["code"] == "version_not_found"
    for url in (f"{base}/versions", f"{base}/versions?path=", f"{base}/versions/bad%20id"):
        response = await client.get(url, headers=user.headers)
        assert response.status_code == 422, (url, response.text)
    # Nothing was written by the refused requests.
    assert (await sh(sandbox_api, user, cid, "cat a.txt")).stdout == "2"


async def test_versions_go_with_their_container(sandbox_api_factory: Any) -> None:
    api: Api = await sandbox_api_factory(history_inline_bytes=4)
    user, cid, base = await setup(api)
    # A small version stays in its row, a larger one is a blob; both read back alike.
    for content in (b"1", b"2", b"larger than four bytes", b"3"):
        response = await api.client.put(
            f"{base}/files/a.txt", content=content, headers=user.headers
        )
        assert response.status_code == 200, response.text
    kept = await versions(api, user, base, "/a.txt")
    contents = [
        (await api.client.get(f"{base}/versions/{v['id']}", headers=user.headers)).content
        for v in kept
    ]
    assert contents == [b"larger than four bytes", b"2", b"1"]
    storage = api.services.storage
    assert len(await storage.list_blobs(f"containers/{cid}/history")) == 1
    response = await api.client.delete(f"/api/containers/{cid}", headers=user.headers)
    assert response.status_code in (202, 204), response.text
    await api.services.tasks.drain()
    assert await storage.list_blobs(f"containers/{cid}/history") == set()
    async with api.services.database.session() as session:
        left = await session.scalar(
            select(func.count()).select_from(FileVersion).where(FileVersion.container_id == cid)
        )
    assert left == 0


async def test_git_works_inside_the_sandbox(sandbox_api: Api) -> None:
    """Real version control is git in the sandbox; history above is the safety net."""
    user, cid, _ = await setup(sandbox_api)
    result = await sh(
        sandbox_api, user, cid,
        "git init -q . && git add -A && git -c user.name=t -c user.email=t@example.com "
        "commit -qm init && git log --oneline | wc -l",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "1"


async def test_batches_keep_versions_like_single_calls(sandbox_api: Api) -> None:
    """Atomic and not: a batch's writes, deletes and moves keep what they replaced; a batch
    that rolled back keeps nothing."""
    user, _, base = await setup(sandbox_api)
    client = sandbox_api.client
    for name in ("w.txt", "d.txt", "m.txt", "over.txt"):
        await client.put(f"{base}/files/{name}", content=f"old {name}".encode(),
                         headers=user.headers)  # fmt: skip
    for atomic in (True, False):
        response = await client.post(f"{base}/files", headers=user.headers, json={
            "atomic": atomic, "operations": [
                {"op": "write", "path": "w.txt", "content": f"new {atomic}"},
                {"op": "delete", "path": "d.txt", "force": True},
                {"op": "move", "from": "m.txt", "to": "over.txt"},
            ],
        })  # fmt: skip
        assert response.status_code == 200, response.text
        if atomic:  # put the files back for the non-atomic round
            for name in ("d.txt", "m.txt"):
                await client.put(f"{base}/files/{name}", content=f"old {name}".encode(),
                                 headers=user.headers)  # fmt: skip
    assert [v["reason"] for v in await versions(sandbox_api, user, base, "/w.txt")] == [
        "write",
        "write",
    ]
    assert [v["reason"] for v in await versions(sandbox_api, user, base, "/d.txt")] == [
        "delete",
        "delete",
    ]
    over = await versions(sandbox_api, user, base, "/over.txt")
    assert [v["reason"] for v in over] == ["overwrite", "overwrite"]
    kept = (await client.get(f"{base}/versions/{over[-1]['id']}", headers=user.headers)).content
    assert kept == b"old over.txt"
    failed = await client.post(f"{base}/files", headers=user.headers, json={
        "atomic": True, "operations": [
            {"op": "write", "path": "w.txt", "content": "never"},
            {"op": "delete", "path": "missing.txt"},
        ],
    })  # fmt: skip
    assert failed.status_code == 404
    assert len(await versions(sandbox_api, user, base, "/w.txt")) == 2


async def test_versions_queued_together_are_kept_in_order_on_both_databases(
    api_factory: ApiFactory,
) -> None:
    """Keeping versions needs no sandbox: the agent's `previous` answers of six saves, queued at
    once, go in one batch, alternately in their row and as blobs; the newest three stay, and
    the pruned ones' blobs go. Runs on SQLite and PostgreSQL (the prune is a window query)."""
    api = await api_factory(warm_pool_size=0, history_max_versions=3, history_inline_bytes=8)
    user = await api.user()
    cid = await stopped_container(api, user)
    history = api.services.files.history
    assert history is not None
    contents = [(b"v%d" % n) * (1 if n % 2 else 10) for n in range(6)]  # 2 or 20 bytes
    for data in contents:
        previous = {"path": "/home/project/a.txt", "data": base64.b64encode(data).decode()}
        history.record_later(cid, "/a.txt", previous, user_id=user.id, reason="write")
    kept = await history.versions(cid, "/a.txt")
    assert [(await history.get(cid, v.id))[1] for v in kept] == contents[:2:-1]
    stored = await api.services.storage.list_blobs(history_prefix(cid))
    assert stored == {hashlib.sha256(contents[4]).hexdigest()}
