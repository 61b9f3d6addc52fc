"""quality on text, GGUF models

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Models: the GGUF file a llama.cpp model is loaded from, and the user's quality prompts.
Trials: how many positions quality was scored on, the agreement's 95% interval, and the
perplexity change of the reference's continuation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("autotune_models") as batch:
        batch.add_column(sa.Column("gguf_file", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("quality_prompts", sa.JSON(), nullable=True))
    with op.batch_alter_table("autotune_trials") as batch:
        batch.add_column(sa.Column("quality_positions", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quality_agreement_low", sa.Float(), nullable=True))
        batch.add_column(sa.Column("quality_agreement_high", sa.Float(), nullable=True))
        batch.add_column(sa.Column("quality_perplexity_change", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("autotune_trials") as batch:
        batch.drop_column("quality_perplexity_change")
        batch.drop_column("quality_agreement_high")
        batch.drop_column("quality_agreement_low")
        batch.drop_column("quality_positions")
    with op.batch_alter_table("autotune_models") as batch:
        batch.drop_column("quality_prompts")
        batch.drop_column("gguf_file")
