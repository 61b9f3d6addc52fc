"""Choosing the next candidate of a study: proposers, and the chain a study asks.

A :class:`Proposer` is given the study's state (:class:`StudyState`) and returns the next candidate
to measure (a :class:`Proposal`), or ``None`` when it has none; a :class:`Chain` asks its
proposers in order and takes the first proposal. :func:`chain_for` builds the chain of a study's
settings: the baselines, then the knowledge (what is expected of each candidate before it runs,
:mod:`autotune.search.prior`) or every candidate in turn (``--exhaustive``), then Optuna's TPE
(without knowledge, or with ``--explore``). :class:`autotune.search.study.StudySearch` keeps
stepping, claims, stop rules and store writes; the order of the search changes here without
touching them.

The contract, as Optuna's samplers have one: a proposer keeps nothing between calls (the store is
the truth, read into the state afresh on every step, so a restarted study proposes what an
uninterrupted one would), only reads the state (it never writes the store), and passes over what
the state says is measured, claimed by other workers (``skip``) or known to fail. Proposers are
not thread safe: one study, one worker, one call at a time.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autotune.axes import sampler_axes
from autotune.candidate import Candidate
from autotune.search.prior import Knowledge, Prediction
from autotune.search.results import INTERRUPTED, Progress
from autotune.search.space import Baseline, SearchSpace, candidate_from, params_of
from autotune.store import TrialRecord
from autotune.worker.protocol import SCREEN_METRICS

#: Times TPE is asked for an unmeasured candidate in one step before the nearest one is taken.
ASKS_PER_STEP = 16
#: One search step in this many chooses among all candidates; the others among the best's neighbours.
GLOBAL_EVERY = 4


@dataclass(frozen=True)
class Proposal:
    """The next candidate to measure, why (``origin``: ``baseline``, ``prior``, ``warm-start`` or
    ``search``), and the name of the baseline it is, if it is one."""

    candidate: Candidate
    origin: str
    baseline: str | None = None


@dataclass(frozen=True)
class StudyState:
    """What a proposer sees of a study: its space, what its trials say (``progress``), the keys
    other workers claim (``skip``), the study's sampler seed, its objective's metric and direction,
    and its knowledge (``None``: the study does without; a callable, so that it is built, from the
    store, only when a proposer asks)."""

    space: SearchSpace
    progress: Progress
    seed: int
    metric: str
    direction: str
    skip: frozenset[str] = frozenset()
    knowledge: Callable[[], Knowledge] | None = None

    @property
    def measured(self) -> set[str]:
        """The keys to pass over: measured, or claimed by other workers."""
        return self.progress.measured_keys | set(self.skip)

    def left(self) -> list[Candidate]:
        """The space's candidates nobody measured or claims and none is known to fail, in the space's order."""
        measured = self.measured
        return [c for c in self.space.candidates if c.key() not in measured and not known_failure(c, self.progress)]

    def baseline_name(self, candidate: Candidate) -> str | None:
        return next((b.name for b in self.space.baselines if b.candidate.key() == candidate.key()), None)


class Proposer(ABC):
    """One way of choosing the next candidate (see the module docstring for the contract)."""

    @abstractmethod
    def propose(self, state: StudyState) -> Proposal | None:
        """The next candidate to measure, or ``None`` when this proposer has none."""


class Chain(Proposer):
    """Proposers asked in order: the first proposal wins; ``None`` when none of them has one."""

    def __init__(self, *proposers: Proposer) -> None:
        self.proposers = proposers

    def propose(self, state: StudyState) -> Proposal | None:
        for proposer in self.proposers:
            proposal = proposer.propose(state)
            if proposal is not None:
                return proposal
        return None


class Baselines(Proposer):
    """Known-good starting points first (Transformers' defaults, the GPU inference guide's
    suggestions), in their order, where they are in the space."""

    def __init__(self, baselines: tuple[Baseline, ...]) -> None:
        self.baselines = baselines

    def propose(self, state: StudyState) -> Proposal | None:
        for baseline in self.baselines:
            if baseline.candidate.key() not in state.measured and not known_failure(baseline.candidate, state.progress):
                return Proposal(baseline.candidate, "baseline", baseline.name)
        return None


class Exhaustive(Proposer):
    """Every candidate in turn: in the space's order, or (``ranked``) the one the knowledge
    expects most of first (origin ``prior``)."""

    def __init__(self, ranked: bool) -> None:
        self.ranked = ranked

    def propose(self, state: StudyState) -> Proposal | None:
        left = state.left()
        if not left:
            return None
        if not self.ranked or state.knowledge is None:
            return Proposal(left[0], "search", state.baseline_name(left[0]))
        knowledge = state.knowledge()
        best = sorted(left, key=lambda c: -knowledge.expect(c).factor)[0]
        return Proposal(best, "prior", state.baseline_name(best))


class KnowledgeFirst(Proposer):
    """The candidate the knowledge expects to do best, while one could still beat the best
    measured by more than ``tolerance`` (origin ``prior``, or ``warm-start`` when earlier
    studies' measurements shaped the expectation)."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance

    def propose(self, state: StudyState) -> Proposal | None:
        pick = expected_best(state, self.tolerance)
        if pick is None or state.knowledge is None:
            return None
        candidate, _ = pick
        origin = "warm-start" if "warm start" in state.knowledge().expect(candidate).sources else "prior"
        return Proposal(candidate, origin, state.baseline_name(candidate))


class TPE(Proposer):
    """A seeded :class:`optuna.samplers.TPESampler`, rebuilt from the state's measured candidates
    on every call; local first: while the best has unmeasured neighbours (candidates that differ
    from it on one axis), three search steps in four choose among them, the fourth among all.
    Loading options mostly act on their own (a faster kernel stays faster in another dtype), so
    the next improvement is usually one change away from the best; the global step keeps the
    study from settling in one corner. Replayed over 20 seeds, this took the median trials to
    reach 97% of the best from 8 to 4.5 on the CPU space of ``benchmarks/search_efficiency.py``
    and from 7 to 6 on a synthetic GPU space of a few hundred candidates (tests/search_fakes.py).

    Its seed for a step is the study's seed plus the number of candidates measured, so a resumed
    study asks what an uninterrupted one would have asked. A proposal already measured or not in
    the space is asked again (the pending asks steer TPE away, its "constant liar"); after
    :data:`ASKS_PER_STEP` tries, the nearest unmeasured candidate of the first proposal is taken.
    """

    def __init__(self, startup_trials: int) -> None:
        self.startup_trials = startup_trials

    def propose(self, state: StudyState) -> Proposal | None:
        left = state.left()
        if not left:
            return None
        progress = state.progress
        searched = sum(1 for r in progress.results if r.origin == "search" and not r.running)
        if progress.best is not None and searched % GLOBAL_EVERY != GLOBAL_EVERY - 1:
            best = params_of(progress.best.candidate)
            near = [c for c in left if sum(1 for axis, value in params_of(c).items() if best.get(axis) != value) == 1]
            if near:
                return Proposal(self._sample(state, near), "search")
        return Proposal(self._sample(state, left), "search")

    def _sample(self, state: StudyState, left: list[Candidate]) -> Candidate:
        import optuna
        from optuna.distributions import CategoricalDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, progress = state.space, state.progress
        seed = (state.seed + 7919 * progress.measured) % (2**32)
        distributions = {axis: CategoricalDistribution(values) for axis, values in space.choices.items()}
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.startup_trials)
        study = optuna.create_study(direction=state.direction, sampler=sampler)
        worst = _worst(progress, state.direction)
        frozen = []
        for result in progress.results:
            if result.running or result.candidate not in space:
                continue
            value = result.value if result.value is not None else worst
            feasible = result.feasible
            if result.status == "screened" and result.screen_value is not None:
                value, feasible = result.screen_value, True  # slow, not infeasible: TPE learns its figure
            frozen.append(
                optuna.trial.create_trial(
                    params=params_of(result.candidate),
                    distributions=distributions,
                    value=value,
                    constraints={"feasible": 0.0 if feasible else max(result.violation, 1e-6)},
                )
            )
        study.add_trials(frozen)
        left_keys = {c.key(): c for c in left}
        first: dict[str, Any] | None = None
        for _ in range(ASKS_PER_STEP):
            trial = study.ask()
            params = {axis: trial.suggest_categorical(axis, values) for axis, values in space.choices.items()}
            first = first or params
            candidate = candidate_from(params)
            if candidate.key() in left_keys:
                return left_keys[candidate.key()]
        return _nearest(first or {}, left, random.Random(seed))


