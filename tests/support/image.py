"""The sandbox root filesystem and image, built for real once per test session
(tests/conftest.py): every sandbox of the suite, on every runtime, starts from them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloudcontainer.images.store import Build, RootfsStore
from tests.support.server import CLI, cli_env

# A cold build is debootstrap and apt (about two minutes here) plus the Node.js downloads.
BUILD_TIMEOUT_SECONDS = 1500


@dataclass
class BuiltRootfs:
    directory: Path
    output: str

    @property
    def store(self) -> RootfsStore:
        return RootfsStore(self.directory)

    @property
    def current(self) -> Build:
        build = self.store.current()
        assert build is not None
        return build


@dataclass
class BuiltImage:
    tag: str
    rootfs: BuiltRootfs
    docker_url: str
    output: str

    def run(self, *argv: str) -> str:
        """Run `argv` in the image as the sandbox user, without network; its output."""
        result = subprocess.run(
            ["docker", "--host", self.docker_url, "run", "--rm", "--network", "none",
             "--user", "1000:1000", self.tag, *argv],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def inspect(self) -> dict[str, object]:
        result = subprocess.run(
            ["docker", "--host", self.docker_url, "image", "inspect", self.tag],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        image: dict[str, object] = json.loads(result.stdout)[0]
        return image


def build(*args: str, rootfs_dir: Path, docker_url: str) -> subprocess.CompletedProcess[str]:
    """`cloudcontainer image build ARGS` against the store at `rootfs_dir`."""
    return subprocess.run(
        [*CLI, "image", "build", "--docker-host", docker_url, *args],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS,
        env=cli_env(rootfs_dir=str(rootfs_dir)),
    )  # fmt: skip
