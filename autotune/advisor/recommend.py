"""The recommendation: the best measured trial under the objective and the constraints; why
every other option lost is written by :mod:`autotune.advisor.explain`.

Everything here reads the store and nothing else: no torch, no Transformers, so that
``autotune recommend`` starts at once. A trial is only compared with trials of its own study (one
model, one workload, one environment fingerprint); the objective, the memory limit and the quality
floor may be overridden for the choice without measuring again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from autotune.advisor.explain import (
    Verdict,
    busy_note,
    constraints_text,
    count_text,
    describe_metrics,
    explain,
    flat_reference_note,
    generation_notes,
    nothing_measured,
    quality_notes,
    search_notes,
)
from autotune.advisor.render import LoaderSpec
from autotune.advisor.scoring import behind_pct, best_of, memory_limits, score_trial
from autotune.bandwidth import Roofline, roofline
from autotune.environment import Environment
from autotune.files import has_tokenizer as files_have_tokenizer
from autotune.flash import FLASH_ATTENTIONS
from autotune.memory.limit import DeviceLimits
from autotune.objective import (
    Margin,
    confirmed_trials,
    interleaved_rounds,
    margin,
    metric_for,
)
from autotune.store import ModelRecord, Store, StudyRecord, TrialRecord
from autotune.workload import MemoryLimit, Workload


@dataclass(frozen=True)
class RunnerUp:
    """A feasible candidate that came close: its best trial and how far behind the winner."""

    trial: TrialRecord
    value: float
    behind_pct: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial.id,
            "candidate": self.trial.candidate.to_dict(),
            "label": self.trial.candidate.label(),
            "batch_size": self.trial.batch_size,
            "value": self.value,
            "behind_pct": self.behind_pct,
            "metrics": {k: v for k, v in self.trial.metrics.items() if v is not None},
        }


@dataclass(frozen=True)
class Recommendation:
    """The advice for one model: the winner (``best``, or ``None`` with ``message`` saying why)."""

    model: ModelRecord
    workload: Workload
    study: StudyRecord | None = None
    environment_id: int | None = None
    environment: Environment | None = None
    current_environment: bool = False
    best: TrialRecord | None = None
    best_value: float | None = None
    metric: str = ""
    direction: str = "maximize"
    limit_bytes: int | None = None
    limit_note: str | None = None
    #: The limit on each device the winner ran on (``None`` without a winner).
    limits: DeviceLimits | None = None
    runners_up: tuple[RunnerUp, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    notes: tuple[str, ...] = ()
    message: str | None = None
    trials_considered: int = 0
    other_environments: tuple[str, ...] = field(default_factory=tuple)
    #: The worker environment the winner ran in, and the packages (``name==version``) an
    #: application needs to reproduce it there.
    worker_env: str | None = None
    packages: tuple[str, ...] = ()
    #: How sure the choice is: the winner's lead over the runner-up against their timing noise.
    margin: Margin | None = None
    #: Warnings that the machine was busy while the winner or the runner-up was timed.
    busy: tuple[str, ...] = ()
    #: The candidates re-measured interleaved because they were within each other's noise.
    confirmed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.best is not None

    def roofline(self) -> Roofline | None:
        """The winner's decode step against the memory-bandwidth floor of its weights on its GPU."""
        return roofline(self.best, self.environment) if self.best is not None else None

    def where(self) -> str:
        """Which machine the trials ran on, in words."""
        if self.environment is None:
            return "unknown environment"
        env = self.environment
        versions = ", ".join(f"{k} {env.versions[k]}" for k in ("torch", "transformers", "bitsandbytes") if env.versions.get(k))
        here = "this machine's current environment" if self.current_environment else "another environment (not this machine's current one)"
        return f"{env.summary()}; {versions}; {here}"

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "model": self.model.name,
            "workload": self.workload.to_dict(),
            "objective": self.workload.objective,
            "metric": self.metric,
            "direction": self.direction,
            "study_id": self.study.id if self.study else None,
            "environment_id": self.environment_id,
            "environment": self.environment.summary() if self.environment else None,
            "versions": dict(self.environment.versions) if self.environment else {},
            "current_environment": self.current_environment,
            "limit_bytes": self.limit_bytes,
            "limits": self.limits.to_dict() if self.limits is not None else None,
            "limit_note": self.limit_note,
            "min_quality": self.workload.min_quality,
            "trials_considered": self.trials_considered,
            "recommendation": None
            if best is None
            else {
                "trial_id": best.id,
                "candidate": best.candidate.to_dict(),
                "label": best.candidate.label(),
                "batch_size": best.batch_size,
                "value": self.best_value,
                "metrics": {k: v for k, v in best.metrics.items() if v is not None},
                "effective": best.effective,
                "finished_at": best.finished_at,
            },
            "runners_up": [r.to_dict() for r in self.runners_up],
            "why_not": [v.to_dict() for v in self.verdicts],
            "notes": list(self.notes),
            "message": self.message,
            "worker_env": self.worker_env,
            "packages": list(self.packages),
            "confidence": None
            if self.margin is None
            else {"margin": self.margin.margin, "noise": self.margin.noise, "clear": self.margin.clear, "text": self.margin.describe()},
            "busy": list(self.busy),
            "confirmed": list(self.confirmed),
            "roofline": None if (line := self.roofline()) is None else line.to_dict(),
        }


