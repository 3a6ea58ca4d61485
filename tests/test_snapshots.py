"""Workspace snapshots on real sandboxes, in the local object store and in S3 (moto): a new
container of the project gets the snapshot back exactly; only changed contents are uploaded;
excludes hold; a stop snapshots; a broken store is a clear error and never blocks a stop."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, new_project, sh, wait_for_status
from tests.support.s3 import S3Server

# Every kind of entry a snapshot keeps: text, binary, an executable, an empty folder, a folder
# with its own mode, relative and dangling symlinks, and node_modules (excluded by default).
WORKSPACE = r"""
set -e
mkdir -p src/deep/er empty private node_modules/left-pad web/node_modules/x
printf 'export default 1;\n' > src/App.tsx
head -c 3000 /dev/urandom > src/deep/er/blob.bin
printf '#!/bin/sh\necho hi\n' > run.sh && chmod 755 run.sh
printf 'secret' > private/key && chmod 600 private/key && chmod 750 private
ln -s src/App.tsx app-link
ln -s does/not/exist dangling
printf 'module' > node_modules/left-pad/index.js
printf 'x' > web/node_modules/x/y.js
"""

# One line per entry (type, mode, size or link target) and the hash of every file.
LISTING = r"""
find . -mindepth 1 -name node_modules -prune -o \
  -type f -printf '%p f %m %s\n' -o -type d -printf '%p d %m\n' -o -type l -printf '%p l %l\n' \
  | sort
