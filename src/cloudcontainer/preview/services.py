"""Services: named processes the gateway keeps running in a container — a dev server, an API
beside it — with health from the preview probe and restarts with backoff.

A service is `{name, command, args, cwd, env, port, restart}`, stored (`services` table) so it
comes back whenever its container runs again (after an idle stop, a crash, a gateway
restart). Without a command, the project's dev server is detected from its `package.json`
(`frameworks.py`). Each service with a port gets that port's preview reserved before it
starts, so every service's environment names every other's URL:

- `PORT` (its own port), and for each service S with a port:
- `CC_SERVICE_<S>_URL`: S's preview origin (what a browser calls),
- `CC_SERVICE_<S>_LOCAL_URL`: `http://127.0.0.1:<port>` (what a server calls).

States: `starting` (spawned; its port does not answer HTTP yet), `running` (it does, or it has
no port), `backoff` (it exited; started again after 1, 2, 4 … 30 s), `failed` (it exited and
its policy says no restart), `stopped` (asked to). A service that stayed up for STABLE_SECONDS
starts its backoff over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from sqlalchemy import delete, select, update

from cloudcontainer.agent.messages_proc import ExitEvent, SpawnRequest
from cloudcontainer.agentlink import procs
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.agentlink.files import read_file
from cloudcontainer.agentlink.fs import list_dir
from cloudcontainer.db import Container, Database
from cloudcontainer.db import Service as ServiceRow
from cloudcontainer.errors import CloudContainerError, Conflict, NotFound, ValidationFailed
from cloudcontainer.events import EventBus
from cloudcontainer.preview.frameworks import detect_dev_server
from cloudcontainer.preview.service import PreviewService
from cloudcontainer.sandbox.service import ContainerService
from cloudcontainer.tasks import TaskSet

__all__ = ["RestartPolicy", "Service", "ServiceManager", "ServiceSpec"]

log = structlog.get_logger(__name__)

RestartPolicy = Literal["always", "on-failure", "never"]
NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_SECONDS = 30.0
MAX_SERVICES = 16  # per container
EARLY_EXITS = 256  # exits of processes not (yet) known as services, kept
PACKAGE_JSON_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    command: str
    args: list[str]
    cwd: str
    env: dict[str, str]
    port: int | None
    restart: RestartPolicy
    framework: str | None = None  # when detected

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command, "args": self.args, "cwd": self.cwd, "env": self.env,
            "port": self.port, "restart": self.restart, "framework": self.framework,
        }  # fmt: skip

    @classmethod
    def of(cls, data: dict[str, Any]) -> ServiceSpec:
        return cls(data["command"], list(data["args"]), data["cwd"], dict(data["env"]),
                   data["port"], data["restart"], data.get("framework"))  # fmt: skip


@dataclass(eq=False)
class Service:
    container_id: str
    owner_id: str
    name: str
    spec: ServiceSpec
    desired: str = "running"
    status: str = "stopped"
    proc_id: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    started_at: float = 0.0
    retry: asyncio.TimerHandle | None = None
    backoff: float = field(default=BACKOFF_FIRST)


class ServiceManager:
    def __init__(
        self, *, database: Database, containers: ContainerService, previews: PreviewService,
        events: EventBus, tasks: TaskSet,
    ) -> None:  # fmt: skip
        self._db = database
        self.containers = containers
        self.previews = previews
        self.events = events
        self.tasks = tasks
        self._by_container: dict[str, dict[str, Service]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._early_exits: OrderedDict[tuple[str, int], int | None] = OrderedDict()

    # -- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        hooks = self.containers.hooks
        hooks.adopted.append(self._adopted)
        hooks.destroyed.append(self.forget)
        hooks.managed.append(self._managed)
        self.previews.ready_listeners.append(self._port_ready)
        async with self._db.session() as session:
            rows = (await session.execute(
                select(ServiceRow, Container.owner_id).join(Container)
            )).all()  # fmt: skip
        for row, owner_id in rows:
            service = Service(row.container_id, owner_id, row.name, ServiceSpec.of(row.spec),
                              row.desired)  # fmt: skip
            self._services(row.container_id)[row.name] = service

    def close(self) -> None:
        for services in self._by_container.values():
            for service in services.values():
                self._cancel_retry(service)

    def _services(self, container_id: str) -> dict[str, Service]:
        return self._by_container.setdefault(container_id, {})

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def _managed(self, container_id: str) -> set[int]:
        return {s.proc_id for s in self._services(container_id).values() if s.proc_id is not None}

    async def forget(self, container_id: str) -> None:
        for service in self._by_container.pop(container_id, {}).values():
            self._cancel_retry(service)
        self._locks.pop(container_id, None)

    # -- following containers -------------------------------------------------------------

    def _adopted(self, container: Container, link: AgentClient) -> None:
        """The container runs (again): follow its processes' exits, and start its services
        (a gateway restart finds them still running: they are recognised, not doubled)."""
        container_id = container.id
        for service in self._by_container.get(container_id, {}).values():
            self._cancel_retry(service)  # ids of the agent before mean nothing to this one
            service.proc_id = None
        for key in [key for key in self._early_exits if key[0] == container_id]:
            del self._early_exits[key]

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "link.closed":  # the container stopped, crashed or went away
                for service in self._by_container.get(container_id, {}).values():
                    self._cancel_retry(service)
                    service.proc_id = None
                    self._set_status(service, "stopped")

        link.on_event(on_event)
        procs.on_exit(link, lambda event: self._exited(container_id, link, event))
        if self._by_container.get(container_id):
            self.tasks.spawn(self._bring_back(container_id, link), name="services")

    async def _bring_back(self, container_id: str, link: AgentClient) -> None:
        try:
            running = {
                (p["command"], tuple(p["args"]), p["cwd"]): p["proc_id"]
                for p in await procs.list_processes(link, timeout=10) if p["state"] == "running"
            }  # fmt: skip
        except (AgentUnavailable, AgentOpError):
            return
        for service in list(self._services(container_id).values()):
            spec = service.spec
            key = (spec.command, tuple(spec.args), spec.cwd)
            if service.desired != "running":
                service.status, service.proc_id = "stopped", None
            elif key in running:  # still up from before this gateway started
                service.proc_id, service.status = running[key], "starting"
                self._probe_soon(service)
            else:
                service.proc_id = None
                await self._spawn(service, link)

    def _exited(self, container_id: str, link: AgentClient, event: ExitEvent) -> None:
        service = next((s for s in self._services(container_id).values()
                        if s.proc_id == event["proc_id"]), None)  # fmt: skip
        if service is None:
            # A process that ends at once may be heard of before its spawn's caller resumed.
            self._early_exits[(container_id, event["proc_id"])] = event["code"]
            while len(self._early_exits) > EARLY_EXITS:
                self._early_exits.popitem(last=False)
            return
        service.proc_id, service.exit_code = None, event["code"]
        if service.desired != "running":
            self._set_status(service, "stopped")
            return
        policy = service.spec.restart
        if policy == "never" or (policy == "on-failure" and event["code"] == 0):
            self._set_status(service, "failed" if event["code"] else "stopped")
            return
        if time.monotonic() - service.started_at >= STABLE_SECONDS:
            service.backoff = BACKOFF_FIRST
        delay, service.backoff = service.backoff, min(service.backoff * 2, BACKOFF_MAX)
        self._set_status(service, "backoff")
        service.retry = asyncio.get_running_loop().call_later(
            delay, lambda: self.tasks.spawn(self._retry(service, link), name="service restart")
        )

    async def _retry(self, service: Service, link: AgentClient) -> None:
        service.retry = None
        if service.desired != "running" or link.closed.is_set() or service.proc_id is not None:
            return
        service.restarts += 1
        async with self._lock(service.container_id):
            await self._spawn(service, link)

    def _port_ready(self, container_id: str, port: int) -> None:
        for service in self._services(container_id).values():
            if service.spec.port == port and service.status == "starting":
                self._set_status(service, "running")

    def _probe_soon(self, service: Service) -> None:
        """A service found running: its port may have answered before anyone listened."""
        port = service.spec.port
        if port is None:
            self._set_status(service, "running")
            return
        preview = self.previews.find(service.container_id, port)
        if preview is not None and preview.status == "ready":
            self._set_status(service, "running")

    # -- starting and stopping ------------------------------------------------------------

    async def _spawn(self, service: Service, link: AgentClient) -> None:
        env = {**await self._environment(service.container_id, service.owner_id),
               **service.spec.env}  # fmt: skip
        if service.spec.port is not None:
            env.setdefault("PORT", str(service.spec.port))
        request: SpawnRequest = {
            "command": service.spec.command, "args": service.spec.args,
            "cwd": service.spec.cwd, "env": env, "pty": True, "cols": 120, "rows": 40,
        }  # fmt: skip
        self._cancel_retry(service)
        try:
            info = await procs.spawn(link, request)
        except (AgentUnavailable, AgentOpError) as exc:
            log.warning("service did not start", service=service.name, problem=str(exc))
            self._set_status(service, "failed")
            return
        service.proc_id, service.exit_code = info["proc_id"], None
        service.started_at = time.monotonic()
        early = self._early_exits.pop((service.container_id, info["proc_id"]), None)
        if info["state"] == "exited" or early is not None:  # it ended at once
            code = early if early is not None else info["exit_code"]
            ended: ExitEvent = {"proc_id": info["proc_id"], "code": 127 if code is None else code}
            self._exited(service.container_id, link, ended)
            return
        self._set_status(service, "starting" if service.spec.port is not None else "running")
        self._probe_soon(service)

    async def _environment(self, container_id: str, owner_id: str) -> dict[str, str]:
        """Every service's URLs, for every service of the container."""
        env: dict[str, str] = {}
        for other in self._services(container_id).values():
            if other.spec.port is None:
                continue
            key = re.sub(r"[^A-Z0-9]", "_", other.name.upper())
            env[f"CC_SERVICE_{key}_LOCAL_URL"] = f"http://127.0.0.1:{other.spec.port}"
            preview = await self.previews.reserve(container_id, owner_id, other.spec.port)
            if preview is not None:
                env[f"CC_SERVICE_{key}_URL"] = self.previews.origin(preview)
        return env

    async def _stop_process(self, service: Service) -> None:
        self._cancel_retry(service)
        link = self.containers.live_link(service.owner_id, service.container_id)
        if service.proc_id is not None and link is not None:
            with contextlib.suppress(AgentUnavailable, AgentOpError):  # already gone
                await procs.kill(link, service.proc_id, signal.SIGTERM)
        service.proc_id = None

    def _cancel_retry(self, service: Service) -> None:
        if service.retry is not None:
            service.retry.cancel()
            service.retry = None

    def _set_status(self, service: Service, status: str) -> None:
        if service.status == status:
            return
        service.status = status
        self.events.publish(service.container_id, {"type": "service", **self.describe(service)})

    # -- the API --------------------------------------------------------------------------

    def describe(self, service: Service) -> dict[str, Any]:
        port = service.spec.port
        url = None
        if port is not None:
            preview = self.previews.find(service.container_id, port)
            url = self.previews.url(preview) if preview is not None else None
        return {
            "name": service.name, **service.spec.to_json(), "status": service.status,
            "desired": service.desired, "restarts": service.restarts,
            "exit_code": service.exit_code, "proc_id": service.proc_id, "url": url,
        }  # fmt: skip

    async def list(self, owner_id: str, container_id: str) -> list[Service]:
        await self.containers.get(owner_id, container_id)
        services = self._services(container_id)
        return [services[name] for name in sorted(services)]

    async def get(self, owner_id: str, container_id: str, name: str) -> Service:
        await self.containers.get(owner_id, container_id)
        service = self._services(container_id).get(name)
        if service is None:
            raise NotFound(f"This container has no service {name!r}.", code="service_not_found")
        return service

    async def create(self, owner_id: str, container_id: str, name: str,
                     given: dict[str, Any]) -> Service:  # fmt: skip
        """Add a service and start it; without a command, the project's dev server."""
        if not NAME.match(name):
            raise ValidationFailed("A service name is 1-32 of a-z, 0-9 and -, from a letter.",
                                   code="invalid_service_name")  # fmt: skip
        link = await self.containers.agent(owner_id, container_id)
        async with self._lock(container_id):
            services = self._services(container_id)
            if name in services:
                raise Conflict(f"Service {name!r} exists.", code="service_exists")
            if len(services) >= MAX_SERVICES:
                raise Conflict(f"A container has at most {MAX_SERVICES} services.",
                               code="too_many_services")  # fmt: skip
            spec = await self._spec(link, given)
            service = Service(container_id, owner_id, name, spec)
            async with self._db.session() as session:
                session.add(ServiceRow(container_id=container_id, name=name,
                                       spec=spec.to_json(), desired="running"))  # fmt: skip
            services[name] = service
            if spec.port is not None:
                await self.previews.reserve(container_id, owner_id, spec.port)
            await self._spawn(service, link)
        return service

    async def _spec(self, link: AgentClient, given: dict[str, Any]) -> ServiceSpec:
        cwd = given.get("cwd") or "/home/project"
        restart: RestartPolicy = given.get("restart") or "on-failure"
        if given.get("command"):
            args, env = list(given.get("args") or []), dict(given.get("env") or {})
            return ServiceSpec(given["command"], args, cwd, env, given.get("port"), restart)
        detected = await self.detect(link, cwd, given.get("port"))
        if detected is None:
            raise ValidationFailed(
                f"Nothing in {cwd} says how to serve it (no package.json dev or start script, "
                "no known framework, no index.html): give a command.", code="no_dev_server",
            )  # fmt: skip
        return ServiceSpec(
            detected.command[0], detected.command[1:], cwd,
            {**detected.env, **(given.get("env") or {})}, detected.port, restart,
            framework=detected.framework,
        )  # fmt: skip

    async def detect(self, link: AgentClient, cwd: str, port: int | None) -> Any:
        try:
            names = {entry["name"] for entry in await list_dir(link, cwd, recursive=False)}
        except AgentOpError as exc:
            raise ValidationFailed(f"{cwd}: {exc.message}", code="invalid_cwd") from None
        package: dict[str, Any] | None = None
        if "package.json" in names:
            try:
                read = await read_file(link, f"{cwd}/package.json", max_bytes=PACKAGE_JSON_BYTES)
                parsed = json.loads(read.data)
                package = parsed if isinstance(parsed, dict) else None
            except (AgentOpError, CloudContainerError, ValueError):
                package = None
        return detect_dev_server(package, names, port)

    async def set_desired(self, owner_id: str, container_id: str, name: str,
                          action: Literal["start", "stop", "restart"]) -> Service:  # fmt: skip
        service = await self.get(owner_id, container_id, name)
        desired = "stopped" if action == "stop" else "running"
        async with self._db.session() as session:
            await session.execute(update(ServiceRow).where(
                ServiceRow.container_id == container_id, ServiceRow.name == name,
            ).values(desired=desired))  # fmt: skip
        async with self._lock(container_id):
            service.desired = desired
            if action in ("stop", "restart"):
                await self._stop_process(service)
                self._set_status(service, "stopped")
            if desired == "running" and service.proc_id is None:
                service.backoff = BACKOFF_FIRST
                link = await self.containers.agent(owner_id, container_id)
                await self._spawn(service, link)
        return service

    async def delete(self, owner_id: str, container_id: str, name: str) -> None:
        service = await self.get(owner_id, container_id, name)
        async with self._lock(container_id):
            service.desired = "stopped"
            await self._stop_process(service)
            self._services(container_id).pop(name, None)
            async with self._db.session() as session:
                await session.execute(delete(ServiceRow).where(
                    ServiceRow.container_id == container_id, ServiceRow.name == name,
                ))  # fmt: skip
