"""Create the cities table: what releases before migrations made with `create_all`.

Revision ID: 2d5c0f6a9b31
Revises: nothing, the first revision
Create Date: 2026-12-02 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2d5c0f6a9b31"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("population", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cities")),
        sa.UniqueConstraint("name", name=op.f("uq_cities_name")),
    )
    # Serves `GET /cities/biggest` (ORDER BY population DESC, id) without sorting the table.
    op.create_index(
        "ix_cities_population_desc_id", "cities", [sa.literal_column("population DESC"), "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_cities_population_desc_id", table_name="cities")
    op.drop_table("cities")
