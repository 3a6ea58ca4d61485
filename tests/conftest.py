"""Shared fixtures: real PostgreSQL and SMTP servers, and an app per test on each database."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from cloudcontainer.app import create_app
from cloudcontainer.config import Settings
from cloudcontainer.db import Base, Database, migrate
from cloudcontainer.state import Services
from tests.support.docker import docker_engine
from tests.support.image import BuiltImage, BuiltRootfs, build
from tests.support.postgres import postgres_server
from tests.support.redis import redis_server
from tests.support.s3 import S3Server, s3_server
from tests.support.server import SESSION_ROOTFS_DIR
from tests.support.smtp import Mailbox, smtp_server

# The browser fixtures (`browser`, `page`) and the hook that snaps a failing test's page.
pytest_plugins = ["tests.support.browser"]

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("CLOUDCONTAINER_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_session_url() -> Iterator[str]:
    url = os.environ.get("CLOUDCONTAINER_TEST_REDIS_URL")
    if url:
        yield url
        return
    with redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_session_url: str) -> str:
    """A Redis server with nothing in it (flushed for each test that asks)."""
    subprocess.run(["redis-cli", "-u", redis_session_url, "flushall"], check=True,
                   capture_output=True)  # fmt: skip
    return redis_session_url


@pytest.fixture(scope="session")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """moto's S3 server, for the object storage tests."""
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3: S3Server) -> str:
    """A fresh bucket on the S3 server."""
    bucket = f"cc-{secrets.token_hex(6)}"
    s3.create_bucket(bucket)
    return bucket


@pytest.fixture
def mailbox(smtp: tuple[Mailbox, int]) -> Mailbox:
    smtp[0].clear()
    return smtp[0]


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database at the newest migration, made once: each test starts from a copy
    rather than migrating an empty file (~0.1 s of DDL and fsyncs per app). Migrating from
    empty is tested by tests/test_migrations.py, and every app start still runs the upgrade
    (which finds nothing to do)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "test.db"

    async def migrate_once() -> None:
        database = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate.upgrade(database)
        finally:
            await database.aclose()

    asyncio.run(migrate_once())
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite")
        shutil.copyfile(template, tmp_path / "test.db")
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def make_settings(tmp_path: Path, database_url: str, smtp_port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_security": "none",
        # Cheap argon2id parameters: the tests hash hundreds of passwords.
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 1024,
        "log_level": "warning",
        # No sandboxes started ahead of demand: most apps under test never create a container,
        # and most that do create one or two, while a warm pool (the server's default: two)
        # starts and destroys two or three more per test. A test of the pool asks for one
        # (test_containers); `cloudcontainer serve` in test_gateway_restart runs the default.
        "warm_pool_size": 0,
    }
    if SESSION_ROOTFS_DIR:
        values["rootfs_dir"] = SESSION_ROOTFS_DIR[0]
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    """A running app, an HTTP client for it, and its services."""

    app: FastAPI
    client: httpx.AsyncClient
    mailbox: Mailbox
    users: list[TestUser] = field(default_factory=list)

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    async def user(self, email: str | None = None, *, admin: bool = False) -> TestUser:
        """A verified account, logged in."""
        email = email or f"user{len(self.users)}@example.com"
        user = await self.services.accounts.create_user(email, PASSWORD, admin=admin)
        response = await self.client.post(
            "/api/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        tokens = response.json()
        test_user = TestUser(id=user.id, email=email, tokens=tokens)
        self.users.append(test_user)
        return test_user


@dataclass
class TestUser:
    __test__ = False
    id: str
    email: str
    tokens: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}


async def _truncate_all(services: Services) -> None:
    if services.database.is_sqlite:
        return  # a fresh file per test
    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    async with services.database.engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {names} CASCADE"))


