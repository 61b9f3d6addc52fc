"""Re-measuring a close finish: when the best and the runner-up are within each other's timing
noise, measure both again, interleaved, before anything is recommended.

Two candidates measured minutes apart can trade places when the machine's load changes between
them (on a busy 2-core machine, fp32 was timed faster than bf16, which is 2x faster when the
machine is quiet). Measured in alternation — best, runner-up, best, runner-up — both see the same
conditions. The re-measurements are ordinary trials (origin ``confirm``) recorded through the
normal measure function; the search leaves them out of its own bookkeeping
(:func:`autotune.search.results.candidate_results`), and the choice represents each re-measured
candidate by the median of its re-measurements (:func:`autotune.objective.confirmed_trials`) and
asks of a winner that it led in every interleaved round (:class:`autotune.objective.Margin`).

After one pair is re-measured, another may come within the noise of the best (the first pair's
runner-up fell back, and the third is now second): up to :data:`MAX_PAIRS` pairs are re-measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.objective import (
    CONFIRM_ORIGIN,
    Margin,
    confirmed_trials,
    interleaved_pairs,
    interleaved_rounds,
    margin,
    metric_for,
)
from autotune.search.results import interrupted
from autotune.store import ModelRecord, Store, StudyRecord, TrialRecord
from autotune.workload import Workload

#: Interleaved rounds per pair: best, runner-up, best, runner-up.
ROUNDS = 2
#: Pairs re-measured at the end of one study, at most (each costs 2 x ROUNDS measurements).
MAX_PAIRS = 2


@dataclass(frozen=True)
class ClosePair:
    """The best and the runner-up (the trials that represent them), and how far apart against their noise."""

    best: TrialRecord
    runner_up: TrialRecord
    margin: Margin


@dataclass(frozen=True)
class Confirmation:
    """What :func:`confirm_close_pair` did: the pairs it re-measured, and the trials it recorded (in order)."""

    pairs: tuple[ClosePair, ...]
    trials: tuple[TrialRecord, ...]


def close_pair(trials: list[TrialRecord], workload: Workload) -> ClosePair | None:
    """The best and the runner-up of a study's trials — re-measured candidates by their
    re-measurements — when the lead is not clear (``None``: fewer than two feasible candidates, a
    memory objective, or a clear lead)."""
    if workload.objective == "memory":
        return None
    chosen, _ = confirmed_trials(trials, workload)
    best_of: dict[str, TrialRecord] = {}
    maximize = metric_for(workload)[1] == "maximize"
    for trial in chosen:
        if not trial.ok or not trial.feasible or trial.objective_value is None or interrupted(trial):
            continue
        known = best_of.get(trial.candidate.key())
        if known is None or (
            trial.objective_value > known.objective_value
            if maximize  # type: ignore[operator]
            else trial.objective_value < known.objective_value
        ):  # type: ignore[operator]
            best_of[trial.candidate.key()] = trial
    if len(best_of) < 2:
        return None
    best, second = sorted(best_of.values(), key=lambda t: t.objective_value, reverse=maximize)[:2]  # type: ignore[arg-type,return-value]
    found = margin(workload, best.objective_value, best.metrics, second.objective_value, second.metrics)  # type: ignore[arg-type]
    if found is None:
        return None
    found = replace(found, rounds=interleaved_rounds(trials, best, second, workload))
    return None if found.clear else ClosePair(best, second, found)


def confirm_close_pair(
    store: Store,
    model: ModelRecord,
    environment: Environment,
    environment_id: int,
    study: StudyRecord,
    *,
    measure: Callable[..., list[TrialRecord]],
    rounds: int = ROUNDS,
    max_pairs: int = MAX_PAIRS,
    timeout_s: float | None = None,
    on_spawn: Callable[[Any], None] | None = None,
    on_start: Callable[[Candidate, str, str | None, tuple[int, ...]], None] | None = None,
    worker_options: dict[str, Any] | None = None,
) -> Confirmation | None:
    """While the study's best and runner-up are within their timing noise, measure both again,
    interleaved, ``rounds`` times each, through ``measure`` (:func:`autotune.trials.measure_candidate`),
    at the batch size that represents each; at most ``max_pairs`` pairs. Returns what was done
    (``None``: nothing).

    Idempotent: rounds already recorded for a pair count, so a study that is finished again (a
    resumed one) does not measure them twice, and a pair that stays close after its rounds is left
    as it is (the recommendation says it is uncertain). A measurement that fails is recorded as the
    measure function records it, and the loop goes on.
    """
    pairs: list[ClosePair] = []
    recorded: list[TrialRecord] = []
    extra = {"worker_options": dict(worker_options)} if worker_options else {}
    for _ in range(max_pairs):
        trials = store.trials(study_id=study.id)
        pair = close_pair(trials, study.workload)
        if pair is None:
            break
        done = len(interleaved_pairs(trials, pair.best, pair.runner_up))
        if done >= rounds:
            break
        pairs.append(pair)
        for round_number in range(done, rounds):
            for trial in (pair.best, pair.runner_up):
                if on_start is not None:
                    on_start(
                        trial.candidate,
                        CONFIRM_ORIGIN,
                        f"re-measured, round {round_number + 1} of {rounds}: {pair.margin.describe()}",
                        (trial.batch_size,),
                    )
                recorded += measure(
                    store,
                    model,
                    trial.candidate,
                    [trial.batch_size],
                    environment=environment,
                    environment_id=environment_id,
                    study=study,
                    origin=CONFIRM_ORIGIN,
                    timeout_s=timeout_s,
                    on_spawn=on_spawn,
                    **extra,
                )
    return Confirmation(tuple(pairs), tuple(recorded)) if recorded else None
