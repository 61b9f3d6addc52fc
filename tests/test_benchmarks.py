"""The GPU benchmark scripts, run on the CPU with tiny models: they must work before a GPU lease is spent on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_flash_attention_on_the_cpu(tmp_path: Path) -> None:
    """Every part of benchmarks/flash_attention.py with a tiny Llama (and SmolLM2, trained) on the CPU,
    where FlashAttention-4 is refused with its reason and the rest is measured."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "flash_attention.py"),
            "--out",
            str(out),
            "--tiny",
            "--parts",
            "grid,static,quality,study,trained",
            "--max-repeats",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("flash_attn.cute is not importable (ModuleNotFoundError: ")  # one line, and it goes on
    document = json.loads((out / "flash_attention_tiny.json").read_text())
    rows = document["rows"]
    assert len(rows) == 2 * 3 * 4  # with and without a static cache, three attentions, four shapes
    by = {(r["attn"], r["static_cache"], r["prompt_tokens"], r["batch_size"]): r for r in rows}
    refused = "refused by autotune's rules: flash_attention_4: FlashAttention runs only on NVIDIA GPUs, not on the CPU"
    fa4 = by[("flash_attention_4", False, 64, 1)]
    assert fa4["status"] == "unsupported" and fa4["reason"] == refused
    assert by[("sdpa", False, 512, 1)]["new_tokens"] == 1  # the long prompts are prefill alone
    for attn in ("sdpa", "eager"):
        for prompt, batch in ((64, 1), (64, 4), (512, 1), (1024, 1)):
            row = by[(attn, False, prompt, batch)]
            assert row["status"] == "ok" and row["attention_ran"] == [attn], row
            assert row["metrics"]["latency_p50_ms"] > 0 and row["forecast_bytes"] > 0
        assert "static cache: transformers compiles static-cache generate only on CUDA" in by[(attn, True, 64, 1)]["reason"]

    # the flat list: one object per row, with the figures asked for
    flat = json.loads((out / "flash_attention_tiny_rows.json").read_text())
    assert len(flat) == len(rows)
    prefill = next(r for r in flat if r["attn"] == "sdpa" and r["prompt_tokens"] == 1024 and not r["static_cache"])
    assert {"gpu", "attn", "prompt_tokens", "new_tokens", "batch_size", "ms", "tokens_per_s", "peak_bytes", "status"} <= set(prefill)
    assert prefill["gpu"] == "CPU" and prefill["tokens_counted"] == "prompt"
    assert abs(prefill["tokens_per_s"] - 1024 / (prefill["ms"] / 1e3)) < 1e-6 * prefill["tokens_per_s"]

    # quality on the same weights, by the guard's code: random weights (flat), then SmolLM2 (trained) on text
    quality = {(q["weights"], q["reference"], q["candidate"]): q for q in document["quality"] + document["trained"]["quality"]}
    assert quality[("random", "bf16 sdpa cpu", "bf16 flash_attention_4 cpu")]["reason"] == refused
    random_eager = quality[("random", "bf16 sdpa cpu", "bf16 eager cpu")]
    assert random_eager["status"] == "ok" and random_eager["flatness"] > 0.9
    for reference, candidate in (
        ("fp32 sdpa cpu", "bf16 sdpa cpu"),
        ("fp32 sdpa cpu", "bf16 eager cpu"),
        ("bf16 sdpa cpu", "bf16 eager cpu"),
    ):
        q = quality[("trained", reference, candidate)]
        assert q["status"] == "ok" and q["positions"] >= 200 and q["flatness"] < 0.5, q  # real text, a trained model
        assert q["agreement_low"] <= q["token_agreement"] <= q["agreement_high"] and q["kl"] >= 0

    # the studies: a recommendation, set against the grid; FlashAttention-4 refused with the rule's reason
    studies = {s["name"]: s for s in document["studies"] + [document["trained"]["study"]]}
    assert set(studies) == {"short", "long", "trained"}
    for name in ("short", "long"):
        study = studies[name]
        assert study["recommendation"]["candidate"]["attn"] in ("sdpa", "eager"), study
        assert study["regret"]["regret"] >= 0 and "agreement" in study["regret"]
        assert study["measured_after"] is None  # refused here, so nothing to measure after
        assert any(r["reason"].endswith("not on the CPU") for r in study["rejected"])
        assert 1 <= study["loader_run"]["new_tokens"] <= study["new_tokens"]  # the loader stops at an end-of-text token
    trained = studies["trained"]
    assert trained["floor"] is None and trained["exhaustive"] and trained["recommendation"]
    assert all(t["metrics"]["quality_token_agreement"] for t in trained["trials"] if t["status"] == "ok")
    table = (out / "flash_attention_tiny.md").read_text()
    assert "## 1,024 prompt + 1 new token, batch 1" in table and "| sdpa | dynamic |" in table
    assert "## Quality on the same weights" in table and "## Study `trained`" in table and "regret" in table