def chain_for(
    baselines: tuple[Baseline, ...], *, knowledge: bool, explore: bool, exhaustive: bool, tolerance: float, startup_trials: int
) -> Chain:
    """The chain of a study's settings: the baselines; then every candidate in turn
    (``exhaustive``, ranked by the knowledge when there is one), or the knowledge first and, only
    without knowledge or with ``explore``, TPE."""
    proposers: list[Proposer] = [Baselines(baselines)]
    if exhaustive:
        proposers.append(Exhaustive(ranked=knowledge))
        return Chain(*proposers)
    if knowledge:
        proposers.append(KnowledgeFirst(tolerance))
    if not knowledge or explore:
        proposers.append(TPE(startup_trials))
    return Chain(*proposers)


# -- what the proposers and the stop rules share ----------------------------------------------


def known_failure(candidate: Candidate, state: Progress) -> str | None:
    """Why ``candidate`` is known to fail from what this study measured, or ``None``.

    - bitsandbytes on a model where a bitsandbytes load converted no layer at all: the worker
      reported it ``unsupported`` (e.g. Falcon's ``FalconLinear`` layers, which Transformers 5
      leaves in bf16); every other bitsandbytes variant (8-bit, fp4, double quant, another compute
      dtype) would load just as unquantized.
    - a pinned SDPA kernel for which PyTorch found no kernel for this model's attention call (e.g.
      Falcon-7B's one K/V head for 71 query heads): the call has the same shape in every dtype.
    The candidate that found it stays in the trials with its reason.
    """
    for result in state.results:
        if result.status != "unsupported":
            continue
        if candidate.is_bnb and result.candidate.is_bnb and any(t.effective.get("quantized_layers") == 0 for t in result.trials):
            return f"bitsandbytes converted no layer of this model ({result.candidate.label()})"
        if candidate.sdpa_kernel and candidate.sdpa_kernel == result.candidate.sdpa_kernel and "found no kernel" in (result.reason or ""):
            return f"SDPA kernel {candidate.sdpa_kernel}: PyTorch found no kernel for this model's call ({result.candidate.label()})"
    return None


