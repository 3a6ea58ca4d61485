"""The sandbox environment (issue 11): one root filesystem, the same toolchain on every runtime.

Every sandbox here starts from the session's real build (tests/conftest.py `built_rootfs`), and
installs talk to the real npm registry and PyPI.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from cloudcontainer.images import toolchains
from cloudcontainer.images.store import MANIFEST_FORMAT, RootfsStore
from tests.conftest import Api, ApiFactory
from tests.sandbox_helpers import new_container, new_project, run, sh, wait_for_status
from tests.support.image import BuiltRootfs
from tests.support.server import CLI, cli_env

# npm and pip installs from the registries, and a compiler run.
INSTALL_TIMEOUT = 600


async def test_the_same_toolchain_on_every_runtime(
    sandbox_api: Api, built_rootfs: BuiltRootfs
) -> None:
    """What the build recorded (run under bubblewrap at build time) is what a sandbox of either
    runtime answers: the same tree, not the host's tools."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    tools = built_rootfs.current.manifest["tools"]
    for name, argv in (("node24", "node --version"), ("npm24", "npm --version"),
                       ("python3", "python3 --version"), ("pip", "pip --version"),
                       ("gcc", "gcc --version"), ("git", "git --version"),
                       ("jq", "jq --version"), ("sqlite3", "sqlite3 --version"),
                       ("ssh", "ssh -V 2>&1")):  # fmt: skip
        answer = await sh(sandbox_api, user, cid, argv)
        assert answer.code == 0, (argv, answer)
        assert answer.stdout.strip().splitlines()[0] == tools[name], argv
    corepack = await sh(
        sandbox_api, user, cid, "for c in pnpm yarn corepack; do command -v $c; done"
    )
    node_bin = f"{toolchains.node_prefix(toolchains.DEFAULT_NODE)}/bin"
    # corepack fetches pnpm from the npm registry on first use, without asking (bolt.diy's own
    # templates use pnpm); the tree is read-only, so it lands in the home directory.
    pnpm = await sh(sandbox_api, user, cid, "pnpm --version && ls ~/.cache/node/corepack")
    assert pnpm.code == 0, pnpm
    assert re.match(r"\d+\.\d+\.\d+\n", pnpm.stdout), pnpm
    assert corepack.stdout.split() == [
        f"{node_bin}/pnpm",
        f"{node_bin}/yarn",
        f"{node_bin}/corepack",
    ]


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_a_local_sandbox_sees_none_of_the_hosts_usr(
    sandbox_api: Api, runtime_name: str
) -> None:
    host_only = next(
        path
        for path in (
            "/usr/bin/psql",
            "/usr/bin/wrk",
            "/usr/bin/pg_ctlcluster",
            "/usr/sbin/dockerd",
            "/usr/bin/debootstrap",
        )
        if os.path.exists(path)
    )
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    seen = await sh(sandbox_api, user, cid, f"test -e {host_only} && echo visible || echo absent")
    assert seen.stdout.strip() == "absent", host_only
    written = await sh(sandbox_api, user, cid, "touch /usr/local/bin/x /etc/x /opt/x 2>&1; echo $?")
    assert "Read-only file system" in written.stdout
    assert written.stdout.strip().endswith("1")