def _quality_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_gpu", REPO / "benchmarks" / "quality_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_on_the_cpu(tmp_path: Path, smollm2_packages: Path) -> None:
    """benchmarks/quality_gpu.py on the CPU with trained SmolLM2: the reference, bf16 and nf4 measured,
    the memory study recommends the smallest load that keeps the floor, and the study under a tight
    limit offers nothing below the floor."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(smollm2_packages)]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "benchmarks" / "quality_gpu.py"), "--out", str(out), "--cpu", "--packages", str(smollm2_packages)]
    proc = subprocess.run([*command, "--only", "bf16,nf4", "--skip-gguf"], capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads((out / "quality_cpu.json").read_text())
    assert [r["name"] for r in rows] == ["fp32 (reference)", "bf16", "nf4"]
    for row in rows:
        assert row["gpu"] == "CPU only" and row["status"] == "ok", row
        assert row["agreement_low"] <= row["token_agreement"] <= row["agreement_high"]
        assert row["peak_bytes"] > 0 and row["tokens_per_s"] > 0 and row["kl"] >= 0
    by = {r["name"]: r for r in rows}
    assert by["fp32 (reference)"]["token_agreement"] == 1.0 and by["fp32 (reference)"]["feasible"]
    assert by["bf16"]["feasible"] and by["bf16"]["token_agreement"] > 0.95
    assert not by["nf4"]["feasible"] and by["nf4"]["token_agreement"] < 0.9  # trained weights: 4-bit loses

    document = json.loads((out / "quality_cpu_study.json").read_text())
    study = document["study"]
    assert study["winner_is_smallest_feasible"], study
    # on the CPU the peaks are peak RSS, within a few percent of each other for fp32 and bf16 and noisy:
    # which of them is smaller varies from run to run, but the recommendation is always the smaller one
    assert study["recommendation"] == study["smallest_feasible_measured"] in {by["bf16"]["candidate"], by["fp32 (reference)"]["candidate"]}
    tight = document["tight"]
    assert tight["max_memory_bytes"] > 0 and tight["offered_below_floor"] == []
    assert tight["recommendation"] is None or tight["fits"], tight
    assert "ok: the memory study recommends" in proc.stdout
    [nf4_line] = [line for line in (out / "quality_cpu.md").read_text().splitlines() if line.startswith("| nf4 |")]
    assert nf4_line.endswith("| no |")

    bad = subprocess.run([*command, "--only", "int4"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "--only int4: not a configuration; choose from fp32 (reference), bf16, fp16, int8, nf4, nf4 + double quant, fp4, fp4 + double quant"
    )


def test_the_quality_benchmarks_verdicts_fail_when_a_study_offers_below_the_floor() -> None:
    """What the script checks can fail: a memory study that passes over the smallest feasible load,
    a smaller load refused without a reason, a tight limit's offer below the floor, and a GPU verdict
    that differs from the CPU's are each reported."""
    script = _quality_script()
    document = {
        "study": {
            "recommendation": "bf16 sdpa cuda",
            "smallest_feasible_measured": "fp16 sdpa int8 cuda",
            "winner_is_smallest_feasible": False,
            "smaller_refused": [{"label": "bf16 sdpa nf4 cuda", "peak_memory_bytes": 1, "why_not": []}],
        },
        "tight": {
            "max_memory": "700MiB",
            "recommendation": "bf16 sdpa nf4 cuda",
            "peak_memory_bytes": 2**29,
            "fits": True,
            "offered_below_floor": ["bf16 sdpa nf4 cuda"],
            "smaller_limit": "600MiB",
            "smaller_limit_exit": 0,
            "smaller_limit_recommendation": "bf16 sdpa fp4 cuda",
        },
    }
    lines = script.verdicts(document)
    assert [line.split(":", 1)[0] for line in lines] == ["FAILED"] * 4
    assert lines[1] == "FAILED: smaller bf16 sdpa nf4 cuda refused: no reason given"

    gpu = {"name": "nf4", "label": "bf16 sdpa nf4 cuda", "status": "ok", "feasible": True}
    gpu.update(quality_token_agreement=0.91, quality_agreement_low=0.89, quality_agreement_high=0.93)
    cpu = {
        "nf4": {"name": "nf4", "status": "ok", "feasible": False, "token_agreement": 0.76, "agreement_low": 0.73, "agreement_high": 0.79}
    }
    flat = script._flat(gpu, "NVIDIA H100 80GB HBM3", cpu)
    assert flat["verdict_differs_from_cpu"] is True and flat["agreement_intervals_overlap_cpu"] is False
    assert flat["cpu"]["token_agreement"] == 0.76 and flat["gpu"] == "NVIDIA H100 80GB HBM3"


