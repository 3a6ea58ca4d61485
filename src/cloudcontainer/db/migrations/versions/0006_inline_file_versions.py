"""small file versions kept in their row

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 18:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Versions kept before this have their bytes in object storage (NULL here), as large ones do.
    with op.batch_alter_table("file_versions") as batch:
        batch.add_column(sa.Column("data", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Versions kept in their row would lose their bytes: they go with the column.
    op.execute("DELETE FROM file_versions WHERE data IS NOT NULL")
    with op.batch_alter_table("file_versions") as batch:
        batch.drop_column("data")
