"""WebSocket tickets bound to what they open; the audit log

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Tickets live seconds: the ones issued before this (unbound) are simply dropped.
    op.execute("DELETE FROM ws_tickets")
    with op.batch_alter_table("ws_tickets") as batch:
        batch.add_column(sa.Column("scope", sa.String(length=160), nullable=False))
        batch.add_column(sa.Column("session_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("api_key_id", sa.String(length=32), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("actor_id", sa.String(length=32), nullable=True),
        sa.Column("actor_email", sa.String(length=320), nullable=True),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("source_ip", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_action_at", "audit_events", ["action", "at"])
    op.create_index("ix_audit_events_actor_id_at", "audit_events", ["actor_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_actor_id_at", table_name="audit_events")
    op.drop_index("ix_audit_events_action_at", table_name="audit_events")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("ws_tickets") as batch:
        batch.drop_column("api_key_id")
        batch.drop_column("session_id")
        batch.drop_column("scope")