ORT_PYTHON = os.environ.get("AUTOTUNE_TEST_ONNX_PYTHON")


@pytest.mark.skipif(not ORT_PYTHON, reason="set AUTOTUNE_TEST_ONNX_PYTHON to an interpreter with optimum-onnx (./dev test does)")
def test_onnxruntime_gpu_on_the_cpu_provider(tmp_path: Path) -> None:
    """benchmarks/onnxruntime_gpu.py with tiny models on ONNX Runtime's CPU provider: both studies,
    every row a trial of the store, the export reused, the recommendations' loaders run."""
    import sqlite3

    script = str(REPO / "benchmarks" / "onnxruntime_gpu.py")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("AUTOTUNE_ORT_PYTHON", None)
    refused = subprocess.run([sys.executable, script, "--out", str(tmp_path / "x"), "--cpu"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and refused.stderr.startswith("--ort-python (not given):")

    out = tmp_path / "out"
    args = ["--out", str(out), "--cpu", "--ort-python", str(ORT_PYTHON), "--max-repeats", "2", "--deadline", "600"]
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "onnxruntime_cpu.json").read_text())
    with sqlite3.connect(out / "work" / "autotune.db") as conn:
        stored = {r[0]: r[1:] for r in conn.execute("SELECT id, status, batch_size FROM autotune_trials")}
    assert {r["trial"]: (r["status"], r["batch_size"]) for r in rows} == stored  # every row is a trial, every trial a row
    keys = {"gpu", "model", "task", "runtime", "provider", "io_binding", "batch_size", "latency_p50_ms", "peak_bytes", "export_seconds"}
    for name, task, rate in (("llama-tiny", "text-generation", "tokens_per_s"), ("bert-tiny", "feature-extraction", "sequences_per_s")):
        mine = [r for r in rows if r["model"] == name]
        assert {r["task"] for r in mine} == {task} and all(keys | {rate, "status", "reason"} <= set(r) for r in mine)
        assert all(r["status"] == "ok" and r[rate] > 0 and r["latency_p50_ms"] > 0 and r["gpu"] == "CPU" for r in mine), mine
        ort = [r for r in mine if r["runtime"] == "onnxruntime"]
        assert {r["io_binding"] for r in ort} == {False, True} and {r["batch_size"] for r in ort} == {1, 2}
        assert {r["provider"] for r in ort} == {"CPUExecutionProvider"} and all(r["export_seconds"] > 0 for r in ort)
        assert any(r["export_cached"] for r in ort) and not all(r["export_cached"] for r in ort)  # exported once, then reused
        assert {r["runtime"] for r in mine} == {"pytorch", "onnxruntime"}

    document = json.loads((out / "onnxruntime_cpu_study.json").read_text())
    assert document["worker_env"]["runtimes"]["onnxruntime"] == ["CPUExecutionProvider"]
    for study in document["studies"]:
        best = study["recommendation"]
        won = best["candidate"]["runtime"] == "onnxruntime"
        assert study["verdict"].startswith(f"ONNX Runtime {'won' if won else 'lost'} ({best['label']}): ")
        assert ("PyTorch: slower" if won else "ONNX Runtime (CPUExecutionProvider): slower") in study["verdict"], study["verdict"]
        loader = study["loader"]
        assert loader["status"] == "ok", loader
        assert loader["python"] == (ORT_PYTHON if won else sys.executable)
        assert loader["class"].startswith("ORTModel") == won and loader["output_shape"][0] == best["batch_size"]
        if won:
            assert loader["providers"] == ["CPUExecutionProvider"]
    table = (out / "onnxruntime_cpu.md").read_text()
    assert f"Worker environment ort ({ORT_PYTHON}): pytorch [cpu]; onnxruntime [CPUExecutionProvider]\n" in table
    assert "| llama-tiny |" in table and "| bert-tiny |" in table and table.count("CPUExecutionProvider |") >= 8


