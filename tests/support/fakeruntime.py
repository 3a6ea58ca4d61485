"""FakeRuntime: the Runtime protocol without isolation, for fast tests of the gateway's side.

Each sandbox is the real agent (the zipapp the gateway builds) run as a plain subprocess of
the test, in `DATA_DIR/fake-sandboxes/<id>/`, listening on a unix socket in a short temporary
directory (a socket's path holds 108 bytes), with the secret on its stdin as every runtime
hands it over. No bubblewrap, no container, no limits: a start
takes as long as python3 takes to boot the agent. Tests steer it through its hooks:

- `start_delay`: seconds every start waits before launching the agent (widens races);
- `failing`: while set, starts raise SandboxStartFailed with that reason;
- `crash(sandbox_id)`: the agent dies (SIGKILL), as when a sandbox's process is killed;
- `starts`, `max_concurrent_starts`: what happened, for assertions.

Sandboxes are children of the test process: `aclose()` leaves them running (a restarted
gateway re-adopts them, as with the real runtimes); `destroy_all()` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
from pathlib import Path

from cloudcontainer.agentlink.client import AgentAddress
from cloudcontainer.runtimes.base import (
    AgentDelivery,
    RuntimeOptions,
    SandboxInfo,
    SandboxSpec,
    SandboxStartFailed,
    SandboxState,
)

__all__ = ["FakeRuntime"]

PYTHON = "/usr/bin/python3"


class FakeRuntime:
    name = "fake"
    agent_delivery = AgentDelivery.BIND

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.root = options.data_dir / "fake-sandboxes"
        self.sockets = Path(tempfile.mkdtemp(prefix="ccfake-"))
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.start_delay = 0.0
        self.failing: str | None = None
        self.starts = 0
        self.max_concurrent_starts = 0
        self._starting = 0

    def _dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def labels(self, sandbox_id: str) -> dict[str, str | None]:
        labels: dict[str, str | None] = json.loads(
            (self._dir(sandbox_id) / "labels.json").read_text()
        )
        return labels

    async def check(self) -> None:
        """Nothing to check: python3 is what runs the tests' agents everywhere."""

    async def create(self, spec: SandboxSpec) -> None:
        base = self._dir(spec.sandbox_id)
        (base / "workspace").mkdir(parents=True, exist_ok=True)
        labels = {"user": spec.owner_id, "project": spec.project_id}
        (base / "labels.json").write_text(json.dumps(labels))

    async def start(self, spec: SandboxSpec) -> SandboxInfo:
        info = await self.inspect(spec.sandbox_id)
        if info.state is SandboxState.RUNNING:
            return info
        self._starting += 1
        self.max_concurrent_starts = max(self.max_concurrent_starts, self._starting)
        try:
            await asyncio.sleep(self.start_delay)
            self.starts += 1
            if self.failing is not None:
                raise SandboxStartFailed(self.failing)
            await self.create(spec)
            await self._launch(spec)
        finally:
            self._starting -= 1
        return await self.inspect(spec.sandbox_id)

    async def _launch(self, spec: SandboxSpec) -> None:
        base = self._dir(spec.sandbox_id)
        socket = self._socket(spec.sandbox_id)
        socket.unlink(missing_ok=True)
        with (base / "agent.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                PYTHON, "-S", str(self.options.agent_zipapp),
                "--listen", f"unix:{socket}", "--secret-file", "-",
                "--workspace", str(base / "workspace"),
                stdin=asyncio.subprocess.PIPE, stdout=log, stderr=log,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(base), "LANG": "C.UTF-8"},
            )  # fmt: skip
        assert process.stdin is not None
        process.stdin.write(spec.agent_secret.encode() + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        self.processes[spec.sandbox_id] = process

    def _socket(self, sandbox_id: str) -> Path:
        return self.sockets / f"{sandbox_id}.sock"

    def crash(self, sandbox_id: str) -> None:
        self.processes[sandbox_id].send_signal(signal.SIGKILL)

    async def stop(self, sandbox_id: str) -> None:
        process = self.processes.pop(sandbox_id, None)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()

    async def destroy(self, sandbox_id: str) -> None:
        await self.stop(sandbox_id)
        await asyncio.to_thread(shutil.rmtree, self._dir(sandbox_id), True)
        self._socket(sandbox_id).unlink(missing_ok=True)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        process = self.processes.get(sandbox_id)
        if process is not None and process.returncode is None:
            address = AgentAddress(unix_path=str(self._socket(sandbox_id)))
            return SandboxInfo(sandbox_id, SandboxState.RUNNING, address)
        if self._dir(sandbox_id).exists():
            return SandboxInfo(sandbox_id, SandboxState.STOPPED)
        return SandboxInfo(sandbox_id, SandboxState.MISSING)

    async def list(self) -> list[SandboxInfo]:
        if not self.root.exists():
            return []
        return [await self.inspect(path.name) for path in sorted(self.root.iterdir())]

    async def logs(self, sandbox_id: str, limit: int = 2000) -> str:
        try:
            return (self._dir(sandbox_id) / "agent.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    async def aclose(self) -> None:
        """Nothing to release: sandboxes outlive the gateway, as with the real runtimes."""

    async def destroy_all(self) -> None:
        for info in await self.list():
            await self.destroy(info.sandbox_id)
        await asyncio.to_thread(shutil.rmtree, self.sockets, True)
