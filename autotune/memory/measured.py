"""The forecast against what trials measured, read from the store: the points calibration and the
safety margin are fitted on.

Forecasts are computed on the fly from each model's stored config, so they always reflect the
current memory model (the ``forecast_bytes`` column holds what the search predicted at the time).
Each is made for the trial's own conditions: the Transformers version its environment recorded,
and, for a ``multi-gpu`` trial, the per-GPU ``max_memory`` it ran with. This module reads the
store (SQLAlchemy); the rest of :mod:`autotune.memory` does not, and the trial worker never
imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.environment import Environment
from autotune.errors import InputError
from autotune.memory.calibration import (
    Calibration,
    CalibrationPoint,
    Correction,
    calibrate,
    candidate_group,
    correction,
    device_kind,
)
from autotune.memory.forecast import Forecast, forecast_on
from autotune.memory.limit import DeviceLimits
from autotune.memory.shape import shape_key
from autotune.store import ModelRecord, Store, TrialRecord
from autotune.workload import Workload


@dataclass(frozen=True)
class MeasuredPoint:
    """One ``ok`` trial with a measured peak, and its raw forecast."""

    trial: TrialRecord
    model: ModelRecord
    environment_id: int
    forecast: Forecast
    point: CalibrationPoint
    workload: Workload


def measured_points(
    store: Store, *, environment_id: int | None = None, fingerprint: str | None = None, limit: int | None = None
) -> list[MeasuredPoint]:
    """Every ``ok`` PyTorch trial with a measured peak (of one environment, if given), oldest first.

    Trials whose model can no longer be forecast (a config the installed Transformers refuses)
    are skipped.
    """
    models = {m.id: m for m in store.models()}
    points: list[MeasuredPoint] = []
    environments: dict[int, tuple[str, Environment]] = {}
    for study in store.studies():
        if environment_id is not None and study.environment_id != environment_id:
            continue
        if study.environment_id not in environments:
            environments[study.environment_id] = (
                store.environment_fingerprint(study.environment_id),
                store.environment(study.environment_id),
            )
        env_fingerprint, env = environments[study.environment_id]
        if fingerprint is not None and env_fingerprint != fingerprint:
            continue
        model = models.get(study.model_id)
        if model is None:
            continue
        gpu_names = [g.name for g in env.gpus]
        version = (env.versions or {}).get("transformers")
        trials = store.trials(study_id=study.id, status="ok")
        for trial in trials:
            measured = trial.metrics.get("peak_memory_bytes")
            if not measured or trial.candidate.runtime != "pytorch":
                continue
            candidate = trial.candidate
            ran = DeviceLimits.from_trial(candidate.placement, trial.details) or DeviceLimits.resolve(
                study.workload.max_memory, env, candidate.placement
            )
            try:
                predicted = forecast_on(
                    model.config,
                    candidate,
                    study.workload,
                    trial.batch_size,
                    ran,
                    transformers_version=version,
                    before=ladder_before(trial, trials),
                )
            except InputError:
                continue
            points.append(
                MeasuredPoint(
                    trial,
                    model,
                    study.environment_id,
                    predicted,
                    CalibrationPoint(
                        device_kind(candidate, gpu_names),
                        predicted.peak_bytes,
                        int(measured),
                        candidate.label(),
                        candidate_group(candidate),
                        shape_key(model.config),
                    ),
                    study.workload,
                )
            )
    points.sort(key=lambda p: p.trial.id)
    return points[-limit:] if limit else points


def ladder_before(trial: TrialRecord, trials: list[TrialRecord]) -> tuple[int, ...]:
    """The batch sizes the worker that measured ``trial`` measured before it (same candidate, same
    worker process, smaller batch)."""
    pid = (trial.details.get("worker") or {}).get("pid") if isinstance(trial.details.get("worker"), dict) else None
    if pid is None:
        return ()
    key = trial.candidate.key()
    return tuple(
        sorted(
            t.batch_size
            for t in trials
            if t.candidate.key() == key
            and t.batch_size < trial.batch_size
            and isinstance(t.details.get("worker"), dict)
            and t.details["worker"].get("pid") == pid
        )
    )


def calibration_for(store: Store, *, environment_id: int | None = None, fingerprint: str | None = None) -> Calibration:
    """The calibration of the forecast from one environment's measured trials."""
    return calibrate(p.point for p in measured_points(store, environment_id=environment_id, fingerprint=fingerprint, limit=500))


def correction_for(store: Store, *, fingerprint: str | None = None) -> Correction:
    """The calibration and the safety margins admission uses, from the measured trials of the store
    (each device kind calibrated on its own points): the calibration from the environment of
    ``fingerprint`` when given, the margins from every environment's trials."""
    points = [p.point for p in measured_points(store, limit=2000)]
    mine = [p.point for p in measured_points(store, fingerprint=fingerprint, limit=500)] if fingerprint else points
    learned = correction(points)
    return Correction(calibrate(mine), learned.margins) if fingerprint else learned
