"""container disk quota

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Containers made before quotas existed have none (0), which is what their sandboxes are.
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("disk_mb", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("disk_mb")
