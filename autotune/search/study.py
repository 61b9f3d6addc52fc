"""One study: the search over a model's candidate space, one measured candidate at a time.

A study belongs to a (model, workload, environment fingerprint) — :meth:`Store.study_for` keys
it so — and its truth is the trial rows in autotune's store. Optuna is used in memory only: on
every step the sampler is rebuilt from those rows (one ``FrozenTrial`` per measured candidate,
through :func:`optuna.trial.create_trial`), so a restart resumes exactly where the store says,
nothing measured is measured again, and Optuna's own tables are never needed.

How a step chooses what to measure is the proposers' (:mod:`autotune.search.propose`): the
baselines (Transformers' defaults, then the GPU inference guide's suggestions, where they are in
the space); then what the knowledge expects to do best; then, without knowledge or with
``--explore``, a seeded :class:`optuna.samplers.TPESampler`, local first. This module keeps
stepping: claims, the stop rules and the store writes.

Constraints, not penalties: every measured candidate is a COMPLETE trial with a constraint
``feasible`` (``<= 0``: feasible). Over the memory limit or under the quality floor, the
constraint is how far; an OOM, crash, timeout or unsupported load counts 1. TPE ranks
infeasible trials after every feasible one, so an OOM teaches it where not to go instead of
being an error or a made-up objective value.

The study stops when it stops improving (``patience`` candidates in a row, after the baselines,
none better than the best by ``min_improvement``), at a budget (candidates, or minutes of
measuring — both count the whole study, across restarts), or when the space is exhausted. The
study row's ``state`` (pending, running, finished) and ``stop_reason`` say where it is; a larger
budget or patience later opens a finished study again (:meth:`StudySearch.reopen`).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.errors import InputError
from autotune.memory import Correction, DeviceLimits
from autotune.objective import metric_for
from autotune.search.confirm import confirm_close_pair
from autotune.search.prior import Knowledge, PastResult, workload_class
from autotune.search.propose import StudyState, chain_for, expected_best, figures, known_failure, measured_speeds, speed_of
from autotune.search.results import INTERRUPTED, CandidateResult, Progress, progress
from autotune.search.space import Baseline, SearchSpace, build_space, forecast_peaks
from autotune.store import ModelRecord, Store, StudyRecord, TrialRecord, utcnow
from autotune.units import format_gib
from autotune.worker.protocol import SCREEN_METRICS, Screen


class Measure(Protocol):
    """Measures one candidate of a model at each batch size and records one finished trial per size.

    :func:`autotune.trials.measure_candidate` is autotune's; :class:`StudySearch` and the
    close-pair re-measurement (:mod:`autotune.search.confirm`) call whatever they are given with
    these arguments, and the tests give an instant fake. Rows are ``running`` before anything is measured and finished
    after; the returned trials are in rising batch order.
    """

    def __call__(
        self,
        store: Store,
        model: ModelRecord,
        candidate: Candidate,
        batch_sizes: list[int] | tuple[int, ...],
        *,
        environment: Environment,
        environment_id: int,
        study: StudyRecord,
        origin: str = "search",
        timeout_s: float | None = None,
        on_spawn: Callable[[int], None] | None = None,
        worker_options: dict[str, Any] | None = None,
        ladder: str = "rising",
        screen: Screen | None = None,
        deadline_s: float | None = None,
        details: dict[str, Any] | None = None,
        limits: DeviceLimits | None = None,
        environ: dict[str, str] | None = None,
    ) -> list[TrialRecord]: ...


STOPPED_REASON = "stopped at once during the trial; the candidate is measured again"


@dataclass(frozen=True)
class SearchSettings:
    """How long a study goes on, and what it may look at.

    ``max_trials`` and ``budget_minutes`` count the whole study across restarts (``None``: no
    budget). ``restrict`` keeps only some values of some axes (see
    :func:`autotune.search.space.parse_restriction`). ``seed`` seeds a *new* study (``None``:
    a random seed, stored in the study row). ``startup_trials`` is TPE's random start, counted
    with the baselines. ``baselines=False`` leaves the choice to the sampler from the first
    trial (to judge the sampler alone). ``worker_options`` go to the worker (timing knobs such as
    ``min_repeats``; see :func:`autotune.trials.measure_candidate`).
    """

    patience: int = 8
    max_trials: int | None = None
    budget_minutes: float | None = None
    min_improvement: float = 0.01
    startup_trials: int = 4
    seed: int | None = None
    restrict: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    timeout_s: float | None = None
    baselines: bool = True
    worker_options: dict[str, Any] = field(default_factory=dict)
    tolerance: float = 0.03
    explore: bool = False
    screen_margin: float = 0.15
    knowledge: bool = True
    exhaustive: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.patience, int) or self.patience < 1:
            raise InputError(f"--patience must be a whole number of at least 1, got {self.patience!r}")
        if self.max_trials is not None and (not isinstance(self.max_trials, int) or self.max_trials < 1):
            raise InputError(f"--trials must be a whole number of at least 1, got {self.max_trials!r}")
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise InputError(f"--budget-minutes must be more than 0, got {self.budget_minutes!r}")
        if not 0 <= self.min_improvement < 1:
            raise InputError(f"the minimum improvement must be in [0, 1), got {self.min_improvement!r}")
        if not 0 <= self.tolerance < 1:
            raise InputError(f"--tolerance must be in [0, 1), got {self.tolerance!r}")
        if not 0 < self.screen_margin < 1:
            raise InputError(f"--screen-margin must be in (0, 1), got {self.screen_margin!r}")


class Claims(Protocol):
    """How workers that share a study keep out of each other's way (a daemon's workers, through
    the store). A worker holds at most one claim; a claim is atomic: of two workers asking for the
    same key of a study, one gets ``True``."""

    def take(self, study_id: int, key: str, label: str) -> bool:
        """Claim ``key`` of ``study_id`` for this worker (dropping its previous claim); whether it got it."""
        ...

    def release(self) -> None:
        """Drop this worker's claim."""
        ...

    def elsewhere(self, study_id: int) -> set[str]:
        """The keys of ``study_id`` that other workers claim now (a dead worker's, until it is recovered)."""
        ...


