"""evaluations, replays, promotion policies and promotions; the alias a rollout moves

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as rollouts:
        rollouts.add_column(sa.Column("alias", sa.String(100), nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("against", sa.Integer(), nullable=True),
        sa.Column("deployment", sa.String(200), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("runner", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("finished_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_evaluations_model_version", "evaluations", ["model", "version"])
    op.create_table(
        "promotion_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "revision", name="uq_promotion_policies"),
    )
    op.create_index("ix_promotion_policies_name", "promotion_policies", ["name"])
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(200), nullable=False),
        sa.Column("policy_revision", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(30), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.Column("replay_id", sa.Integer(), nullable=True),
        sa.Column("rollouts", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decided_at", _WHEN, nullable=True),
        sa.Column("promoted_at", _WHEN, nullable=True),
        sa.Column("baking_until", _WHEN, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_promotions_model_version", "promotions", ["model", "version"])


def downgrade() -> None:
    op.drop_index("ix_promotions_model_version", table_name="promotions")
    op.drop_table("promotions")
    op.drop_index("ix_promotion_policies_name", table_name="promotion_policies")
    op.drop_table("promotion_policies")
    op.drop_index("ix_evaluations_model_version", table_name="evaluations")
    op.drop_table("evaluations")
    with op.batch_alter_table("rollouts") as rollouts:
        rollouts.drop_column("alias")
