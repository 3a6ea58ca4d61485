"""The Node.js major a container runs with

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Containers made before this ran the image's only Node.js; they get today's default.
    with op.batch_alter_table("containers") as batch:
        batch.add_column(
            sa.Column("node", sa.String(length=8), nullable=False, server_default="24")
        )


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("node")
