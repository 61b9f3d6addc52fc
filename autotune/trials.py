"""Measuring one candidate of a registered model and recording it as trials: the store-facing glue.

Used by ``autotune measure`` and by the search and the daemon. For each batch size a ``running``
trial row is written *before* the worker starts (with the worker's pid once it exists), so a
caller killed mid-way leaves a trace that can be recovered. The quality reference is made once
per (model, workload, environment) and cached on disk; the worker's results then finish each
row with its status, metrics, effective configuration, feasibility and objective value.

Measuring one candidate is two steps: :func:`plan_trials`, a pure function of what the store and
the disk say, decides everything (the batch sizes, the limits, the timeouts cut to the study's
deadline, the worker environment and interpreter, whether this candidate writes the quality
reference, or why nothing runs) into a frozen :class:`TrialPlan`; :func:`run_plan` only starts
the rows, launches the workers and finishes the rows. :func:`measure_candidate` gathers the
facts and does both.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autotune.candidate import Candidate, choose_worker_env, rejection
from autotune.environment import Environment
from autotune.errors import InputError
from autotune.memory.limit import DeviceLimits
from autotune.objective import score
from autotune.store import ModelRecord, Store, StudyRecord, TrialRecord
from autotune.worker.protocol import Screen
from autotune.worker_env import DEFAULT as DEFAULT_ENV
from autotune.worker_env import WorkerEnvironment
from autotune.workload import Workload

#: Seconds a worker may take: this much, plus PER_BATCH_TIMEOUT_S per batch size of its ladder.
BASE_TIMEOUT_S = 300.0
PER_BATCH_TIMEOUT_S = 150.0
#: Extra seconds an ONNX Runtime worker may take, for the export (once per model and setting).
ONNX_EXPORT_TIMEOUT_S = 1800.0


def default_placement(environment: Environment, workload: Workload) -> str:
    """``cuda`` where there are GPUs and the workload is not pinned to the CPU, else ``cpu``."""
    return "cuda" if environment.gpus and workload.device != "cpu" else "cpu"


def default_timeout(batch_sizes: list[int] | tuple[int, ...]) -> float:
    return BASE_TIMEOUT_S + PER_BATCH_TIMEOUT_S * max(1, len(batch_sizes))


# -- the quality reference ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """Where the quality reference of a model is, and how it was made (``path`` None: none could be)."""

    path: str | None
    label: str | None
    status: str
    reason: str | None = None
    attempts: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "status": self.status, "reason": self.reason, "attempts": list(self.attempts)}


def cache_dir() -> Path:
    """``$AUTOTUNE_CACHE``, else the user's cache directory for autotune."""
    explicit = os.environ.get("AUTOTUNE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("autotune"))


def _content_stamp(path: str | None) -> list[Any]:
    """Names, sizes and mtimes of a local model's files, so a rebuilt model gets a new reference."""
    if not path or not os.path.isdir(path):
        return []
    stamp = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file():
            info = entry.stat()
            stamp.append([entry.name, info.st_size, info.st_mtime_ns])
    return stamp


def reference_path(model: ModelRecord, workload: Workload, environment: Environment, placement: str) -> Path:
    """Where the reference of ``model`` for ``workload`` on this environment and device kind is cached."""
    identity = {
        "format": 2,
        "model": model.name,
        "revision": model.revision,
        "files": _content_stamp(model.path),
        "workload": workload.key(),
        "environment": environment.fingerprint,
        "device": "cpu" if placement == "cpu" else "gpu",
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "references" / f"{digest}.pt"


def reference_candidates(model: ModelRecord, environment: Environment, placement: str) -> list[Candidate]:
    """Reference configurations to try, highest precision first: float32, then bfloat16 (float16 below cc 8.0).

    Same kind of device as the candidate; on GPU one GPU first, then all of them.
    """
    supported = model.capabilities.get("attn_implementations") or ["eager"]
    attn = "sdpa" if "sdpa" in supported else "eager"
    if placement == "cpu":
        return [Candidate(dtype="float32", attn=attn, placement="cpu"), Candidate(dtype="bfloat16", attn=attn, placement="cpu")]
    placements = ["cuda"] + (["multi-gpu"] if len(environment.gpus) >= 2 else [])
    low = "bfloat16" if all(g.compute_capability >= (8, 0) for g in environment.gpus) else "float16"
    return [Candidate(dtype=d, attn=attn, placement=p) for d in ("float32", low) for p in placements]


def onnx_cache_dir() -> Path:
    """Where ONNX exports are cached (see :mod:`autotune.worker.onnx`)."""
    return cache_dir() / "onnx"


def compile_cache_dir(environment: Environment) -> Path:
    """Where torch.compile keeps its caches for ``environment``: one directory per kind of machine
    (the GPUs' model, memory and compute capability, driver, Python and libraries: what a compiled
    graph depends on, :attr:`Environment.kind_fingerprint`), shared by every worker and by
    identical GPUs, kept across reboots (see :func:`autotune.worker.child.use_compile_cache`).

    Keyed by the GPUs' UUIDs instead, the two studies of the regret benchmark on two H200s of one
    host each compiled the same graphs cold (BENCHMARKS.md §6).
    """
    return cache_dir() / "compile" / environment.kind_fingerprint


def _request(model: ModelRecord, workload: Workload, candidate: Candidate, batch_sizes: tuple[int, ...], **fields: Any) -> Any:
    from autotune.worker import WorkerRequest

    if candidate.runtime == "onnxruntime":
        fields.setdefault("onnx_cache", str(onnx_cache_dir()))
    return WorkerRequest(
        model_path=model.load_path,
        model_name=model.name,
        task=workload.task,
        candidate=candidate,
        workload=workload,
        batch_sizes=batch_sizes,
        model_revision=model.revision,
        gguf_file=model.gguf_file,
        quality_prompts=model.quality_prompts,
        **fields,
    )


def ensure_reference(
    model: ModelRecord,
    workload: Workload,
    environment: Environment,
    *,
    placement: str = "cpu",
    max_memory: dict[int, int] | None = None,
    python: str | None = None,
    timeout_s: float | None = None,
    on_spawn: Callable[[int], None] | None = None,
    environ: dict[str, str] | None = None,
) -> Reference:
    """The cached quality reference for ``model``, made now (in a worker) if it is not there yet.

    Tries :func:`reference_candidates` in order until one fits and runs; if none does, the
    returned reference has no path and says why (candidates are then measured without quality).
    """
    from autotune.worker import launch

    path = reference_path(model, workload, environment, placement)
    if path.exists():
        return Reference(str(path), _reference_label(path), "cached")
    attempts: list[dict[str, Any]] = []
    for candidate in reference_candidates(model, environment, placement):
        request = _request(
            model,
            workload,
            candidate,
            (),
            reference_path=str(path),
            make_reference=True,
            max_memory=max_memory if candidate.placement == "multi-gpu" else None,
            timeout_s=timeout_s or BASE_TIMEOUT_S,
        )
        outcome = launch(request, python=python, on_spawn=on_spawn, env={**os.environ, **environ} if environ else None)
        result = outcome.results[0]
        attempts.append({"label": candidate.label(), "status": result.status, "reason": result.reason})
        if result.ok and path.exists():
            _write_label(path, candidate.label())
            return Reference(str(path), candidate.label(), "made", None, tuple(attempts))
    reason = "; ".join(f"{a['label']}: {a['status']} ({a['reason']})" for a in attempts)
    return Reference(None, None, "failed", f"no reference configuration could run: {reason}", tuple(attempts))


def _write_label(path: Path, label: str) -> None:
    try:
        path.with_suffix(".json").write_text(json.dumps({"label": label}))
    except OSError:
        pass


def _reference_label(path: Path) -> str | None:
    try:
        return json.loads(path.with_suffix(".json").read_text()).get("label")
    except (OSError, ValueError):
        return None


# -- measuring a candidate ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPlan:
    """What measuring one candidate will do, decided before anything runs (:func:`plan_trials`).

    ``rejected``: why nothing is launched (every batch size is recorded ``unsupported`` with it).
    Otherwise the candidate's worker runs in ``python`` (``None``: this interpreter) and its rows
    record ``worker_env``; ``reference_timeout_s`` bounds the worker that makes the quality
    reference (in ``reference_python``) and ``timeout_s`` the candidate's, both already cut to
    the study's deadline (``capped``: the deadline, not the candidate's own limit, stops it);
    ``make_reference``: this candidate is the reference configuration and writes the reference
    at ``reference_path`` itself. ``request`` are the worker request's fields besides the
    reference and the timeout; ``details`` join every row's details.
    """

    model: ModelRecord
    study: StudyRecord
    environment: Environment
    candidate: Candidate
    batch_sizes: tuple[int, ...]
    origin: str
    worker_env: str
    details: dict[str, Any] = field(default_factory=dict)
    rejected: str | None = None
    python: str | None = None
    worker_python: str | None = None
    reference_python: str | None = None
    limits: DeviceLimits | None = None
    reference_path: str | None = None
    make_reference: bool = False
    reference_timeout_s: float = BASE_TIMEOUT_S
    timeout_s: float = BASE_TIMEOUT_S
    deadline_s: float | None = None
    capped: bool = False
    request: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] | None = None

    @property
    def workload(self) -> Workload:
        return self.study.workload


def plan_trials(
    model: ModelRecord,
    candidate: Candidate,
    batch_sizes: tuple[int, ...],
    *,
    study: StudyRecord,
    environment: Environment,
    limits: DeviceLimits,
    worker_envs: list[WorkerEnvironment] | None,
    interpreters: dict[str, bool],
    reference_path: str,
    reference_exists: bool,
    compile_cache: str | None,
    origin: str = "search",
    timeout_s: float | None = None,
    fault: str | None = None,
    python: str | None = None,
    worker_options: dict[str, Any] | None = None,
    ladder: str = "rising",
    screen: Screen | None = None,
    deadline_s: float | None = None,
    details: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> TrialPlan:
    """The :class:`TrialPlan` of measuring ``candidate`` at ``batch_sizes``: a pure function of what
    it is given. What the disk and the store hold is given as facts: the registered worker
    environments (``None``: not asked, a PyTorch candidate), which of their interpreters exist
    (``interpreters``), where the quality reference is cached and whether it is there, the
    torch.compile cache of a PyTorch candidate, and the limit on its devices."""
    workload = study.workload
    worker_env = choose_worker_env(candidate, worker_envs or [])
    reason = rejection(candidate, environment, model.capabilities, workload, worker_envs)
    if reason is None and worker_env is not None and not interpreters.get(worker_env.python, False):
        reason = (
            f"worker environment {worker_env.name}: its interpreter {worker_env.python} is gone "
            f"(register it again: autotune env add {worker_env.name} PYTHON)"
        )
    plan = TrialPlan(
        model,
        study,
        environment,
        candidate,
        batch_sizes,
        origin,
        worker_env.name if worker_env is not None else DEFAULT_ENV,
        details=dict(details or {}),
        rejected=reason,
    )
    if reason is not None:
        return plan
    timeout = timeout_s or default_timeout(batch_sizes)
    candidate_timeout = timeout_s or timeout + (ONNX_EXPORT_TIMEOUT_S if worker_env is not None else 0.0)
    capped = deadline_s is not None and deadline_s < candidate_timeout
    if deadline_s is not None:
        timeout = max(1.0, min(timeout, deadline_s))
        candidate_timeout = max(1.0, min(candidate_timeout, deadline_s))
    make_reference = not reference_exists and candidate == reference_candidates(model, environment, candidate.placement)[0]
    return replace(
        plan,
        python=worker_env.python if worker_env is not None else python,
        worker_python=worker_env.python if worker_env is not None else None,
        reference_python=python,
        limits=limits,
        reference_path=reference_path,
        make_reference=make_reference,
        reference_timeout_s=timeout,
        timeout_s=candidate_timeout,
        deadline_s=deadline_s,
        capped=capped,
        request={
            "max_memory": limits.max_memory(),
            "fault": fault,
            "ladder": ladder,
            "screen": screen,
            "compile_cache": compile_cache if candidate.runtime == "pytorch" else None,
            **(worker_options or {}),
        },
        environ=environ,
    )


def measure_candidate(
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
    fault: str | None = None,
    on_spawn: Callable[[int], None] | None = None,
    python: str | None = None,
    worker_options: dict[str, Any] | None = None,
    worker_envs: list[WorkerEnvironment] | None = None,
    ladder: str = "rising",
    screen: Screen | None = None,
    deadline_s: float | None = None,
    details: dict[str, Any] | None = None,
    limits: DeviceLimits | None = None,
    environ: dict[str, str] | None = None,
) -> list[TrialRecord]:
    """Measure ``candidate`` of ``model`` at each batch size in one worker; one finished trial per size
    (the :class:`autotune.search.study.Measure` autotune uses): gathers what the disk and the store say, plans the
    trials (:func:`plan_trials`), and runs the plan (:func:`run_plan`).

    A candidate that :func:`autotune.candidate.rejection` refuses is recorded as ``unsupported``
    with its reason and nothing is launched. ``worker_options`` passes timing knobs
    (``warmup``, ``min_repeats``, ``max_repeats``, ``target_spread``, ``time_cap_s``) to the
    worker; ``fault`` is for tests only.

    A PyTorch candidate runs in ``python`` (default: this interpreter, the ``default`` worker
    environment). An ONNX Runtime candidate runs in the first registered worker environment
    (``worker_envs``, default: the store's) that offers its provider, and its trials record that
    environment's name; its quality reference is still made by PyTorch, in ``python``.

    ``ladder`` and ``screen`` go to the worker (see :class:`autotune.worker.protocol.WorkerRequest`):
    the search measures throughput ladders largest first and screens clear losers.
    ``deadline_s`` is what is left of the study's time budget: the worker is stopped when it runs
    out, and its unfinished rows are recorded as stopped at the deadline (``details["deadline"]``,
    and ``interrupted``, so that a resumed study with a larger budget measures them again).
    ``details`` is added to every row's details (the search records why it chose the candidate).
    PyTorch candidates keep torch.compile's caches in :func:`compile_cache_dir`.

    ``limits`` is the workload's limit on the candidate's devices (default: resolved here, see
    :meth:`~autotune.memory.limit.DeviceLimits.resolve`): a ``multi-gpu`` load gets each GPU's
    own as ``max_memory``, each device's peak is judged against its own, and every trial records
    them (``details["memory_limits"]``, and the smallest as ``details["memory_limit_bytes"]``).
    """
    sizes = tuple(int(b) for b in batch_sizes)
    if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] <= 0:
        raise InputError(f"batch sizes must be whole numbers above zero in rising order, got {list(batch_sizes)}")
    if study.environment_id != environment_id:
        raise InputError(f"study {study.id} belongs to environment {study.environment_id}, not {environment_id}")
    envs = None
    if candidate.runtime == "onnxruntime":
        envs = store.worker_envs() if worker_envs is None else list(worker_envs)
    path = reference_path(model, study.workload, environment, candidate.placement)
    plan = plan_trials(
        model,
        candidate,
        sizes,
        study=study,
        environment=environment,
        limits=limits or DeviceLimits.resolve(study.workload.max_memory, environment, candidate.placement),
        worker_envs=envs,
        interpreters={e.python: Path(e.python).exists() for e in envs or []},
        reference_path=str(path),
        reference_exists=path.exists(),
        compile_cache=str(compile_cache_dir(environment)) if candidate.runtime == "pytorch" else None,
        origin=origin,
        timeout_s=timeout_s,
        fault=fault,
        python=python,
        worker_options=worker_options,
        ladder=ladder,
        screen=screen,
        deadline_s=deadline_s,
        details=details,
        environ=environ,
    )
    return run_plan(store, plan, on_spawn=on_spawn)


def run_plan(store: Store, plan: TrialPlan, *, on_spawn: Callable[[int], None] | None = None) -> list[TrialRecord]:
    """Run ``plan``: start one ``running`` row per batch size, launch the workers (the quality
    reference's, if it must be made first, then the candidate's), and finish every row with what
    came back; a row the workers left unfinished (an exception, a signal) ends ``error`` and
    ``interrupted``. A rejected plan records its rows ``unsupported`` and launches nothing."""
    c, study = plan.candidate, plan.study
    if plan.rejected is not None:
        return [
            store.record_trial(
                study.id,
                c,
                b,
                "unsupported",
                origin=plan.origin,
                reason=plan.rejected,
                feasible=False,
                worker_env=plan.worker_env,
                details={**plan.details, "rejected_before_load": True},
            )
            for b in plan.batch_sizes
        ]
    began = time.monotonic()
    trials = [store.start_trial(study.id, c, b, origin=plan.origin, worker_env=plan.worker_env) for b in plan.batch_sizes]
    finished: dict[int, TrialRecord] = {}
    try:

        def spawned(pid: int) -> None:
            store.set_worker_pid([t.id for t in trials], pid)
            if on_spawn is not None:
                on_spawn(pid)

        reference = _reference_for(plan, spawned)
        timeout = plan.timeout_s
        if plan.deadline_s is not None and reference.status != "cached":
            timeout = max(1.0, timeout - (time.monotonic() - began))
        from autotune.worker import launch

        request = _request(
            plan.model,
            plan.workload,
            c,
            plan.batch_sizes,
            reference_path=reference.path,
            make_reference=plan.make_reference,
            timeout_s=timeout,
            **plan.request,
        )
        outcome = launch(request, python=plan.python, on_spawn=spawned, env={**os.environ, **plan.environ} if plan.environ else None)
        if plan.make_reference and outcome.reference and outcome.reference.get("status") == "ok":
            _write_label(Path(str(plan.reference_path)), c.label())
        elif plan.make_reference:
            reference = Reference(None, None, "failed", (outcome.reference or {}).get("reason") or "the worker did not write it")
        for trial, result in zip(trials, outcome.results):
            finished[trial.id] = _finish(store, plan, trial, result, outcome, reference)
    finally:
        for trial in trials:
            if trial.id not in finished:
                finished[trial.id] = store.finish_trial(
                    trial.id,
                    "error",
                    reason="the measurement was interrupted before this batch size finished",
                    feasible=False,
                    details={"interrupted": True},
                )
    return [finished[t.id] for t in trials]


def _reference_for(plan: TrialPlan, spawned: Callable[[int], None]) -> Reference:
    """The quality reference the candidate's worker compares with: made by the candidate itself
    when it is the reference configuration, else cached or made now in a worker of its own."""
    if plan.make_reference:
        return Reference(plan.reference_path, plan.candidate.label(), "made with this candidate")
    return ensure_reference(
        plan.model,
        plan.workload,
        plan.environment,
        placement=plan.candidate.placement,
        max_memory=plan.request.get("max_memory"),
        python=plan.reference_python,
        timeout_s=plan.reference_timeout_s,
        on_spawn=spawned,
        environ=plan.environ,
    )


def _finish(store: Store, plan: TrialPlan, trial: TrialRecord, result: Any, outcome: Any, reference: Reference) -> TrialRecord:
    """Finish ``trial`` with the worker's ``result`` for its batch size, scored under the study's workload."""
    workload, limits = plan.workload, plan.limits
    assert limits is not None  # a plan that launches has its limits
    worker = {
        "pid": outcome.pid,
        "returncode": outcome.returncode,
        "wall_seconds": round(outcome.wall_seconds, 3),
        "timed_out": outcome.timed_out,
        "environment": plan.worker_env,
    }
    if plan.worker_python is not None:
        worker["python"] = plan.worker_python
    verdict = score(workload, result.status, result.metrics, limits, result.details)
    row = {
        **plan.details,
        **result.details,
        "worker": worker,
        "reference": reference.to_dict(),
        "memory_limit_bytes": limits.limit_bytes,
        "memory_limits": limits.to_dict(),
    }
    status, why = result.status, result.reason
    if plan.capped and outcome.timed_out and status in ("timeout", "skipped"):
        status, why = "timeout", f"stopped at the study's deadline (its time budget ran out): {result.reason}"
        row.update(deadline=True, interrupted=True)
    if not verdict.feasible:
        row["infeasible"] = list(verdict.reasons)
    value = verdict.value
    if status == "screened":
        value = _screen_value(workload, result.metrics)
    return store.finish_trial(
        trial.id,
        status,
        reason=why,
        metrics=result.metrics,
        effective=result.effective,
        details=row,
        feasible=verdict.feasible,
        objective_value=value,
    )


def _screen_value(workload: Workload, metrics: dict[str, Any]) -> float | None:
    """The objective figure of a screened row (one run): kept as its value, never as a measurement."""
    from autotune.objective import metric_for

    value = metrics.get(metric_for(workload)[0])
    return float(value) if isinstance(value, (int, float)) else None