@asynccontextmanager
async def running_api(settings: Settings, mailbox: Mailbox) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await _truncate_all(app.state.services)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(app=app, client=client, mailbox=mailbox)


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def api_factory(
    tmp_path: Path, database_url: str, smtp: tuple[Mailbox, int], mailbox: Mailbox
) -> AsyncIterator[Callable[..., Any]]:
    """`await api_factory(**setting_overrides)` starts an app; all are closed after the test."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Api:
            settings = make_settings(tmp_path, database_url, smtp[1], **overrides)
            return await stack.enter_async_context(running_api(settings, mailbox))

        yield start


@pytest.fixture
async def api(api_factory: Callable[..., Awaitable[Api]]) -> Api:
    return await api_factory()


# -- sandboxes ------------------------------------------------------------------------------

SANDBOX_RUNTIMES = ["local", "docker"]


@pytest.fixture(scope="session")
def docker_url() -> Iterator[str]:
    """A running Docker Engine (started for the session when none answers)."""
    with docker_engine() as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def built_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltRootfs]:
    """The sandbox root filesystem, built for real from an empty store once per session: every
    sandbox of the suite starts from it (the `rootfs_dir` of every app and server).

    Set CLOUDCONTAINER_TEST_ROOTFS_DIR to a directory to keep the store between sessions (a
    build whose recipe has not changed is then a no-op).
    """
    reused = os.environ.get("CLOUDCONTAINER_TEST_ROOTFS_DIR")
    directory = Path(reused) if reused else tmp_path_factory.mktemp("rootfs")
    result = build("--no-docker", rootfs_dir=directory, docker_url="unix:///nonexistent")
    assert result.returncode == 0, result.stdout + result.stderr
    SESSION_ROOTFS_DIR[:] = [directory]
    yield BuiltRootfs(directory, result.stdout + result.stderr)
    SESSION_ROOTFS_DIR.clear()


@pytest.fixture(scope="session")
def built_image(docker_url: str, built_rootfs: BuiltRootfs) -> Iterator[BuiltImage]:
    """The session's root filesystem as a Docker image under a throwaway tag, then removed."""
    tag = f"cloudcontainer/sandbox:test-{secrets.token_hex(4)}"
    result = build(
        "--docker", "--tag", tag, rootfs_dir=built_rootfs.directory, docker_url=docker_url
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield BuiltImage(tag, built_rootfs, docker_url, result.stdout + result.stderr)
    subprocess.run(
        ["docker", "--host", docker_url, "rmi", "--force", tag],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip


@pytest.fixture(params=SANDBOX_RUNTIMES)
def runtime_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def sandbox_api_factory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    runtime_name: str,
    smtp: tuple[Mailbox, int],
    mailbox: Mailbox,
) -> AsyncIterator[Callable[..., Any]]:
    """Apps on SQLite with a real sandbox runtime; sandboxes are destroyed after the test."""
    from contextlib import AsyncExitStack

    data_dir = tmp_path / "data"
    image: dict[str, Any] = {}
    if runtime_name == "docker":
        image["sandbox_image"] = request.getfixturevalue("built_image").tag
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Api:
            values: dict[str, Any] = {
                **image,
                "runtime": runtime_name,
                "health_interval_seconds": 0.2,
                **overrides,
            }
            settings = make_settings(
                tmp_path, f"sqlite+aiosqlite:///{data_dir / 'test.db'}", smtp[1], **values
            )
            return await stack.enter_async_context(running_api(settings, mailbox))

        yield start
    # Whatever a test left running is removed with the runtime it used, once the apps are
    # closed: a live app's supervisor would start again what is destroyed under it.
    await destroy_sandboxes(
        make_settings(tmp_path, "sqlite+aiosqlite://", smtp[1], runtime=runtime_name, **image)
    )


async def destroy_sandboxes(settings: Settings) -> None:
    """Every sandbox of `settings`' runtime and data dir, once no app runs on them."""
    from cloudcontainer.state import build_runtime

    runtime = build_runtime(settings)
    for info in await runtime.list():
        await runtime.destroy(info.sandbox_id)
    await runtime.aclose()


@pytest.fixture
async def sandbox_api(sandbox_api_factory: Callable[..., Awaitable[Api]]) -> Api:
    return await sandbox_api_factory()