#: The claim key of finishing a study (its stop reason, the close pair's re-measurement): one worker does it.
FINISH_KEY = "finish"


@dataclass(frozen=True)
class Step:
    """What one step did: the candidate measured (if any), and whether the study finished."""

    study: StudyRecord
    progress: Progress
    result: CandidateResult | None = None
    baseline: str | None = None
    improved: bool = False
    error: str | None = None
    #: Nothing for this worker to take now: every candidate left is claimed by other workers, or
    #: the study is done and the others are still measuring (the last of them finishes it).
    waiting: bool = False

    @property
    def finished(self) -> bool:
        return self.study.state == "finished"

    def describe(self, metric: str) -> str:
        """One line: what was measured and what it came to, e.g. ``bf16 sdpa cpu, batch 1-8: ok, 812 tok/s at batch 8``."""
        if self.result is None:
            return f"measuring failed: {self.error}" if self.error else "nothing measured"
        r = self.result
        sizes = r.batch_sizes
        batches = f"batch {sizes[0]}" if len(sizes) == 1 else f"batch {sizes[0]}-{sizes[-1]}"
        what = f"{r.candidate.label()}{f' [{self.baseline}]' if self.baseline else ''}, {batches}"
        if r.best is not None:
            outcome = f"ok, {format_value(metric, r.value)} at batch {r.best.batch_size}"
            failed = [t for t in r.trials if t.status not in ("ok", "skipped")]
            if failed:
                outcome += f" ({failed[0].status} at batch {failed[0].batch_size})"
            if self.improved:
                outcome += " - new best"
        else:
            outcome = f"{r.status}" + (f": {r.reason}" if r.reason else "")
        return f"{what}: {outcome} ({r.seconds:.1f} s)"


def _default_measure() -> Measure:
    from autotune.trials import measure_candidate

    return measure_candidate


