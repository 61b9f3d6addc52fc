"""A close finish is re-measured, interleaved, before anything is recommended (autotune.search.confirm).

The fake worker (tests/search_fakes.py) answers at once; here it also reports each timing's spread
and repeats, which is what the margin is judged against.
"""

from __future__ import annotations

from typing import Any

import pytest
from search_fakes import FakeMeasure, add_model, cpu_env

from autotune.advisor.recommend import recommend
from autotune.candidate import Candidate
from autotune.objective import score
from autotune.search.confirm import close_pair, confirm_close_pair
from autotune.search.space import parse_restriction
from autotune.search.study import SearchSettings, StudySearch
from autotune.store import Store
from autotune.workload import Workload

FP16 = Candidate(dtype="float16", attn="sdpa", placement="cpu")
BF16 = Candidate(dtype="bfloat16", attn="sdpa", placement="cpu")
FP32 = Candidate(dtype="float32", attn="sdpa", placement="cpu")


class Timed(FakeMeasure):
    """The fake worker with timing noise: every trial has this spread over this many repeats, and
    ``values`` (label -> list of throughputs, one per call) overrides the landscape."""

    def __init__(self, spread: float, repeats: int = 5, values: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self.spread, self.repeats, self.values = spread, repeats, values or {}

    def __call__(self, store: Store, model: Any, candidate: Candidate, batch_sizes: Any, **kwargs: Any) -> list:
        rows = super().__call__(store, model, candidate, batch_sizes, **kwargs)
        out = []
        for row in rows:
            metrics = {**row.metrics, "latency_spread": self.spread, "repeats": self.repeats}
            queue = self.values.get(candidate.label())
            if queue:
                metrics["throughput_tokens_per_s"] = queue.pop(0)
            s = score(kwargs["study"].workload, row.status, metrics, None)
            out.append(store.finish_trial(row.id, row.status, metrics=metrics, feasible=s.feasible, objective_value=s.value))
        return out


def study_of(store: Store, measure: FakeMeasure, space: str) -> StudySearch:
    model = add_model(store, workload=Workload(device="cpu", prompt_tokens=16, new_tokens=8, max_batch=1))
    env = cpu_env()
    return StudySearch(
        store, model, env, store.record_environment(env), SearchSettings(seed=1, restrict=parse_restriction(space)), measure=measure
    )


def test_a_close_finish_is_measured_again_interleaved_at_the_end_of_the_study(store: Store) -> None:
    # fp16 150 and bf16 160 tok/s with a 40% spread over 5 repeats: 6% apart, within the noise
    measure = Timed(spread=0.4, values={"bf16 sdpa cpu": [160, 120, 118], "fp16 sdpa cpu": [150, 170, 165]})
    search = study_of(store, measure, "dtype=fp16,bf16 attn=sdpa quant=none static_cache=false")
    search.run()
    origins = [(c.label(), origin) for c, _, origin in measure.calls]
    assert origins[-4:] == [("bf16 sdpa cpu", "confirm"), ("fp16 sdpa cpu", "confirm")] * 2  # best first, alternating
    assert len(origins) == 6 and all(o != "confirm" for _, o in origins[:2])
    assert search.store.get_study(search.study.id).state == "finished"
    # the search's own bookkeeping ignores the re-measurements; the recommendation weighs them
    assert search.progress().best.candidate == BF16  # type: ignore[union-attr]
    rec = recommend(store, search.model, current=cpu_env())
    assert rec.best.candidate == FP16 and rec.best.origin == "confirm" and rec.best_value == 165  # type: ignore[union-attr]
    assert sorted(rec.confirmed) == ["bf16 sdpa cpu at batch 1 (2x)", "fp16 sdpa cpu at batch 1 (2x)"]
    # finishing again (a resumed study) measures nothing twice
    again = confirm_close_pair(store, search.model, search.environment, search.environment_id, search.study, measure=measure)
    assert again is None and len(measure.calls) == 6


def test_a_clear_lead_is_not_measured_again(store: Store) -> None:
    measure = Timed(spread=0.02, repeats=10)  # bf16 160 vs fp16 150: 6% apart, noise about 1%
    search = study_of(store, measure, "dtype=fp16,bf16 attn=sdpa quant=none static_cache=false")
    search.run()
    assert len(measure.calls) == 2 and all(origin != "confirm" for _, _, origin in measure.calls)


def test_close_pair_needs_two_feasible_timed_candidates_and_a_timed_objective(store: Store) -> None:
    measure = Timed(spread=0.8)  # noise 1.96 x 0.489 x 0.8 / sqrt(5) x sqrt(2) = 48%
    search = study_of(store, measure, "dtype=fp32,bf16 attn=sdpa quant=none static_cache=false")
    measure(store, search.model, BF16, [1], environment=search.environment, environment_id=search.environment_id, study=search.study)
    workload = search.study.workload
    assert close_pair(store.trials(study_id=search.study.id), workload) is None  # one candidate
    measure(store, search.model, FP32, [1], environment=search.environment, environment_id=search.environment_id, study=search.study)
    trials = store.trials(study_id=search.study.id)
    pair = close_pair(trials, workload)
    assert pair is not None and pair.best.candidate == BF16 and pair.runner_up.candidate == FP32
    assert pair.margin.margin == 1 - 100 / 160 and not pair.margin.clear and pair.margin.rounds == ()
    assert close_pair(trials, workload.with_changes(objective="memory")) is None


def test_when_the_runner_up_falls_back_the_next_close_pair_is_measured_again(store: Store) -> None:
    """As seen on a busy CPU: int8 and bf16 tied, int8 fell back when re-measured, and fp16 was then
    within the noise of bf16 but never measured beside it."""
    measure = Timed(
        spread=0.4, values={"fp32 sdpa cpu": [100, 60, 62], "bf16 sdpa cpu": [99, 98, 97, 96, 95], "fp16 sdpa cpu": [95, 94, 93]}
    )
    search = study_of(store, measure, "dtype=fp32,bf16,fp16 attn=sdpa quant=none static_cache=false")
    search.run()
    calls = [(c.label(), origin) for c, _, origin in measure.calls]
    assert len(calls) == 3 + 4 + 4 and all(o != "confirm" for _, o in calls[:3])
    assert calls[3:7] == [("fp32 sdpa cpu", "confirm"), ("bf16 sdpa cpu", "confirm")] * 2  # the first close pair
    assert calls[7:] == [("bf16 sdpa cpu", "confirm"), ("fp16 sdpa cpu", "confirm")] * 2  # then the next one
    rec = recommend(store, search.model, current=cpu_env())
    assert rec.best.candidate == BF16 and rec.best_value == 96 and rec.runners_up[0].value == 93  # type: ignore[union-attr]
    assert rec.margin.rounds == pytest.approx((2 / 96, 2 / 95)) and not rec.margin.clear  # type: ignore[union-attr]
    # at most two pairs, and none twice: finishing again measures nothing
    assert (
        confirm_close_pair(store, search.model, search.environment, search.environment_id, search.study, measure=measure) is None
        and len(measure.calls) == 11
    )
