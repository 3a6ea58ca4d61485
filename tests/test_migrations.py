"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cloudcontainer.db import Base
from tests.conftest import ApiFactory


async def test_migrations_match_the_models(api_factory: ApiFactory) -> None:
    api = await api_factory(warm_pool_size=0)  # its start applied every migration

    def differences(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with api.services.database.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
