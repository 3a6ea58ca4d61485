"""Containers: what the API and the other services ask of them — create, start, stop,
restart, delete, wait, and the agent link of a running one.

`ContainerService` is the facade over the sandbox package, one module per concern: rows and
status events (`status.py`), quotas (`quotas.py`), use and idleness (`activity.py`), live agent
links (`links.py`), and bringing sandboxes up and down (`lifecycle.py`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager

import structlog
from sqlalchemy import select

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentUnavailable
from cloudcontainer.config import Settings
from cloudcontainer.db import Container, Database, Project
from cloudcontainer.db.types import new_id
from cloudcontainer.errors import Conflict, NotFound, ValidationFailed
from cloudcontainer.events import EventBus
from cloudcontainer.images import toolchains
from cloudcontainer.runtimes.base import Runtime, RuntimeUnavailable
from cloudcontainer.sandbox.activity import Activity
from cloudcontainer.sandbox.lifecycle import Lifecycle, LifecycleHooks
from cloudcontainer.sandbox.links import AgentLinks
from cloudcontainer.sandbox.pool import WarmPool
from cloudcontainer.sandbox.quotas import Resources, check_quota, lock_owner
from cloudcontainer.sandbox.status import SETTLED, ContainerRecords, Status
from cloudcontainer.sandbox.templates import TEMPLATE_NAMES
from cloudcontainer.tasks import TaskSet

__all__ = ["ContainerService", "LifecycleHooks", "Resources", "Status"]

log = structlog.get_logger(__name__)

SETTLE_SECONDS = 120.0
# How often a runtime that could not work is checked again, on container requests.
RECHECK_SECONDS = 5.0


class ContainerService:
    def __init__(
        self, *, settings: Settings, database: Database, runtime: Runtime, events: EventBus,
        tasks: TaskSet, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.runtime = runtime
        self.events = events
        self._db = database
        self.tasks = tasks
        self.records = ContainerRecords(database, events)
        self.activity = Activity(clock)
        self._links = AgentLinks(events)
        start_slots = asyncio.Semaphore(settings.container_start_concurrency)
        self.lifecycle = Lifecycle(
            runtime=runtime, records=self.records, links=self._links, activity=self.activity,
            tasks=tasks, start_slots=start_slots,
        )  # fmt: skip
        self.pool = WarmPool(
            runtime=runtime, size=settings.warm_pool_size, tasks=tasks,
            spec_defaults=(
                settings.default_cpu, settings.default_memory_mb, settings.default_pids,
                settings.default_disk_mb,
            ),
            start_slots=start_slots,
        )  # fmt: skip
        # Set when the runtime cannot work on this host; creating containers then says why,
        # after checking again (at most every RECHECK_SECONDS): the operator may have fixed it.
        self.runtime_problem: str | None = None
        self.on_runtime_ready: Callable[[], Awaitable[None]] | None = None
        self._rechecked = 0.0
        self._recheck_lock = asyncio.Lock()

    @property
    def hooks(self) -> LifecycleHooks:
        return self.lifecycle.hooks

    @property
    def links(self) -> dict[str, AgentClient]:
        """Container id → the agent link of every running container."""
        return self._links.by_container

    @property
    def clock(self) -> Callable[[], float]:
        """What idle time is read from (the supervisor's idle pass reads it too)."""
        return self.activity.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.activity.clock = clock

    @property
    def last_active(self) -> dict[str, float]:
        """Container id → the event loop's time when it was last used."""
        return self.activity.last_active

    # -- queries --------------------------------------------------------------------------

    async def list(self, owner_id: str | None) -> list[Container]:
        return await self.records.list(owner_id)

    async def get(self, owner_id: str | None, container_id: str) -> Container:
        """The container, if `owner_id` owns it (None: any owner); else NotFound."""
        return await self.records.get(owner_id, container_id)

    # -- requests -------------------------------------------------------------------------

    async def create(
        self,
        owner_id: str,
        project_id: str,
        template: str,
        resources: Resources | None,
        node: str | None = None,
        ephemeral: bool = False,
    ) -> Container:
        await self._recheck_runtime()
        if self.runtime_problem:
            raise RuntimeUnavailable(self.runtime_problem)
        if template not in TEMPLATE_NAMES:
            raise ValidationFailed(
                f"Unknown template {template!r}; choose one of {', '.join(TEMPLATE_NAMES)}.",
                code="unknown_template",
            )
        node = node or toolchains.DEFAULT_NODE
        try:
            toolchains.check_node(node)
        except toolchains.UnknownToolchain as exc:
            raise ValidationFailed(f"{exc}.", code="unknown_toolchain") from None
        wanted = resources or Resources(
            self.settings.default_cpu, self.settings.default_memory_mb, self.settings.default_pids
        )
        disk_mb = self.settings.default_disk_mb if wanted.disk_mb is None else wanted.disk_mb
        async with self._db.session() as session:
            await lock_owner(session, owner_id)  # until the insert commits: see quotas.py
            project = await session.scalar(
                select(Project.id).where(Project.id == project_id, Project.owner_id == owner_id)
            )
            if project is None:
                raise NotFound("No such project.", code="project_not_found")
            await check_quota(session, self.settings, owner_id, wanted, disk_mb)
            # Warm sandboxes run the default Node.js: its PATH is set when a sandbox starts.
            warm = None
            if node == toolchains.DEFAULT_NODE:
                warm = self.pool.take(wanted.cpu, wanted.memory_mb, wanted.pids, disk_mb)
            container = Container(
                id=warm.spec.sandbox_id if warm else new_id("ctr"), owner_id=owner_id,
                project_id=project_id, runtime=self.runtime.name, template=template,
                status=Status.STARTING if warm else Status.CREATING, desired=Status.RUNNING,
                cpu=wanted.cpu, memory_mb=wanted.memory_mb, pids_limit=wanted.pids,
                disk_mb=disk_mb, node=node, ephemeral=ephemeral,
                agent_secret=warm.spec.agent_secret if warm else secrets.token_urlsafe(32),
                dev_servers=[],
            )  # fmt: skip
            session.add(container)
        log.info("container created", container_id=container.id, template=template,
                 warm=bool(warm), ephemeral=ephemeral)  # fmt: skip
        if warm is None:
            self.lifecycle.spawn_bring_up(container.id)
            return container
        await self.lifecycle.claim(container, warm.link)
        return await self.get(owner_id, container.id)

    async def _recheck_runtime(self) -> None:
        """Check a runtime that could not work at start again, at most every RECHECK_SECONDS;
        once it works, supervision starts and containers can be created."""
        if self.runtime_problem is None:
            return
        async with self._recheck_lock:
            if self.runtime_problem is None or time.monotonic() - self._rechecked < RECHECK_SECONDS:
                return
            self._rechecked = time.monotonic()
            try:
                await self.runtime.check()
            except RuntimeUnavailable as exc:
                self.runtime_problem = exc.message
                return
            log.info("the sandbox runtime works now", runtime=self.runtime.name)
            self.runtime_problem = None
            if self.on_runtime_ready is not None:
                await self.on_runtime_ready()

    async def start(self, owner_id: str, container_id: str) -> Container:
        container = await self.get(owner_id, container_id)
        if container.status not in (Status.RUNNING, Status.STARTING, Status.CREATING):
            # STARTING at once, so a caller waiting for it to settle does not see `stopped`.
            await self.records.update(container_id, desired=Status.RUNNING)
            await self.records.set_status(container_id, Status.STARTING, "queued")
            self.lifecycle.spawn_bring_up(container_id)
        return await self.get(owner_id, container_id)

    async def stop(self, owner_id: str, container_id: str) -> Container:
        await self.get(owner_id, container_id)
        await self.records.update(container_id, desired=Status.STOPPED)
        await self.take_down(container_id, reason="stopped by request")
        return await self.get(owner_id, container_id)

    async def restart(self, owner_id: str, container_id: str) -> Container:
        await self.get(owner_id, container_id)
        await self.take_down(container_id, reason="restarting", keep_dev_servers=True)
        return await self.start(owner_id, container_id)

    async def delete(self, owner_id: str | None, container_id: str) -> None:
        """Stop and destroy the sandbox and its workspace; afterwards the id is unknown (404)."""
        await self.get(owner_id, container_id)
        await self.records.update(container_id, desired=Status.DELETED)
        await self.take_down(container_id, reason="deleted", destroy=True)

    async def delete_project_containers(self, owner_id: str, project_id: str) -> None:
        async with self._db.session() as session:
            ids = list(
                await session.scalars(
                    select(Container.id).where(
                        Container.project_id == project_id, Container.owner_id == owner_id
                    )
                )
            )
        for container_id in ids:
            await self.delete(owner_id, container_id)

    async def wait_settled(self, owner_id: str | None, container_id: str) -> Container:
        """Wait until the container is running, stopped or failed (or gone: NotFound)."""
        async with self.events.subscribe(container_id) as queue:
            container = await self.get(owner_id, container_id)
            try:
                async with asyncio.timeout(SETTLE_SECONDS):
                    while container.status not in SETTLED:
                        await queue.get()
                        container = await self.get(owner_id, container_id)
            except TimeoutError:
                pass
        return container

    async def agent(self, owner_id: str, container_id: str) -> AgentClient:
        """The live agent link of a container, starting a stopped one transparently."""
        link = self._links.owned(owner_id, container_id)
        if link is not None:
            # The hot path of every file and process call: a running container whose owner
            # is known needs no database round trip (owners never change).
            self.touch(container_id)
            return link
        container = await self.get(owner_id, container_id)
        self.touch(container_id)
        link = self._links.live(container_id)
        if link is not None:
            return link
        if container.status == Status.FAILED:
            raise Conflict(
                f"The container failed: {container.status_reason}", code="container_failed"
            )
        if container.status in (Status.STOPPED, Status.STOPPING):
            await self.start(owner_id, container_id)
        container = await self.wait_settled(owner_id, container_id)
        link = self.links.get(container_id)
        if container.status != Status.RUNNING or link is None:
            raise AgentUnavailable(
                f"The container is {container.status}: {container.status_reason}".rstrip(": ")
            )
        return link

    def live_link(self, owner_id: str, container_id: str) -> AgentClient | None:
        """The agent link of a running container of `owner_id`, without starting anything."""
        return self._links.owned(owner_id, container_id)

    async def idle_stop(self, container_id: str, reason: str) -> None:
        """Stop for inactivity: remember dev servers; the next access starts it again."""
        await self.records.update(container_id, desired=Status.STOPPED)
        await self.take_down(container_id, reason=reason, keep_dev_servers=True)

    # -- activity (sandbox/activity.py) ---------------------------------------------------

    def touch(self, container_id: str) -> None:
        self.activity.touch(container_id)

    def hold(self, container_id: str) -> AbstractContextManager[None]:
        """A client connection (a terminal or event WebSocket): see Activity.hold."""
        return self.activity.hold(container_id)

    def held(self, container_id: str) -> bool:
        return self.activity.held(container_id)

    # -- bringing up and taking down (sandbox/lifecycle.py), for the supervisor ------------

    async def bring_up(
        self, container_id: str, *, reason: str = "", retrying: bool = False
    ) -> None:
        await self.lifecycle.bring_up(container_id, reason=reason, retrying=retrying)

    async def reattach(self, container: Container) -> bool:
        return await self.lifecycle.reattach(container)

    async def take_down(
        self, container_id: str, *, reason: str, destroy: bool = False,
        keep_dev_servers: bool = False, next_status: Status = Status.STOPPED,
    ) -> None:  # fmt: skip
        await self.lifecycle.take_down(
            container_id, reason=reason, destroy=destroy, keep_dev_servers=keep_dev_servers,
            next_status=next_status,
        )  # fmt: skip

    async def fail(self, container_id: str, reason: str) -> None:
        await self.lifecycle.fail(container_id, reason)

    async def bump_restarts(self, container_id: str) -> int:
        return await self.records.bump_restarts(container_id)
