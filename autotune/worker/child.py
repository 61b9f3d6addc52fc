"""The worker process: ``python -m autotune.worker.child REQUEST.json RESULTS.jsonl``.

Loads the candidate once, reads back what was really loaded, writes or compares the quality
reference, then measures each batch size of the ladder, appending one JSON line per event to the
results file as it goes (so a crash keeps what was finished). It stops the ladder at the first
out-of-memory; later batch sizes are reported ``skipped``. Exceptions become classified results;
only a hard crash (a signal) or a hang is left to the launcher to classify.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, TextIO

from autotune.worker.protocol import CPUS_ENV, PARENT_ENV, BatchResult, WorkerRequest


class Reporter:
    """Appends events to the results file, one flushed JSON line each."""

    def __init__(self, path: str) -> None:
        self._fh: TextIO = open(path, "a", encoding="utf-8")

    def event(self, kind: str, **data: Any) -> None:
        self._fh.write(json.dumps({"event": kind, **_clean(data)}, default=_plain) + "\n")
        self._fh.flush()

    def phase(self, name: str, batch_size: int | None = None) -> None:
        self.event("phase", phase=name, batch_size=batch_size, at=time.time())
        print(f"autotune-worker: {name}" + (f" {batch_size}" if batch_size is not None else ""), file=sys.stderr, flush=True)

    def result(self, result: BatchResult) -> None:
        self.event("result", result=result.to_dict())


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _clean(value: Any) -> Any:
    """NaN and infinities become None: they are not JSON and not a measurement."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _hang() -> None:
    """Test-only fault: ignore SIGTERM, start a grandchild that does too, and never return."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    subprocess.Popen([sys.executable, "-c", code])
    while True:
        time.sleep(3600)


def _segfault() -> None:
    """Test-only fault: a real segmentation fault."""
    import ctypes

    ctypes.string_at(0)


def _traceback_tail(limit: int = 1500) -> str:
    return traceback.format_exc()[-limit:]


def unclassified(request: WorkerRequest, doing: str, error: str) -> str:
    """The reason for an error the worker cannot classify: the model, the candidate, the error, what to try.

    ``doing`` is what failed (``loading``, ``measuring batch size 4 of``), ``error`` the exception's
    first line with its type.
    """
    name = request.model_name
    return (
        f"{doing} {name} as {request.candidate.label()} failed with an error autotune does not recognise ({error}); "
        f"the traceback is kept with the trial (autotune trials {name} --json); try the candidate alone with "
        f"`autotune measure {name} {request.candidate.measure_args()} --batch 1`, or another dtype or attention"
    )


def run(request: WorkerRequest, report: Reporter) -> None:
    """Load through the candidate's backend, check it, reference/quality, then the batch-size ladder."""
    from autotune.worker import measure
    from autotune.worker.backends import LoadFailed, OptionNotInEffect, for_request
    from autotune.worker.ladder import Ladder

    candidate = request.candidate
    batches = request.expected_batches

    def finish_all(status: str, reason: str, **extra: Any) -> None:
        for batch in batches:
            report.result(
                BatchResult(status, reason, batch, extra.get("metrics", {}), extra.get("effective", {}), extra.get("details", {}))
            )

    backend = for_request(request)
    if backend is None:
        finish_all("unsupported", f"runtime {candidate.runtime}: this worker measures PyTorch and ONNX Runtime candidates only")
        return
    refusal = backend.refusal()
    if refusal is not None:
        finish_all("unsupported", refusal)
        return
    cache = compile_cache_state(request.compile_cache)
    if backend.preparing:
        report.phase(backend.preparing)
    try:
        backend.prepare()
    except LoadFailed as exc:
        finish_all(exc.status, exc.reason, details=exc.details)
        return

    probe = measure.GpuMemoryProbe.create() if candidate.on_gpu else None

    import torch
    import transformers

    from autotune.worker import quality

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    if probe is not None:
        if torch.cuda.is_available():
            torch.cuda.init()
            probe.bind()
        else:
            probe.bind_visible()

    effective: dict[str, Any] = {}
    load_metrics: dict[str, Any] = {}
    try:
        exported = backend.prepared()
        if exported is not None:
            report.event("exported", **exported)
        report.phase("loading")
        loaded = backend.load()
        load_metrics = {"load_seconds": loaded.load_seconds}
        effective = backend.read_effective(loaded.model)
        effective["from_pretrained"] = loaded.kwargs
        report.event("loaded", load_seconds=loaded.load_seconds, effective=effective)
        if backend.verifies:
            report.phase(backend.verifies)
            verified = backend.verify(loaded.model)
            effective.update(verified)
            report.event(backend.verifies, **verified)
        backend.check_effective(effective)
    except OptionNotInEffect as exc:
        finish_all(exc.status, exc.reason, metrics=load_metrics, effective=effective)
        return
    except LoadFailed as exc:
        finish_all(exc.status, exc.reason, metrics=load_metrics, details=exc.details)
        return
    except Exception as exc:
        status, reason = backend.classify_load_error(exc)
        if status == "error":
            doing = "loading the ONNX export of" if candidate.runtime == "onnxruntime" else "loading"
            reason = unclassified(request, doing, _first_line(exc))
        finish_all(status, reason, metrics=load_metrics, effective=effective, details={"traceback": _traceback_tail()})
        return
    model = loaded.model
    backend.after_load(model)
    from autotune.worker import trace

    # opt-in (AUTOTUNE_MEMORY_TRACE): the allocator's history from here on, a snapshot per batch size
    trace.active = trace.MemoryTrace.from_env(request.model_name, candidate.label()) if candidate.on_gpu else None
    if trace.active is not None:
        trace.active.start()

    quality_metrics: dict[str, Any] = {}
    quality_details: dict[str, Any] = {}
    with measure.sdpa_context(candidate):
        if request.make_reference:
            report.phase("reference")
            try:
                info = quality.write_reference(model, request)
                report.event("reference", status="ok", reason=None, **info)
            except Exception as exc:
                status, reason = _reference_error(request, exc)
                report.event("reference", status=status, reason=reason)
                if not request.batch_sizes:
                    finish_all(status, reason, metrics=load_metrics, effective=effective, details={"traceback": _traceback_tail()})
                    return
                info = None
            if not request.batch_sizes:
                report.result(BatchResult("ok", None, 0, load_metrics, effective, {"reference": info}))
                return
        if request.reference_path and os.path.exists(request.reference_path):
            report.phase("quality")
            try:
                quality_metrics, quality_details = quality.compare(model, request)
            except Exception as exc:
                quality_details = {"quality_error": _first_line(exc)}
            _free_memory(torch)

        ladder = Ladder(request.batch_sizes, request.ladder, request.screen)
        fault_at = _fault_batch(request)
        first = True
        while (batch := ladder.next()) is not None:
            if not first:
                _free_memory(torch)  # what the last size left cached does not count in this one's peak
            first = False
            report.phase("batch", batch)
            trace.begin_batch(batch)
            result = _measure_one(request, model, batch, probe, fault_at, load_metrics, effective, quality_metrics, quality_details)
            if request.compile_cache and result.status in ("ok", "screened"):
                result.details["compile_cache"] = compile_cache_state(request.compile_cache, before=cache)
            report.result(result)
            metric = request.screen.metric if request.screen else None
            value = result.metrics.get(metric) if metric else None
            ladder.record(batch, result.status, value if isinstance(value, (int, float)) else None, result.reason)
        for left in ladder.leftover():
            metrics = load_metrics if left.status == "unsupported" else {}
            report.result(BatchResult(left.status, left.reason, left.batch_size, metrics, effective, {}))


