"""Keeps containers as they should be: re-adopts after a gateway restart, restarts crashed
sandboxes with backoff, and stops idle ones (remembering their dev servers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import structlog

from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.agentlink.status import ping
from cloudcontainer.db import Container
from cloudcontainer.errors import NotFound
from cloudcontainer.runtimes.base import RuntimeUnavailable, SandboxState
from cloudcontainer.sandbox.service import ContainerService, Status

__all__ = ["Supervisor"]

log = structlog.get_logger(__name__)

BACKOFF_SECONDS = (1, 2, 4, 8, 16, 30, 60)
GIVE_UP_AFTER = 10  # consecutive failed restarts
GAVE_UP = "the sandbox kept crashing; start it again"
RUNTIME_RETRY_SECONDS = 2  # between checks while the runtime itself does not answer
STABLE_SECONDS = 60.0  # running this long resets the failure count
BUSY_CPU_FRACTION = 0.02  # sandbox processes using more than this of a core count as activity


class Supervisor:
    def __init__(
        self, service: ContainerService, *, backoff_seconds: Sequence[float] = BACKOFF_SECONDS
    ) -> None:
        self.service = service
        self.settings = service.settings
        self._backoff_seconds = backoff_seconds
        self._failures: dict[str, int] = {}
        self._recovering: set[str] = set()
        self._cpu: dict[str, tuple[float, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.reconcile()
        self.service.pool.refill()
        health = self.settings.health_interval_seconds
        idle = min(
            60.0, self.settings.idle_timeout_seconds / 4, self.settings.ephemeral_grace_seconds / 4
        )
        self._tasks = [
            asyncio.create_task(self._every(health, self.check_health), name="health"),
            asyncio.create_task(self._every(idle, self.stop_idle), name="idle"),
        ]

    async def aclose(self) -> None:
        await self.service.pool.aclose()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(self.service.links.values()):
            await link.aclose()
        self.service.links.clear()

    async def _every(self, seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:  # a supervisor pass must never end the loop
                log.exception("supervisor pass failed", job=job.__name__)

    # -- after a restart ------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Match the database with what the runtime has: adopt, restart, or clean up."""
        containers = {c.id: c for c in await self.service.list(None)}
        for info in await self.service.runtime.list():
            if info.sandbox_id not in containers:
                log.warning("destroying a sandbox no container owns", sandbox_id=info.sandbox_id)
                await self.service.runtime.destroy(info.sandbox_id)
        for container in containers.values():
            if container.desired == Status.DELETED:
                await self.service.take_down(container.id, reason="deleted", destroy=True)
            elif container.desired == Status.RUNNING:
                if not await self.service.reattach(container):
                    await self.service.runtime.stop(container.id)
                    self._spawn_bring_up(container.id, "restarted after a gateway restart")
            elif container.status != Status.STOPPED:
                await self.service.take_down(container.id, reason="stopped")

    def _spawn_bring_up(self, container_id: str, reason: str) -> None:
        self.service.tasks.spawn(
            self.service.bring_up(container_id, reason=reason), name=f"bring-up:{container_id}"
        )

    # -- health ---------------------------------------------------------------------------

    async def check_health(self) -> None:
        for container in await self.service.list(None):
            if container.desired != Status.RUNNING or container.status != Status.RUNNING:
                continue
            if container.id in self._recovering:
                continue
            link = self.service.links.get(container.id)
            healthy = False
            if link is not None and not link.closed.is_set():
                try:
                    answer = await ping(link, timeout=5)
                    healthy = True
                    self._note_cpu(container.id, answer["cpu_seconds"])
                except (AgentUnavailable, AgentOpError):
                    healthy = False
            if not healthy and self.service.links.get(container.id) is link:
                # A link dropped while we pinged it was taken down on purpose (a stop or a
                # restart someone asked for), not lost to a crash.
                self._recovering.add(container.id)
                self.service.tasks.spawn(self.recover(container.id), name=f"recover:{container.id}")

    async def recover(self, container_id: str) -> None:
        """Restart a crashed sandbox with backoff until it runs; the workspace is kept.

        A start that fails is tried again after the next backoff (the runtime may have been
        restarting: dockerd answers errors while it shuts down) until GIVE_UP_AFTER attempts.
        While the runtime does not answer at all, nothing is counted and nothing is taken
        down: the supervisor waits for it."""
        try:
            while True:
                failures = self._failures.get(container_id, 0)
                if failures >= GIVE_UP_AFTER:
                    await self.service.fail(container_id, GAVE_UP)
                    return
                try:
                    if await self._restart_once(container_id, failures):
                        return
                except RuntimeUnavailable as exc:
                    log.warning("the runtime is unavailable; waiting for it",
                                container_id=container_id, error=exc.message)  # fmt: skip
                    await asyncio.sleep(RUNTIME_RETRY_SECONDS)
                except NotFound:
                    raise
                except Exception:  # an attempt that broke unexpectedly counts as a failed one
                    log.exception("restart attempt failed", container_id=container_id)
                    self._failures[container_id] = failures + 1
                    await asyncio.sleep(self._backoff(failures))
        except NotFound:
            return  # deleted meanwhile
        finally:
            self._recovering.discard(container_id)

    async def _restart_once(self, container_id: str, failures: int) -> bool:
        """One attempt: take the sandbox down, wait out the backoff, start it. True when it
        runs, or is no longer wanted running."""
        info = await self.service.runtime.inspect(container_id)
        reason = (
            "the agent stopped answering"
            if info.state is SandboxState.RUNNING
            else "the sandbox exited"
        )
        log.warning("restarting crashed container", container_id=container_id, reason=reason)
        self.service.events.publish(container_id, {"type": "crashed", "reason": reason})
        await self.service.take_down(
            container_id, reason=f"{reason}; restarting", keep_dev_servers=True,
            next_status=Status.STARTING,
        )  # fmt: skip
        await asyncio.sleep(self._backoff(failures))
        self._failures[container_id] = failures + 1
        await self.service.bump_restarts(container_id)
        await self.service.bring_up(container_id, reason=f"restarting: {reason}", retrying=True)
        container = await self.service.get(None, container_id)
        if container.status == Status.RUNNING:
            asyncio.get_running_loop().call_later(
                STABLE_SECONDS, self._failures.pop, container_id, None
            )
            return True
        return container.desired != Status.RUNNING

    def _backoff(self, failures: int) -> float:
        """Seconds to wait before the attempt after `failures` failed ones."""
        return self._backoff_seconds[min(failures, len(self._backoff_seconds) - 1)]

    # -- idle -----------------------------------------------------------------------------

    def _note_cpu(self, container_id: str, cpu_seconds: float) -> None:
        now = asyncio.get_running_loop().time()
        previous = self._cpu.get(container_id)
        self._cpu[container_id] = (now, cpu_seconds)
        if previous is None or now <= previous[0]:
            return
        if (cpu_seconds - previous[1]) / (now - previous[0]) > BUSY_CPU_FRACTION:
            self.service.touch(container_id)

    async def stop_idle(self) -> None:
        """Stop running containers nobody used for `idle_timeout_seconds`; delete ephemeral
        ones nobody has been connected to for `ephemeral_grace_seconds` (whatever their
        state: a tab that is gone does not come back for them)."""
        now = self.service.clock()
        for container in await self.service.list(None):
            if container.ephemeral:
                await self._reap_ephemeral(container, now)
                continue
            if container.status != Status.RUNNING:
                continue
            if self.service.held(container.id):  # someone is connected to it
                self.service.touch(container.id)
                continue
            idle_for = now - self.service.last_active.get(container.id, now)
            if idle_for >= self.settings.idle_timeout_seconds:
                log.info(
                    "stopping idle container", container_id=container.id, idle_seconds=idle_for
                )
                await self.service.idle_stop(container.id, f"idle for {int(idle_for)}s")

    async def _reap_ephemeral(self, container: Container, now: float) -> None:
        if self.service.held(container.id):
            self.service.touch(container.id)
            return
        # Unknown (a gateway restarted since): the grace counts from now, so its client can
        # come back to it.
        alone_for = now - self.service.last_active.setdefault(container.id, now)
        if alone_for >= self.settings.ephemeral_grace_seconds:
            log.info("deleting ephemeral container", container_id=container.id,
                     unconnected_seconds=int(alone_for))  # fmt: skip
            with contextlib.suppress(NotFound):
                await self.service.delete(None, container.id)
