"""Per-container disk quotas, enforced by the kernel on both runtimes (a loop-mounted ext4
image per sandbox): writes past the quota fail cleanly, a disk filler stops at its own
limit, deleting frees space, and deleting the container leaves no mount, loop device or image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from cloudcontainer.runtimes.disk import loop_devices_backing
from tests.conftest import PASSWORD, Api, TestUser, make_settings, running_api
from tests.sandbox_helpers import new_container, new_project, sh
from tests.support.smtp import Mailbox

MIB = 1024 * 1024
QUOTA_MB = 64


async def describe(api: Api, user: TestUser, cid: str) -> dict[str, Any]:
    response = await api.client.get(f"/api/containers/{cid}", headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def fill(
    api: Api, user: TestUser, cid: str, path: str, *, to_the_last_block: bool = False
) -> str:
    """Write zeros to `path` until the disk is full; answer dd's complaint. ext4 refuses a
    big file's growth a few hundred KiB early (it keeps room for the file's own metadata);
    `to_the_last_block` then takes those with one-byte files too."""
    result = await sh(api, user, cid, f"dd if=/dev/zero of={path} bs=1M count=1000 2>&1")
    assert result.code != 0, result.stdout
    if to_the_last_block:
        rest = f"mkdir {path}.d && i=0; while printf x > {path}.d/$i; do i=$((i+1)); done"
        assert (await sh(api, user, cid, rest)).code == 0
    return result.stdout


def mounted_under(path: Path) -> list[str]:
    """Mount points in the host's mount table at or below `path`."""
    with open("/proc/self/mounts") as handle:
        return [line for line in handle if str(path) in line]


def foreign_holders(devices: list[str]) -> set[str]:
    """The mount namespaces, other than this process's, where these loop devices are mounted.

    A mount namespace copied from the host while a docker sandbox's disk was mounted there
    (another session's local sandbox, on this host whose / is private) keeps the filesystem
    until it ends; that is documented, and no leak of the gateway's."""
    numbers = {Path(f"/sys/block/{name}/dev").read_text().strip() for name in devices}
    own = os.readlink("/proc/self/ns/mnt")
    holders = set()
    for mountinfo in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            text = mountinfo.read_text()
            namespace = os.readlink(mountinfo.parent / "ns" / "mnt")
        except OSError:
            continue
        if any(line.split()[2] in numbers for line in text.splitlines()):
            holders.add(namespace)
    assert own not in holders
    return holders


async def test_api_write_past_the_quota_is_507_and_changes_nothing(
    sandbox_api_factory: Any,
) -> None:
    api = await sandbox_api_factory(default_disk_mb=QUOTA_MB, warm_pool_size=0)
    user = await api.user()
    container = await new_container(api, user)
    cid = container["id"]
    files = f"/api/containers/{cid}/files"
    assert container["resources"]["disk_mb"] == QUOTA_MB
    assert (QUOTA_MB - 16) * MIB < container["disk"]["total_bytes"] <= QUOTA_MB * MIB
    written = await api.client.put(f"{files}/keep.txt", content=b"original", headers=user.headers)
    assert written.status_code == 200, written.text

    # Bigger than what is left: the write() itself fails.
    assert (await sh(api, user, cid, "head -c 40M /dev/zero > ballast")).code == 0
    too_big = b"x" * (20 * MIB)
    refused = await api.client.put(f"{files}/keep.txt", content=too_big, headers=user.headers)
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"]["code"] == "no_space"

    # A full disk: a small write is buffered and fails when flushed at close.
    filled = await fill(api, user, cid, "/home/project/filler", to_the_last_block=True)
    assert "No space left on device" in filled
    small = await api.client.put(f"{files}/keep.txt", content=b"tiny", headers=user.headers)
    assert small.status_code == 507, small.text
    new = await api.client.put(f"{files}/new.txt", content=b"tiny", headers=user.headers)
    assert new.status_code == 507, new.text

    kept = await api.client.get(f"{files}/keep.txt", headers=user.headers)
    assert kept.content == b"original"
    left = await sh(api, user, cid, "ls -A /home/project")
    assert ".cc-write-" not in left.stdout
    assert "new.txt" not in left.stdout


async def test_a_disk_filler_stops_at_its_own_limit(sandbox_api_factory: Any) -> None:
    api = await sandbox_api_factory(default_disk_mb=QUOTA_MB, warm_pool_size=0)
    user = await api.user()
    filler = (await new_container(api, user))["id"]
    neighbour = (await new_container(api, user))["id"]

    # The home directory shares the quota: an npm cache or a `dd` into ~ cannot escape it.
    assert "No space left on device" in await fill(api, user, filler, "/home/big")
    full = await describe(api, user, filler)
    assert full["disk"]["free_bytes"] < MIB
    # The host only holds what the sandbox wrote (the image is sparse and capped).
    image = api.services.settings.data_dir / "sandboxes" / filler / "disk.img"
    assert image.stat().st_blocks * 512 <= QUOTA_MB * MIB

    health = await api.client.get("/healthz")
    assert health.status_code == 200, health.text
    other = await api.client.put(
        f"/api/containers/{neighbour}/files/ok.txt", content=b"x" * MIB, headers=user.headers
    )
    assert other.status_code == 200, other.text

    assert (await sh(api, user, filler, "rm /home/big")).code == 0
    freed = await describe(api, user, filler)
    assert freed["disk"]["free_bytes"] > (QUOTA_MB - 24) * MIB
    again = await api.client.put(
        f"/api/containers/{filler}/files/ok.txt", content=b"x" * MIB, headers=user.headers
    )
    assert again.status_code == 200, again.text


