"""A few sandboxes started ahead of demand, so creating a container takes milliseconds.

A warm sandbox already has its final container id, secret and live agent link; creating a
container with the default resources claims one (its row is written with that id) and the
pool starts a replacement in the background. Warm sandboxes have no database row, so after a
gateway restart the reconciler removes them like any stray sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass

import structlog

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.db.types import new_id
from cloudcontainer.errors import CloudContainerError
from cloudcontainer.runtimes.base import Runtime, SandboxSpec
from cloudcontainer.sandbox.links import connect_agent
from cloudcontainer.tasks import TaskSet

__all__ = ["WarmPool", "WarmSandbox"]

log = structlog.get_logger(__name__)

CONNECT_SECONDS = 30.0
# A claim's request should not pay for starting its replacement (forks block the loop briefly).
REFILL_DELAY_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class WarmSandbox:
    spec: SandboxSpec
    link: AgentClient


class WarmPool:
    def __init__(
        self, *, runtime: Runtime, size: int, spec_defaults: tuple[float, int, int, int],
        start_slots: asyncio.Semaphore, tasks: TaskSet,
    ) -> None:  # fmt: skip
        self.runtime = runtime
        self.size = size
        self.cpu, self.memory_mb, self.pids, self.disk_mb = spec_defaults
        self._slots = start_slots
        self._tasks = tasks
        self._ready: list[WarmSandbox] = []
        self._starting = 0
        self._closed = False

    def take(self, cpu: float, memory_mb: int, pids: int, disk_mb: int) -> WarmSandbox | None:
        """A ready sandbox with exactly these resources, or None (then start one cold)."""
        if (cpu, memory_mb, pids, disk_mb) != (self.cpu, self.memory_mb, self.pids, self.disk_mb):
            return None
        asyncio.get_running_loop().call_later(REFILL_DELAY_SECONDS, self.refill)
        while self._ready:
            warm = self._ready.pop(0)
            if not warm.link.closed.is_set():
                return warm
            self._tasks.spawn(self.runtime.destroy(warm.spec.sandbox_id), name="pool-discard")
        return None

    def refill(self) -> None:
        while not self._closed and len(self._ready) + self._starting < self.size:
            self._starting += 1
            self._tasks.spawn(self._start_one(), name="pool-start")

    async def _start_one(self) -> None:
        spec = SandboxSpec(
            sandbox_id=new_id("ctr"), agent_secret=secrets.token_urlsafe(32),
            cpu=self.cpu, memory_mb=self.memory_mb, pids=self.pids, disk_mb=self.disk_mb,
        )  # fmt: skip
        try:
            async with self._slots:
                await self.runtime.create(spec)
                info = await self.runtime.start(spec)
                if info.address is None:
                    raise CloudContainerError("the runtime gave no agent address")
                link = await connect_agent(info.address, spec.agent_secret, CONNECT_SECONDS)
        except (CloudContainerError, OSError) as exc:
            log.warning("could not start a warm sandbox", error=str(exc))
            with contextlib.suppress(CloudContainerError, OSError):
                await self.runtime.destroy(spec.sandbox_id)
            return
        except asyncio.CancelledError:
            # The gateway is shutting down mid-start: nothing owns this sandbox (no row), so
            # it would outlive the gateway with its disk mounted until a reconcile found it.
            with contextlib.suppress(CloudContainerError, OSError):
                await asyncio.shield(self.runtime.destroy(spec.sandbox_id))
            raise
        finally:
            self._starting -= 1
        if self._closed:
            await link.aclose()
            await self.runtime.destroy(spec.sandbox_id)
            return
        self._ready.append(WarmSandbox(spec, link))

    async def aclose(self) -> None:
        """Destroy the sandboxes nobody claimed."""
        self._closed = True
        ready, self._ready = self._ready, []
        for warm in ready:
            await warm.link.aclose()
            with contextlib.suppress(CloudContainerError, OSError):
                await self.runtime.destroy(warm.spec.sandbox_id)
