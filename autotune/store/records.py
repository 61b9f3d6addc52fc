"""Frozen value objects the store hands out; never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autotune.candidate import Candidate
from autotune.workload import Workload

#: ``origin`` of the trials that re-measure a close best and runner-up, interleaved
#: (:mod:`autotune.search.confirm`); the others are ``baseline``, ``search`` and ``measure``.
CONFIRM_ORIGIN = "confirm"


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    source: str
    path: str | None
    revision: str | None
    model_type: str
    architecture: str | None
    config: dict[str, Any]
    capabilities: dict[str, Any]
    workload: Workload
    created_at: datetime
    updated_at: datetime
    #: A llama.cpp model: the GGUF file's name in ``path`` (``from_pretrained(path, gguf_file=...)``).
    gguf_file: str | None = None
    #: The user's quality prompts (``add --quality-prompts``); ``None``: the built-in ones.
    quality_prompts: tuple[str, ...] | None = None

    @property
    def load_path(self) -> str:
        """What ``from_pretrained`` should be given on this machine: the local files if any."""
        return self.path or self.name


@dataclass(frozen=True)
class StudyRecord:
    id: int
    model_id: int
    environment_id: int
    workload_key: str
    workload: Workload
    state: str
    stop_reason: str | None
    sampler_seed: int
    best_trial_id: int | None
    rejected: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


#: The measured figures a trial may carry, in the order they are shown.
METRICS = (
    "load_seconds",
    "compile_seconds",
    "ttft_ms",
    "decode_tokens_per_s",
    "throughput_tokens_per_s",
    "sequences_per_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_spread",
    "repeats",
    "peak_memory_bytes",
    "torch_allocated_bytes",
    "torch_reserved_bytes",
    "nvml_used_bytes",
    "rss_bytes",
    "forecast_bytes",
    "quality_token_agreement",
    "quality_kl",
    "quality_positions",
    "quality_agreement_low",
    "quality_agreement_high",
    "quality_perplexity_change",
)


@dataclass(frozen=True)
class TrialRecord:
    id: int
    study_id: int
    number: int
    origin: str
    candidate: Candidate
    batch_size: int
    status: str
    reason: str | None
    feasible: bool | None
    objective_value: float | None
    metrics: dict[str, Any]
    effective: dict[str, Any]
    details: dict[str, Any]
    worker_env: str
    started_at: datetime
    finished_at: datetime | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class LockRecord:
    """A row of ``autotune_daemon``: who holds (or last held) a tuning lock, and its heartbeat."""

    id: int
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    activity: str | None


@dataclass(frozen=True)
class WorkerRecord:
    """A row of ``autotune_workers``: one worker of a daemon, its GPU, heartbeat and claim."""

    id: int
    hostname: str
    gpu: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    study_id: int | None
    candidate_key: str | None
    candidate: str | None
    claimed_at: datetime | None
    worker_pid: int | None
    activity: str | None