async def test_the_disk_keeps_its_files_across_a_stop_and_start(sandbox_api_factory: Any) -> None:
    api = await sandbox_api_factory(default_disk_mb=QUOTA_MB, warm_pool_size=0)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    assert (await sh(api, user, cid, "echo kept > a.txt && echo home > ~/b.txt")).code == 0
    stopped = await api.client.post(f"/api/containers/{cid}/stop", headers=user.headers)
    assert stopped.json()["status"] == "stopped"
    started = await api.client.post(f"/api/containers/{cid}/start?wait=true", headers=user.headers)
    assert started.json()["status"] == "running", started.text
    result = await sh(api, user, cid, "cat a.txt ~/b.txt; df -k --output=size . | tail -1")
    assert result.code == 0, result.stderr
    lines = result.stdout.split()
    assert lines[:2] == ["kept", "home"]
    assert int(lines[2]) <= QUOTA_MB * 1024


async def test_deleting_a_container_leaves_no_mount_loop_device_or_image(
    sandbox_api_factory: Any, runtime_name: str
) -> None:
    api = await sandbox_api_factory(default_disk_mb=QUOTA_MB, warm_pool_size=0)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    directory = api.services.settings.data_dir / "sandboxes" / cid
    image = directory / "disk.img"
    assert image.exists()
    assert len(loop_devices_backing(image)) == 1
    assert (await sh(api, user, cid, "head -c 4M /dev/urandom > data")).code == 0

    response = await api.client.delete(f"/api/containers/{cid}", headers=user.headers)
    assert response.status_code == 204, response.text
    assert not directory.exists()
    assert mounted_under(directory) == []
    left = loop_devices_backing(image)
    if runtime_name == "local":
        assert left == []  # mounted in the sandbox's own namespace only: nothing else holds it
    else:
        assert left == [] or foreign_holders(left)
        async with aiodocker.Docker() as docker:
            names = [v["Name"] for v in (await docker.volumes.list())["Volumes"] or []]
        assert [name for name in names if cid in name] == []


async def test_a_container_without_a_quota_uses_the_host_disk(sandbox_api_factory: Any) -> None:
    api = await sandbox_api_factory(default_disk_mb=0, warm_pool_size=0)
    user = await api.user()
    container = await new_container(api, user)
    cid = container["id"]
    assert container["resources"]["disk_mb"] == 0
    assert not (api.services.settings.data_dir / "sandboxes" / cid / "disk.img").exists()
    assert container["disk"]["total_bytes"] > 1024 * MIB
    written = await api.client.put(
        f"/api/containers/{cid}/files/a.txt", content=b"hello", headers=user.headers
    )
    assert written.status_code == 200, written.text
    assert (await sh(api, user, cid, "cat a.txt && echo x > ~/h")).code == 0


async def test_resources_disk_mb_is_per_container_within_the_user_total(
    sandbox_api_factory: Any,
) -> None:
    api = await sandbox_api_factory(
        default_disk_mb=QUOTA_MB, max_disk_mb_per_user=200, warm_pool_size=0
    )
    user = await api.user()
    project = await new_project(api, user)
    bigger = await new_container(api, user, project_id=project, resources={"disk_mb": 128})
    assert bigger["resources"]["disk_mb"] == 128
    assert 100 * MIB < bigger["disk"]["total_bytes"] <= 128 * MIB
    over = await api.client.post(
        "/api/containers",
        json={"project_id": project, "resources": {"disk_mb": 128}},
        headers=user.headers,
    )
    assert over.status_code == 403, over.text
    assert over.json()["error"]["code"] == "quota_exceeded"
    assert "disk 256 > 200 MB" in over.json()["error"]["message"]
    for bad in (0, 10, 2**21, "64", 64.5):
        refused = await api.client.post(
            "/api/containers",
            json={"project_id": project, "resources": {"disk_mb": bad}},
            headers=user.headers,
        )
        assert refused.status_code == 422, (bad, refused.text)
    # The default fits beside it (128 + 64 <= 200).
    await new_container(api, user, project_id=project)


async def test_a_restarted_gateway_finds_the_disk_still_mounted(
    sandbox_api_factory: Any,
    runtime_name: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    smtp: tuple[Mailbox, int],
    mailbox: Mailbox,
) -> None:
    """A gateway that goes away (as after kill -9: nothing is stopped) and comes back
    re-adopts the running sandbox with its disk; the fixture destroys it afterwards."""
    values: dict[str, Any] = {
        "runtime": runtime_name, "health_interval_seconds": 0.2, "warm_pool_size": 0,
        "default_disk_mb": QUOTA_MB,
    }  # fmt: skip
    if runtime_name == "docker":
        values["sandbox_image"] = request.getfixturevalue("built_image").tag
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'test.db'}"
    settings = make_settings(tmp_path, url, smtp[1], **values)
    async with running_api(settings, mailbox) as first:
        user = await first.user()
        cid = (await new_container(first, user))["id"]
        assert (await sh(first, user, cid, "echo kept > a.txt")).code == 0
    async with running_api(settings, mailbox) as second:
        login = await second.client.post(
            "/api/auth/login", json={"email": user.email, "password": PASSWORD}
        )
        user.tokens = login.json()
        container = await describe(second, user, cid)
        assert container["status_reason"] == "re-adopted after a gateway restart"
        assert container["disk"]["total_bytes"] <= QUOTA_MB * MIB
        result = await sh(second, user, cid, "cat a.txt")
        assert (result.stdout, result.code) == ("kept\n", 0)
