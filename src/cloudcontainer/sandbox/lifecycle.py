"""Bringing sandboxes up and taking them down: the runtime calls, the agent link, the
workspace's first fill, and the hooks other services run at points of a container's life.

All runtime operations on one container run under its lock; starts across containers share a
bounded number of slots (the start queue).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import structlog

from cloudcontainer.agent.messages_proc import SpawnRequest
from cloudcontainer.agentlink import procs
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.db import Container
from cloudcontainer.db.types import utcnow
from cloudcontainer.errors import CloudContainerError, NotFound
from cloudcontainer.runtimes.base import Runtime, SandboxSpec, SandboxState
from cloudcontainer.sandbox.activity import Activity
from cloudcontainer.sandbox.links import AgentLinks, connect_agent
from cloudcontainer.sandbox.status import ContainerRecords, Status
from cloudcontainer.sandbox.templates import apply_template
from cloudcontainer.tasks import TaskSet

__all__ = ["Lifecycle", "LifecycleHooks"]

log = structlog.get_logger(__name__)

AGENT_CONNECT_SECONDS = 30.0


@dataclass(slots=True)
class LifecycleHooks:
    """What other services (snapshots, file history) do at points of a container's life;
    state.py installs them, so this module needs to know none of those services."""

    # On a container's first start: fill the workspace (True), or leave it to the template.
    seed: Callable[[Container, AgentClient], Awaitable[bool]] | None = None
    # Before a running sandbox stops (not when it is deleted). Failures are logged and
    # reported in the status reason; they never keep the sandbox from stopping.
    stopping: list[Callable[[str, AgentClient], Awaitable[None]]] = field(default_factory=list)
    # After a container is deleted.
    destroyed: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    # When the gateway gets a container's agent link: at start, and after a gateway restart.
    # The container is as it was read before this start: `started_at` is None on its first.
    adopted: list[Callable[[Container, AgentClient], None]] = field(default_factory=list)
    # Processes another service starts again itself (the preview services): not remembered
    # as dev servers when the container stops, so they are not started twice.
    managed: list[Callable[[str], set[int]]] = field(default_factory=list)


class Lifecycle:
    def __init__(
        self, *, runtime: Runtime, records: ContainerRecords, links: AgentLinks,
        activity: Activity, tasks: TaskSet, start_slots: asyncio.Semaphore,
    ) -> None:  # fmt: skip
        self.runtime = runtime
        self.records = records
        self.links = links
        self.activity = activity
        self.tasks = tasks
        self.hooks = LifecycleHooks()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._start_slots = start_slots

    def spawn_bring_up(self, container_id: str) -> None:
        self.tasks.spawn(self.bring_up(container_id), name=f"bring-up:{container_id}")

    def spec(self, container: Container) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=container.id, agent_secret=container.agent_secret, cpu=container.cpu,
            memory_mb=container.memory_mb, pids=container.pids_limit, disk_mb=container.disk_mb,
            owner_id=container.owner_id, project_id=container.project_id, node=container.node,
        )  # fmt: skip

    async def bring_up(
        self, container_id: str, *, reason: str = "", retrying: bool = False
    ) -> None:
        """Start the sandbox, connect its agent, lay down the template on first start. A start
        that fails marks the container failed, unless the supervisor is `retrying` it: then it
        stays starting, with the reason, for the next attempt."""
        async with self._start_slots, self._locks[container_id]:
            try:
                container = await self.records.get(None, container_id)
            except NotFound:
                return
            if container.desired != Status.RUNNING or container_id in self.links.by_container:
                return
            await self.records.set_status(container_id, Status.STARTING, reason)
            try:
                link = await self._start_sandbox(container)
            except (CloudContainerError, OSError) as exc:
                message = (
                    exc.message
                    if isinstance(exc, CloudContainerError)
                    else f"the sandbox could not start: {exc}"
                )
                if retrying:
                    await self.records.set_status(
                        container_id, Status.STARTING, f"{message}; retrying"
                    )
                else:
                    await self.fail(container_id, message)
                return
            self.adopt(container, link)
            await self.records.update(container_id, started_at=utcnow(), dev_servers=[])
            await self.records.set_status(container_id, Status.RUNNING)
            log.info("container running", container_id=container_id)

    async def _start_sandbox(self, container: Container) -> AgentClient:
        spec = self.spec(container)
        await self.runtime.create(spec)
        info = await self.runtime.start(spec)
        if info.address is None:
            raise AgentUnavailable("the runtime gave no agent address")
        link: AgentClient | None = None
        try:
            try:
                link = await connect_agent(
                    info.address, container.agent_secret, timeout=AGENT_CONNECT_SECONDS
                )
            except AgentUnavailable as exc:
                output = (await self.runtime.logs(container.id)).strip()
                raise AgentUnavailable(
                    f"{exc.message}; sandbox output: {output}" if output else exc.message
                ) from exc
            if container.started_at is None:
                await self._fill_workspace(container, link)
            for server in container.dev_servers:  # what _running_processes kept
                await procs.spawn(link, cast(SpawnRequest, server))
        except BaseException:
            if link is not None:
                await link.aclose()
            await self.runtime.stop(container.id)
            raise
        return link

    async def claim(self, container: Container, link: AgentClient) -> None:
        """Make a warm sandbox this container's: lay down the template, mark it running."""
        async with self._locks[container.id]:
            try:
                await self._fill_workspace(container, link)
            except CloudContainerError as exc:
                await link.aclose()
                await self.runtime.stop(container.id)
                await self.fail(container.id, f"the sandbox could not start: {exc.message}")
                return
            self.adopt(container, link)
            await self.records.update(container.id, started_at=utcnow())
            await self.records.set_status(container.id, Status.RUNNING)

    async def _fill_workspace(self, container: Container, link: AgentClient) -> None:
        """A new container's workspace: the project's saved workspace if a hook restores one
        (a failure there fails the start rather than hiding the user's files under a fresh
        template), else the template. An ephemeral container starts from its template alone,
        never from the project's files."""
        seed = None if container.ephemeral else self.hooks.seed
        if seed is not None and await seed(container, link):
            return
        await apply_template(link, container.template)

    def adopt(self, container: Container, link: AgentClient) -> None:
        """Keep the link, relay its events, and run the `adopted` hooks."""
        self.links.keep(container.id, container.owner_id, link)
        self.activity.touch(container.id)
        for hook in self.hooks.adopted:
            hook(container, link)

    async def reattach(self, container: Container) -> bool:
        """After a gateway restart: connect to a sandbox that is still running."""
        info = await self.runtime.inspect(container.id)
        if info.state is not SandboxState.RUNNING or info.address is None:
            return False
        try:
            link = await connect_agent(info.address, container.agent_secret, timeout=5)
        except AgentUnavailable:
            return False
        self.adopt(container, link)
        await self.records.set_status(
            container.id, Status.RUNNING, "re-adopted after a gateway restart"
        )
        return True

    async def take_down(
        self, container_id: str, *, reason: str, destroy: bool = False,
        keep_dev_servers: bool = False, next_status: Status = Status.STOPPED,
    ) -> None:  # fmt: skip
        """Stop (or destroy) the sandbox; with `keep_dev_servers`, remember running processes."""
        async with self._locks[container_id]:
            await self.records.set_status(container_id, Status.STOPPING, reason)
            link = self.links.drop(container_id)
            servers: list[SpawnRequest] = []
            if link is not None:
                if keep_dev_servers:
                    managed = {pid for hook in self.hooks.managed for pid in hook(container_id)}
                    servers = await _running_processes(link, managed)
                if not destroy:
                    reason = await self._before_stop(container_id, link, reason)
                await link.aclose()
            if destroy:
                await self.runtime.destroy(container_id)
                self.activity.forget(container_id)
                await self.records.remove(container_id)
                self._locks.pop(container_id, None)
                for hook in self.hooks.destroyed:
                    try:
                        await hook(container_id)
                    except CloudContainerError as exc:
                        log.warning("cleanup after delete failed", container_id=container_id,
                                    error=exc.message)  # fmt: skip
                return
            await self.runtime.stop(container_id)
            if keep_dev_servers and link is not None:
                # Without a link the sandbox was already down (a crash restart racing a
                # requested one): the processes remembered then are still the ones to bring back.
                await self.records.update(container_id, dev_servers=servers)
            await self.records.set_status(container_id, next_status, reason)

    async def _before_stop(self, container_id: str, link: AgentClient, reason: str) -> str:
        """Run the stopping hooks (the snapshot on stop); a failure is logged, published as
        an event and added to the stop's reason, and the stop goes on."""
        for hook in self.hooks.stopping:
            try:
                await hook(container_id, link)
            except (CloudContainerError, TimeoutError, OSError) as exc:
                problem = exc.message if isinstance(exc, CloudContainerError) else repr(exc)
                log.warning("before-stop hook failed", container_id=container_id, error=problem)
                self.records.events.publish(container_id, {"type": "snapshot", "status": "failed",
                                                           "error": problem})  # fmt: skip
                reason = f"{reason} (snapshot failed: {problem})"
        return reason

    async def fail(self, container_id: str, reason: str) -> None:
        log.warning("container failed", container_id=container_id, reason=reason)
        await self.records.set_status(container_id, Status.FAILED, reason)


async def _running_processes(link: AgentClient, managed: set[int]) -> list[SpawnRequest]:
    """The spawn arguments of every running process but the `managed` ones, to start them
    again later."""
    try:
        processes = await procs.list_processes(link, timeout=5)
    except (AgentUnavailable, AgentOpError):
        return []
    return [
        {
            "command": p["command"],
            "args": p["args"],
            "cwd": p["cwd"],
            "pty": p["pty"],
            "cols": p["cols"],
            "rows": p["rows"],
        }
        for p in processes
        if p["state"] == "running" and p["proc_id"] not in managed
    ]
