"""Reading a study's trials as the search sees them: one result per measured candidate.

A worker measures one candidate at a ladder of batch sizes, and the store keeps one trial row
per batch size. The search, ``autotune status`` and ``autotune trials`` reason about candidates:
the best feasible batch of each, whether the study is still improving, how long it has taken.
Nothing here imports Optuna, torch or transformers, so the status commands start fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from autotune.candidate import Candidate
from autotune.objective import metric_for
from autotune.store.records import CONFIRM_ORIGIN, TrialRecord
from autotune.workload import Workload

if TYPE_CHECKING:
    from autotune.memory.limit import DeviceLimits

#: ``details["interrupted"]`` marks rows whose measurement was cut short (the daemon died or was
#: stopped at once); their candidate is measured again, and the rows stay as a record.
INTERRUPTED = "interrupted"
INTERRUPTED_REASON = "the daemon died during the trial; the candidate is measured again"
#: Statuses of a row that was measured to the end (``skipped``: a batch the ladder left out;
#: ``screened``: timed once, far behind the best — a screen, never a measurement).
FINISHED = ("ok", "oom", "crash", "timeout", "unsupported", "error", "skipped", "screened")


def interrupted(trial: TrialRecord) -> bool:
    return bool(trial.details.get(INTERRUPTED))


@dataclass(frozen=True)
class CandidateResult:
    """What one measurement of a candidate (all its batch sizes) came to.

    ``value`` is the best objective over its feasible batch sizes (``None``: none was feasible).
    ``violation`` is how far it is from feasible for the sampler: 0 when feasible, else a
    positive number (how far over the memory limit or under the quality floor; 1 for an OOM,
    crash or any other failure). ``screen_value`` is the best figure of its screened rows (one
    timed run each): what the search may learn from, never what is recommended.
    """

    candidate: Candidate
    origin: str
    trials: tuple[TrialRecord, ...]
    value: float | None
    best: TrialRecord | None
    violation: float
    status: str
    reason: str | None
    running: bool
    started_at: datetime
    finished_at: datetime | None
    screen_value: float | None = None

    @property
    def key(self) -> str:
        return self.candidate.key()

    @property
    def feasible(self) -> bool:
        return self.best is not None

    @property
    def number(self) -> int:
        return self.trials[0].number

    @property
    def seconds(self) -> float:
        end = self.finished_at or self.started_at
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(t.batch_size for t in self.trials)


def candidate_results(
    trials: list[TrialRecord], workload: Workload, limit_for: Callable[[Candidate], DeviceLimits | None] | None = None
) -> list[CandidateResult]:
    """Group a study's rows into one result per measured candidate, in the order measured.

    Interrupted rows are left out (their candidate counts as not measured), and so are the
    re-measurements of a close finish (origin ``confirm``, which the recommendation weighs); a
    candidate measured twice (after an interruption) keeps its complete measurement. ``limit_for``
    gives the limits on a candidate's devices, to say how far over them an infeasible result was.
    """
    _, direction = metric_for(workload)
    groups: dict[str, list[TrialRecord]] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if interrupted(trial) or trial.origin == CONFIRM_ORIGIN:
            continue
        groups.setdefault(trial.candidate.key(), []).append(trial)
    results = [_result(rows, direction, workload, limit_for(rows[0].candidate) if limit_for else None) for rows in groups.values()]
    return sorted(results, key=lambda r: r.number)


def _result(rows: list[TrialRecord], direction: str, workload: Workload, limit: DeviceLimits | None) -> CandidateResult:
    running = any(t.status == "running" for t in rows)
    feasible = [t for t in rows if t.feasible and t.objective_value is not None]
    best = None
    if feasible:
        pick = max if direction == "maximize" else min
        best = pick(feasible, key=lambda t: t.objective_value)  # type: ignore[arg-type,return-value]
    measured = [t for t in rows if t.status not in ("running", "skipped")]
    if best is not None:
        status, reason, violation = "ok", None, 0.0
    elif running and not measured:
        status, reason, violation = "running", None, 0.0
    elif any(t.status == "screened" for t in measured) and all(t.status in ("screened", "oom", "skipped") for t in measured):
        first = next(t for t in measured if t.status == "screened")
        status, reason, violation = "screened", first.reason, 0.0
    else:
        first = measured[0] if measured else rows[0]
        status, reason = first.status, first.reason
        if status == "ok":  # measured, but over the memory limit or under the quality floor
            why = first.details.get("infeasible") if isinstance(first.details, dict) else None
            status = "infeasible"
            reason = first.reason or ("; ".join(map(str, why)) if why else "over the memory limit or under the quality floor")
        violation = min((_violation(t, workload, limit) for t in measured), default=1.0)
    finished = [t.finished_at for t in rows if t.finished_at is not None]
    screens = [t.objective_value for t in rows if t.status == "screened" and t.objective_value is not None]
    pick = max if direction == "maximize" else min
    return CandidateResult(
        candidate=rows[0].candidate,
        origin=rows[0].origin,
        trials=tuple(rows),
        value=best.objective_value if best else None,
        best=best,
        violation=violation,
        status=status,
        reason=reason,
        running=running,
        started_at=min(t.started_at for t in rows),
        finished_at=None if running or not finished else max(finished),
        screen_value=pick(screens) if screens else None,
    )


def _violation(trial: TrialRecord, workload: Workload, limit: DeviceLimits | None) -> float:
    """How far one measured row is from feasible (> 0), for a sampler that ranks infeasible points.

    A failed row (OOM, crash, ...) counts 1; an ``ok`` row over the memory limit counts its
    excess as a share of the limit (on its fullest device), one under the quality floor its
    shortfall (at least 0.01).
    """
    if trial.status != "ok":
        return 1.0
    over = limit.excess(trial.metrics, trial.details) if limit is not None else 0.0
    quality = trial.metrics.get("quality_token_agreement")
    if quality is not None and quality < workload.min_quality:
        over += workload.min_quality - quality
    return max(over, 0.01) if over > 0 else 0.5


@dataclass(frozen=True)
class Progress:
    """Where a study stands: what it measured, its best, and how long since it improved."""

    results: tuple[CandidateResult, ...]
    best: CandidateResult | None
    since_improvement: int
    seconds: float

    @property
    def measured(self) -> int:
        return sum(1 for r in self.results if not r.running)

    @property
    def measured_keys(self) -> set[str]:
        return {r.key for r in self.results}


def progress(
    trials: list[TrialRecord],
    workload: Workload,
    min_improvement: float = 0.01,
    limit_for: Callable[[Candidate], DeviceLimits | None] | None = None,
) -> Progress:
    """Replay a study's results in order: the best so far, and trials since it last improved.

    A result improves on the best when it is feasible and better by at least ``min_improvement``
    (relative), so that timing noise does not keep a study alive.
    """
    _, direction = metric_for(workload)
    results = candidate_results(trials, workload, limit_for)
    best: CandidateResult | None = None
    since = 0
    for result in results:
        if result.running:
            continue
        if result.value is not None and (best is None or _improves(result.value, best.value, direction, min_improvement)):
            best, since = result, 0
        else:
            since += 1
            if result.value is not None and best is not None and _better(result.value, best.value, direction):
                best = result  # better, but within noise: the best moves, patience keeps counting
    return Progress(tuple(results), best, since, spent_seconds(trials))


def spent_seconds(trials: list[TrialRecord], now: datetime | None = None) -> float:
    """Seconds of measuring a study has cost: per candidate, the union of its rows' time spans.

    Every row counts, those of measurements cut short too (a candidate stopped at a deadline
    cost its time), and a running row counts up to ``now`` (default: its start). Candidates are
    measured one at a time each, so the sum over candidates is device time even when several
    workers measure side by side.
    """
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for trial in trials:
        end = trial.finished_at or (now if now is not None and trial.status == "running" else trial.started_at)
        spans.setdefault(trial.candidate.key(), []).append((trial.started_at, max(end, trial.started_at)))
    total = 0.0
    for intervals in spans.values():
        intervals.sort()
        start, end = intervals[0]
        for a, b in intervals[1:]:
            if a > end:
                total += (end - start).total_seconds()
                start, end = a, b
            else:
                end = max(end, b)
        total += (end - start).total_seconds()
    return total


def _better(a: float, b: float | None, direction: str) -> bool:
    return b is None or (a > b if direction == "maximize" else a < b)


def _improves(a: float, b: float | None, direction: str, tolerance: float) -> bool:
    if b is None:
        return True
    if direction == "maximize":
        return a > b * (1 + tolerance) if b > 0 else a > b
    return a < b * (1 - tolerance) if b > 0 else a < b


def summary(result: CandidateResult | None, workload: Workload) -> dict[str, Any] | None:
    """A JSON-able summary of a result: candidate, best batch, objective value and metric."""
    if result is None or result.best is None:
        return None
    metric, direction = metric_for(workload)
    return {
        "candidate": result.candidate.to_dict(),
        "label": result.candidate.label(),
        "batch_size": result.best.batch_size,
        "metric": metric,
        "direction": direction,
        "value": result.value,
        "trial_id": result.best.id,
        "trial_number": result.best.number,
    }
