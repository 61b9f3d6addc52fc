"""The forecast against what trials measured: the points :func:`autotune.advisor.forecast.calibrate`
fits, read from the store.

Forecasts are computed on the fly from each model's stored config, so they always reflect the
current memory model (the ``forecast_bytes`` column holds what the search predicted at the time).
Each is made for the trial's own conditions: the Transformers version its environment recorded,
and, for a ``multi-gpu`` trial, the per-GPU ``max_memory`` its workload's limit set.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.advisor.forecast import Calibration, CalibrationPoint, Forecast, calibrate, device_kind, forecast
from autotune.environment import Environment
from autotune.errors import InputError
from autotune.store import ModelRecord, Store, TrialRecord
from autotune.trials import memory_limit_bytes


@dataclass(frozen=True)
class MeasuredPoint:
    """One ``ok`` trial with a measured peak, and its raw forecast."""

    trial: TrialRecord
    model: ModelRecord
    environment_id: int
    forecast: Forecast
    point: CalibrationPoint


def measured_points(store: Store, *, environment_id: int | None = None, fingerprint: str | None = None,
                    limit: int | None = None) -> list[MeasuredPoint]:
    """Every ``ok`` trial with a measured peak (of one environment, if given), newest last.

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
            environments[study.environment_id] = (store.environment_fingerprint(study.environment_id),
                                                  store.environment(study.environment_id))
        env_fingerprint, env = environments[study.environment_id]
        if fingerprint is not None and env_fingerprint != fingerprint:
            continue
        model = models.get(study.model_id)
        if model is None:
            continue
        gpu_names = [g.name for g in env.gpus]
        devices = max(len(gpu_names), 2)
        max_memory = memory_limit_bytes(study.workload, env, "multi-gpu") if env.gpus else None
        version = (env.versions or {}).get("transformers")
        for trial in store.trials(study_id=study.id, status="ok"):
            measured = trial.metrics.get("peak_memory_bytes")
            if not measured:
                continue
            try:
                predicted = forecast(model.config, trial.candidate, study.workload, trial.batch_size, devices=devices,
                                     max_memory_bytes=max_memory if trial.candidate.placement == "multi-gpu" else None,
                                     transformers_version=version)
            except InputError:
                continue
            kind = device_kind(trial.candidate, gpu_names)
            total = predicted.per_device_bytes if trial.candidate.placement == "multi-gpu" else predicted.total_bytes
            points.append(MeasuredPoint(trial, model, study.environment_id, predicted,
                                        CalibrationPoint(kind, total, int(measured), trial.candidate.label())))
    points.sort(key=lambda p: p.trial.id)
    return points[-limit:] if limit else points


def calibration_for(store: Store, *, environment_id: int | None = None, fingerprint: str | None = None) -> Calibration:
    """The calibration of the forecast from one environment's measured trials."""
    return calibrate(p.point for p in measured_points(store, environment_id=environment_id, fingerprint=fingerprint, limit=500))
