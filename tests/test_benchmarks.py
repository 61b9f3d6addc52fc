"""The GPU benchmark scripts, run on the CPU with tiny models: they must work before a GPU lease is spent on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_flash_attention_grid_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "flash_attention.py"),
            "--out",
            str(out),
            "--tiny",
            "--parts",
            "grid,static",
            "--max-repeats",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("flash_attn.cute is not importable (ModuleNotFoundError: ")  # one line, and it goes on
    rows = json.loads((out / "flash_attention_tiny.json").read_text())["rows"]
    assert len(rows) == 2 * 3 * 4  # with and without a static cache, three attentions, four shapes
    by = {(r["attn"], r["static_cache"], r["prompt_tokens"], r["batch_size"]): r for r in rows}
    fa4 = by[("flash_attention_4", False, 64, 1)]
    assert fa4["status"] == "unsupported" and fa4["reason"] == (
        "refused by autotune's rules: flash_attention_4: FlashAttention runs only on NVIDIA GPUs, not on the CPU"
    )
    for attn in ("sdpa", "eager"):
        for prompt, batch in ((64, 1), (64, 4), (512, 1), (1024, 1)):
            row = by[(attn, False, prompt, batch)]
            assert row["status"] == "ok" and row["attention_ran"] == [attn], row
            assert row["metrics"]["latency_p50_ms"] > 0 and row["forecast_bytes"] > 0
        assert "static cache: transformers compiles static-cache generate only on CUDA" in by[(attn, True, 64, 1)]["reason"]
    table = (out / "flash_attention_tiny.md").read_text()
    assert "## 1,024 prompt + 4 new tokens, batch 1" in table and "| sdpa | dynamic |" in table
