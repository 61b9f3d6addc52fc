"""The tables autotune keeps. Every table and column is documented in the README.

Table names carry the ``autotune_`` prefix, and Alembic's version table is
``autotune_alembic_version``, so that the store can share a database with Optuna's own tables
(``studies``, ``trials``, ``alembic_version``) or with an application's.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

VERSION_TABLE = "autotune_alembic_version"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class EnvironmentRow(Base):
    __tablename__ = "autotune_environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    summary: Mapped[str] = mapped_column(String(255))
    gpus: Mapped[list[Any]] = mapped_column(JSON)
    versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    driver_version: Mapped[str | None] = mapped_column(String(64))
    cuda_driver_version: Mapped[str | None] = mapped_column(String(32))
    python: Mapped[str] = mapped_column(String(32))
    first_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ModelRow(Base):
    __tablename__ = "autotune_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(String(64))
    model_type: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str | None] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    new_tokens: Mapped[int] = mapped_column(Integer)
    padding_share: Mapped[float] = mapped_column(Float, default=0.0)
    objective: Mapped[str] = mapped_column(String(16))
    max_memory: Mapped[str | None] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(8))
    min_quality: Mapped[float] = mapped_column(Float)
    max_batch: Mapped[int] = mapped_column(Integer)
    gguf_file: Mapped[str | None] = mapped_column(String(512))
    quality_prompts: Mapped[list[Any] | None] = mapped_column(JSON)
    #: The generation strategies the workload compares (``{"prompt_lookup": true, "assistant": {"name", "path"}}``).
    generation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime)


class StudyRow(Base):
    __tablename__ = "autotune_studies"
    __table_args__ = (UniqueConstraint("model_id", "workload_key", "environment_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("autotune_models.id", ondelete="CASCADE"), index=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("autotune_environments.id"), index=True)
    workload_key: Mapped[str] = mapped_column(String(32))
    workload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    stop_reason: Mapped[str | None] = mapped_column(Text)
    sampler_seed: Mapped[int] = mapped_column(Integer, default=0)
    best_trial_id: Mapped[int | None] = mapped_column(Integer)
    rejected: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class TrialRow(Base):
    __tablename__ = "autotune_trials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("autotune_studies.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(16), default="search")
    candidate_key: Mapped[str] = mapped_column(String(32), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    batch_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str | None] = mapped_column(Text)
    feasible: Mapped[bool | None] = mapped_column(Boolean)
    objective_value: Mapped[float | None] = mapped_column(Float)
    load_seconds: Mapped[float | None] = mapped_column(Float)
    compile_seconds: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    decode_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    throughput_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    sequences_per_s: Mapped[float | None] = mapped_column(Float)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p90_ms: Mapped[float | None] = mapped_column(Float)
    latency_spread: Mapped[float | None] = mapped_column(Float)
    repeats: Mapped[int | None] = mapped_column(Integer)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    torch_allocated_bytes: Mapped[int | None] = mapped_column(BigInteger)
    torch_reserved_bytes: Mapped[int | None] = mapped_column(BigInteger)
    nvml_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    forecast_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quality_token_agreement: Mapped[float | None] = mapped_column(Float)
    quality_kl: Mapped[float | None] = mapped_column(Float)
    quality_positions: Mapped[int | None] = mapped_column(Integer)
    quality_agreement_low: Mapped[float | None] = mapped_column(Float)
    quality_agreement_high: Mapped[float | None] = mapped_column(Float)
    quality_perplexity_change: Mapped[float | None] = mapped_column(Float)
    effective: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    worker_env: Mapped[str] = mapped_column(String(64), default="default")
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class RecommendationRow(Base):
    __tablename__ = "autotune_recommendations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("autotune_models.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("autotune_studies.id", ondelete="CASCADE"))
    trial_id: Mapped[int | None] = mapped_column(ForeignKey("autotune_trials.id", ondelete="CASCADE"))
    environment_id: Mapped[int] = mapped_column(ForeignKey("autotune_environments.id"))
    objective: Mapped[str] = mapped_column(String(16))
    constraints: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    explanation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    code: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DaemonRow(Base):
    """One row per database: who holds the daemon lock, and its heartbeat."""

    __tablename__ = "autotune_daemon"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    activity: Mapped[str | None] = mapped_column(Text)


class WorkerRow(Base):
    """One row per worker of a running daemon: its GPU, its heartbeat, and the candidate it claimed.

    ``(hostname, gpu)`` is unique, so two daemons cannot drive one GPU; ``(study_id,
    candidate_key)`` is unique, so two workers cannot claim one candidate of a study (NULLs, an
    idle worker, never collide). A claim is set before the candidate's trial rows are written and
    cleared after they are finished.
    """

    __tablename__ = "autotune_workers"
    __table_args__ = (UniqueConstraint("hostname", "gpu"), UniqueConstraint("study_id", "candidate_key"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    gpu: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    study_id: Mapped[int | None] = mapped_column(Integer)
    candidate_key: Mapped[str | None] = mapped_column(String(32))
    candidate: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    activity: Mapped[str | None] = mapped_column(Text)


class WorkerEnvRow(Base):
    """A registered Python interpreter trials can run in (``autotune env add``)."""

    __tablename__ = "autotune_worker_envs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    python: Mapped[str] = mapped_column(Text)
    python_version: Mapped[str | None] = mapped_column(String(32))
    versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    runtimes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    problems: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    checked_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
