"""``autotune measure`` end to end on a registered tiny model."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

FIELDS = (
    "status",
    "reason",
    "batch_size",
    "load_seconds",
    "ttft_ms",
    "decode_tokens_per_s",
    "throughput_tokens_per_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "peak_memory_bytes",
    "quality_token_agreement",
    "effective",
)


@pytest.fixture
def measured_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "cache"


def test_measure_json_end_to_end(cli, tiny_models, measured_env) -> None:  # type: ignore[no-untyped-def]
    model = tiny_models["llama"]
    assert cli("add", model, "--prompt-tokens", "16", "--new-tokens", "8", "--padding-share", "0.25", "--max-memory", "100MB").code == 0
    result = cli("measure", model, "--dtype", "bf16", "--attn", "eager", "--batch", "1,2", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["label"] == "bf16 eager cpu" and doc["environment"]["summary"].startswith("CPU only")
    results = doc["results"]
    assert [r["batch_size"] for r in results] == [1, 2] and all(set(FIELDS) <= set(r) for r in results)
    for r in results:
        assert r["status"] == "ok" and r["reason"] is None
        assert r["throughput_tokens_per_s"] > 0 and r["ttft_ms"] > 0 and r["latency_p50_ms"] <= r["latency_p90_ms"]
        assert r["effective"]["attn_implementation"] == "eager" and r["effective"]["dtype"] == "bfloat16"
        assert r["quality_token_agreement"] is not None  # against the fp32 reference made first, in its own worker
        # The worker's peak RSS is far above 100 MB: measured, but infeasible under the limit.
        assert r["feasible"] is False and "over the limit" in r["details"]["infeasible"][0]
    assert results[0]["details"]["reference"]["status"] == "made" and results[0]["details"]["reference"]["label"] == "fp32 sdpa cpu"
    with sqlite3.connect(cli.db) as conn:
        rows = conn.execute("SELECT origin, status, batch_size, worker_pid FROM autotune_trials ORDER BY id").fetchall()
    assert [r[:3] for r in rows] == [("measure", "ok", 1), ("measure", "ok", 2)] and rows[0][3] is not None


def test_measure_table_rejections_and_bad_input(cli, tiny_models, measured_env) -> None:  # type: ignore[no-untyped-def]
    model = tiny_models["gpt2"]
    cli("add", model, "--prompt-tokens", "16", "--new-tokens", "8")
    result = cli("measure", model, "--placement", "cuda", "--batch", "1,4")  # rejected before anything loads
    assert result.code == 1
    assert "BATCH" in result.out and "unsupported" in result.out and "no NVIDIA GPU" in result.out
    before = dump(cli.db)
    bad = cli("measure", model, "--batch", "0,4")
    assert bad.code == 2 and "--batch 0,4: give batch sizes as whole numbers of at least 1" in bad.err
    assert cli("measure", model, "--batch", "x").code == 2
    assert cli("measure", model, "--dtype", "fp8").code == 2
    assert cli("measure", model, "--provider", "CPUExecutionProvider").code == 2
    nonsense = cli("measure", model, "--attn", "nonsense")
    assert nonsense.code == 2 and len(nonsense.err.splitlines()) == 1 and not nonsense.out
    assert "--attn 'nonsense': GPT2LMHeadModel offers eager, sdpa" in nonsense.err and "transformers 5." in nonsense.err
    assert dump(cli.db) == before  # nothing stored: no trial, no study, no environment
    missing = cli("measure", "/no/such/model")
    assert missing.code == 2 and "not registered" in missing.err
    assert "--inject-fault" not in cli("measure", "--help").out


def dump(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'autotune_%'")]
        return [(t, *row) for t in sorted(tables) for row in conn.execute(f"SELECT * FROM {t}")]


def test_measure_and_the_worker_launcher_import_no_torch() -> None:
    code = (
        "import sys, autotune.cli.measure, autotune.trials, autotune.worker; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.split() == ["False", "False"]
