"""Re-measuring a close finish: when the best and the runner-up are within each other's timing
noise, measure both again, interleaved, before anything is recommended.

Two candidates measured minutes apart can trade places when the machine's load changes between
them (on a busy 2-core machine, fp32 was timed faster than bf16, which is 2x faster when the
machine is quiet). Measured in alternation — best, runner-up, best, runner-up — both see the same
conditions. The re-measurements are ordinary trials (origin ``confirm``) recorded through the
normal measure function; the search leaves them out of its own bookkeeping
(:func:`autotune.search.results.candidate_results`), and the recommendation represents each of
the two by the median of its re-measurements (:func:`autotune.advisor.recommend.confirmed_trials`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.objective import Margin, margin, metric_for
from autotune.search.results import CandidateResult, candidate_results
from autotune.store import CONFIRM_ORIGIN, ModelRecord, Store, StudyRecord, TrialRecord

#: Re-measurements of each of the two: best, runner-up, best, runner-up.
ROUNDS = 2


@dataclass(frozen=True)
class ClosePair:
    """The best and the runner-up (their best trials), and how far apart against their noise."""

    best: TrialRecord
    runner_up: TrialRecord
    margin: Margin


@dataclass(frozen=True)
class Confirmation:
    """What :func:`confirm_close_pair` did: the pair, and the trials it recorded (in the order measured)."""

    pair: ClosePair
    trials: tuple[TrialRecord, ...]


def close_pair(results: list[CandidateResult], workload: Any) -> ClosePair | None:
    """The best and the runner-up of a study's results when the runner-up is within the timing
    noise of the best (``None``: fewer than two feasible candidates, a memory objective, or a
    clear lead)."""
    feasible = [r for r in results if r.best is not None and r.value is not None and not r.running]
    if len(feasible) < 2 or workload.objective == "memory":
        return None
    ranked = sorted(feasible, key=lambda r: r.value, reverse=metric_for(workload)[1] == "maximize")  # type: ignore[arg-type,return-value]
    best, second = ranked[0], ranked[1]
    found = margin(workload, best.value, best.best.metrics, second.value, second.best.metrics)  # type: ignore[arg-type,union-attr]
    if found is None or found.clear:
        return None
    return ClosePair(best.best, second.best, found)  # type: ignore[arg-type]


def confirm_close_pair(
    store: Store,
    model: ModelRecord,
    environment: Environment,
    environment_id: int,
    study: StudyRecord,
    *,
    measure: Callable[..., list[TrialRecord]],
    limit_for: Callable[[Candidate], int | None] | None = None,
    rounds: int = ROUNDS,
    timeout_s: float | None = None,
    on_spawn: Callable[[Any], None] | None = None,
    on_start: Callable[[Candidate, str, str | None, tuple[int, ...]], None] | None = None,
    worker_options: dict[str, Any] | None = None,
) -> Confirmation | None:
    """If the study's best and runner-up are within their timing noise, measure both again,
    interleaved, ``rounds`` times each, through ``measure`` (:func:`autotune.trials.measure_candidate`),
    at the batch size of each one's best trial; returns what was done (``None``: nothing to do).

    Idempotent: re-measurements already recorded for this pair count, so a study that is finished
    again (a resumed one) does not measure them twice. A measurement that fails is recorded as
    the measure function records it, and the loop goes on.
    """
    trials = store.trials(study_id=study.id)
    pair = close_pair(candidate_results(trials, study.workload, limit_for), study.workload)
    if pair is None:
        return None
    done = {key: sum(1 for t in trials if t.origin == CONFIRM_ORIGIN and t.candidate.key() == key and t.batch_size == batch)
            for key, batch in ((pair.best.candidate.key(), pair.best.batch_size),
                               (pair.runner_up.candidate.key(), pair.runner_up.batch_size))}
    recorded: list[TrialRecord] = []
    extra = {"worker_options": dict(worker_options)} if worker_options else {}
    for round_number in range(rounds):
        for trial in (pair.best, pair.runner_up):
            if done[trial.candidate.key()] > round_number:
                continue
            if on_start is not None:
                on_start(trial.candidate, CONFIRM_ORIGIN, f"re-measured, round {round_number + 1} of {rounds}: "
                         f"{pair.margin.describe()}", (trial.batch_size,))
            recorded += measure(store, model, trial.candidate, [trial.batch_size], environment=environment,
                                environment_id=environment_id, study=study, origin=CONFIRM_ORIGIN, timeout_s=timeout_s,
                                on_spawn=on_spawn, **extra)
    return Confirmation(pair, tuple(recorded)) if recorded else None
