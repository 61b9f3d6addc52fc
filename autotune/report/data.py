"""What a report shows, read from the store: per model its recommendation and loading code, and
per study its trials scored under the study's constraints, its candidates, and its progress.

It reads through :class:`autotune.store.Store` only, recommends with
:func:`autotune.advisor.recommend.recommend`, groups a study's rows with
:func:`autotune.search.results.candidate_results`, and imports neither torch, Transformers nor
Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

from autotune.advisor.recommend import Recommendation, loader_spec, recommend
from autotune.advisor.render import RenderError, render_loader
from autotune.advisor.scoring import memory_limits
from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.objective import OBJECTIVE_METRICS, metric_for, score
from autotune.report.svg import style_for
from autotune.search.results import candidate_results, interrupted
from autotune.store import ModelRecord, Store, StudyRecord, TrialRecord
from autotune.workload import Workload


@dataclass(frozen=True)
class TrialView:
    """One trial row and its verdict under the study's constraints.

    ``why`` says why it is not feasible: the constraint it broke (peak over the limit, quality
    under the floor) or how it failed (status and reason); ``None`` when feasible.
    """

    trial: TrialRecord
    feasible: bool
    why: str | None
    interrupted: bool = False

    @property
    def measured(self) -> bool:
        """Whether it has figures to plot (it ran to the end, feasible or not)."""
        return self.trial.ok


@dataclass(frozen=True)
class CandidateView:
    """One measured candidate: its rows (one per batch size), its colour and shape in every chart
    of its study, its best feasible row, and the time it took."""

    candidate: Candidate
    origin: str
    color: str
    shape: str
    trials: tuple[TrialView, ...]
    best: TrialView | None
    status: str
    reason: str | None
    running: bool
    seconds: float
    gpus: int

    @property
    def label(self) -> str:
        return self.candidate.label()


@dataclass(frozen=True)
class ProgressPoint:
    """After each candidate: the GPU-minutes spent so far, its own best feasible value, and the study's best."""

    minutes: float
    candidate: CandidateView
    value: float | None
    best: float | None
    #: Its best measured value, feasible or not (``None``: it produced no figure).
    measured: float | None = None


@dataclass(frozen=True)
class StudyView:
    """A study as the report draws it.

    ``workload`` is what its trials are scored against: the model's current workload for the
    study the recommendation comes from (as ``recommend`` scores it), the study's own otherwise.
    ``best`` is the recommended trial in that study, the study's best feasible trial elsewhere.
    """

    study: StudyRecord
    environment: Environment
    fingerprint: str
    workload: Workload
    metric: str
    direction: str
    limit_bytes: int | None
    trials: tuple[TrialView, ...]
    candidates: tuple[CandidateView, ...]
    progress: tuple[ProgressPoint, ...]
    best: TrialView | None
    recommended: bool
    #: ``GPU-minutes`` on a machine with GPUs (a candidate spread over n GPUs counts n), else ``minutes``.
    time_unit: str

    @property
    def throughput_metric(self) -> str:
        generation, encoder, _ = OBJECTIVE_METRICS["throughput"]
        return generation if self.workload.generates else encoder

    @property
    def minutes(self) -> float:
        return self.progress[-1].minutes if self.progress else 0.0

    def candidate_of(self, trial: TrialRecord) -> CandidateView | None:
        key = trial.candidate.key()
        return next((c for c in self.candidates if c.candidate.key() == key), None)


@dataclass(frozen=True)
class ModelReport:
    """A model's recommendation, its loading code (``None`` without a winner), and its studies,
    the recommendation's study first."""

    model: ModelRecord
    recommendation: Recommendation
    code: str | None
    studies: tuple[StudyView, ...]


@dataclass(frozen=True)
class Report:
    models: tuple[ModelReport, ...]
    location: str
    generated_at: datetime
    current: Environment | None
    #: Set when the report is of one model; ``None`` for every registered model.
    model_name: str | None = None


def gather(store: Store, model_name: str | None = None, *, current: Environment | None = None) -> Report:
    """Read what the report of ``model_name`` (default: every registered model) shows.

    ``current`` is this machine's environment: the recommendation prefers its studies. Raises
    :class:`autotune.errors.ModelNotFoundError` for a model that is not registered.
    """
    models = [store.get_model(model_name)] if model_name else store.models()
    reports = tuple(model_report(store, model, current=current) for model in models)
    return Report(
        models=reports,
        location=store.location,
        generated_at=datetime.now(timezone.utc).replace(tzinfo=None),
        current=current,
        model_name=model_name,
    )