# -- choosing ------------------------------------------------------------------------------------


def effective_workload(
    workload: Workload, *, objective: str | None = None, max_memory: str | None = None, min_quality: float | None = None
) -> Workload:
    """``workload`` with the choice-level fields overridden (nothing measured changes)."""
    changes: dict[str, Any] = {}
    if objective:
        changes["objective"] = objective
    if max_memory:
        changes["max_memory"] = None if max_memory.lower() in ("none", "off") else MemoryLimit.parse(max_memory)
    if min_quality is not None:
        changes["min_quality"] = min_quality
    return Workload.from_dict({**workload.to_dict(), **{k: (v.text if isinstance(v, MemoryLimit) else v) for k, v in changes.items()}})


def _measured_fields(workload: Workload) -> tuple[Any, ...]:
    return (workload.task, workload.prompt_tokens, workload.new_tokens, workload.padding_share, workload.device)


def pick_study(
    store: Store, model: ModelRecord, current_fingerprint: str | None
) -> tuple[StudyRecord | None, list[TrialRecord], bool, list[str]]:
    """The study whose trials to recommend from, its trials, whether it is this environment's, and
    the summaries of other environments that hold measured trials.

    Preference: this environment, then the model's current workload (what was measured: task and
    token counts), then the study with the most ``ok`` trials, then the newest.
    """
    studies = store.studies(model.id)
    ranked = []
    others: list[str] = []
    for study in studies:
        trials = store.trials(study_id=study.id)
        ok = sum(1 for t in trials if t.ok)
        fingerprint = store.environment_fingerprint(study.environment_id)
        here = current_fingerprint is not None and fingerprint == current_fingerprint
        same_workload = _measured_fields(study.workload) == _measured_fields(model.workload)
        ranked.append(
            ((ok > 0, here, same_workload, study.workload_key == model.workload.key(), ok, study.updated_at), study, trials, here)
        )
    if not ranked:
        return None, [], False, []
    ranked.sort(key=lambda r: r[0], reverse=True)
    _, study, trials, here = ranked[0]
    for key, other, _trials, _other_here in ranked[1:]:
        if key[0] and other.environment_id != study.environment_id:
            others.append(store.environment(other.environment_id).summary())
    return study, trials, here, sorted(set(others))