async def test_node_22_is_chosen_per_container(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    container = await new_container(sandbox_api, user, toolchain={"node": "22"})
    assert container["toolchain"] == {"node": "22"}
    versions = await sh(
        sandbox_api, user, container["id"],
        "node -v; npm -v; echo $npm_package_config_node_gyp_nodedir",
    )  # fmt: skip
    node, npm, nodedir = versions.stdout.split()
    assert node.startswith("v22.")
    assert npm.startswith("10.")
    assert nodedir == toolchains.node_prefix("22")
    # A terminal's login shell, a script's `#!/usr/bin/env node`: the same choice.
    script = "printf '#!/usr/bin/env node\\nconsole.log(process.version)' > s && chmod +x s && ./s"
    assert (await sh(sandbox_api, user, container["id"], script)).stdout.startswith("v22.")
    listed = await sandbox_api.client.get(
        f"/api/containers/{container['id']}", headers=user.headers
    )
    assert listed.json()["toolchain"] == {"node": "22"}


async def test_an_unknown_node_major_is_422_naming_the_choices(api: Api) -> None:
    user = await api.user()
    project_id = await new_project(api, user)
    for node in ("18", "latest", "24.1"):
        response = await api.client.post(
            "/api/containers", headers=user.headers,
            json={"project_id": project_id, "toolchain": {"node": node}},
        )  # fmt: skip
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "unknown_toolchain"
        for choice in toolchains.NODE_MAJORS:
            assert choice in error["message"]
    listed = await api.client.get("/api/containers", headers=user.headers)
    assert listed.json() == []


async def test_toolchains_endpoint_describes_the_current_build(
    api: Api, built_rootfs: BuiltRootfs
) -> None:
    assert (await api.client.get("/api/toolchains")).status_code == 401
    user = await api.user()
    response = await api.client.get("/api/toolchains", headers=user.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    build = built_rootfs.current
    assert body["rootfs"] == build.id
    majors = [entry["major"] for entry in body["node"]]
    assert majors == list(toolchains.NODE_MAJORS)
    default = next(entry for entry in body["node"] if entry["default"])
    assert default["major"] == toolchains.DEFAULT_NODE
    assert f"v{default['version']}" == build.manifest["tools"]["node24"]
    assert body["tools"]["python3"].startswith("Python 3.")
    assert body["debian"]["suite"] == "bookworm"


async def test_toolchains_without_a_build_say_what_to_run(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    api = await api_factory(rootfs_dir=tmp_path / "empty")
    user = await api.user()
    response = await api.client.get("/api/toolchains", headers=user.headers)
    assert response.status_code == 503
    assert "cloudcontainer image build" in response.json()["error"]["message"]


@pytest.mark.timeout(INSTALL_TIMEOUT)
async def test_a_native_module_builds_from_source_with_the_images_headers(
    sandbox_api: Api,
) -> None:
    """node-gyp compiles against /opt/node/<major>/include: nothing is fetched from
    nodejs.org (these machines, like many firewalled servers, reach only registries)."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    built = await sh(
        sandbox_api, user, cid,
        "npm install --no-audit --no-fund --build-from-source bufferutil@4 2>&1 | tail -5 && "
        "ls node_modules/bufferutil/build/Release/*.node && "
        "node -e \"const b = require('bufferutil'); const out = Buffer.alloc(4); "
        "b.mask(Buffer.from('abcd'), Buffer.from([1,2,3,4]), out, 0, 4); console.log(out.toString('hex'))\"",
    )  # fmt: skip
    assert built.code == 0, built
    assert "bufferutil.node" in built.stdout
    assert built.stdout.strip().splitlines()[-1] == "60606060"
    headers = await sh(sandbox_api, user, cid, "ls ~/.cache/node-gyp 2>&1 || true")
    assert "No such file" in headers.stdout, "node-gyp downloaded headers instead of the image's"
    # ...and npm says nothing of how: bolt.diy shows every command's output.
    quiet = await sh(sandbox_api, user, cid, "npm config get registry 2>&1")
    assert "warn" not in quiet.stdout, quiet


@pytest.mark.timeout(INSTALL_TIMEOUT)
async def test_pip_install_flask_and_serve(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    installed = await sh(
        sandbox_api, user, cid, "pip install --quiet flask 2>&1 | tail -3; flask --version"
    )
    assert installed.code == 0, installed
    assert "Flask" in installed.stdout
    app = (
        "from flask import Flask\\napp = Flask(__name__)\\n"
        "@app.get('/')\\ndef hello():\\n    return 'hello from flask'\\n"
    )
    served = await sh(
        sandbox_api, user, cid,
        f"printf \"{app}\" > app.py && (setsid flask --app app run --port 5055 "
        ">/tmp/flask.log 2>&1 &) && for i in $(seq 100); do curl -sf http://127.0.0.1:5055/ "
        "&& exit 0; sleep 0.2; done; cat /tmp/flask.log; exit 1",
    )  # fmt: skip
    assert served.code == 0, served
    assert served.stdout.strip() == "hello from flask"
    venv = await sh(
        sandbox_api, user, cid,
        "python3 -m venv /tmp/v && /tmp/v/bin/pip --version && /tmp/v/bin/python -c 'import sys; print(sys.prefix)'",
    )  # fmt: skip
    assert venv.code == 0, venv
    assert venv.stdout.strip().splitlines()[-1] == "/tmp/v"


# -- rebuilds ----------------------------------------------------------------------------------


def _linked_build(store: RootfsStore, source: Path, build_id: str, marker: str) -> None:
    """A build sharing the session's files (hard links), told apart by /etc/cc-build."""
    scratch = store.begin()
    subprocess.run(["cp", "-al", str(source), str(scratch / "root")], check=True)
    (scratch / "root/etc/cc-build").write_text(marker)
    store.commit(scratch, {"format": MANIFEST_FORMAT, "id": build_id})


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_a_rebuild_waits_for_each_sandboxs_next_start_and_prune_keeps_what_runs(
    sandbox_api_factory: ApiFactory, built_rootfs: BuiltRootfs, tmp_path: Path, runtime_name: str
) -> None:
    store = RootfsStore(tmp_path / "store")
    source = built_rootfs.current.root
    _linked_build(store, source, "20260101T000000Z-aaaaaaaa", "first")
    api = await sandbox_api_factory(rootfs_dir=store.directory)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    assert (await run(api, user, cid, "cat", "/etc/cc-build")).stdout == "first"

    _linked_build(store, source, "20260102T000000Z-bbbbbbbb", "second")
    assert (await run(api, user, cid, "cat", "/etc/cc-build")).stdout == "first"
    env = cli_env(data_dir=str(tmp_path / "data"), rootfs_dir=str(store.directory))
    pruned = subprocess.run(
        [*CLI, "image", "prune"], capture_output=True, text=True, env=env, timeout=120
    )
    assert pruned.returncode == 0, pruned.stderr
    assert [b.id for b in store.builds()] == [
        "20260101T000000Z-aaaaaaaa",
        "20260102T000000Z-bbbbbbbb",
    ]

    restarted = await api.client.post(
        f"/api/containers/{cid}/restart?wait=true", headers=user.headers
    )
    assert restarted.status_code == 202, restarted.text
    await wait_for_status(api, user, cid, "running")
    assert (await run(api, user, cid, "cat", "/etc/cc-build")).stdout == "second"
    pruned = subprocess.run(
        [*CLI, "image", "prune"], capture_output=True, text=True, env=env, timeout=120
    )
    assert pruned.returncode == 0, pruned.stderr
    assert "20260101T000000Z-aaaaaaaa" in pruned.stdout + pruned.stderr
    assert [b.id for b in store.builds()] == ["20260102T000000Z-bbbbbbbb"]
    assert not (store.builds_dir / "20260101T000000Z-aaaaaaaa").exists()


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_a_half_built_tree_is_never_started_and_a_finished_build_is_taken_up(
    sandbox_api_factory: ApiFactory, built_rootfs: BuiltRootfs, tmp_path: Path,
    runtime_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A build without its manifest (an interrupted `image build`) is not a root filesystem:
    the server says what to run instead of starting sandboxes on it. Once a build is
    finished, the next request checks again and takes it up, no restart needed."""
    from cloudcontainer.sandbox import service

    monkeypatch.setattr(service, "RECHECK_SECONDS", 0.0)
    store = RootfsStore(tmp_path / "store")
    (store.builds_dir / "20260101T000000Z-aaaaaaaa/root").mkdir(parents=True)
    (store.directory / "current").symlink_to("builds/20260101T000000Z-aaaaaaaa")
    api = await sandbox_api_factory(rootfs_dir=store.directory)
    user = await api.user()
    project_id = await new_project(api, user)
    refused = await api.client.post(
        "/api/containers", json={"project_id": project_id}, headers=user.headers
    )
    assert refused.status_code == 503, refused.text
    assert "cloudcontainer image build" in refused.json()["error"]["message"]
    _linked_build(store, built_rootfs.current.root, "20260102T000000Z-bbbbbbbb", "built")
    container = await new_container(api, user, project_id=project_id)
    assert (await run(api, user, container["id"], "cat", "/etc/cc-build")).stdout == "built"
