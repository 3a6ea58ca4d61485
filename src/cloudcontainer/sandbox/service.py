"""Container lifecycle: create, start, stop, restart, delete; quotas; the start queue.

States: creating → starting → running → stopping → stopped → deleted, or failed (with a
reason). `desired` records what the user asked for, so the supervisor and a restarted gateway
know what to bring back. All runtime operations on one container run under its lock; starts
across containers share a bounded number of slots (the start queue).
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from sqlalchemy import func, select, update

from cloudcontainer.agent.messages_proc import SpawnRequest
from cloudcontainer.agentlink import procs
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.config import Settings
from cloudcontainer.db import Container, Database, Project
from cloudcontainer.db.types import new_id, utcnow
from cloudcontainer.errors import (
    CloudContainerError,
    Conflict,
    Forbidden,
    NotFound,
    ValidationFailed,
)
from cloudcontainer.events import EventBus
from cloudcontainer.runtimes.base import Runtime, RuntimeUnavailable, SandboxSpec, SandboxState
from cloudcontainer.sandbox.pool import WarmPool
from cloudcontainer.sandbox.templates import TEMPLATES, apply_template
from cloudcontainer.tasks import TaskSet

__all__ = ["ContainerService", "LifecycleHooks", "Resources", "Status"]

log = structlog.get_logger(__name__)

AGENT_CONNECT_SECONDS = 30.0
SETTLE_SECONDS = 120.0


# Agent events meant for one subscriber (a file watch, the command log), not for every
# event-stream client.
PRIVATE_EVENTS = frozenset({"fs.watch", "proc.command"})


class Status(enum.StrEnum):
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETED = "deleted"
    FAILED = "failed"


SETTLED = {Status.RUNNING, Status.STOPPED, Status.FAILED, Status.DELETED}


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int | None = None  # None: the `default_disk_mb` setting; 0: no limit


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
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._start_slots = asyncio.Semaphore(settings.container_start_concurrency)
        self.links: dict[str, AgentClient] = {}
        self._link_owners: dict[str, str] = {}  # container id → owner id, beside `links`
        self.pool = WarmPool(
            runtime=runtime, size=settings.warm_pool_size, tasks=tasks,
            spec_defaults=(
                settings.default_cpu, settings.default_memory_mb, settings.default_pids,
                settings.default_disk_mb,
            ),
            start_slots=self._start_slots,
        )  # fmt: skip
        # Set when the runtime cannot work on this host; creating containers then says why.
        self.runtime_problem: str | None = None
        # Idle time is read from `clock` (activity and the supervisor's idle pass alike): a test
        # moves a fake one instead of waiting out an idle timeout.
        self.clock = clock
        self.last_active: dict[str, float] = {}
        self._held: Counter[str] = Counter()  # container id → client connections open
        self.hooks = LifecycleHooks()

    # -- queries --------------------------------------------------------------------------

    async def list(self, owner_id: str | None) -> list[Container]:
        query = select(Container).order_by(Container.created_at.desc(), Container.id)
        if owner_id is not None:
            query = query.where(Container.owner_id == owner_id)
        async with self._db.session() as session:
            return list(await session.scalars(query))

    async def get(self, owner_id: str | None, container_id: str) -> Container:
        """The container, if `owner_id` owns it (None: any owner); else NotFound."""
        query = select(Container).where(Container.id == container_id)
        if owner_id is not None:
            query = query.where(Container.owner_id == owner_id)
        async with self._db.session() as session:
            container = await session.scalar(query)
        if container is None:
            raise NotFound("No such container.", code="container_not_found")
        return container

    # -- requests -------------------------------------------------------------------------

    async def create(
        self, owner_id: str, project_id: str, template: str, resources: Resources | None
    ) -> Container:
        if self.runtime_problem:
            raise RuntimeUnavailable(self.runtime_problem)
        if template not in TEMPLATES:
            raise ValidationFailed(
                f"Unknown template {template!r}; choose one of {', '.join(TEMPLATES)}.",
                code="unknown_template",
            )
        wanted = resources or Resources(
            self.settings.default_cpu, self.settings.default_memory_mb, self.settings.default_pids
        )
        disk_mb = self.settings.default_disk_mb if wanted.disk_mb is None else wanted.disk_mb
        async with self._db.session() as session:
            project = await session.scalar(
                select(Project.id).where(Project.id == project_id, Project.owner_id == owner_id)
            )
            if project is None:
                raise NotFound("No such project.", code="project_not_found")
            await self._check_quota(session, owner_id, wanted, disk_mb)
            warm = self.pool.take(wanted.cpu, wanted.memory_mb, wanted.pids, disk_mb)
            container = Container(
                id=warm.spec.sandbox_id if warm else new_id("ctr"), owner_id=owner_id,
                project_id=project_id, runtime=self.runtime.name, template=template,
                status=Status.STARTING if warm else Status.CREATING, desired=Status.RUNNING,
                cpu=wanted.cpu, memory_mb=wanted.memory_mb, pids_limit=wanted.pids,
                disk_mb=disk_mb,
                agent_secret=warm.spec.agent_secret if warm else secrets.token_urlsafe(32),
                dev_servers=[],
            )  # fmt: skip
            session.add(container)
        log.info("container created", container_id=container.id, template=template, warm=bool(warm))
        if warm is None:
            self._spawn_bring_up(container.id)
            return container
        await self._claim(container, warm.link)
        return await self.get(owner_id, container.id)

    async def _claim(self, container: Container, link: AgentClient) -> None:
        """Make a warm sandbox this container's: lay down the template, mark it running."""
        async with self._locks[container.id]:
            try:
                await self._fill_workspace(container, link)
            except CloudContainerError as exc:
                await link.aclose()
                await self.runtime.stop(container.id)
                await self.fail(container.id, f"the sandbox could not start: {exc.message}")
                return
            self._adopt(container, link)
            await self._update(container.id, started_at=utcnow())
            await self._set_status(container.id, Status.RUNNING)

    async def _check_quota(
        self, session: Any, owner_id: str, wanted: Resources, disk_mb: int
    ) -> None:
        s = self.settings
        count, cpu, memory, disk = (
            await session.execute(
                select(
                    func.count(Container.id),
                    func.coalesce(func.sum(Container.cpu), 0.0),
                    func.coalesce(func.sum(Container.memory_mb), 0),
                    func.coalesce(func.sum(Container.disk_mb), 0),
                ).where(Container.owner_id == owner_id)
            )
        ).one()
        problems = []
        if count + 1 > s.max_containers_per_user:
            problems.append(f"containers {count + 1} > {s.max_containers_per_user}")
        if cpu + wanted.cpu > s.max_cpu_per_user:
            problems.append(f"cpu {cpu + wanted.cpu:g} > {s.max_cpu_per_user:g} cores")
        if memory + wanted.memory_mb > s.max_memory_mb_per_user:
            problems.append(f"memory {memory + wanted.memory_mb} > {s.max_memory_mb_per_user} MB")
        if disk + disk_mb > s.max_disk_mb_per_user:
            problems.append(f"disk {disk + disk_mb} > {s.max_disk_mb_per_user} MB")
        if problems:
            raise Forbidden(
                "This would exceed your quota: " + "; ".join(problems) + ".",
                code="quota_exceeded",
            )

    async def start(self, owner_id: str, container_id: str) -> Container:
        container = await self.get(owner_id, container_id)
        if container.status not in (Status.RUNNING, Status.STARTING, Status.CREATING):
            # STARTING at once, so a caller waiting for it to settle does not see `stopped`.
            await self._update(container_id, desired=Status.RUNNING)
            await self._set_status(container_id, Status.STARTING, "queued")
            self._spawn_bring_up(container_id)
        return await self.get(owner_id, container_id)

    async def stop(self, owner_id: str, container_id: str) -> Container:
        await self.get(owner_id, container_id)
        await self._update(container_id, desired=Status.STOPPED)
        await self.take_down(container_id, reason="stopped by request")
        return await self.get(owner_id, container_id)

    async def restart(self, owner_id: str, container_id: str) -> Container:
        await self.get(owner_id, container_id)
        await self.take_down(container_id, reason="restarting", keep_dev_servers=True)
        return await self.start(owner_id, container_id)

    async def delete(self, owner_id: str | None, container_id: str) -> None:
        """Stop and destroy the sandbox and its workspace; afterwards the id is unknown (404)."""
        await self.get(owner_id, container_id)
        await self._update(container_id, desired=Status.DELETED)
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
        link = self.links.get(container_id)
        if (
            link is not None
            and not link.closed.is_set()
            and self._link_owners.get(container_id) == owner_id
        ):
            # The hot path of every file and process call: a running container whose owner
            # is known needs no database round trip (owners never change).
            self.touch(container_id)
            return link
        container = await self.get(owner_id, container_id)
        self.touch(container_id)
        link = self.links.get(container_id)
        if link is not None and not link.closed.is_set():
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
        link = self.links.get(container_id)
        if link is None or link.closed.is_set():
            return None
        return link if self._link_owners.get(container_id) == owner_id else None

    async def idle_stop(self, container_id: str, reason: str) -> None:
        """Stop for inactivity: remember dev servers; the next access starts it again."""
        await self._update(container_id, desired=Status.STOPPED)
        await self.take_down(container_id, reason=reason, keep_dev_servers=True)

    def touch(self, container_id: str) -> None:
        self.last_active[container_id] = self.clock()

    @contextmanager
    def hold(self, container_id: str) -> Iterator[None]:
        """A client connection (a terminal or event WebSocket): while one is open the
        container is never idle-stopped, and its idle time counts from the last one's end."""
        self._held[container_id] += 1
        self.touch(container_id)
        try:
            yield
        finally:
            self._held[container_id] -= 1
            if self._held[container_id] <= 0:
                del self._held[container_id]
            if container_id in self.last_active:  # not for a container deleted meanwhile
                self.touch(container_id)

    def held(self, container_id: str) -> bool:
        return self._held[container_id] > 0

    # -- bringing up and taking down ------------------------------------------------------

    def _spawn_bring_up(self, container_id: str) -> None:
        self.tasks.spawn(self.bring_up(container_id), name=f"bring-up:{container_id}")

    def spec(self, container: Container) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=container.id, agent_secret=container.agent_secret, cpu=container.cpu,
            memory_mb=container.memory_mb, pids=container.pids_limit, disk_mb=container.disk_mb,
        )  # fmt: skip

    async def bring_up(
        self, container_id: str, *, reason: str = "", retrying: bool = False
    ) -> None:
        """Start the sandbox, connect its agent, lay down the template on first start. A start
        that fails marks the container failed, unless the supervisor is `retrying` it: then it
        stays starting, with the reason, for the next attempt."""
        async with self._start_slots, self._locks[container_id]:
            try:
                container = await self.get(None, container_id)
            except NotFound:
                return
            if container.desired != Status.RUNNING or container_id in self.links:
                return
            await self._set_status(container_id, Status.STARTING, reason)
            try:
                link = await self._start_sandbox(container)
            except (CloudContainerError, OSError) as exc:
                message = (
                    exc.message
                    if isinstance(exc, CloudContainerError)
                    else f"the sandbox could not start: {exc}"
                )
                if retrying:
                    await self._set_status(container_id, Status.STARTING, f"{message}; retrying")
                else:
                    await self.fail(container_id, message)
                return
            self._adopt(container, link)
            await self._update(container_id, started_at=utcnow(), dev_servers=[])
            await self._set_status(container_id, Status.RUNNING)
            log.info("container running", container_id=container_id)

    async def _start_sandbox(self, container: Container) -> AgentClient:
        spec = self.spec(container)
        await self.runtime.create(spec)
        info = await self.runtime.start(spec)
        if info.address is None:
            raise AgentUnavailable("the runtime gave no agent address")
        link = AgentClient(info.address, container.agent_secret)
        try:
            try:
                await link.connect(timeout=AGENT_CONNECT_SECONDS)
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
            await link.aclose()
            await self.runtime.stop(container.id)
            raise
        return link

    async def _fill_workspace(self, container: Container, link: AgentClient) -> None:
        """A new container's workspace: the project's saved workspace if a hook restores one
        (a failure there fails the start rather than hiding the user's files under a fresh
        template), else the template."""
        if self.hooks.seed is not None and await self.hooks.seed(container, link):
            return
        await apply_template(link, container.template)

    def _adopt(self, container: Container, link: AgentClient) -> None:
        """Keep the link and relay the agent's events to the container's event stream."""
        container_id = container.id
        self.links[container_id] = link
        self._link_owners[container_id] = container.owner_id
        self.touch(container_id)

        def relay(name: str, data: dict[str, Any]) -> None:
            if name == "link.closed":
                if self.links.get(container_id) is link:
                    self.events.publish(container_id, {"type": "agent", "state": "disconnected"})
                return
            if name in PRIVATE_EVENTS:
                return  # addressed to one subscriber, which listens on the link itself
            self.events.publish(container_id, {"type": name, **data})

        link.on_event(relay)
        for hook in self.hooks.adopted:
            hook(container, link)

    async def reattach(self, container: Container) -> bool:
        """After a gateway restart: connect to a sandbox that is still running."""
        info = await self.runtime.inspect(container.id)
        if info.state is not SandboxState.RUNNING or info.address is None:
            return False
        link = AgentClient(info.address, container.agent_secret)
        try:
            await link.connect(timeout=5)
        except AgentUnavailable:
            return False
        self._adopt(container, link)
        await self._set_status(container.id, Status.RUNNING, "re-adopted after a gateway restart")
        return True

    async def take_down(
        self, container_id: str, *, reason: str, destroy: bool = False,
        keep_dev_servers: bool = False, next_status: Status = Status.STOPPED,
    ) -> None:  # fmt: skip
        """Stop (or destroy) the sandbox; with `keep_dev_servers`, remember running processes."""
        async with self._locks[container_id]:
            await self._set_status(container_id, Status.STOPPING, reason)
            link = self.links.pop(container_id, None)
            self._link_owners.pop(container_id, None)
            servers: list[SpawnRequest] = []
            if link is not None:
                if keep_dev_servers:
                    servers = await _running_processes(link)
                if not destroy:
                    reason = await self._before_stop(container_id, link, reason)
                await link.aclose()
            if destroy:
                await self.runtime.destroy(container_id)
                self.last_active.pop(container_id, None)
                async with self._db.session() as session:
                    container = await session.get(Container, container_id)
                    if container is not None:
                        await session.delete(container)
                self.events.publish(container_id, {"type": "status", "status": Status.DELETED})
                self._locks.pop(container_id, None)
                for hook in self.hooks.destroyed:
                    try:
                        await hook(container_id)
                    except CloudContainerError as exc:
                        log.warning("cleanup after delete failed", container_id=container_id,
                                    error=exc.message)  # fmt: skip
                return
            await self.runtime.stop(container_id)
            if keep_dev_servers:
                await self._update(container_id, dev_servers=servers)
            await self._set_status(container_id, next_status, reason)

    async def _before_stop(self, container_id: str, link: AgentClient, reason: str) -> str:
        """Run the stopping hooks (the snapshot on stop); a failure is logged, published as
        an event and added to the stop's reason, and the stop goes on."""
        for hook in self.hooks.stopping:
            try:
                await hook(container_id, link)
            except (CloudContainerError, TimeoutError, OSError) as exc:
                problem = exc.message if isinstance(exc, CloudContainerError) else repr(exc)
                log.warning("before-stop hook failed", container_id=container_id, error=problem)
                self.events.publish(container_id, {"type": "snapshot", "status": "failed",
                                                   "error": problem})  # fmt: skip
                reason = f"{reason} (snapshot failed: {problem})"
        return reason

    async def fail(self, container_id: str, reason: str) -> None:
        log.warning("container failed", container_id=container_id, reason=reason)
        await self._set_status(container_id, Status.FAILED, reason)

    # -- persistence and events -----------------------------------------------------------

    async def _update(self, container_id: str, **values: Any) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(Container).where(Container.id == container_id).values(**values)
            )

    async def _set_status(self, container_id: str, status: Status, reason: str = "") -> None:
        await self._update(container_id, status=status, status_reason=reason)
        event: dict[str, Any] = {"type": "status", "status": status}
        if reason:
            event["reason"] = reason
        self.events.publish(container_id, event)

    async def bump_restarts(self, container_id: str) -> int:
        async with self._db.session() as session:
            container = await session.get_one(Container, container_id)
            container.restart_count += 1
            return container.restart_count


async def _running_processes(link: AgentClient) -> list[SpawnRequest]:
    """The spawn arguments of every running process, to start them again later."""
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
        if p["state"] == "running"
    ]
