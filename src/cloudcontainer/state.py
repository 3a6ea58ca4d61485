"""The services one running server holds, built by the app's lifespan and shared by the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from cloudcontainer.agentlink.bundle import build_agent_zipapp
from cloudcontainer.auth.credentials import CredentialService
from cloudcontainer.auth.mail import mailer_from_settings
from cloudcontainer.auth.passwords import PasswordHasher
from cloudcontainer.auth.service import AccountService
from cloudcontainer.auth.tokens import AccessTokenSigner
from cloudcontainer.config import Settings
from cloudcontainer.db import Database, migrate
from cloudcontainer.events import EventBus
from cloudcontainer.files.service import FileService
from cloudcontainer.observability.metrics import Metrics
from cloudcontainer.projects.service import ProjectService
from cloudcontainer.runtimes import load_runtime
from cloudcontainer.runtimes.base import Runtime, RuntimeOptions, RuntimeUnavailable
from cloudcontainer.sandbox.service import ContainerService
from cloudcontainer.sandbox.supervisor import Supervisor
from cloudcontainer.tasks import TaskSet

__all__ = ["Services", "open_services"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    metrics: Metrics
    tasks: TaskSet
    accounts: AccountService
    credentials: CredentialService
    projects: ProjectService
    events: EventBus
    runtime: Runtime
    containers: ContainerService
    files: FileService


def build_runtime(settings: Settings) -> Runtime:
    options = RuntimeOptions(
        data_dir=settings.data_dir,
        agent_zipapp=build_agent_zipapp(settings.data_dir / "agent"),
        ca_bundle=settings.sandbox_ca_bundle
        if settings.sandbox_ca_bundle and settings.sandbox_ca_bundle.is_file()
        else None,
        image=settings.sandbox_image,
        extra={
            "host_uid": settings.local_sandbox_uid,
            "disk_quotas": settings.default_disk_mb > 0,
        },
    )
    return load_runtime(settings.runtime, options)


@asynccontextmanager
async def open_services(
    settings: Settings, metrics: Metrics | None = None, *, supervise: bool = True
) -> AsyncIterator[Services]:
    """Connect to the database, apply migrations, build the services; close them in order.

    With `supervise`, containers are reconciled with the runtime and watched (the server);
    without, nothing touches sandboxes (one-shot CLI commands).
    """
    database = Database(settings.database_url)
    tasks = TaskSet()
    runtime = build_runtime(settings)
    supervisor: Supervisor | None = None
    try:
        await migrate.upgrade(database)
        signer = AccessTokenSigner(settings.signing_key(), settings.access_token_ttl_seconds)
        hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost_kib=settings.argon2_memory_cost_kib
        )
        events = EventBus()
        containers = ContainerService(
            settings=settings, database=database, runtime=runtime, events=events, tasks=tasks
        )
        try:
            await runtime.check()
        except RuntimeUnavailable as exc:
            containers.runtime_problem = exc.message
            log.error(
                "the sandbox runtime cannot run here", runtime=runtime.name, problem=exc.message
            )
        if supervise and containers.runtime_problem is None:
            supervisor = Supervisor(containers)
            await supervisor.start()
        yield Services(
            settings=settings,
            database=database,
            metrics=metrics or Metrics(),
            tasks=tasks,
            accounts=AccountService(
                settings=settings,
                database=database,
                hasher=hasher,
                signer=signer,
                mailer=mailer_from_settings(settings),
                tasks=tasks,
            ),
            credentials=CredentialService(
                database=database, signer=signer, ticket_ttl_seconds=settings.ws_ticket_ttl_seconds
            ),
            projects=ProjectService(database),
            events=events,
            runtime=runtime,
            containers=containers,
            files=FileService(containers),
        )
    finally:
        if supervisor is not None:
            await supervisor.aclose()
        await tasks.aclose()
        await runtime.aclose()
        await database.aclose()
