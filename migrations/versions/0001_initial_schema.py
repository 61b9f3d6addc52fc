"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "autotune_daemon",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("activity", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "autotune_environments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("summary", sa.String(length=255), nullable=False),
        sa.Column("gpus", sa.JSON(), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("driver_version", sa.String(length=64), nullable=True),
        sa.Column("cuda_driver_version", sa.String(length=32), nullable=True),
        sa.Column("python", sa.String(length=32), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_table(
        "autotune_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("revision", sa.String(length=64), nullable=True),
        sa.Column("model_type", sa.String(length=64), nullable=False),
        sa.Column("architecture", sa.String(length=128), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("new_tokens", sa.Integer(), nullable=False),
        sa.Column("padding_share", sa.Float(), nullable=False),
        sa.Column("objective", sa.String(length=16), nullable=False),
        sa.Column("max_memory", sa.String(length=32), nullable=True),
        sa.Column("device", sa.String(length=8), nullable=False),
        sa.Column("min_quality", sa.Float(), nullable=False),
        sa.Column("max_batch", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("removed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "autotune_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("workload_key", sa.String(length=32), nullable=False),
        sa.Column("workload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("sampler_seed", sa.Integer(), nullable=False),
        sa.Column("best_trial_id", sa.Integer(), nullable=True),
        sa.Column("rejected", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["autotune_environments.id"],
        ),
        sa.ForeignKeyConstraint(["model_id"], ["autotune_models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "workload_key", "environment_id"),
    )
    with op.batch_alter_table("autotune_studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_autotune_studies_environment_id"), ["environment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_autotune_studies_model_id"), ["model_id"], unique=False)

    op.create_table(
        "autotune_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("candidate_key", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("feasible", sa.Boolean(), nullable=True),
        sa.Column("objective_value", sa.Float(), nullable=True),
        sa.Column("load_seconds", sa.Float(), nullable=True),
        sa.Column("compile_seconds", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("decode_tokens_per_s", sa.Float(), nullable=True),
        sa.Column("throughput_tokens_per_s", sa.Float(), nullable=True),
        sa.Column("sequences_per_s", sa.Float(), nullable=True),
        sa.Column("latency_p50_ms", sa.Float(), nullable=True),
        sa.Column("latency_p90_ms", sa.Float(), nullable=True),
        sa.Column("latency_spread", sa.Float(), nullable=True),
        sa.Column("repeats", sa.Integer(), nullable=True),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("torch_allocated_bytes", sa.BigInteger(), nullable=True),
        sa.Column("torch_reserved_bytes", sa.BigInteger(), nullable=True),
        sa.Column("nvml_used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("forecast_bytes", sa.BigInteger(), nullable=True),
        sa.Column("quality_token_agreement", sa.Float(), nullable=True),
        sa.Column("quality_kl", sa.Float(), nullable=True),
        sa.Column("effective", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("worker_env", sa.String(length=64), nullable=False),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["autotune_studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("autotune_trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_autotune_trials_candidate_key"), ["candidate_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_autotune_trials_study_id"), ["study_id"], unique=False)

    op.create_table(
        "autotune_recommendations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("objective", sa.String(length=16), nullable=False),
        sa.Column("constraints", sa.JSON(), nullable=False),
        sa.Column("explanation", sa.JSON(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["autotune_environments.id"],
        ),
        sa.ForeignKeyConstraint(["model_id"], ["autotune_models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["study_id"], ["autotune_studies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["trial_id"], ["autotune_trials.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("autotune_recommendations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_autotune_recommendations_model_id"), ["model_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("autotune_recommendations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_autotune_recommendations_model_id"))

    op.drop_table("autotune_recommendations")
    with op.batch_alter_table("autotune_trials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_autotune_trials_study_id"))
        batch_op.drop_index(batch_op.f("ix_autotune_trials_candidate_key"))

    op.drop_table("autotune_trials")
    with op.batch_alter_table("autotune_studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_autotune_studies_model_id"))
        batch_op.drop_index(batch_op.f("ix_autotune_studies_environment_id"))

    op.drop_table("autotune_studies")
    op.drop_table("autotune_models")
    op.drop_table("autotune_environments")
    op.drop_table("autotune_daemon")
