"""fleet workers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

One row per worker of a running daemon (``autotune_workers``): host, GPU, daemon pid, heartbeat,
and the candidate it claimed. ``(hostname, gpu)`` and ``(study_id, candidate_key)`` are unique,
so two daemons cannot drive one GPU and two workers cannot claim one candidate of a study.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "autotune_workers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("gpu", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("candidate_key", sa.String(length=32), nullable=True),
        sa.Column("candidate", sa.String(length=255), nullable=True),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("activity", sa.Text(), nullable=True),
        sa.UniqueConstraint("hostname", "gpu"),
        sa.UniqueConstraint("study_id", "candidate_key"),
    )


def downgrade() -> None:
    op.drop_table("autotune_workers")
