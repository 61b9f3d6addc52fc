"""How a measured trial scores under a workload: the limit on the devices it ran on, its score,
the best of several, and how far one figure is behind another.

The choosing (:mod:`autotune.advisor.recommend`) and the explaining
(:mod:`autotune.advisor.explain`) both stand on these; nothing here writes a sentence. It reads
records only: no torch, no Transformers.
"""

from __future__ import annotations

from typing import Any

from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.memory.limit import DeviceLimits
from autotune.objective import metric_for, score
from autotune.store import TrialRecord
from autotune.workload import Workload


def memory_limits(workload: Workload, environment: Environment | None, candidate: Candidate | None = None) -> DeviceLimits:
    """The workload's limit on the devices a trial of ``candidate`` ran on (see
    :meth:`~autotune.memory.limit.DeviceLimits.resolve`); without a candidate, on one GPU of the
    environment, or the CPU when it has none. A fraction on the CPU is of this machine's memory."""
    gpus = environment.gpus if environment is not None else ()
    placement = candidate.placement if candidate is not None else ("cuda" if gpus else "cpu")
    return DeviceLimits.resolve(workload.max_memory, environment, placement)


def score_trial(workload: Workload, trial: TrialRecord, environment: Environment) -> Any:
    """``trial`` scored under ``workload`` against the limit on the devices it ran on (:func:`autotune.objective.score`)."""
    return score(workload, trial.status, trial.metrics, memory_limits(workload, environment, trial.candidate), trial.details)


def best_of(feasible: list[tuple[TrialRecord, float]], workload: Workload) -> tuple[TrialRecord, float]:
    """The best ``(trial, value)`` under the workload's objective; ties go to the smaller peak, then the earlier trial."""
    sign = 1 if metric_for(workload)[1] == "maximize" else -1
    # ties go to the smaller peak, then the earlier trial
    return max(feasible, key=lambda tv: (sign * tv[1], -(tv[0].metrics.get("peak_memory_bytes") or 0), -tv[0].id))


def behind_pct(workload: Workload, winner: float, other: float) -> float:
    """How far ``other`` is behind ``winner``, in percent of the winner (0 when level or ahead)."""
    if not winner:
        return 0.0
    direction = metric_for(workload)[1]
    delta = (winner - other) / winner if direction == "maximize" else (other - winner) / winner
    return max(delta, 0.0) * 100
