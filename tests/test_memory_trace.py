"""The worker's opt-in memory trace (autotune.worker.trace) and benchmarks/memory_trace.py, on the CPU.

On the CPU the trace must change nothing: no file, the same trial results. The script runs its
whole code path with tiny models (no CUDA, so no snapshot), and what it writes must be readable
by benchmarks/forecast_holdout.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.worker import trace

REPO = Path(__file__).resolve().parents[1]


def test_the_trace_switch_is_a_no_op_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: the trace would run")
    monkeypatch.setenv(trace.TRACE_ENV, str(tmp_path / "trace"))
    assert trace.MemoryTrace.from_env("models/tiny", "fp32 sdpa cpu") is None
    monkeypatch.setattr(trace, "active", None)
    trace.begin_batch(4)
    trace.after_memory_pass()
    assert not (tmp_path / "trace").exists()


def test_no_trace_is_asked_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(trace.TRACE_ENV, raising=False)
    assert trace.MemoryTrace.from_env("models/tiny", "bf16 sdpa cuda") is None


def test_a_pass_is_summarized_by_peaks_segments_and_split_free_bytes() -> None:
    mib = 2**20
    stats = {
        "allocated_bytes.all.peak": 70 * mib,
        "reserved_bytes.all.peak": 106 * mib,
        "allocated_bytes.all.current": 10 * mib,
        "reserved_bytes.all.current": 106 * mib,
        "inactive_split_bytes.all.current": 3 * mib,
    }
    segments = [
        {"total_size": 2 * mib, "segment_type": "small"},
        {"total_size": 20 * mib, "segment_type": "large"},
        {"total_size": 42 * mib, "segment_type": "large"},
        {"total_size": 42 * mib, "segment_type": "large"},
    ]
    summary = trace.summarize(stats, segments)
    assert summary["peak_reserved_bytes"] - summary["peak_allocated_bytes"] == 36 * mib
    assert summary["segments"] == {str(2 * mib): 1, str(20 * mib): 1, str(42 * mib): 2}
    assert summary["reserved_by_pool"] == {"small": 2 * mib, "large": 104 * mib}
    assert summary["inactive_split_bytes"] == 3 * mib and summary["segment_count"] == 4


def test_the_large_pools_events_are_kept_in_order() -> None:
    mib = 2**20
    snapshot = {
        "device_traces": [
            [
                {"action": "segment_alloc", "size": 2 * mib, "addr": 0},
                {"action": "alloc", "size": 512, "addr": 0},
                {"action": "alloc", "size": 66 * mib, "addr": 4 * mib},
                {"action": "free_completed", "size": 66 * mib, "addr": 4 * mib},
            ]
        ]
    }
    assert trace.large_events(snapshot) == [
        ["segment_alloc", 2 * mib, 0],
        ["alloc", 66 * mib, 4 * mib],
        ["free_completed", 66 * mib, 4 * mib],
    ]


def _holdout_module():  # noqa: ANN202 - a script loaded from its file
    spec = importlib.util.spec_from_file_location("forecast_holdout", REPO / "benchmarks" / "forecast_holdout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_memory_trace_script_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/memory_trace.py --cpu --tiny: one tiny Llama through the worker, with the trace
    variable set (harmless on the CPU), its rows in forecast_holdout.json's format plus ``gpu``,
    and its runs readable by forecast_holdout.py."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "AUTOTUNE_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, str(REPO / "benchmarks" / "memory_trace.py"), "--out", str(out), "--cpu", "--tiny", "--shapes", "llama-tiny"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = json.loads((out / "forecast_holdout_trace.json").read_text())
    assert [r["batch_size"] for r in rows] == [1, 2, 4]
    for r in rows:
        assert {"shape", "candidate", "batch_size", "peak_bytes", "forecast_bytes", "error", "fitted_on_shape", "gpu"} <= set(r)
        assert r["gpu"] == "cpu" and r["fitted_on_shape"] is False and r["peak_bytes"] > 0
    doc = json.loads((out / "memory_trace.json").read_text())
    for run in doc["runs"]:
        assert run["status"] == "ok" and run["trace"] is None  # the CPU worker traced nothing
        assert run["replay"]["batch_size"] == run["batch_size"] and run["replay"]["peak_reserved"] >= run["replay"]["peak_allocated"]
        assert set(run["raw_forecast_bytes"]) == {"classes", "replay"}
    assert not (out / "trace").exists()
    assert "allocator replay: 3 held-out points" in (out / "memory_trace.md").read_text()

    holdout = _holdout_module()
    points = holdout.run_points(out / "forecast_shapes_trace.json")
    assert len(points) == 3 and {p.gpu for p in points} == {None}  # a CPU candidate: no GPU
    older = json.loads((out / "forecast_shapes_trace.json").read_text())
    del older["environment"]["gpu"]  # a file written before the gpu key keeps working
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert len(holdout.run_points(tmp_path / "older.json")) == 3
