"""What "best" means for a workload: the figure each objective optimises, and what is feasible.

Constraints are not penalties: a measured peak over the memory limit or a quality below the floor
makes a trial infeasible, whatever its speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.units import format_gib
from autotune.workload import Workload

#: objective -> (metric for text generation, metric for encoders, direction)
OBJECTIVE_METRICS = {
    "throughput": ("throughput_tokens_per_s", "sequences_per_s", "maximize"),
    "latency": ("latency_p50_ms", "latency_p50_ms", "minimize"),
    "memory": ("peak_memory_bytes", "peak_memory_bytes", "minimize"),
}


def metric_for(workload: Workload) -> tuple[str, str]:
    """``(metric name, "maximize" | "minimize")`` for the workload's objective."""
    generation, encoder, direction = OBJECTIVE_METRICS[workload.objective]
    return (generation if workload.generates else encoder), direction


@dataclass(frozen=True)
class Score:
    feasible: bool
    value: float | None
    reasons: tuple[str, ...]


def score(workload: Workload, status: str, metrics: dict[str, Any], memory_limit_bytes: int | None) -> Score:
    """Feasibility and objective value of one measured result.

    ``memory_limit_bytes`` is the workload's per-GPU limit resolved for the device the trial ran
    on (``None``: no limit). A result that is not ``ok`` is infeasible with its status as reason.
    """
    name, _ = metric_for(workload)
    value = metrics.get(name)
    if status != "ok":
        return Score(False, None, (status,))
    reasons = []
    peak = metrics.get("peak_memory_bytes")
    if memory_limit_bytes is not None and peak is not None and peak > memory_limit_bytes:
        reasons.append(f"peak {format_gib(peak)} over the limit {format_gib(memory_limit_bytes)}")
    quality = metrics.get("quality_token_agreement")
    if quality is not None and quality < workload.min_quality:
        reasons.append(f"token agreement {quality:.1%} below the floor {workload.min_quality:.0%}")
    if value is None:
        reasons.append(f"no {name} measured")
    return Score(not reasons, None if value is None else float(value), tuple(reasons))


def better(workload: Workload, a: float, b: float) -> bool:
    """Whether objective value ``a`` beats ``b``."""
    _, direction = metric_for(workload)
    return a > b if direction == "maximize" else a < b