def _fault_batch(request: WorkerRequest) -> int | None:
    """The batch size a test-only fault fires at: the second one measured (the only one if there is one)."""
    if request.fault not in ("oom", "crash"):
        return None
    order = list(request.batch_sizes) if request.ladder == "rising" else sorted(request.batch_sizes, reverse=True)
    return order[min(1, len(order) - 1)]


def _measure_one(
    request: WorkerRequest,
    model: Any,
    batch: int,
    probe: Any,
    fault_at: int | None,
    load_metrics: dict[str, Any],
    effective: dict[str, Any],
    quality_metrics: dict[str, Any],
    quality_details: dict[str, Any],
) -> BatchResult:
    """Measure one batch size; every exception becomes a classified result."""
    import torch

    from autotune.worker import measure
    from autotune.worker.backends import OptionNotInEffect

    candidate = request.candidate
    try:
        if request.fault == "oom" and batch == fault_at:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} GiB (a fault injected by a test)")
        if request.fault == "crash" and batch == fault_at:
            _segfault()
        measured = measure.measure_batch(model, request, batch, probe)
    except OptionNotInEffect as exc:
        return BatchResult(exc.status, exc.reason, batch, load_metrics, {**effective, **exc.effective}, {})
    except Exception as exc:
        from autotune.worker import loading

        status, reason = loading.classify_run_error(exc, candidate, batch)
        if status == "error":
            reason = unclassified(request, f"measuring batch size {batch} of", _first_line(exc))
        return BatchResult(status, reason, batch, load_metrics, effective, {"traceback": _traceback_tail()})
    metrics = {**load_metrics, **measured.metrics, **quality_metrics}
    details = {**measured.details, **quality_details}
    if measured.screened is not None:
        return BatchResult("screened", measured.screened, batch, metrics, {**effective, **measured.effective}, details)
    return BatchResult("ok", None, batch, metrics, {**effective, **measured.effective}, details)