def recommend(
    store: Store,
    model: ModelRecord,
    *,
    current: Environment | None = None,
    objective: str | None = None,
    max_memory: str | None = None,
    min_quality: float | None = None,
    runners_up: int = 3,
) -> Recommendation:
    """The best measured ``ok`` trial of ``model`` that meets the constraints, with its explanation.

    ``current`` is this machine's environment (its studies are preferred). ``objective``,
    ``max_memory`` and ``min_quality`` override the stored workload for the choice.
    """
    study, trials, here, others = pick_study(store, model, current.fingerprint if current else None)
    base = study.workload if study is not None else model.workload
    if study is not None and _measured_fields(study.workload) == _measured_fields(model.workload):
        base = replace(model.workload)
    workload = effective_workload(base, objective=objective, max_memory=max_memory, min_quality=min_quality)
    metric, direction = metric_for(workload)
    rec = Recommendation(model=model, workload=workload, study=study, metric=metric, direction=direction, other_environments=tuple(others))
    if study is None or not trials:
        return replace(rec, message=nothing_measured(model.name))
    environment = store.environment(study.environment_id)
    rec = replace(
        rec, environment_id=study.environment_id, environment=environment, current_environment=here, trials_considered=len(trials)
    )
    notes: list[str] = []
    if _measured_fields(study.workload) != _measured_fields(model.workload):
        notes.append(
            f"these trials measured {study.workload.describe()}; the model's workload is now "
            f"{model.workload.describe()} (run `autotune tune {model.name}` to measure it)"
        )
    if not here and current is not None:
        notes.append(
            f"measured on {environment.summary()}, not on this machine's current environment; "
            f"run `autotune tune {model.name}` here to measure it here"
        )
    overall = memory_limits(workload, environment)
    limit_bytes, limit_note = overall.limit_bytes, overall.note
    if limit_note:
        notes.append(limit_note)

    flat = flat_reference_note(trials)
    if flat:
        notes.append(flat)
    chosen, confirmed = confirmed_trials(trials, workload)
    scored = [(t, score_trial(workload, t, environment)) for t in chosen if t.ok]
    feasible = [(t, s.value) for t, s in scored if s.feasible and s.value is not None]
    rec = replace(rec, limit_bytes=limit_bytes, limit_note=limit_note)
    if not scored:
        statuses = count_text(t.status for t in trials)
        return replace(
            rec,
            notes=tuple(notes),
            verdicts=tuple(explain(trials, study, None, workload, environment, model)),
            message=f"none of the {len(trials)} trials of {model.name} succeeded ({statuses}); "
            f"see `autotune trials {model.name}`, or run `autotune tune {model.name}`",
        )
    if not feasible:
        reasons = count_text(r for _, s in scored for r in s.reasons[:1])
        return replace(
            rec,
            notes=tuple(notes),
            verdicts=tuple(explain(trials, study, None, workload, environment, model)),
            message=f"no measured trial of {model.name} meets the constraints "
            f"({constraints_text(workload, limit_bytes)}): {reasons}; relax --max-memory or --min-quality, "
            f"or run `autotune tune {model.name}` to measure more",
        )
    best, best_value = best_of(feasible, workload)
    notes.extend(search_notes(trials, study, best))
    ups = _runners_up(feasible, best, best_value, workload, runners_up)
    verdicts = explain(chosen, study, best, workload, environment, model)
    limits = memory_limits(workload, environment, best.candidate)
    sure = margin(workload, best_value, best.metrics, ups[0].value, ups[0].trial.metrics) if ups else None
    if sure is not None:
        sure = replace(sure, rounds=interleaved_rounds(trials, best, ups[0].trial, workload))
    timed = workload.objective != "memory"  # a busy machine moves timings, not peaks
    busy = [note for note in (busy_note(t) for t in [best, *(u.trial for u in ups[:1])]) if note] if timed else []
    notes += quality_notes(best, workload) + generation_notes(best)
    return replace(
        rec,
        best=best,
        best_value=best_value,
        runners_up=tuple(ups),
        verdicts=tuple(verdicts),
        notes=tuple(notes),
        limit_bytes=limits.limit_bytes,
        limits=limits,
        worker_env=best.worker_env,
        packages=tuple(packages_for(store, best, environment)),
        margin=sure,
        busy=tuple(busy),
        confirmed=tuple(confirmed),
    )


def packages_for(store: Store, trial: TrialRecord, environment: Environment) -> list[str]:
    """``name==version`` of what an application needs to reproduce ``trial``.

    A trial of a worker environment (ONNX Runtime's) names that environment's packages
    (:meth:`autotune.worker_env.WorkerEnvironment.packages`, as registered; the versions the
    worker read back where it is no longer registered); a trial of ``default`` those of the
    environment the study ran in.
    """
    from autotune.worker_env import WorkerEnvironment

    if trial.worker_env and trial.worker_env != "default":
        try:
            return store.get_worker_env(trial.worker_env).packages()
        except Exception:  # noqa: BLE001 - removed since: fall back to what the worker recorded
            ran = {k: v for k, v in (trial.effective.get("versions") or {}).items() if isinstance(v, str)}
            return WorkerEnvironment(trial.worker_env, "", versions=ran).packages()
    flash = FLASH_ATTENTIONS.get(trial.candidate.attn)
    wanted = (
        ("torch", "transformers", "accelerate")
        + (("bitsandbytes",) if trial.candidate.quant != "none" else ())
        + ((flash.package,) if flash else ())
    )
    return WorkerEnvironment("default", "", versions={k: environment.versions.get(k) for k in wanted}).packages()


def _runners_up(
    feasible: list[tuple[TrialRecord, float]], best: TrialRecord, best_value: float, workload: Workload, n: int
) -> list[RunnerUp]:
    by_candidate: dict[str, tuple[TrialRecord, float]] = {}
    for trial, value in feasible:
        key = trial.candidate.key()
        if key == best.candidate.key():
            continue
        if key not in by_candidate or best_of([by_candidate[key], (trial, value)], workload)[0] is trial:
            by_candidate[key] = (trial, value)
    ordered = sorted(by_candidate.values(), key=lambda tv: behind_pct(workload, best_value, tv[1]))
    return [RunnerUp(t, v, behind_pct(workload, best_value, v)) for t, v in ordered[:n]]