find . -name node_modules -prune -o -type f -exec sha256sum {} + | sort
"""


async def listing(api: Api, user: TestUser, cid: str) -> str:
    result = await sh(api, user, cid, LISTING)
    assert result.code == 0, result.stderr
    return result.stdout


async def snapshot(api: Api, user: TestUser, cid: str) -> dict[str, Any]:
    response = await api.client.post(f"/api/containers/{cid}/snapshots", headers=user.headers)
    assert response.status_code == 201, response.text
    taken: dict[str, Any] = response.json()
    return taken


async def project_snapshots(api: Api, user: TestUser, project_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/api/projects/{project_id}/snapshots", headers=user.headers)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()
    return listed


async def delete_container(api: Api, user: TestUser, cid: str) -> None:
    response = await api.client.delete(f"/api/containers/{cid}", headers=user.headers)
    assert response.status_code == 204, response.text


async def round_trip(api: Api) -> None:
    user = await api.user()
    project = await new_project(api, user)
    first = (await new_container(api, user, project_id=project))["id"]
    assert (await sh(api, user, first, WORKSPACE)).code == 0
    before = await listing(api, user, first)
    taken = await snapshot(api, user, first)
    assert taken["project_id"] == project
    assert taken["container_id"] == first
    assert taken["reason"] == "manual"
    assert taken["uploaded_count"] == taken["file_count"] > 4
    await delete_container(api, user, first)

    second = (await new_container(api, user, project_id=project))["id"]
    assert await listing(api, user, second) == before
    assert "node_modules" not in (await sh(api, user, second, "ls -a; ls -a web")).stdout
    assert (await sh(api, user, second, "./run.sh")).stdout == "hi\n"
    (listed,) = await project_snapshots(api, user, project)
    assert listed == taken


async def test_a_new_container_of_the_project_gets_its_snapshot(sandbox_api: Api) -> None:
    await round_trip(sandbox_api)


async def test_snapshots_in_s3(sandbox_api_factory: Any, s3: S3Server, s3_bucket: str) -> None:
    await round_trip(await sandbox_api_factory(**s3.settings(s3_bucket)))


async def test_a_second_snapshot_uploads_only_changed_contents(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    await sh(sandbox_api, user, cid, WORKSPACE)
    first = await snapshot(sandbox_api, user, cid)
    await sh(sandbox_api, user, cid, "printf 12345 > src/App.tsx; printf abc > new.txt; rm run.sh")
    second = await snapshot(sandbox_api, user, cid)
    assert (second["uploaded_count"], second["uploaded_bytes"]) == (2, 8)
    assert second["file_count"] == first["file_count"]  # one new, one removed
    # Same content under another name is not uploaded again either.
    await sh(sandbox_api, user, cid, "cp src/deep/er/blob.bin copy.bin")
    third = await snapshot(sandbox_api, user, cid)
    assert (third["uploaded_count"], third["uploaded_bytes"]) == (0, 0)
    assert third["total_bytes"] == second["total_bytes"] + 3000


async def test_restore_makes_the_workspace_equal_to_a_snapshot(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    await sh(sandbox_api, user, cid, WORKSPACE)
    before = await listing(sandbox_api, user, cid)
    taken = await snapshot(sandbox_api, user, cid)
    await sh(
        sandbox_api, user, cid,
        "rm -r src empty app-link; printf x > extra.txt; mkdir -p more/deep; "
        "printf changed > private/key; chmod 644 run.sh; rm dangling; mkdir dangling",
    )  # fmt: skip
    response = await sandbox_api.client.post(
        f"/api/containers/{cid}/snapshots/{taken['id']}/restore", headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert await listing(sandbox_api, user, cid) == before
    # Excluded paths are not the snapshot's business: they stay as they are.
    assert (
        await sh(sandbox_api, user, cid, "cat node_modules/left-pad/index.js")
    ).stdout == "module"


async def test_excludes_come_from_the_settings(sandbox_api_factory: Any) -> None:
    api: Api = await sandbox_api_factory(snapshot_exclude=["*.log", "build/out"])
    user = await api.user()
    project = await new_project(api, user)
    cid = (await new_container(api, user, project_id=project))["id"]
    await sh(
        api, user, cid,
        "mkdir -p build/out build/keep logs node_modules/m && printf 1 > a.log && "
        "printf 2 > logs/b.log && printf 3 > build/out/c && printf 4 > build/keep/d && "
        "printf 5 > node_modules/m/i.js",
    )  # fmt: skip
    await snapshot(api, user, cid)
    await delete_container(api, user, cid)
    again = (await new_container(api, user, project_id=project))["id"]
    found = (await sh(api, user, again, "find . -path ./src -prune -o -print | sort")).stdout
    assert "./build/keep/d" in found
    assert "./node_modules/m/i.js" in found  # not excluded by these settings
    for left_out in ("a.log", "logs/b.log", "build/out"):
        assert f"./{left_out}\n" not in found, left_out
    assert "./logs\n" in found


async def test_a_stop_snapshots_the_workspace(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    project = await new_project(sandbox_api, user)
    cid = (await new_container(sandbox_api, user, project_id=project))["id"]
    await sh(sandbox_api, user, cid, "printf kept > at-stop.txt")
    response = await sandbox_api.client.post(f"/api/containers/{cid}/stop", headers=user.headers)
    assert response.status_code == 200, response.text
    stopped = await wait_for_status(sandbox_api, user, cid, "stopped")
    assert "snapshot failed" not in stopped["status_reason"]
    (taken,) = await project_snapshots(sandbox_api, user, project)
    assert taken["reason"] == "stop"
    await delete_container(sandbox_api, user, cid)
    again = (await new_container(sandbox_api, user, project_id=project))["id"]
    assert (await sh(sandbox_api, user, again, "cat at-stop.txt")).stdout == "kept"


async def test_a_broken_store_is_a_clear_error_and_does_not_block_stopping(
    sandbox_api_factory: Any, s3: S3Server
) -> None:
    api: Api = await sandbox_api_factory(**s3.settings("no-such-bucket"))
    user = await api.user()
    project = await new_project(api, user)
    cid = (await new_container(api, user, project_id=project))["id"]
    response = await api.client.post(f"/api/containers/{cid}/snapshots", headers=user.headers)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable"
    assert "Object storage failed" in error["message"]
    assert (await api.client.get("/readyz")).status_code == 503
    response = await api.client.post(f"/api/containers/{cid}/stop", headers=user.headers)
    assert response.status_code == 200, response.text
    stopped = await wait_for_status(api, user, cid, "stopped")
    assert "snapshot failed: Object storage failed" in stopped["status_reason"]
    assert await project_snapshots(api, user, project) == []


async def test_others_snapshots_are_not_found(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    project = await new_project(sandbox_api, user)
    cid = (await new_container(sandbox_api, user, project_id=project))["id"]
    taken = await snapshot(sandbox_api, user, cid)
    other = await sandbox_api.user("other@example.com")
    client = sandbox_api.client
    for method, url, code in (
        ("POST", f"/api/containers/{cid}/snapshots", "container_not_found"),
        ("POST", f"/api/containers/{cid}/snapshots/{taken['id']}/restore", "container_not_found"),
        ("GET", f"/api/projects/{project}/snapshots", "project_not_found"),
    ):
        response = await client.request(method, url, headers=other.headers)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"]["code"] == code
    # Another project's snapshot cannot be restored into this container.
    mine = (await new_container(sandbox_api, user))["id"]
    response = await client.post(
        f"/api/containers/{mine}/snapshots/{taken['id']}/restore", headers=user.headers
    )
    assert response.json()["error"]["code"] == "snapshot_not_found"
    response = await client.post(
        f"/api/containers/{mine}/snapshots/bad%20id/restore", headers=user.headers
    )
    assert response.status_code == 422


async def test_deleting_the_project_deletes_its_snapshots(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    project = await new_project(sandbox_api, user)
    cid = (await new_container(sandbox_api, user, project_id=project))["id"]
    await snapshot(sandbox_api, user, cid)
    storage = sandbox_api.services.storage
    assert await storage.list_blobs(f"projects/{project}")
    response = await sandbox_api.client.delete(f"/api/projects/{project}", headers=user.headers)
    assert response.status_code == 204, response.text
    assert await storage.list_blobs(f"projects/{project}") == set()


async def test_old_snapshots_and_their_blobs_are_pruned(sandbox_api_factory: Any) -> None:
    keep = 2
    api: Api = await sandbox_api_factory(snapshot_keep=keep)
    user = await api.user()
    project = await new_project(api, user)
    cid = (await new_container(api, user, project_id=project))["id"]
    for number in range(4):
        await sh(api, user, cid, f"printf {number} > n.txt")
        await snapshot(api, user, cid)
    listed = await project_snapshots(api, user, project)
    assert len(listed) == keep
    stored = await api.services.storage.list_blobs(f"projects/{project}")
    assert hashlib.sha256(b"0").hexdigest() not in stored
    assert hashlib.sha256(b"3").hexdigest() in stored
    assert hashlib.sha256(b"2").hexdigest() in stored


async def test_changed_workspaces_are_snapshotted_in_the_background(
    sandbox_api_factory: Any,
) -> None:
    api: Api = await sandbox_api_factory(snapshot_interval_seconds=0.2)
    user = await api.user()
    project = await new_project(api, user)
    cid = (await new_container(api, user, project_id=project))["id"]
    await sh(api, user, cid, "printf auto > auto.txt")
    async with asyncio.timeout(60):  # an upper bound, not a measured timing
        while not (listed := await project_snapshots(api, user, project)):
            await asyncio.sleep(0.1)
    assert listed[0]["reason"] == "auto"
    assert listed[0]["container_id"] == cid
    # An unchanged workspace is not snapshotted again.
    container = await api.services.containers.get(None, cid)
    link = api.services.containers.links[cid]
    assert await api.services.snapshots._take(container, link, "auto", only_if_changed=True) is None


async def test_a_project_whose_snapshot_is_lost_does_not_start_from_the_template(
    sandbox_api: Api,
) -> None:
    """Starting from the template would hide the saved work (and the next snapshot would
    overwrite it); the container fails and says why instead."""
    user = await sandbox_api.user()
    project = await new_project(sandbox_api, user)
    cid = (await new_container(sandbox_api, user, project_id=project))["id"]
    taken = await snapshot(sandbox_api, user, cid)
    await delete_container(sandbox_api, user, cid)
    storage = sandbox_api.services.storage
    await storage.delete_object(f"projects/{project}/snapshots/{taken['id']}.json")
    response = await sandbox_api.client.post(
        "/api/containers?wait=true", json={"project_id": project}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    failed = response.json()
    assert failed["status"] == "failed"
    assert f"Snapshot {taken['id']} is missing from object storage" in failed["status_reason"]