def _script(name: str):  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_timing_agreement_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/timing_agreement.py end to end with a tiny Llama on the CPU: autotune's worker and
    the plain timing interleaved (A B, then B A), an ablation, and the table. Its verdict is not
    asserted: CPU timings of a tiny model under other load spread too widely to agree within 5%."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "timing_agreement.py"),
            "--cpu",
            "--tiny",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--candidates",
            "fp32:sdpa",
            "--rounds",
            "2",
            "--ablations",
            "ttft_first,same_process",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    document = json.loads((out / "agreement.json").read_text())
    sides = [(r["side"], sorted(int(b) for b in r["sizes"])) for r in document["runs"]]
    assert sides[:6] == [
        ("autotune", [1, 4]),
        ("plain", [1]),
        ("plain", [4]),
        ("plain", [1]),
        ("plain", [4]),
        ("autotune", [1, 4]),
    ]  # the second round in the other order
    assert ("ttft_first", [1]) in sides and ("same_process", [1, 4]) in sides
    rows = document["rows"]
    assert [(r["candidate"], r["batch"], r["status"]) for r in rows] == [("fp32 sdpa", 1, "ok"), ("fp32 sdpa", 4, "ok")]
    for row in rows:
        assert len(row["autotune_rounds"]) == 2 and len(row["independent_rounds"]) == 2
        assert row["difference"] == pytest.approx(row["autotune"] / row["independent"] - 1)
        assert min(row["independent_repeats"]) >= 5
    plain = [r for r in document["runs"] if r["side"] == "plain"]
    assert all(len(m["warmup_seconds"]) >= 2 for r in plain for m in r["sizes"].values())
    assert document["all_agree"] is (proc.returncode == 0)
    table = (out / "agreement.md").read_text()
    assert "| fp32 sdpa | 4 |" in table and "Verdicts (target: within 5%)" in table and "ttft_first" in table


def test_timing_agreement_verdicts_fail_beyond_the_target() -> None:
    """The check can fail: a candidate 10% off at one batch size fails although the other agrees;
    one that only one side measured fails; one within 5% passes."""
    script = _script("timing_agreement")

    def run(side: str, spec: str, batch: int, throughput: float) -> dict[str, object]:
        size = {"status": "ok", "throughput": throughput, "spread": 0.01, "seconds": [1.0, 1.0, 1.0]}
        return {"side": side, "spec": spec, "sizes": {str(batch): size}}

    runs = [
        run("autotune", "a", 1, 102.0),
        run("plain", "a", 1, 100.0),
        run("autotune", "b", 1, 101.0),
        run("plain", "b", 1, 100.0),
        run("autotune", "b", 16, 1100.0),
        run("plain", "b", 16, 1000.0),
        run("autotune", "c", 1, 100.0),
    ]
    rows = script.compare(runs, ["a", "b", "c"], [1, 16], 0.05)
    lines, ok = script.verdicts(rows, 0.05)
    assert not ok
    assert lines[0].startswith("a: agrees - largest difference +2.0% at batch 1")
    assert lines[1].startswith("b: FAIL - largest difference +10.0% at batch 16")
    assert lines[2].startswith("c: FAIL - no batch size was measured by both sides")
    assert script.verdicts(script.compare(runs[:2], ["a"], [1], 0.05), 0.05)[1] is True