def model_report(store: Store, model: ModelRecord, *, current: Environment | None = None) -> ModelReport:
    rec = recommend(store, model, current=current)
    code = None
    if rec.best is not None:
        try:
            code = render_loader(loader_spec(rec))
        except RenderError as exc:
            rec = replace(rec, notes=rec.notes + (str(exc),))
    views = []
    for study in store.studies(model.id):
        chosen = rec.study is not None and rec.study.id == study.id
        views.append(study_view(store, study, rec if chosen else None))
    views.sort(key=lambda v: (not v.recommended, -v.study.id))
    return ModelReport(model=model, recommendation=rec, code=code, studies=tuple(views))


def study_view(store: Store, study: StudyRecord, rec: Recommendation | None = None) -> StudyView:
    """A study scored under its own workload, or under ``rec``'s when the recommendation comes from it."""
    environment = store.environment(study.environment_id)
    workload = rec.workload if rec is not None else study.workload
    metric, direction = metric_for(workload)
    rows = store.trials(study_id=study.id)
    views = {t.id: _trial_view(t, workload, environment) for t in rows}

    candidates = []
    for i, result in enumerate(candidate_results(rows, workload)):
        color, shape = style_for(i)
        trials = tuple(views[t.id] for t in result.trials)
        candidates.append(
            CandidateView(
                candidate=result.candidate,
                origin=result.origin,
                color=color,
                shape=shape,
                trials=trials,
                best=_best([v for v in trials if v.feasible], metric, direction),
                status=result.status,
                reason=result.reason,
                running=result.running,
                seconds=result.seconds,
                gpus=gpus_used(result.candidate, environment),
            )
        )

    if rec is not None and rec.best is not None:
        best = views.get(rec.best.id)
    else:
        best = _best([v for v in views.values() if v.feasible], metric, direction)

    points = []
    spent, so_far = 0.0, None
    for c in candidates:
        if c.running:
            continue
        spent += c.seconds * (c.gpus if environment.gpus else 1) / 60
        value = c.best.trial.metrics.get(metric) if c.best else None
        if value is not None and (so_far is None or (value > so_far if direction == "maximize" else value < so_far)):
            so_far = value
        shown = _best([v for v in c.trials if v.measured], metric, direction) if c.best is None else c.best
        points.append(ProgressPoint(spent, c, value, so_far, shown.trial.metrics.get(metric) if shown else None))

    limit = memory_limits(workload, environment).limit_bytes
    return StudyView(
        study=study,
        environment=environment,
        fingerprint=store.environment_fingerprint(study.environment_id),
        workload=workload,
        metric=metric,
        direction=direction,
        limit_bytes=limit,
        trials=tuple(views[t.id] for t in rows),
        candidates=tuple(candidates),
        progress=tuple(points),
        best=best,
        recommended=rec is not None,
        time_unit="GPU-minutes" if environment.gpus else "minutes",
    )


def gpus_used(candidate: Candidate, environment: Environment) -> int:
    """How many GPUs a candidate held while it was measured."""
    if candidate.placement == "multi-gpu":
        return max(len(environment.gpus), 1)
    return 1 if candidate.on_gpu and environment.gpus else 0


def _trial_view(trial: TrialRecord, workload: Workload, environment: Environment) -> TrialView:
    cut_short = interrupted(trial)
    if not trial.ok:
        why = trial.status + (f": {trial.reason}" if trial.reason else "")
        return TrialView(trial, False, why, cut_short)
    verdict = score(workload, trial.status, trial.metrics, memory_limits(workload, environment, trial.candidate), trial.details)
    return TrialView(trial, verdict.feasible, None if verdict.feasible else "; ".join(verdict.reasons), cut_short)


def _best(views: list[TrialView], metric: str, direction: str) -> TrialView | None:
    """The best by ``metric``; ties go to the smaller peak, then the earlier trial (as ``recommend``)."""
    scored = [v for v in views if v.trial.metrics.get(metric) is not None]
    if not scored:
        return None
    sign = 1 if direction == "maximize" else -1
    return max(scored, key=lambda v: (sign * v.trial.metrics[metric], -(v.trial.metrics.get("peak_memory_bytes") or 0), -v.trial.id))
