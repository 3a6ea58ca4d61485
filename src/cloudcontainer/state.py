"""The services one running server holds, built by the app's lifespan and shared by the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from cloudcontainer.auth.credentials import CredentialService
from cloudcontainer.auth.mail import mailer_from_settings
from cloudcontainer.auth.passwords import PasswordHasher
from cloudcontainer.auth.service import AccountService
from cloudcontainer.auth.tokens import AccessTokenSigner
from cloudcontainer.config import Settings
from cloudcontainer.db import Database, migrate
from cloudcontainer.observability.metrics import Metrics
from cloudcontainer.projects.service import ProjectService
from cloudcontainer.tasks import TaskSet

__all__ = ["Services", "open_services"]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    metrics: Metrics
    tasks: TaskSet
    accounts: AccountService
    credentials: CredentialService
    projects: ProjectService


@asynccontextmanager
async def open_services(
    settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Services]:
    """Connect to the database, apply migrations, build the services; close them in order."""
    database = Database(settings.database_url)
    tasks = TaskSet()
    try:
        await migrate.upgrade(database)
        signer = AccessTokenSigner(settings.signing_key(), settings.access_token_ttl_seconds)
        hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost_kib=settings.argon2_memory_cost_kib
        )
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
        )
    finally:
        await tasks.aclose()
        await database.aclose()