def test_timing_agreement_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    for bad in (["--candidates", "bf16:flash"], ["--batches", "0"], ["--ablations", "warp"]):
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "benchmarks" / "timing_agreement.py"),
                "--cpu",
                "--tiny",
                "--work",
                str(tmp_path),
                "--out",
                str(tmp_path),
                *bad,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("timing_agreement: ")


def test_regret_results_keep_the_two_h200_row_and_merge_one_gpu_rows() -> None:
    """The results file: the H200 row marked as from two GPUs at once; a one-GPU row of the same pair
    is added beside it, a rerun replaces its own row only, and a row without a GPU is refused."""
    script = _script("regret_gpu")
    h200 = json.loads((REPO / "benchmarks" / "results" / "regret_h200.json").read_text())
    seeded = script.mark_two_h200(h200)
    assert seeded[0]["gpu"] == "NVIDIA H200" and seeded[0]["concurrent"] is True and seeded[0]["gpus"] == 2
    assert seeded[0]["regret"] == h200[0]["regret"]
    committed = json.loads((REPO / "benchmarks" / "results" / "regret_gpu.json").read_text())
    assert committed[: len(seeded)] == seeded  # the committed file starts from that row, unchanged

    one = {"model": "falcon-7b", "workload": "latency", "gpu": "NVIDIA H100 80GB HBM3", "concurrent": False, "regret": 0.01}
    other = {"model": "llama-8b", "workload": "throughput", "gpu": "NVIDIA H100 80GB HBM3", "concurrent": False, "regret": 0.02}
    merged = script.merge_rows(seeded, [one, other])
    assert [r["gpu"] for r in merged] == ["NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]
    again = script.merge_rows(merged, [{**one, "regret": 0.0}])
    assert len(again) == 3 and again[1]["regret"] == 0.0 and again[0] == seeded[0] and again[2] == other
    with pytest.raises(ValueError, match="without a gpu key"):
        script.merge_rows(seeded, [{"model": "llama-8b", "workload": "latency"}])


def test_regret_compile_savings_pair_the_two_studies() -> None:
    """Compile seconds of the same candidate and batch size: the first study's against the second's."""
    script = _script("regret_gpu")

    def trial(label: str, batch: int, seconds: float | None, warm: bool) -> dict[str, object]:
        return {
            "label": label,
            "batch_size": batch,
            "status": "ok",
            "metrics": {"compile_seconds": seconds},
            "details": {"compile_cache": {"warm": warm, "added": 0 if warm else 40}},
        }

    runs = [
        {
            "model": "m",
            "workload": "throughput",
            "run": "first",
            "trials": [trial("s", 16, 60.0, False), trial("s", 1, 40.0, False), trial("d", 16, None, False)],
        },
        {"model": "m", "workload": "throughput", "run": "second", "trials": [trial("s", 16, 15.0, True)]},
    ]
    rows = script.compile_savings(runs)
    assert [(r["label"], r["batch_size"]) for r in rows] == [("s", 1), ("s", 16)]
    assert "saved" not in rows[0] and rows[1]["saved"] == pytest.approx(0.75)
    assert rows[1]["first_cache_warm"] is False and rows[1]["second_cache_warm"] is True
    assert "| m | throughput | s | 16 | 60.0 (cold, +40 files) | 15.0 (warm) | 75% |" in script.savings_table(rows)


def test_regret_grid_screens_never_count_as_its_best() -> None:
    """A screened grid point (one warm call far behind) is never the grid's best nor compared with
    autotune's figure, but a recommendation the grid screened still gets its regret from that call."""
    script = _script("regret_gpu")

    def point(key: str, label: str, throughput: float, status: str = "ok") -> dict[str, object]:
        size = {"status": status, "throughput": throughput, "warmup_seconds": [9.0, 1.0]}
        return {"spec": {"key": key, "label": label}, "sizes": {"16": size}}

    from autotune.candidate import Candidate

    fast, slow = Candidate(static_cache=True), Candidate(quant="bnb-4bit-nf4")
    grid = [point(fast.key(), "bf16 sdpa static", 1000.0), point(slow.key(), "bf16 nf4", 400.0, "screened")]
    rec = {"candidate": slow.to_dict(), "batch_size": 16, "label": "bf16 nf4"}
    runs = [{"run": "first", "recommendation": rec, "trials": [], "measuring_seconds": 60}]
    entry = script.summarise("m", "throughput", grid, runs, 120.0, False)
    assert entry["grid_best"]["label"] == "bf16 sdpa static" and entry["grid_points"] == 1 and entry["grid_screened"] == 1
    assert entry["regret"] == pytest.approx(0.6) and entry["recommended"]["grid_value_screened"]  # 1 - 400 / 1000, one call
    assert script.grid_figures(grid, "throughput", (16,), "screened") == {(slow.key(), 16): 400.0}


def test_regret_resume_keeps_what_finished(tmp_path: Path) -> None:
    """--resume keeps the grid points and studies raw.json holds, but not a crashed grid point or a
    study that failed: those run again."""
    script = _script("regret_gpu")
    raw = {
        "grid": {
            "llama-8b": [
                {"status": "ok", "spec": {"label": "bf16 sdpa cuda"}, "sizes": {}},
                {"status": "crash", "spec": {"label": "bf16 eager cuda"}},
            ]
        },
        "tune": [
            {"model": "llama-8b", "workload": "latency", "run": "first", "seed": 1, "exit": 0},
            {"model": "llama-8b", "workload": "throughput", "run": "first", "seed": 1, "exit": 0, "error": "add failed"},
        ],
    }
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    assert sorted(script.done_before(tmp_path)) == ["grid llama-8b bf16 sdpa cuda", "tune llama-8b latency (first run, seed 1)"]
    assert script.done_before(tmp_path / "nothing") == {}


def test_regret_runs_one_task_at_a_time_on_one_visible_gpu() -> None:
    """One visible GPU gives one queue worker (every task alone); several give one each."""
    script = _script("regret_gpu")
    assert script.visible_gpus(None, {"CUDA_VISIBLE_DEVICES": "0"}, False) == ["0"]
    assert script.visible_gpus(None, {"CUDA_VISIBLE_DEVICES": "GPU-abc,GPU-def"}, False) == ["GPU-abc", "GPU-def"]
    assert script.visible_gpus("1", {"CUDA_VISIBLE_DEVICES": "0,1"}, False) == ["1"]
    assert script.visible_gpus(None, {}, True) == ["cpu"]
    import threading
    import time

    done: list[tuple[str, float, float]] = []

    def run(gpu: str) -> None:
        started = time.monotonic()
        time.sleep(0.05)
        done.append((gpu, started, time.monotonic()))

    queue = script.Queue([script.Task(f"t{i}", "grid", run, 1.0) for i in range(3)], time.monotonic() + 60)
    gpus = script.visible_gpus(None, {"CUDA_VISIBLE_DEVICES": "0"}, False)
    threads = [threading.Thread(target=script.worker, args=(queue, g, lambda: None)) for g in gpus]  # as main() starts them
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted((a, b) for _, a, b in done)
    assert len(spans) == 3 and all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))  # never overlapping


def test_compile_shapes_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    for bad in (["--tiny", "--sizes", "1,x"], ["--tiny", "--sizes", "0"], ["--sizes", "1,4"]):
        proc = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "compile_shapes.py"), "--out", str(tmp_path), *bad],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("compile_shapes: ")