class StudySearch:
    """Tunes the study of ``model`` in ``environment`` (recorded as ``environment_id``).

    Every call to :meth:`step` reads the study's trials afresh and measures at most one
    candidate; no database transaction is open while it is measured.
    """

    def __init__(
        self,
        store: Store,
        model: ModelRecord,
        environment: Environment,
        environment_id: int,
        settings: SearchSettings | None = None,
        *,
        measure: Measure | None = None,
        on_spawn: Callable[[Any], None] | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.environment = environment
        self.environment_id = environment_id
        self.settings = settings or SearchSettings()
        self._measure = measure
        self.on_spawn = on_spawn
        #: Called as ``on_start(candidate, origin, baseline name, batch sizes)`` before a measurement.
        self.on_start: Callable[[Candidate, str, str | None, tuple[int, ...]], None] | None = None
        #: Set when several workers share this study: each takes the next candidate nobody claimed.
        self.claims: Claims | None = None
        #: Variables the trial worker's process gets on top of this process's (its GPU, its CPU threads).
        self.worker_environ: dict[str, str] | None = None
        seed = self.settings.seed if self.settings.seed is not None else secrets.randbelow(2**31 - 1)
        self.study = store.study_for(model, environment_id, seed=seed)
        self.workload = self.study.workload
        self.metric, self.direction = metric_for(self.workload)
        self._space: SearchSpace | None = None
        self._knowledge: Knowledge | None = None
        #: Candidates measured when a larger budget reopened the study: patience counts from there.
        self._patience_from = 0
        self._limits: dict[str, DeviceLimits] = {}
        self._correction: Correction | None = None

    # -- the space --------------------------------------------------------------------------

    @property
    def space(self) -> SearchSpace:
        """The study's space, built once; its rejections are written to the study row."""
        if self._space is None:
            self._space = build_space(
                self.model.config,
                self.model.capabilities,
                self.workload,
                self.environment,
                restrict=self.settings.restrict,
                worker_envs=self.store.worker_envs(),
                limits={p: self.limit_for(Candidate(placement=p)) for p in ("cpu", "cuda", "multi-gpu")},
                correction=self.correction,
            )
            rejected = [r.to_dict() for r in self._space.rejected]
            if rejected != self.study.rejected:
                self.study = self.store.update_study(self.study.id, rejected=rejected)
        return self._space

    @property
    def correction(self) -> Correction:
        """The calibration and safety margins admission uses, learned once from the store's
        measured trials (:func:`autotune.memory.measured.correction_for`)."""
        if self._correction is None:
            from autotune.memory.measured import correction_for

            try:
                self._correction = correction_for(self.store)
            except Exception:  # noqa: BLE001 - a store the memory model cannot read: the defaults
                self._correction = Correction()
        return self._correction

    def limit_for(self, candidate: Candidate) -> DeviceLimits:
        """The workload's limit on the devices ``candidate`` runs on, resolved once per placement."""
        placement = candidate.placement
        if placement not in self._limits:
            self._limits[placement] = DeviceLimits.resolve(self.workload.max_memory, self.environment, placement)
        return self._limits[placement]

    def progress(self) -> Progress:
        return progress(self.store.trials(study_id=self.study.id), self.workload, self.settings.min_improvement, self.limit_for)

    # -- stopping ---------------------------------------------------------------------------

    def stop_reason(self, state: Progress) -> str | None:
        """Why the study should stop now, or ``None`` to go on."""
        reason = self._limit_reached(state)
        if reason is not None:
            return reason
        s = self.settings
        if s.exhaustive:
            return None
        if s.knowledge and not s.explore and self._defaults_done(state) and expected_best(self.state(state), s.tolerance) is None:
            best = f"; the best is {state.best.candidate.label()}" if state.best else ""
            return (
                f"knowledge exhausted: no unmeasured candidate is expected to beat the best by more than "
                f"{s.tolerance:.0%}{best} (--explore measures more)"
            )
        # Patience counts from the last improvement, or from where a larger budget reopened the study.
        since = min(state.since_improvement, state.measured - self._patience_from)
        baselines_done = not s.baselines or all(b.candidate.key() in state.measured_keys for b in self._forced_baselines())
        if baselines_done and since >= s.patience:
            if state.best is None:
                return f"no feasible candidate in {state.measured} candidates measured (patience {s.patience})"
            return f"no improvement in the last {since} candidates (patience {s.patience})"
        return None

    def _limit_reached(self, state: Progress) -> str | None:
        """Why nothing more can be measured under these settings: no candidate left, or a budget spent."""
        space = self.space
        if not space.candidates:
            return "nothing to measure: every candidate was rejected (autotune status shows why)"
        measured = state.measured_keys
        if all(c.key() in measured for c in space.candidates):
            return f"space exhausted: all {len(space)} candidates measured"
        s = self.settings
        if s.max_trials is not None and state.measured >= s.max_trials:
            return f"candidate budget reached: {state.measured} candidates measured (--trials {s.max_trials})"
        if s.budget_minutes is not None and state.seconds >= s.budget_minutes * 60:
            return f"time budget reached: {state.seconds / 60:.1f} of {s.budget_minutes:g} minutes measuring"
        return None

    def finish(self, reason: str, state: Progress | None = None) -> StudyRecord:
        state = state or self.progress()
        budget = self.settings.budget_minutes
        if budget is None or state.seconds < budget * 60:  # a spent time budget leaves no time to re-measure
            confirm_close_pair(
                self.store,
                self.model,
                self.environment,
                self.environment_id,
                self.study,
                measure=self._measure or _default_measure(),
                timeout_s=self.settings.timeout_s,
                on_spawn=self.on_spawn,
                on_start=self.on_start,
                worker_options=self.settings.worker_options,
            )
            state = self.progress()
        best = state.best.best.id if state.best and state.best.best else None
        self.study = self.store.update_study(self.study.id, state="finished", stop_reason=reason, finished_at=utcnow(), best_trial_id=best)
        return self.study

    def reopen(self) -> bool:
        """Go on with the study if these settings let it; ``False`` if it stays finished.

        A study goes on when nothing in these settings stops it (a larger ``patience``, say). One
        that stopped for want of improvement also goes on when these settings give it a candidate
        or time budget it has not spent (a larger ``--trials`` or ``--budget-minutes``): patience
        then counts again from here, so the study measures up to that budget, or until
        ``patience`` candidates in a row after this point bring no improvement.
        """
        self.study = self.store.get_study(self.study.id)
        state = self.progress()
        s = self.settings
        if (
            self.stop_reason(state) is not None
            and self._limit_reached(state) is None
            and (s.max_trials is not None or s.budget_minutes is not None)
        ):
            self._patience_from = state.measured
        if self.stop_reason(state) is not None:
            return self.study.state != "finished"
        if self.study.state == "finished":
            self.study = self.store.update_study(self.study.id, state="running", stop_reason=None, finished_at=None)
        return True

    def how_to_continue(self) -> str:
        """What would let the study go on under other settings, in words (to say when it stays finished)."""
        state = self.progress()
        reason = self.stop_reason(state) or ""
        if reason.startswith(("nothing to measure", "space exhausted")):
            return "every candidate these settings allow is measured; a wider --space (or $AUTOTUNE_SPACE) adds more"
        trials = f"--trials above {state.measured}"
        minutes = f"--budget-minutes above {math.ceil(state.seconds / 6) / 10:g}"
        if reason.startswith("candidate budget"):
            return f"{trials} continues it (the budget counts the whole study)"
        if reason.startswith("time budget"):
            return f"{minutes} continues it (the budget counts the whole study)"
        if reason.startswith("knowledge exhausted"):
            return "--explore continues it (Optuna's TPE until --patience), as does a smaller --tolerance or --exhaustive"
        return f"{trials} or {minutes} continues it (each counts the whole study), as does --patience above {state.since_improvement}"

    # -- choosing ---------------------------------------------------------------------------

    def next_candidate(self, state: Progress, skip: frozenset[str] | set[str] = frozenset()) -> tuple[Candidate, str, str | None] | None:
        """``(candidate, origin, baseline name)`` to measure next, or ``None`` if none is left: what
        the chain of this study's settings proposes (:func:`autotune.search.propose.chain_for`).
        Candidates in ``skip`` (claimed by other workers) are passed over as if measured."""
        s = self.settings
        chain = chain_for(
            self._forced_baselines(),
            knowledge=s.knowledge,
            explore=s.explore,
            exhaustive=s.exhaustive,
            tolerance=s.tolerance,
            startup_trials=s.startup_trials,
        )
        proposal = chain.propose(self.state(state, skip))
        return None if proposal is None else (proposal.candidate, proposal.origin, proposal.baseline)

    def state(self, progress: Progress, skip: frozenset[str] | set[str] = frozenset()) -> StudyState:
        """What the proposers see of this study now."""
        return StudyState(
            self.space,
            progress,
            self.study.sampler_seed,
            self.metric,
            self.direction,
            frozenset(skip),
            (lambda: self.knowledge) if self.settings.knowledge else None,
        )

    def _forced_baselines(self) -> tuple[Baseline, ...]:
        """The baselines measured whatever the knowledge says: all of them without knowledge, else the defaults."""
        if not self.settings.baselines:
            return ()
        baselines = self.space.baselines
        return baselines if not self.settings.knowledge else baselines[:1]

    def _defaults_done(self, state: Progress) -> bool:
        return all(b.candidate.key() in state.measured_keys or known_failure(b.candidate, state) for b in self._forced_baselines())

    # -- knowledge ----------------------------------------------------------------------------

    @property
    def knowledge(self) -> Knowledge:
        """What is known before measuring (rules, the forecast's facts, earlier studies here)."""
        if self._knowledge is None:

            def peak(candidate: Candidate) -> int | None:
                try:
                    return max(forecast_peaks(self.model.config, candidate, self.workload, 1, self.limit_for(candidate), self.environment))
                except Exception:  # a forecast that cannot size this model leaves the memory objective unordered
                    return None

            self._knowledge = Knowledge(
                self.workload,
                self.environment,
                model_type=str(self.model.config.get("model_type", "")),
                sdpa_fallback=sdpa_fallback(self.model.config),
                past=self._past_results(),
                forecast=peak,
            )
        return self._knowledge

    def _past_results(self) -> list[PastResult]:
        """Measured candidates of this store's other studies on the same kind of device, for the same
        objective and the same class of workload (:func:`autotune.search.prior.workload_class`)."""
        kind = _device_kind(self.environment)
        models = {m.id: m for m in self.store.models()}
        environments: dict[int, str] = {}
        out: list[PastResult] = []
        for study in self.store.studies():
            if (
                study.id == self.study.id
                or study.workload.objective != self.workload.objective
                or study.workload.generates != self.workload.generates
                or workload_class(study.workload) != workload_class(self.workload)
            ):
                continue
            if study.environment_id not in environments:
                environments[study.environment_id] = _device_kind(self.store.environment(study.environment_id))
            if environments[study.environment_id] != kind:
                continue
            model = models.get(study.model_id)
            for _candidate, value in figures(self.store.trials(study_id=study.id), self.metric).items():
                speed = speed_of(self.direction, value[1])
                if speed is not None:
                    out.append(PastResult(study.id, str(model.config.get("model_type", "")) if model else "", value[0], speed))
        return out

    def measured_speeds(self, state: Progress) -> dict[str, tuple[Candidate, float]]:
        """Each measured candidate's best figure as speed: fully measured or screened, feasible or not."""
        return measured_speeds(state, self.metric, self.direction)

    def _record_forecasts(self, candidate: Candidate, trials: Any) -> None:
        """Store the memory forecast beside each measured peak, so the two can be compared later."""
        if candidate.runtime != "pytorch" or not trials:
            return
        try:
            limits = self.limit_for(candidate)
            ran = [t.batch_size for t in trials if t.status not in ("unsupported", "skipped")]
            falling = self.workload.objective == "throughput" and not self.settings.exhaustive
            # the sizes the same worker ran before this one: larger ones on a falling ladder
            values = {
                t.id: max(
                    forecast_peaks(
                        self.model.config,
                        candidate,
                        self.workload,
                        t.batch_size,
                        limits,
                        self.environment,
                        [b for b in ran if (b > t.batch_size if falling else b < t.batch_size)],
                    )
                )
                for t in trials
                if t.status not in ("unsupported", "skipped")
            }
            self.store.set_forecasts(values)
        except Exception:  # a forecast that cannot size this model must not stop the search
            return

    # -- stepping ---------------------------------------------------------------------------

    def step(self) -> Step:
        """Measure the next candidate, or finish the study; never opens a transaction across a trial.

        With :attr:`claims` set, the candidate is claimed first (the next one nobody else claimed),
        a study whose stop rule holds is finished only once no other worker measures in it, and a
        candidate budget counts the candidates other workers are measuring.
        """
        self.study = self.store.get_study(self.study.id)
        if self.study.state == "finished":
            return Step(self.study, self.progress())
        rows = self.store.trials(study_id=self.study.id)
        before = progress(rows, self.workload, self.settings.min_improvement, self.limit_for)
        busy = self.claims.elsewhere(self.study.id) if self.claims is not None else set()
        reason = self.stop_reason(before)
        if reason is not None:
            return self._finish_once(reason, before, busy)
        if busy and self.settings.max_trials is not None and before.measured + len(busy) >= self.settings.max_trials:
            return Step(self.study, before, waiting=True)  # the budget is spoken for by what the others measure
        pick = self._claim_next(before, busy)
        if pick is None:
            if busy or self.claims is not None and self.claims.elsewhere(self.study.id):
                return Step(self.study, before, waiting=True)
            # the stop rules cover this; kept for safety
            return self._finish_once(f"space exhausted: all {len(self.space)} candidates measured", before, set())
        candidate, origin, baseline = pick
        try:
            return self._measure_step(candidate, origin, baseline)
        finally:
            if self.claims is not None:
                self.claims.release()

    def _claim_next(self, state: Progress, busy: set[str]) -> tuple[Candidate, str, str | None] | None:
        """The next candidate, claimed when workers share the study (``None``: nothing left to take)."""
        skip = set(busy)
        for _ in range(len(self.space) + 2):
            pick = self.next_candidate(state, frozenset(skip))
            if pick is None or self.claims is None:
                return pick
            key = pick[0].key()
            if not self.claims.take(self.study.id, key, pick[0].label()):
                skip.add(key)
                continue
            # Claimed. A worker that measured it may have dropped its claim between our read and
            # our claim: its rows are written before it drops the claim, so read them again.
            state = progress(self.store.trials(study_id=self.study.id), self.workload, self.settings.min_improvement, self.limit_for)
            if key not in state.measured_keys:
                return pick
            self.claims.release()
            skip.add(key)
        return None

    def _finish_once(self, reason: str, state: Progress, busy: set[str]) -> Step:
        """Finish the study, unless other workers still measure in it (or left trials running that
        are not recovered yet), or one of them is finishing it."""
        if busy or self.claims is not None and any(r.running for r in state.results):
            return Step(self.study, state, waiting=True)
        if self.claims is None:
            return Step(self.finish(reason, state), state)
        if not self.claims.take(self.study.id, FINISH_KEY, "finishing the study"):
            return Step(self.study, state, waiting=True)
        try:
            self.study = self.store.get_study(self.study.id)
            if self.study.state == "finished":
                return Step(self.study, self.progress())
            return Step(self.finish(reason, self.progress()), state)
        finally:
            self.claims.release()

    def _measure_step(self, candidate: Candidate, origin: str, baseline: str | None) -> Step:
        rows = self.store.trials(study_id=self.study.id)
        before = progress(rows, self.workload, self.settings.min_improvement, self.limit_for)
        last_number = max((t.number for t in rows), default=0)
        if self.study.state != "running":
            self.study = self.store.update_study(self.study.id, state="running")
        measure = self._measure or _default_measure()
        if self.on_start is not None:
            self.on_start(candidate, origin, baseline, self.space.ladder(candidate))
        error = None
        extra: dict[str, Any] = {"worker_options": dict(self.settings.worker_options)} if self.settings.worker_options else {}
        extra.update(self._measuring_plan(candidate, origin, before))
        if self.worker_environ:
            extra["environ"] = dict(self.worker_environ)
        try:
            measured = measure(
                self.store,
                self.model,
                candidate,
                list(self.space.ladder(candidate)),
                environment=self.environment,
                environment_id=self.environment_id,
                study=self.study,
                origin=origin,
                timeout_s=self.settings.timeout_s,
                on_spawn=self.on_spawn,
                limits=self.limit_for(candidate),
                **extra,
            )
            self._record_forecasts(candidate, measured)
        except Exception as exc:  # a broken measurement must not end the search: record it, go on
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            self._fail_running(candidate, error)
        except BaseException:  # stopped at once (a second signal, Ctrl-C): measure it again next time
            self._mark_interrupted(candidate, last_number)
            raise
        after = self.progress()
        result = next((r for r in reversed(after.results) if r.key == candidate.key()), None)
        improved = after.best is not None and after.since_improvement == 0 and after.best is result
        best_id = after.best.best.id if after.best and after.best.best else None
        if best_id != self.study.best_trial_id:
            self.study = self.store.update_study(self.study.id, best_trial_id=best_id)
        reason = self.stop_reason(after)
        if reason is not None:
            if self.claims is not None:
                self.claims.release()
                self.study = self._finish_once(reason, after, self.claims.elsewhere(self.study.id)).study
            else:
                self.finish(reason, after)
        return Step(self.study, after, result, baseline, improved, error)

    def _measuring_plan(self, candidate: Candidate, origin: str, state: Progress) -> dict[str, Any]:
        """How the worker measures ``candidate``: its ladder order, the figure to screen against,
        what is left of the time budget, and why the candidate was chosen (kept in its rows)."""
        plan: dict[str, Any] = {}
        if self.workload.objective == "throughput" and not self.settings.exhaustive:
            plan["ladder"] = "falling"
        if self.metric in SCREEN_METRICS and not self.settings.exhaustive:
            beat = state.best.value if state.best is not None else None
            plan["screen"] = Screen(
                self.metric, beat=beat if beat and beat > 0 else None, margin=self.settings.screen_margin, contend=self.settings.tolerance
            )
        budget = self.settings.budget_minutes
        if budget is not None:
            plan["deadline_s"] = max(1.0, budget * 60 - state.seconds)
        if origin in ("prior", "warm-start", "baseline") and self.settings.knowledge:
            prediction = self.knowledge.predict(candidate, self.measured_speeds(state))
            why: dict[str, Any] = {"expectation": prediction.expectation.to_dict(), "rank": state.measured + 1}
            if prediction.speed is not None and prediction.neighbour is not None:
                value = prediction.speed if self.direction == "maximize" else 1 / prediction.speed
                why.update(predicted=value, predicted_from=prediction.neighbour.label(), sigma=round(prediction.sigma, 4))
            plan["details"] = {"prior": why}
        return plan

    def _mark_interrupted(self, candidate: Candidate, after_number: int) -> None:
        """Mark this step's rows of ``candidate`` as cut short, whatever the worker glue made of them."""
        for trial in self.store.trials(study_id=self.study.id):
            if trial.number > after_number and trial.candidate.key() == candidate.key():
                self.store.finish_trial(
                    trial.id, "crash", reason=STOPPED_REASON, feasible=False, details={**trial.details, INTERRUPTED: True}
                )

    def _fail_running(self, candidate: Candidate, error: str) -> None:
        for trial in self.store.trials(study_id=self.study.id, status="running"):
            if trial.candidate.key() == candidate.key():
                self.store.finish_trial(trial.id, "error", reason=f"measuring failed: {error}", feasible=False)
        if not any(t.candidate.key() == candidate.key() for t in self.store.trials(study_id=self.study.id)):
            self.store.record_trial(
                self.study.id, candidate, self.space.ladder(candidate)[0], "error", reason=f"measuring failed: {error}", feasible=False
            )

    def run(self, *, should_stop: Callable[[], bool] = lambda: False, on_step: Callable[[Step], None] | None = None) -> StudyRecord:
        """Step until the study finishes or ``should_stop()`` says so (checked between trials)."""
        while not should_stop():
            step = self.step()
            if on_step is not None and (step.result is not None or step.error is not None):
                on_step(step)
            if step.finished:
                break
        return self.store.get_study(self.study.id)


def format_value(metric: str, value: float | None) -> str:
    """An objective value with its unit: ``812 tok/s``, ``35.2 ms``, ``1.20 GiB``."""
    if value is None:
        return "-"
    if metric == "throughput_tokens_per_s":
        return f"{value:,.0f} tok/s" if value >= 100 else f"{value:.3g} tok/s"
    if metric == "sequences_per_s":
        return f"{value:.3g} seq/s"
    if metric.endswith("_ms"):
        return f"{value:.3g} ms"
    if metric.endswith("_bytes"):
        return format_gib(int(value))
    return f"{value:.4g}"


def _device_kind(environment: Environment) -> str:
    """What makes measurements comparable across studies: the GPU model(s), or the CPU."""
    if not environment.gpus:
        return f"cpu:{environment.hostname}"
    return " + ".join(sorted(g.name for g in environment.gpus[:1]))


def sdpa_fallback(config: dict[str, Any]) -> str | None:
    """The memory model's reason why this model's SDPA call cannot use a fused kernel (``None``: it can)."""
    from autotune.memory import sdpa_math_fallback

    try:
        return sdpa_math_fallback(config)
    except Exception:  # a config the meta model cannot be built from: nothing known
        return None
