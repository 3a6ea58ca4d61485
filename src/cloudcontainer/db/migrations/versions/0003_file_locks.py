"""file locks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 15:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "file_locks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("container_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["container_id"],
            ["containers.id"],
            name=op.f("fk_file_locks_container_id_containers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_file_locks_created_by_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_locks")),
    )
    with op.batch_alter_table("file_locks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_file_locks_container_id"), ["container_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_file_locks_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("file_locks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_locks_expires_at"))
        batch_op.drop_index(batch_op.f("ix_file_locks_container_id"))

    op.drop_table("file_locks")
