"""generation strategies

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

Models: the generation strategies a workload compares with plain generation (``autotune add
--prompt-lookup``, ``--assistant DRAFT``: the draft model's name and path), as a JSON object.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("autotune_models") as batch:
        batch.add_column(sa.Column("generation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("autotune_models") as batch:
        batch.drop_column("generation")
