"""What a root filesystem must answer before it becomes current, and how it is asked.

Each tool runs in the new tree the way a `local` sandbox runs (bubblewrap, uid 1000, read-only,
no network); its answer's first line goes into the manifest's `tools`, which `GET
/api/toolchains` serves and the tests compare every runtime against.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudcontainer.images import rootfs, toolchains
from cloudcontainer.images.errors import VerificationFailed
from cloudcontainer.images.progress import Progress

__all__ = ["CHECKS", "WORKDIR", "check_pins", "verify_rootfs"]

WORKDIR = "/home/project"


@dataclass(frozen=True)
class _Check:
    name: str
    argv: tuple[str, ...]
    expect: str  # a regular expression the output must start with
    node: str = toolchains.DEFAULT_NODE  # whose PATH it runs with

    def passes(self, output: str) -> bool:
        return re.match(self.expect, output.strip()) is not None


def _node_checks(release: toolchains.NodeRelease) -> list[_Check]:
    major = release.major
    return [
        _Check(f"node{major}", ("node", "--version"), rf"v{major}\.", major),
        _Check(f"npm{major}", ("npm", "--version"), rf"{release.npm_major}\.", major),
        _Check(f"corepack{major}", ("corepack", "--version"), r"0\.", major),
    ]


CHECKS = (
    *(check for release in toolchains.NODE_MAJORS.values() for check in _node_checks(release)),
    _Check("python3", ("python3", "--version"), r"Python 3\.(9|[1-9][0-9])\b"),
    _Check("pip", ("pip", "--version"), r"pip \d"),
    _Check("gcc", ("gcc", "--version"), r"gcc \(Debian"),
    _Check("make", ("make", "--version"), r"GNU Make \d"),
    _Check("git", ("git", "--version"), r"git version \d"),
    _Check("ssh", ("ssh", "-V"), r"OpenSSH_\d"),
    _Check("curl", ("curl", "--version"), r"curl \d"),
    _Check("jq", ("jq", "--version"), r"jq-\d"),
    _Check("sqlite3", ("sqlite3", "--version"), r"3\.\d"),
    _Check("ripgrep", ("rg", "--version"), r"ripgrep \d"),
    _Check("unzip", ("unzip", "-v"), r"UnZip \d"),
    _Check("user", ("id", "user"), r"uid=1000\(user\) gid=1000\(user\)"),
    _Check("workdir", ("stat", "-c", "%u:%g %n", WORKDIR), rf"1000:1000 {WORKDIR}$"),
)


async def verify_rootfs(root: Path, progress: Progress) -> dict[str, str]:
    """Run each check in the tree as a sandbox does (bubblewrap, uid 1000, read-only, no
    network); the first line of each answer is what the manifest records."""
    task = progress.task("Verify the root filesystem", total=len(CHECKS), unit="items")
    versions: dict[str, str] = {}
    for check in CHECKS:
        command = " ".join(check.argv)
        task.detail(command)
        env = {"HOME": "/home", "LANG": "C.UTF-8", **toolchains.toolchain_env(check.node)}
        # The tree bound on /mnt by root in a mount namespace of its own (the store may sit
        # under a directory only root may enter), then uid 1000 outside too: the user's files
        # in the tree are owned by the host's 1000.
        argv: list[str | Path] = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", 'mount --bind "$1" /mnt && shift && exec "$@"', "sh", root,
            "setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
            "bwrap", "--ro-bind", "/mnt", "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--unshare-all", "--uid", "1000", "--gid", "1000",  # noqa: S108
            "--clearenv", "--chdir", "/",
        ]  # fmt: skip
        for key, value in env.items():
            argv += ["--setenv", key, value]
        code, output = await _output([*argv, *check.argv])
        if code != 0 or not check.passes(output):
            raise VerificationFailed(
                f"`{command}` in the new root filesystem answered {output.strip()[:300]!r} "
                f"(exit status {code}); expected output matching {check.expect!r}"
            )
        versions[check.name] = output.strip().splitlines()[0]
        task.advance(1)
    task.done()
    return versions


def check_pins(root: Path, manifest: Mapping[str, Any]) -> None:
    """A rebuild holds exactly the packages the manifest records, at its versions."""
    wanted: Mapping[str, str] = manifest["debian"]["packages"]
    got = rootfs.debian_record(root)["packages"]
    assert isinstance(got, dict)
    differ = sorted(
        f"{name} {wanted.get(name, 'absent')} -> {got.get(name, 'absent')}"
        for name in set(wanted) | set(got)
        if wanted.get(name) != got.get(name)
    )
    if differ:
        shown = "; ".join(differ[:8]) + ("; ..." if len(differ) > 8 else "")
        raise VerificationFailed(
            f"the rebuild differs from the manifest in {len(differ)} packages ({shown}): point "
            "--debian-mirror and --security-mirror at snapshot.debian.org archives of the "
            "manifest's release dates"
        )


async def _output(argv: list[str | Path]) -> tuple[int, str]:
    """Exit status and whole output (stdout, then stderr) of a short command."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise VerificationFailed(f"`{argv[-1]}` did not finish within 60 s") from None
    assert process.returncode is not None
    return process.returncode, (out + err).decode(errors="replace")