def _reference_error(request: WorkerRequest, exc: BaseException) -> tuple[str, str]:
    """``(status, reason)`` of an exception raised while writing the quality reference."""
    from autotune.worker import loading

    if loading.is_out_of_memory(exc):
        return "oom", f"writing the quality reference failed: {_first_line(exc)}"
    return "error", unclassified(request, "writing the quality reference of", _first_line(exc))


def _first_line(exc: BaseException) -> str:
    from autotune.worker import loading

    return loading.first_line(exc)


# -- torch.compile's caches -------------------------------------------------------------------------

#: The environment variables that put torch.compile's on-disk caches in one directory.
COMPILE_CACHE_ENV = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def use_compile_cache(directory: str | None) -> None:
    """Point Inductor's and Triton's caches at ``directory`` (before torch is imported).

    Inductor keeps its FX graph cache and AOT autograd cache under ``TORCHINDUCTOR_CACHE_DIR``
    and Triton its compiled kernels under ``TRITON_CACHE_DIR``; by default both live in /tmp,
    which a reboot empties and another user cannot share. A directory the caller chose (per
    environment fingerprint, under autotune's cache) survives and is shared by every worker.
    """
    if not directory:
        return
    for variable, sub in COMPILE_CACHE_ENV.items():
        path = os.path.join(directory, sub)
        os.makedirs(path, exist_ok=True)
        os.environ[variable] = path
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def compile_cache_state(directory: str | None, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """How many files the compile cache holds; with ``before``, how many this worker added.

    A compile that added nothing was served from the cache (warm); the cost a user pays at the
    first request after a cold start is the compile time of a worker that found it cold.
    """
    files = 0
    if directory and os.path.isdir(directory):
        for _, _, names in os.walk(directory):
            files += len(names)
    state: dict[str, Any] = {"dir": directory, "files": files}
    if before is not None:
        added = files - int(before.get("files", 0))
        state["files_before"] = before.get("files", 0)
        state["added"] = added
        state["warm"] = added == 0 and int(before.get("files", 0)) > 0
    return state


def _free_memory(torch: Any) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the process that launched it dies.

    The launcher kills the worker's whole group on a timeout, an error or a second Ctrl-C; this
    covers what it cannot: ``kill -9`` of ``autotune tune`` or of the daemon, which would leave a
    worker holding a GPU's memory for nobody.
    """
    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or not parent or not parent.isdigit():
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the launcher died before the request took effect
        os._exit(1)


def pin_cpus(cores: str | None) -> None:
    """Run on ``cores`` (``0-3`` or ``0,2``) only, where the OS allows it; a bad list changes nothing."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return
    chosen: set[int] = set()
    try:
        for part in cores.split(","):
            low, _, high = part.partition("-")
            chosen.update(range(int(low), int(high or low) + 1))
        os.sched_setaffinity(0, chosen)
    except (ValueError, OSError):
        return


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m autotune.worker.child REQUEST.json RESULTS.jsonl", file=sys.stderr)
        return 2
    die_with_parent()
    pin_cpus(os.environ.get(CPUS_ENV))
    with open(argv[0], encoding="utf-8") as fh:
        request = WorkerRequest.from_json(fh.read())
    report = Reporter(argv[1])
    use_compile_cache(request.compile_cache)
    report.event("started", pid=os.getpid())
    if request.fault == "hang":
        _hang()
    try:
        run(request, report)
    except ImportError as exc:  # torch or transformers themselves are not importable
        reason = f"the worker cannot import {exc.name or 'a package it needs'}: {exc}"
        for batch in request.expected_batches:
            report.result(BatchResult("unsupported", reason, batch, {}, {}, {"traceback": _traceback_tail()}))
    report.event("done")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and flushed: skip the interpreter's teardown of torch and CUDA,
    # which costs time and has been known to crash after the work is done.
    os._exit(code)
