"""What "best" means for a workload: the figure each objective optimises, and what is feasible.

Constraints are not penalties: a measured peak over the memory limit or a quality below the floor
makes a trial infeasible, whatever its speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotune.workload import Workload

if TYPE_CHECKING:
    from autotune.memory.limit import DeviceLimits

#: objective -> (metric for text generation, metric for encoders, direction)
OBJECTIVE_METRICS = {
    "throughput": ("throughput_tokens_per_s", "sequences_per_s", "maximize"),
    "latency": ("latency_p50_ms", "latency_p50_ms", "minimize"),
    "memory": ("peak_memory_bytes", "peak_memory_bytes", "minimize"),
}


#: What the quality figure (stored as ``quality_token_agreement``) measures, by task: greedy-token
#: agreement with the reference's continuation, the mean cosine similarity of the last hidden
#: states, or the share of rows whose top class agrees (see :mod:`autotune.worker.quality`).
QUALITY_MEASURES = {
    "text-generation": "token agreement",
    "feature-extraction": "cosine similarity",
    "text-classification": "top-class agreement",
}


def quality_name(task: str) -> str:
    """What the quality figure of ``task`` is, in words: ``token agreement``, ``cosine similarity``, ..."""
    return QUALITY_MEASURES.get(task, "quality")


def format_quality(task: str, value: float) -> str:
    """A quality figure with its name: ``token agreement 97.5%``, ``cosine similarity 0.9993``."""
    if task == "feature-extraction":
        return f"{quality_name(task)} {value:.4f}"
    return f"{quality_name(task)} {value:.1%}"


def format_floor(task: str, floor: float) -> str:
    """The quality floor in the same words: ``90% token agreement``, ``0.90 cosine similarity``."""
    if task == "feature-extraction":
        return f"{floor:.2f} {quality_name(task)}"
    return f"{floor:.0%} {quality_name(task)}"


def metric_for(workload: Workload) -> tuple[str, str]:
    """``(metric name, "maximize" | "minimize")`` for the workload's objective."""
    generation, encoder, direction = OBJECTIVE_METRICS[workload.objective]
    return (generation if workload.generates else encoder), direction


@dataclass(frozen=True)
class Score:
    feasible: bool
    value: float | None
    reasons: tuple[str, ...]


def score(workload: Workload, status: str, metrics: dict[str, Any], limits: DeviceLimits | None,
          details: Mapping[str, Any] | None = None) -> Score:
    """Feasibility and objective value of one measured result.

    ``limits`` is the workload's limit resolved on the devices the trial ran on (``None``: no
    limit); each device's measured peak (from ``details``, else the trial's peak) is held
    against its own. A result that is not ``ok`` is infeasible with its status as reason.
    """
    name, _ = metric_for(workload)
    value = metrics.get(name)
    if status != "ok":
        return Score(False, None, (status,))
    reasons = limits.reasons(metrics, details) if limits is not None else []
    quality = metrics.get("quality_token_agreement")
    if quality is not None and quality < workload.min_quality:
        reasons.append(f"{format_quality(workload.task, quality)} below the floor {format_floor(workload.task, workload.min_quality)}")
    if value is None:
        reasons.append(f"no {name} measured")
    return Score(not reasons, None if value is None else float(value), tuple(reasons))


def better(workload: Workload, a: float, b: float) -> bool:
    """Whether objective value ``a`` beats ``b``."""
    _, direction = metric_for(workload)
    return a > b if direction == "maximize" else a < b
