"""Guards on the shape of the code: layering, the public package surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_layers_point_one_way() -> None:
    """import-linter contracts in pyproject.toml: api -> services -> db, never back."""
    result = subprocess.run(
        [Path(sys.executable).parent / "lint-imports", "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_importing_the_app_module_does_no_work() -> None:
    """Nothing happens at import: no settings read, no database, no files."""
    code = (
        "import os, cloudcontainer.app, cloudcontainer.cli;"
        "assert not os.path.exists('.cloudcontainer'), 'import created state'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_settings_are_read_from_the_environment_in_config_alone() -> None:
    """docs/architecture.md: config.py reads the gateway's settings; other modules only pass
    the environment on to a program they run. A new reader is a setting that no flag, TOML
    file or `docs/configuration.md` knows of."""
    passing_on = {
        "images/rootfs.py",  # the caller's proxies and apt settings, to debootstrap and apt
        "runtimes/local.py",  # PATH, for the helpers it starts
    }
    src = ROOT / "src" / "cloudcontainer"
    readers = {
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "agent" not in path.relative_to(src).parts[:1]
        and any(
            needle in line
            for line in path.read_text().splitlines()
            if not line.lstrip().startswith("#")
            for needle in ("os.environ", "os.getenv", "getenv(")
        )
    }
    assert readers <= {"config.py", *passing_on}, readers - {"config.py", *passing_on}
