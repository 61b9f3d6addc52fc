"""benchmarks/quantized_decode.py on the CPU (--tiny): every part of the script runs, torchao's int8
and float8 weight-only are measured and read back by the trial worker, the rest is refused with
the rules' reasons, and the study over the quantizations this machine offers recommends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"gpu", "candidate", "batch_size", "tokens_per_s", "decode_ms_per_token", "weights_bytes", "roofline_ms_per_token", "peak_bytes"}
FIELDS |= {"load_seconds", "compile_seconds", "status", "reason"}


def test_quantized_decode_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = str(REPO / "benchmarks" / "quantized_decode.py")
    proc = subprocess.run(
        [sys.executable, script, "--out", str(out), "--work", str(tmp_path / "work"), "--tiny", "--max-repeats", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "quantized_decode.json").read_text())
    assert len(rows) == 8 * 2 and all(FIELDS <= set(r) for r in rows if r["status"] != "unsupported")
    by = {(r["candidate"], r["batch_size"]): r for r in rows}
    for label, tensor in (("bf16 sdpa ao-int8wo cpu", "Int8Tensor"), ("bf16 sdpa ao-fp8wo cpu", "Float8Tensor")):
        for batch in (1, 4):
            row = by[(label, batch)]
            assert row["status"] == "ok" and row["quant_types"] == {tensor: 14} and row["gpu"] == "CPU", row
            assert row["decode_ms_per_token"] > 0 and row["roofline_ms_per_token"] is None  # no bandwidth floor on the CPU
            # a byte a weight: less than bf16's two
            assert row["weights_bytes"] < by[("bf16 sdpa cpu", batch)]["weights_bytes"]
    assert by[("bf16 sdpa cpu", 1)]["quantized_layers"] == 0
    refused = "refused by autotune's rules: "
    assert by[("bf16 sdpa ao-int4wo-g64 cpu", 1)]["reason"].startswith(refused + "torchao-int4wo: int4 weight-only runs on CUDA")
    assert by[("bf16 sdpa ao-fp8dq cpu", 4)]["reason"].startswith(refused + "torchao-float8dq: float8 activations need float8 matmuls")
    assert by[("bf16 sdpa fp8-fine cpu", 1)]["reason"].startswith(refused + "fp8-fine: Transformers' fine-grained FP8 runs only on a GPU")

    study = json.loads((out / "quantized_decode_study.json").read_text())
    assert "torchao-int8wo" in study["space"] and study["recommendation"] is not None and study["roofline"] is None
    measured = {t["label"]: t["status"] for t in study["trials"]}
    assert measured.get("bf16 sdpa ao-int8wo cpu") == "ok" and measured.get("bf16 sdpa ao-fp8wo cpu") == "ok", measured
    table = (out / "quantized_decode.md").read_text()
    assert "| bf16 sdpa ao-int8wo cpu | 1 |" in table and "## Study" in table

    # a second run into the same OUT keeps the rows it has instead of measuring them again
    again = subprocess.run(
        [sys.executable, script, "--out", str(out), "--work", str(tmp_path / "work"), "--tiny", "--parts", "grid"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "quantized_decode.json").read_text()) == rows and "worker finished" not in again.stderr


def test_quantized_decode_refuses_bad_input(tmp_path: Path) -> None:
    script = str(REPO / "benchmarks" / "quantized_decode.py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, message in ((["--parts", "grid,nonsense"], "unknown part nonsense"), (["--deadline", "0"], "--deadline 0.0: give a number")):
        proc = subprocess.run(
            [sys.executable, script, "--out", str(tmp_path), "--tiny", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