# -- from a recommendation to loading code -------------------------------------------------------

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def model_reference(model: ModelRecord) -> tuple[str, str | None]:
    """What the loading code passes to ``from_pretrained``, and the Hub commit to pin (if known).

    A Hub model is named by its id (``from_pretrained`` finds it in the HF cache, offline too),
    pinned to the snapshot that was measured; a local model by its directory.
    """
    if model.source in ("hub", "hf-cache"):
        revision = model.revision if model.revision and _COMMIT.match(model.revision) else None
        return model.name, revision
    return model.path or model.name, None


def has_tokenizer(model: ModelRecord) -> bool:
    """Whether the model's files on this machine include a tokenizer (a GGUF file carries its own)."""
    return files_have_tokenizer(model.path, model.gguf_file)


def loader_max_memory(trial: TrialRecord, environment: Environment | None) -> dict[int, str] | None:
    """The ``max_memory`` a loader gives ``device_map="auto"`` to load ``trial``'s winner as it ran:
    each GPU's limit as the trial recorded it (``{0: "40960MiB", 1: "12288MiB"}``); ``None`` for
    a candidate on one device or a trial that ran without a limit."""
    if trial.candidate.placement != "multi-gpu":
        return None
    ran = DeviceLimits.from_trial("multi-gpu", trial.details)
    if ran is not None:
        caps = ran.max_memory() or {}
    else:  # recorded before the per-GPU limits: the one limit every GPU was given
        single = trial.details.get("memory_limit_bytes")
        gpus = len(environment.gpus) if environment is not None else 0
        caps = {i: int(single) for i in range(gpus)} if isinstance(single, int) else {}
    return {i: f"{cap // 2**20}MiB" for i, cap in sorted(caps.items())} or None


def loader_spec(rec: Recommendation, *, written_at: datetime | None = None) -> LoaderSpec:
    """The :class:`~autotune.advisor.render.LoaderSpec` of a recommendation that has a winner."""
    if rec.best is None:
        raise ValueError("a loader needs a recommendation with a winner")
    best = rec.best
    model = rec.model
    ref, revision = model_reference(model)
    env = rec.environment
    max_memory = loader_max_memory(best, env)
    measured_on = env.summary() if env is not None else ""
    if env is not None and not best.candidate.on_gpu:
        measured_on = f"the CPU of {env.hostname}" + (f" (GPUs there: {env.summary()})" if env.gpus else "")
    # The versions where the winner ran: those the worker read back (a worker environment's, e.g.
    # Transformers 4.57 for ONNX Runtime) over the study environment's.
    ran = {k: v for k, v in (best.effective.get("versions") or {}).items() if isinstance(v, str)}
    versions = {**(dict(env.versions) if env is not None else {}), **ran}
    if best.worker_env and best.worker_env != "default":
        measured_on += f", worker environment {best.worker_env}"
    export = best.effective.get("export") if isinstance(best.effective.get("export"), dict) else {}
    return LoaderSpec(
        model_name=model.name,
        model_ref=ref,
        revision=revision,
        task=rec.workload.task,
        candidate=best.candidate,
        batch_size=best.batch_size,
        new_tokens=rec.workload.new_tokens,
        prompt_tokens=rec.workload.prompt_tokens,
        has_tokenizer=has_tokenizer(model),
        versions=versions,
        onnx_export=export.get("path"),
        max_memory=max_memory,
        measured=dict(best.metrics),
        measured_on=measured_on,
        measured_at=best.finished_at or best.started_at,
        objective=rec.workload.objective,
        summary=describe_metrics(best.metrics, rec.workload.task),
        written_at=written_at,
        gguf_file=model.gguf_file,
        gguf_packed_layers=best.effective.get("gguf_packed_layers"),
        assistant=_assistant_ref(rec.workload.extra.get("assistant")) if best.candidate.value("generation") == "assistant" else None,
        tokens_per_forward=best.effective.get("tokens_per_forward"),
        timing_text=(best.details.get("generation") or {}).get("text") if isinstance(best.details.get("generation"), dict) else None,
    )


def _assistant_ref(entry: Any) -> str | None:
    """What the loader gives ``from_pretrained`` for the draft model: its Hub id, or its directory."""
    if not isinstance(entry, dict):
        return None
    name, path = entry.get("name"), entry.get("path")
    return str(name) if name and not str(name).startswith("/") else str(path or name)
