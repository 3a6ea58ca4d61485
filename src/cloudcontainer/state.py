"""The services one running server holds, built by the app's lifespan and shared by the API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis

from cloudcontainer.accounts import Removal
from cloudcontainer.agentlink.bundle import build_agent_zipapp
from cloudcontainer.audit import AuditLog
from cloudcontainer.auth.credentials import CredentialService, PrincipalCache
from cloudcontainer.auth.mail import mailer_from_settings
from cloudcontainer.auth.passwords import PasswordHasher
from cloudcontainer.auth.revocations import Revocations
from cloudcontainer.auth.service import AccountService
from cloudcontainer.auth.sockets import SocketRegistry
from cloudcontainer.auth.tokens import AccessTokenSigner
from cloudcontainer.config import Settings
from cloudcontainer.db import Database, migrate
from cloudcontainer.events import EventBus
from cloudcontainer.files.history import FileHistory
from cloudcontainer.files.locks import LockService
from cloudcontainer.files.ordering import Sequencer
from cloudcontainer.files.service import FileService
from cloudcontainer.observability.metrics import Metrics
from cloudcontainer.preview.service import PreviewService
from cloudcontainer.preview.services import ServiceManager
from cloudcontainer.projects.service import ProjectService
from cloudcontainer.redisconn import open_redis
from cloudcontainer.runtimes import load_runtime
from cloudcontainer.runtimes.base import Runtime, RuntimeOptions, RuntimeUnavailable
from cloudcontainer.runtimes.egress import EgressPolicy
from cloudcontainer.sandbox.service import ContainerService
from cloudcontainer.sandbox.supervisor import Supervisor
from cloudcontainer.snapshots import SnapshotService
from cloudcontainer.storage import ObjectStorage, open_storage
from cloudcontainer.tasks import TaskSet
from cloudcontainer.terminals.commands import CommandLog
from cloudcontainer.terminals.exec import ExecService
from cloudcontainer.terminals.limits import CommandPolicy
from cloudcontainer.terminals.processes import ProcessService
from cloudcontainer.terminals.service import TerminalService

__all__ = ["Services", "open_services"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    metrics: Metrics
    tasks: TaskSet
    audit: AuditLog
    accounts: AccountService
    credentials: CredentialService
    sockets: SocketRegistry
    projects: ProjectService
    events: EventBus
    runtime: Runtime
    containers: ContainerService
    files: FileService
    locks: LockService
    order: Sequencer
    storage: ObjectStorage
    snapshots: SnapshotService
    processes: ProcessService
    terminals: TerminalService
    exec: ExecService
    removal: Removal
    previews: PreviewService
    services: ServiceManager


def build_runtime(settings: Settings) -> Runtime:
    options = RuntimeOptions(
        data_dir=settings.data_dir,
        agent_zipapp=build_agent_zipapp(settings.data_dir / "agent"),
        ca_bundle=settings.sandbox_ca_bundle
        if settings.sandbox_ca_bundle and settings.sandbox_ca_bundle.is_file()
        else None,
        image=settings.sandbox_image,
        rootfs_dir=settings.rootfs_path,
        egress=EgressPolicy.from_settings(settings.egress_allow, settings.egress_block_private),
        open_files=settings.sandbox_open_files,
        local_uids=settings.local_uid_range,
        local_allow_without_cgroups=settings.local_allow_without_cgroups,
        docker_require_userns=settings.docker_require_userns,
        extra={"disk_quotas": settings.default_disk_mb > 0},
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
    locks: LockService | None = None
    periodic: asyncio.Task[None] | None = None
    previews: PreviewService | None = None
    service_manager: ServiceManager | None = None
    revalidating: asyncio.Task[None] | None = None
    listening: asyncio.Task[None] | None = None
    audit = AuditLog(database, retention_days=settings.audit_retention_days)
    redis: Redis | None = None
    try:
        await migrate.upgrade(database)
        if settings.redis_url:
            redis = await open_redis(settings.redis_url)
        audit.start()
        signer = AccessTokenSigner(settings.signing_key(), settings.access_token_ttl_seconds)
        hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost_kib=settings.argon2_memory_cost_kib
        )
        events = EventBus()
        containers = ContainerService(
            settings=settings, database=database, runtime=runtime, events=events, tasks=tasks
        )
        storage = open_storage(settings)
        history = FileHistory(settings=settings, database=database, storage=storage, tasks=tasks)
        containers.hooks.destroyed.append(history.forget)
        snapshots = SnapshotService(
            settings=settings, database=database, storage=storage, containers=containers
        )
        snapshots.install()
        try:
            await runtime.check()
        except RuntimeUnavailable as exc:
            containers.runtime_problem = exc.message
            log.error(
                "the sandbox runtime cannot run here", runtime=runtime.name, problem=exc.message
            )
        locks = LockService(
            database=database, containers=containers, events=events, tasks=tasks,
            default_ttl_seconds=settings.lock_default_ttl_seconds,
        )  # fmt: skip

        previews = PreviewService(
            settings=settings, database=database, containers=containers, events=events,
            tasks=tasks, signing_key=settings.signing_key(),
        )  # fmt: skip
        service_manager = ServiceManager(
            database=database, containers=containers, previews=previews, events=events,
            tasks=tasks,
        )  # fmt: skip
        if supervise:
            # Before any container is adopted: its ports are followed from its first event,
            # and its services are started with it.
            await previews.start()
            await service_manager.start()

        async def supervise_sandboxes() -> None:
            nonlocal supervisor, periodic
            supervisor = Supervisor(containers)
            await supervisor.start()
            if settings.snapshot_interval_seconds > 0:
                # Not in `tasks`: it never ends by itself, and `tasks` is drained at shutdown.
                periodic = asyncio.create_task(snapshots.run_periodically(), name="snapshots")

        if supervise and containers.runtime_problem is None:
            await supervise_sandboxes()
        elif supervise:
            # Fixed while the server runs (the root filesystem built, dockerd started): the
            # next container request finds out, and supervision starts then.
            containers.on_runtime_ready = supervise_sandboxes
        principals = PrincipalCache(settings.auth_cache_seconds)
        projects = ProjectService(database)
        sockets = SocketRegistry(database, revalidate_seconds=settings.ws_revalidate_seconds)
        processes = ProcessService(containers)
        commands = CommandLog(database)
        policy = CommandPolicy(settings.command_deny_patterns)
        revocations = Revocations(principals, sockets, redis)
        if supervise:
            revalidating = asyncio.create_task(sockets.run(), name="revalidate websockets")
            listening = asyncio.create_task(revocations.listen(), name="revocations")
        yield Services(
            settings=settings,
            database=database,
            metrics=metrics or Metrics(),
            tasks=tasks,
            audit=audit,
            accounts=AccountService(
                settings=settings,
                database=database,
                hasher=hasher,
                signer=signer,
                mailer=mailer_from_settings(settings),
                tasks=tasks,
                revocations=revocations,
                redis=redis,
            ),
            credentials=CredentialService(
                database=database,
                signer=signer,
                ticket_ttl_seconds=settings.ws_ticket_ttl_seconds,
                page_token_ttl_seconds=settings.page_token_ttl_seconds,
                cache=principals,
                revocations=revocations,
            ),
            sockets=sockets,
            projects=projects,
            events=events,
            runtime=runtime,
            containers=containers,
            files=FileService(containers, history, max_file_bytes=settings.max_file_bytes),
            processes=processes,
            terminals=TerminalService(
                containers,
                processes,
                commands,
                policy,
                scrollback_bytes=settings.terminal_scrollback_bytes,
                input_bytes_per_second=settings.terminal_input_bytes_per_second,
                history_reports_per_minute=settings.history_reports_per_minute,
                history_max_per_project=settings.history_max_per_project,
            ),
            exec=ExecService(containers, processes, commands, policy),
            locks=locks,
            order=Sequencer(settings.fifo_wait_seconds),
            storage=storage,
            snapshots=snapshots,
            removal=Removal(
                database=database, containers=containers, projects=projects,
                snapshots=snapshots, revocations=revocations, audit=audit,
            ),
            previews=previews,
            services=service_manager,
        )  # fmt: skip
    finally:
        for task in (periodic, revalidating, listening):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if locks is not None:
            locks.aclose()
        if supervisor is not None:
            await supervisor.aclose()
        if service_manager is not None:
            service_manager.close()
        if previews is not None:
            await previews.close()
        await tasks.aclose()
        await audit.aclose()  # after the tasks: what they recorded is written too
        await runtime.aclose()
        if redis is not None:
            await redis.aclose()
        await database.aclose()
