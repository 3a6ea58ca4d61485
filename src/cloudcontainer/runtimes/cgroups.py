"""cpu/memory/pids limits for local sandboxes through cgroups, v2 or v1, where writable.

A sandbox's first process writes its own pid into `procs_files()` before it execs the
sandbox, so every process it starts is inside the limits from the first instruction.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import structlog

__all__ = ["CgroupLimits"]

log = structlog.get_logger(__name__)

ROOT = Path("/sys/fs/cgroup")
GROUP = "cloudcontainer"
CPU_PERIOD_US = 100_000


class CgroupLimits:
    """Creates and removes one cgroup per sandbox. `available` is False (and `problem` says
    why) when the host's cgroup tree is read-only, missing or lacks a controller; the local
    runtime then refuses to start sandboxes unless the operator allows it."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.version = 2 if (root / "cgroup.controllers").exists() else 1
        self.problem = ""
        self.available = self._prepare()

    def _v1(self, controller: str, sandbox_id: str = "") -> Path:
        return self.root / controller / GROUP / sandbox_id

    def _v2(self, sandbox_id: str = "") -> Path:
        return self.root / GROUP / sandbox_id

    def _prepare(self) -> bool:
        try:
            if self.version == 2:
                self._v2().mkdir(exist_ok=True)
                wanted = "+cpu +memory +pids"
                for path in (
                    self.root / "cgroup.subtree_control",
                    self._v2() / "cgroup.subtree_control",
                ):
                    path.write_text(wanted)
            else:
                for controller in ("cpu", "memory", "pids"):
                    self._v1(controller).mkdir(exist_ok=True)
        except OSError as exc:
            self.problem = f"{exc.strerror or exc}: {exc.filename or self.root}"
            return False
        return True

    def create(self, sandbox_id: str, *, cpu: float, memory_mb: int, pids: int) -> list[Path]:
        """Make the sandbox's cgroup with its limits; return the files to join it through."""
        if not self.available:
            return []
        memory = str(memory_mb * 1024 * 1024)
        quota = str(max(1000, int(cpu * CPU_PERIOD_US)))
        if self.version == 2:
            group = self._v2(sandbox_id)
            group.mkdir(exist_ok=True)
            (group / "memory.max").write_text(memory)
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
            (group / "pids.max").write_text(str(pids))
            (group / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            return [group / "cgroup.procs"]
        limits = {
            "memory": {"memory.limit_in_bytes": memory},
            "pids": {"pids.max": str(pids)},
            "cpu": {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": quota},
        }
        files = []
        for controller, values in limits.items():
            group = self._v1(controller, sandbox_id)
            group.mkdir(exist_ok=True)
            for name, value in values.items():
                (group / name).write_text(value)
            files.append(group / "cgroup.procs")
        return files

    def remove(self, sandbox_id: str) -> bool:
        """Remove the cgroup; False while processes are still leaving it (rmdir says EBUSY)."""
        if not self.available:
            return True
        groups = (
            [self._v2(sandbox_id)]
            if self.version == 2
            else [self._v1(c, sandbox_id) for c in ("cpu", "memory", "pids")]
        )
        removed = True
        for group in groups:
            try:
                os.rmdir(group)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                removed = False
        return removed

    def memory_events(self, sandbox_id: str) -> str:
        """The OOM counter text, for telling a user why a sandbox died."""
        path = (
            self._v2(sandbox_id) / "memory.events"
            if self.version == 2
            else self._v1("memory", sandbox_id) / "memory.failcnt"
        )
        try:
            return path.read_text()
        except OSError:
            return ""
