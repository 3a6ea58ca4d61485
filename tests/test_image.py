"""`cloudcontainer image build`, for real: debootstrap, the npm registry and a Docker Engine.

The image is built once per session under a throwaway tag, from an empty cache (set
CLOUDCONTAINER_TEST_IMAGE_CACHE to a directory to reuse the Debian rootfs between sessions), and
removed at the end. Building needs root.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from cloudcontainer.images.archive import ImageArchive, Layer
from cloudcontainer.images.engine import normalize_tag
from cloudcontainer.images.errors import InvalidTag
from tests.support.image import BuiltImage, build

# The session's image build (tests/conftest.py) may run inside one of these tests.
pytestmark = pytest.mark.timeout(1800)


def test_build_tags_the_image_and_reports_each_tool(built_image: BuiltImage) -> None:
    assert f"Built {built_image.tag}" in built_image.output
    for tool in ("node", "npm", "python3", "ripgrep", "git", "curl"):
        assert f"\n  {tool} " in built_image.output
    assert "Traceback" not in built_image.output
    config = built_image.inspect()["Config"]
    assert isinstance(config, dict)
    assert config["WorkingDir"] == "/home/project"
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["Env"]
    assert not config.get("User")  # the runtime picks the user
    assert config["Labels"]["io.cloudcontainer.node"].startswith("20.")


def test_build_caches_the_debian_rootfs_and_the_npm_tarballs(built_image: BuiltImage) -> None:
    assert list(built_image.cache_dir.glob("debootstrap-bookworm-minbase-*.tar"))
    assert list(built_image.cache_dir.glob("npm/node-linux-*-20.*.tgz"))
    assert list(built_image.cache_dir.glob("npm/npm-10.*.tgz"))
    assert not list(built_image.cache_dir.glob("build-*")), "the scratch rootfs was left behind"


def test_node_is_major_20(built_image: BuiltImage) -> None:
    assert built_image.run("node", "--version").startswith("v20.")


def test_npm_is_major_10_and_runs_under_node(built_image: BuiltImage) -> None:
    assert built_image.run("npm", "--version").startswith("10.")
    assert built_image.run("npx", "--version").startswith("10.")


def test_python3_is_at_least_3_9(built_image: BuiltImage) -> None:
    version = built_image.run("python3", "-c", "import sys; print(*sys.version_info[:2])")
    major, minor = (int(part) for part in version.split())
    assert (major, minor) >= (3, 9)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(("git", "--version"), "git version ", id="git"),
        pytest.param(("rg", "--version"), "ripgrep ", id="ripgrep"),
        pytest.param(("curl", "--version"), "curl ", id="curl"),
        pytest.param(("wget", "--version"), "GNU Wget ", id="wget"),
        pytest.param(("bash", "--version"), "GNU bash", id="bash"),
        pytest.param(("ps", "--version"), "ps from procps", id="procps"),
    ],
)
def test_tool_is_present(built_image: BuiltImage, argv: tuple[str, ...], expected: str) -> None:
    assert built_image.run(*argv).startswith(expected)


def test_user_is_uid_and_gid_1000_with_home_in_home(built_image: BuiltImage) -> None:
    assert built_image.run("id", "user").startswith("uid=1000(user) gid=1000(user)")
    assert built_image.run("sh", "-c", "getent passwd user") == (
        "user:x:1000:1000::/home:/bin/bash"
    )
    assert built_image.run("stat", "-c", "%u:%g", "/home") == "1000:1000"


def test_workdir_is_home_project_owned_by_1000(built_image: BuiltImage) -> None:
    assert built_image.run("stat", "-c", "%u:%g", "/home/project") == "1000:1000"
    assert built_image.run("pwd") == "/home/project"


def test_second_build_without_force_is_a_no_op(built_image: BuiltImage) -> None:
    before = built_image.inspect()["Id"]
    again = build(
        "--tag", built_image.tag, "--cache-dir", str(built_image.cache_dir),
        docker_url=built_image.docker_url,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stderr
    assert "debootstrap" not in again.stderr
    assert built_image.inspect()["Id"] == before


@pytest.mark.parametrize("tag", ["Not A Tag!!", "Upper:x", "name:tag:tag", "a/b:" + "t" * 200])
def test_bad_tag_fails_clearly_before_any_work(tmp_path: Path, tag: str) -> None:
    result = build("--tag", tag, "--cache-dir", str(tmp_path), docker_url="unix:///nonexistent")
    assert result.returncode == 2
    assert "invalid image tag" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_unreachable_docker_engine_fails_clearly(tmp_path: Path) -> None:
    socket = tmp_path / "no-docker.sock"
    result = build("--cache-dir", str(tmp_path), docker_url=f"unix://{socket}")
    assert result.returncode == 1
    said = " ".join(result.stderr.split())  # rich wraps lines at the terminal's width
    assert "Docker Engine" in said
    assert "does not answer" in said
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("tag", "normal"),
    [
        ("cloudcontainer/sandbox:node20", "cloudcontainer/sandbox:node20"),
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
