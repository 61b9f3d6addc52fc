"""What "best" means for a workload: the figure each objective optimises, what is feasible, and how
sure a measured figure is.

Constraints are not penalties: a measured peak over the memory limit or a quality below the floor
makes a trial infeasible, whatever its speed. A quality figure carries its Wilson interval (is the
floor within its noise?), a timing its spread over its repeats (is a lead larger than the noise of
both medians?), and a close finish measured again in alternation is read from those
re-measurements. Pure Python: the search and the advisor use it; the worker uses its statistics (:mod:`autotune.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotune.stats import Z95, timing_error
from autotune.store.records import CONFIRM_ORIGIN
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


def score(
    workload: Workload, status: str, metrics: dict[str, Any], limits: DeviceLimits | None, details: Mapping[str, Any] | None = None
) -> Score:
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


# -- how sure a figure is -------------------------------------------------------------------------


@dataclass(frozen=True)
class Margin:
    """How far the winner is ahead of the runner-up, against how precisely both were timed.

    ``margin`` is the runner-up's relative distance behind the winner (0.042: 4.2%); ``noise``
    is 1.96 combined standard errors of the two medians (95%). ``rounds`` holds, when the two were
    measured again interleaved, the winner's lead in each round (negative: it was behind): a
    machine whose load drifts moves both alike within a round, so the sign of every round says
    more than the spread of either. ``clear`` when the margin is larger than the noise and the
    winner led in every round. Figures are relative to the winner's.
    """

    margin: float
    noise: float
    rounds: tuple[float, ...] = ()

    @property
    def clear(self) -> bool:
        return self.margin > self.noise and all(r > 0 for r in self.rounds)

    def describe(self) -> str:
        verdict = "clear" if self.clear else "uncertain"
        text = f"{verdict}: {self.margin:.1%} ahead of the runner-up, timing noise ±{self.noise:.1%} (95%)"
        if self.rounds:
            led = sum(1 for r in self.rounds if r > 0)
            text += f"; ahead in {led} of {len(self.rounds)} interleaved rounds ({', '.join(f'{r:+.1%}' for r in self.rounds)})"
        return text


def margin(
    workload: Workload, winner_value: float, winner_metrics: dict[str, Any], other_value: float, other_metrics: dict[str, Any]
) -> Margin | None:
    """The :class:`Margin` of a winner over another trial, for a timed objective (``None`` for
    memory, or when either trial lacks its spread and repeats)."""
    if workload.objective == "memory" or not winner_value:
        return None
    errors = [timing_error(m.get("latency_spread"), m.get("repeats")) for m in (winner_metrics, other_metrics)]
    if any(e is None for e in errors):
        return None
    _, direction = metric_for(workload)
    ahead = (winner_value - other_value) / winner_value if direction == "maximize" else (other_value - winner_value) / winner_value
    noise = Z95 * math.sqrt(sum(e * e for e in errors))  # type: ignore[operator,misc]
    return Margin(max(ahead, 0.0), noise)


# -- a close finish, measured again --------------------------------------------------------------


def _slot(trial: Any) -> tuple[str, int]:
    return trial.candidate.key(), trial.batch_size


def confirmed_trials(trials: list[Any], workload: Workload) -> tuple[list[Any], list[str]]:
    """The trials to choose from, where re-measurements replace what they re-measured.

    A candidate at a batch size that was re-measured (origin ``confirm``) is represented by the
    median of its re-measurements under ``workload``'s objective (of an even number, the less
    flattering middle one: a re-measurement is never a second chance); its first measurement and
    the other re-measurements are set aside, so that it is compared as measured beside its rival.
    Returns the trials and, for each re-measured candidate, ``label at batch N (Kx)``.
    """
    metric, direction = metric_for(workload)
    groups: dict[tuple[str, int], list[Any]] = {}
    for trial in trials:
        if trial.origin == CONFIRM_ORIGIN and trial.ok and trial.metrics.get(metric) is not None:
            groups.setdefault(_slot(trial), []).append(trial)
    if not groups:
        return list(trials), []
    keep: set[int] = set()
    for group in groups.values():
        ordered = sorted(group, key=lambda t: t.metrics[metric])
        keep.add(ordered[(len(ordered) - 1) // 2 if direction == "maximize" else len(ordered) // 2].id)
    out = [t for t in trials if _slot(t) not in groups or t.id in keep]
    labels = sorted({f"{g[0].candidate.label()} at batch {g[0].batch_size} ({len(g)}x)" for g in groups.values()})
    return out, labels


def interleaved_pairs(trials: list[Any], first: Any, second: Any) -> list[tuple[Any, Any]]:
    """The rounds in which ``first`` and ``second`` (their candidates at their batch sizes) were
    re-measured one right after the other: ``(first's trial, second's trial)``, whatever their status."""
    slots = (_slot(first), _slot(second))
    confirms = sorted((t for t in trials if t.origin == CONFIRM_ORIGIN), key=lambda t: t.number)
    rounds: list[tuple[Any, Any]] = []
    index = 0
    while index + 1 < len(confirms):
        a, b = confirms[index], confirms[index + 1]
        if {_slot(a), _slot(b)} == set(slots) and _slot(a) != _slot(b):
            rounds.append((a, b) if _slot(a) == slots[0] else (b, a))
            index += 2
        else:
            index += 1
    return rounds


def interleaved_rounds(trials: list[Any], winner: Any, other: Any, workload: Workload) -> tuple[float, ...]:
    """The winner's lead over ``other`` in each round they were re-measured together, relative to
    the winner (negative: it was behind); empty when they never were."""
    metric, direction = metric_for(workload)
    leads = []
    for mine, theirs in interleaved_pairs(trials, winner, other):
        a, b = mine.metrics.get(metric), theirs.metrics.get(metric)
        if mine.ok and theirs.ok and a and b is not None:
            leads.append((a - b) / a if direction == "maximize" else (b - a) / a)
    return tuple(leads)
