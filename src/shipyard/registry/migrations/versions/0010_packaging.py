"""a version's environment (requirements) and what it was derived from; failed requests in
the prediction log

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as versions:
        versions.add_column(sa.Column("environment", sa.JSON(), nullable=True))
        versions.add_column(sa.Column("derived_from", sa.String(300), nullable=True))
        versions.add_column(sa.Column("derivation", sa.JSON(), nullable=True))
    with op.batch_alter_table("predictions") as predictions:
        predictions.add_column(
            sa.Column("failed", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions") as predictions:
        predictions.drop_column("failed")
    with op.batch_alter_table("model_versions") as versions:
        versions.drop_column("derivation")
        versions.drop_column("derived_from")
        versions.drop_column("environment")
