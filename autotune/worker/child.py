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

from autotune.worker.protocol import PARENT_ENV, BatchResult, WorkerRequest


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


def run(request: WorkerRequest, report: Reporter) -> None:
    """Load (an ONNX Runtime candidate: export first), check, reference/quality, then the batch-size ladder."""
    from autotune.worker import measure

    candidate = request.candidate
    batches = request.expected_batches

    def finish_all(status: str, reason: str, **extra: Any) -> None:
        for batch in batches:
            report.result(BatchResult(status, reason, batch, extra.get("metrics", {}), extra.get("effective", {}), extra.get("details", {})))

    export_job = None
    if candidate.runtime == "onnxruntime":
        from autotune.worker import onnx

        missing = onnx.missing_packages()
        if missing is not None:
            finish_all("unsupported", f"runtime onnxruntime: {missing}")
            return
        if request.task not in onnx.EXPORT_TASKS:
            finish_all("unsupported", f"runtime onnxruntime: no ONNX Runtime model class for task {request.task}")
            return
        report.phase("exporting")
        try:
            # The export (a subprocess) runs while this process imports torch and transformers.
            export_job = onnx.start_export(request)
        except OSError as exc:
            finish_all("error", f"cannot write the ONNX export cache {onnx.cache_root(request)}: {exc.strerror or exc}")
            return
    elif candidate.runtime != "pytorch":
        finish_all("unsupported", f"runtime {candidate.runtime}: this worker measures PyTorch and ONNX Runtime candidates only")
        return

    probe = measure.GpuMemoryProbe.create() if candidate.on_gpu else None

    import torch
    import transformers

    from autotune.worker import loading, quality

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

    if export_job is None:
        report.phase("loading")
    effective: dict[str, Any] = {}
    load_metrics: dict[str, Any] = {}
    try:
        if export_job is not None:
            try:
                export = export_job.wait()
            except onnx.ExportFailed as exc:
                finish_all(exc.status, exc.reason, details=exc.details)
                return
            report.event("exported", **export.describe())
            report.phase("loading")
            loaded = onnx.load(request, export)
            load_metrics = {"load_seconds": loaded.load_seconds}
            effective = onnx.read_effective(loaded.model, candidate, export)
            effective["from_pretrained"] = loaded.kwargs
            report.event("loaded", load_seconds=loaded.load_seconds, effective=effective)
            onnx.check_effective(candidate, effective)
        else:
            loaded = loading.load(request)
            load_metrics = {"load_seconds": loaded.load_seconds}
            effective = loading.read_effective(loaded.model, candidate, request.gguf_file)
            effective["from_pretrained"] = loaded.kwargs
            report.event("loaded", load_seconds=loaded.load_seconds, effective=effective)
            loading.check_effective(candidate, effective, request.max_memory_bytes)
    except loading.OptionNotInEffect as exc:
        finish_all(exc.status, exc.reason, metrics=load_metrics, effective=effective)
        return
    except Exception as exc:
        classify = onnx.classify_load_error if export_job is not None else loading.classify_load_error
        status, reason = classify(exc, candidate)
        finish_all(status, reason, metrics=load_metrics, effective=effective, details={"traceback": _traceback_tail()})
        return
    model = loaded.model
    if request.fault == "corrupt" and export_job is None:
        quality.corrupt(model, request.seed)

    quality_metrics: dict[str, Any] = {}
    quality_details: dict[str, Any] = {}
    with measure.sdpa_context(candidate):
        if request.make_reference:
            report.phase("reference")
            try:
                info = quality.write_reference(model, request)
                report.event("reference", status="ok", reason=None, **info)
            except Exception as exc:
                status = "oom" if loading.is_out_of_memory(exc) else "error"
                reason = f"writing the quality reference failed: {loading.first_line(exc)}"
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
                quality_details = {"quality_error": loading.first_line(exc)}
            _free_memory(torch)

        stopped: BatchResult | None = None
        fault_at = min(1, len(request.batch_sizes) - 1)
        for position, batch in enumerate(request.batch_sizes):
            if stopped is not None:
                if stopped.status == "unsupported":
                    report.result(BatchResult("unsupported", stopped.reason, batch, load_metrics, stopped.effective, {}))
                else:
                    report.result(BatchResult("skipped", f"not measured: batch size {stopped.batch_size} ended the ladder ({stopped.status})",
                                              batch, {}, effective, {}))
                continue
            report.phase("batch", batch)
            try:
                if request.fault == "oom" and position >= fault_at:
                    raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} GiB (a fault injected by a test)")
                if request.fault == "crash" and position >= fault_at:
                    _segfault()
                measured = measure.measure_batch(model, request, batch, probe)
                result = BatchResult(
                    "ok", None, batch,
                    {**load_metrics, **measured.metrics, **quality_metrics},
                    {**effective, **measured.effective},
                    {**measured.details, **quality_details},
                )
            except loading.OptionNotInEffect as exc:
                result = BatchResult(exc.status, exc.reason, batch, load_metrics, {**effective, **exc.effective}, {})
            except Exception as exc:
                details = {"traceback": _traceback_tail()}
                if loading.is_out_of_memory(exc):
                    result = BatchResult("oom", f"out of memory at batch size {batch}: {loading.first_line(exc)}", batch,
                                         load_metrics, effective, details)
                elif "no available kernel" in str(exc).lower():
                    result = BatchResult("unsupported", f"SDPA kernel {candidate.sdpa_kernel or '(default)'}: PyTorch found no kernel for "
                                         f"this call ({loading.first_line(exc)})", batch, load_metrics, effective, details)
                else:
                    result = BatchResult("error", f"measuring batch size {batch} failed: {loading.first_line(exc)}", batch,
                                         load_metrics, effective, details)
            report.result(result)
            if result.status != "ok":
                stopped = result
                _free_memory(torch)


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


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m autotune.worker.child REQUEST.json RESULTS.jsonl", file=sys.stderr)
        return 2
    die_with_parent()
    with open(argv[0], encoding="utf-8") as fh:
        request = WorkerRequest.from_json(fh.read())
    report = Reporter(argv[1])
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
