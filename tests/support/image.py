"""The sandbox image, built for real once per test session (see tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import CLI, cli_env

# A cold build is a debootstrap (about a minute here) plus Node downloads and a docker load.
BUILD_TIMEOUT_SECONDS = 1500


@dataclass
class BuiltImage:
    tag: str
    cache_dir: Path
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


def build(*args: str, docker_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "image", "build", "--docker-host", docker_url, *args],
        capture_output=True, text=True, env=cli_env(), timeout=BUILD_TIMEOUT_SECONDS,
    )  # fmt: skip