def speed_of(direction: str, value: float | None) -> float | None:
    """A figure as speed (higher is better): a throughput as it is, a latency or a size inverted."""
    if value is None or value <= 0:
        return None
    return value if direction == "maximize" else 1.0 / value


def measured_speeds(progress: Progress, metric: str, direction: str) -> dict[str, tuple[Candidate, float]]:
    """Each measured candidate's best figure as speed: fully measured or screened, feasible or not."""
    rows = [t for r in progress.results for t in r.trials]
    out = {}
    for key, (candidate, value) in figures(rows, metric).items():
        speed = speed_of(direction, value)
        if speed is not None:
            out[key] = (candidate, speed)
    return out


def expected_best(state: StudyState, tolerance: float) -> tuple[Candidate, Prediction] | None:
    """The unmeasured candidate the knowledge expects to do best, if one could still beat the best
    by ``tolerance`` (``None`` also for a state without knowledge)."""
    if state.knowledge is None:
        return None
    knowledge = state.knowledge()
    progress = state.progress
    measured = state.measured
    speeds = measured_speeds(progress, state.metric, state.direction)
    best = speed_of(state.direction, progress.best.value) if progress.best is not None else None
    bar = best * (1 + tolerance) if best is not None else None
    ranked: list[tuple[float, float, int, Candidate, Prediction]] = []
    for order, candidate in enumerate(state.space.candidates):
        if candidate.key() in measured or known_failure(candidate, progress):
            continue
        prediction = knowledge.predict(candidate, speeds)
        optimistic = prediction.optimistic()
        if bar is not None and optimistic is not None and optimistic <= bar:
            continue
        expected = prediction.speed if prediction.speed is not None else prediction.expectation.factor
        # the highest expectation first; on a tie the better known one (fewer, surer departures from the plain load)
        ranked.append((-round(expected, 9), prediction.sigma, order, candidate, prediction))
    if not ranked:
        return None
    ranked.sort(key=lambda item: item[:3])
    return ranked[0][3], ranked[0][4]


def figures(rows: list[TrialRecord], metric: str) -> dict[str, tuple[Candidate, float]]:
    """Each candidate's best ``metric`` over its rows that were timed (``ok`` or ``screened``)."""
    direction = SCREEN_METRICS.get(metric, "maximize")
    out: dict[str, tuple[Candidate, float]] = {}
    for trial in rows:
        if trial.status not in ("ok", "screened") or trial.details.get(INTERRUPTED):
            continue
        value = trial.metrics.get(metric)
        if not isinstance(value, (int, float)) or value <= 0:
            continue
        key = trial.candidate.key()
        if key not in out or (value > out[key][1] if direction == "maximize" else value < out[key][1]):
            out[key] = (trial.candidate, float(value))
    return out


def _worst(progress: Progress, direction: str) -> float:
    values = [r.value for r in progress.results if r.value is not None]
    if direction == "maximize":
        return min(values + [0.0])
    return max(values + [1.0]) * 10


def _nearest(params: dict[str, Any], left: list[Candidate], rng: random.Random) -> Candidate:
    """The unmeasured candidate differing from ``params`` on the fewest axes (ties: seeded pick)."""

    def distance(candidate: Candidate) -> int:
        values = params_of(candidate)
        return sum(1 for axis in sampler_axes() if values[axis] != params.get(axis))

    best = min(distance(c) for c in left)
    return rng.choice([c for c in left if distance(c) == best])
