"""Containers under concurrency, on the FakeRuntime (real agents as plain processes): quota
checks that hold across concurrent creates and gateways, races of start/stop/delete on one
container, and the supervisor giving up on a sandbox that keeps crashing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudcontainer.agentlink.bundle import build_agent_zipapp
from cloudcontainer.db import Container, Database, Project, User, migrate
from cloudcontainer.db.types import new_id
from cloudcontainer.errors import Forbidden, NotFound
from cloudcontainer.events import EventBus
from cloudcontainer.runtimes.base import RuntimeOptions, SandboxState
from cloudcontainer.sandbox.service import ContainerService, Status
from cloudcontainer.sandbox.supervisor import GAVE_UP, GIVE_UP_AFTER, Supervisor
from cloudcontainer.tasks import TaskSet
from tests.conftest import make_settings
from tests.support.fakeruntime import FakeRuntime

SETTLE_SECONDS = 30


@dataclass
class Gateway:
    """What one gateway process holds of containers: its own engine, runtime and service."""

    containers: ContainerService
    runtime: FakeRuntime
    database: Database
    tasks: TaskSet

    async def owner_with_project(self) -> tuple[str, str]:
        owner, project = new_id("usr"), new_id("prj")
        async with self.database.session() as session:
            session.add(User(id=owner, email=f"{owner}@example.com", password_hash="-"))
            await session.flush()
            session.add(Project(id=project, owner_id=owner, name="app"))
        return owner, project

    async def running(self, owner: str, project: str) -> Container:
        container = await self.containers.create(owner, project, "node", None)
        container = await self.containers.wait_settled(owner, container.id)
        assert container.status == Status.RUNNING, container.status_reason
        return container


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture(scope="module")
def agent_zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent_zipapp(tmp_path_factory.mktemp("agent"))


@asynccontextmanager
async def open_gateway(
    tmp_path: Path, database_url: str, agent_zipapp: Path, **overrides: Any
) -> AsyncIterator[Gateway]:
    settings = make_settings(tmp_path, database_url, 25, warm_pool_size=0, **overrides)
    database = Database(settings.database_url)
    await migrate.upgrade(database)
    runtime = FakeRuntime(
        RuntimeOptions(data_dir=settings.data_dir, agent_zipapp=agent_zipapp, ca_bundle=None)
    )
    tasks = TaskSet()
    containers = ContainerService(
        settings=settings, database=database, runtime=runtime, events=EventBus(), tasks=tasks
    )
    try:
        yield Gateway(containers, runtime, database, tasks)
    finally:
        await tasks.aclose()
        for link in list(containers.links.values()):
            await link.aclose()
        await runtime.destroy_all()
        await database.aclose()


@pytest.fixture
async def gateway_factory(
    tmp_path: Path, database_url: str, agent_zipapp: Path
) -> AsyncIterator[GatewayFactory]:
    """`await gateway_factory(**settings)`: gateways sharing one database (and one data
    directory, as gateways on one host would)."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Gateway:
            return await stack.enter_async_context(
                open_gateway(tmp_path, database_url, agent_zipapp, **overrides)
            )

        yield start


QUOTAS_OF_THREE = [
    pytest.param({"max_containers_per_user": 3}, id="count"),
    pytest.param({"default_memory_mb": 512, "max_memory_mb_per_user": 3 * 512}, id="memory"),
]


@pytest.mark.parametrize("quota", QUOTAS_OF_THREE)
async def test_concurrent_creates_on_two_gateways_never_exceed_the_quota(
    gateway_factory: GatewayFactory, quota: dict[str, int]
) -> None:
    gateways = [await gateway_factory(**quota), await gateway_factory(**quota)]
    owner, project = await gateways[0].owner_with_project()

    results = await asyncio.gather(
        *(gateways[i % 2].containers.create(owner, project, "node", None) for i in range(10)),
        return_exceptions=True,
    )

    created = [result for result in results if isinstance(result, Container)]
    refused = [result for result in results if isinstance(result, Forbidden)]
    assert (len(created), len(refused)) == (3, 7), results
    assert {error.code for error in refused} == {"quota_exceeded"}
    assert len(await gateways[0].containers.list(owner)) == 3


async def test_sandboxes_are_labelled_with_their_owner_and_project(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory()
    owner, project = await gateway.owner_with_project()
    container = await gateway.running(owner, project)
    assert gateway.runtime.labels(container.id) == {"user": owner, "project": project}


async def _race(gateway: Gateway, names: list[str]) -> tuple[str, str, list[object]]:
    """A running container, then every named ContainerService call on it at once, with
    starts slow enough to overlap the others; answers (owner, container id, outcomes)."""
    owner, project = await gateway.owner_with_project()
    cid = (await gateway.running(owner, project)).id
    gateway.runtime.start_delay = 0.02
    calls = [getattr(gateway.containers, name) for name in names]
    results = await asyncio.gather(*(call(owner, cid) for call in calls), return_exceptions=True)
    await gateway.tasks.drain()
    return owner, cid, list(results)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_concurrent_start_stop_restart_and_delete_leave_nothing_behind(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory()
    service = gateway.containers
    names = ["stop", "start", "restart", "start", "stop", "delete", "start", "restart"]
    owner, cid, results = await _race(gateway, names)

    for result in results:
        assert result is None or isinstance(result, (Container, NotFound)), repr(result)
    with pytest.raises(NotFound):
        await service.get(owner, cid)
    assert cid not in service.links
    assert await gateway.runtime.list() == []
    assert gateway.runtime.processes == {}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_concurrent_starts_and_stops_settle_where_the_runtime_agrees(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory()
    service = gateway.containers
    owner, cid, results = await _race(gateway, ["stop", "start", "restart", "stop", "start"] * 2)

    assert all(isinstance(result, Container) for result in results), results
    container = await service.get(owner, cid)
    running = (await gateway.runtime.inspect(cid)).state is SandboxState.RUNNING
    assert container.status in (Status.RUNNING, Status.STOPPED)
    assert running == (container.status == Status.RUNNING) == (cid in service.links)
    assert container.desired == container.status


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_sandbox_that_keeps_crashing_is_given_up(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory()
    service = gateway.containers
    owner, project = await gateway.owner_with_project()
    cid = (await gateway.running(owner, project)).id
    supervisor = Supervisor(service, backoff_seconds=(0,))
    starts = gateway.runtime.starts

    async with service.events.subscribe(cid) as queue:
        gateway.runtime.failing = "the sandbox crashed as it started (injected)"
        gateway.runtime.crash(cid)
        await service.links[cid].closed.wait()
        await supervisor.check_health()
        async with asyncio.timeout(SETTLE_SECONDS):
            while (event := await queue.get()).get("status") != Status.FAILED:
                pass

    assert event["reason"] == GAVE_UP
    container = await service.get(owner, cid)
    assert (container.status, container.status_reason) == (Status.FAILED, GAVE_UP)
    assert container.restart_count == GIVE_UP_AFTER
    assert gateway.runtime.starts - starts == GIVE_UP_AFTER
