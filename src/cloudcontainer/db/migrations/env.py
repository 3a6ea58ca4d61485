"""Alembic environment: migrations always run on a connection handed over by `db.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from cloudcontainer.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `cloudcontainer db upgrade`")

if connection.dialect.name == "postgresql":
    # Serialise concurrent upgrades from several gateways starting together.
    connection.execute(text("SELECT pg_advisory_xact_lock(7416330001)"))

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
