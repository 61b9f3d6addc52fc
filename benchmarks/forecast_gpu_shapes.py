"""The memory forecast on model shapes no store was fitted on, measured on a GPU.

Builds random-weight models of shapes that are not in any store under ``benchmarks/results``
(a Llama-3.2-1B shape and a Qwen2-1.5B shape by default; ``--shapes`` adds a Qwen2.5-0.5B shape),
registers each in a SQLite store under ``--out``, and measures through autotune's own trial
worker, as ``autotune measure`` does (a quality reference first, one worker per candidate, its
batch sizes in rising order): bf16 SDPA and bf16 eager, each with and without a compiled static
cache, bf16 nf4 and fp16 LLM.int8, at batch 1, 8 and 32 with 512 prompt + 128 new tokens. Every
trial is stored with the forecast beside its peak. The forecast is calibrated, and its safety
margins learned, on the stores in ``benchmarks/results`` only (other shapes), so every row is held
out (``fitted_on_shape`` false). Writes:

- ``OUT/forecast_gpu_shapes.db``: the store (environment, models, studies, trials, forecasts);
- ``OUT/forecast_holdout_gpu.json``: rows as ``forecast_holdout.py`` writes them;
- ``OUT/forecast_shapes_gpu.json``: the runs, configs and environment, in the format
  ``forecast_holdout.py`` reads from ``benchmarks/results/forecast_shapes_*.json``;
- ``OUT/forecast_holdout_gpu.md``: the table.

Timing precision does not matter here, memory does: one warm-up call (the memory pass) and one
timed repeat per batch size, several workers at once (``--jobs``; NVML reads each process's own
memory). About 3-4 minutes on one H200. ``--deadline S`` starts no candidate after S seconds and
gives the running ones what is left.

    python benchmarks/forecast_gpu_shapes.py --out /tmp/shapes --deadline 230
    python benchmarks/forecast_gpu_shapes.py --out /tmp/shapes-tiny --tiny      # CPU, tiny shapes, a few minutes
    python benchmarks/forecast_gpu_shapes.py --out /tmp/s --tiny --shapes llama-tiny --only "bf16 sdpa$"   # one of them

The GPU machine needs what autotune's store and the quantized candidates need besides torch and
Transformers: sqlalchemy, alembic, bitsandbytes (``../shared/gpu/wheels.sh`` fetches them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from autotune.candidate import Candidate  # noqa: E402

#: Shapes no store in benchmarks/results holds. Llama-3.2-1B and Qwen2-1.5B as published (random weights).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        dtype="bfloat16",
    ),
    "qwen2-1.5b": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        dtype="bfloat16",
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        dtype="bfloat16",
    ),
}
DEFAULT_SHAPES = ("llama-3.2-1b", "qwen2-1.5b")
#: --tiny: the same architectures, small enough for a CPU.
TINY = {
    "llama-tiny": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=4096,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        dtype="float32",
    ),
    "qwen2-tiny": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_size=192,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=4096,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        dtype="float32",
    ),
}
#: (label, candidate fields): what is measured on each shape.
CANDIDATES = (
    ("bf16 sdpa", dict(dtype="bfloat16", attn="sdpa")),
    ("bf16 sdpa static", dict(dtype="bfloat16", attn="sdpa", static_cache=True)),
    ("bf16 eager", dict(dtype="bfloat16", attn="eager")),
    ("bf16 eager static", dict(dtype="bfloat16", attn="eager", static_cache=True)),
    ("bf16 nf4", dict(dtype="bfloat16", attn="sdpa", quant="bnb-4bit-nf4")),
    ("fp16 int8", dict(dtype="float16", attn="sdpa", quant="bnb-8bit")),
)
#: One warm-up call (the memory pass) and one timed repeat: memory is what this measures.
WORKER_OPTIONS = {"warmup": 1, "min_repeats": 1, "max_repeats": 1, "target_spread": 1.0, "time_cap_s": 5.0}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(name: str, config: dict[str, Any], root: Path, on_gpu: bool) -> Path:
    """A random-weight model of ``config`` saved under ``root/name`` (built on the GPU when there is one)."""
    import torch
    import transformers

    path = root / name
    if (path / "config.json").exists():
        return path
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "dtype")}
    cfg = transformers.CONFIG_MAPPING[config["model_type"]](**fields)
    cfg.architectures = list(config["architectures"])
    dtype = getattr(torch, config.get("dtype") or "float32")
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(path)
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return path


def fitted_on_stores(results: Path) -> Any:
    """The calibration and margins (a :class:`autotune.memory.Correction`) fitted on every store under ``results``."""
    from autotune.memory import correction
    from autotune.memory.measured import measured_points
    from autotune.store import Store

    points = []
    for path in sorted(results.glob("*.db")):
        with tempfile.TemporaryDirectory() as work:  # a copy: opening a store upgrades its schema
            with Store.open(str(shutil.copy(path, Path(work) / path.name))) as other:
                points += [p.point for p in measured_points(other)]
    return correction(points)


def make_references(db: Path, names: list[str], models: dict[str, Any], environment: Any, placement: str) -> None:
    """The quality references first, one per model, so that workers running at once do not each make it."""
    from autotune.store import Store
    from autotune.trials import ensure_reference

    with Store.open(str(db)) as store:
        for name in names:
            model = store.get_model(models[name].name)
            reference = ensure_reference(model, model.workload, environment, placement=placement)
            log(f"{name}: quality reference {reference.status}" + (f" ({reference.reason})" if reference.reason else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the store, the JSON and the table go")
    parser.add_argument("--deadline", type=float, metavar="S", help="start no candidate after S seconds; running ones get what is left")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU, 16 + 8 tokens, batch 1, 2, 4 (checks the script)")
    parser.add_argument(
        "--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma-separated, of {', '.join(SHAPES)} (default {','.join(DEFAULT_SHAPES)})"
    )
    parser.add_argument("--jobs", type=int, default=4, help="workers at once (default 4; memory is per process)")
    parser.add_argument("--only", metavar="REGEX", help="only the candidates whose label (e.g. 'bf16 sdpa static') matches")
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="the stores the calibration and margins are fitted on (default benchmarks/results)",
    )
    args = parser.parse_args(argv)
    began = time.monotonic()

    def left() -> float:
        return float("inf") if args.deadline is None else args.deadline - (time.monotonic() - began)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTOTUNE_CACHE", str(out / "cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from autotune.api import add_model
    from autotune.environment import probe
    from autotune.memory import DeviceLimits, device_kind, forecast_on
    from autotune.store import Store
    from autotune.trials import measure_candidate

    environment = probe()
    on_gpu = bool(environment.gpus) and not args.tiny
    if not on_gpu and not args.tiny:
        print(f"no GPU here ({environment.nvml_error}); run with --tiny to check the script on the CPU")
        return 2
    chosen = [s.strip() for s in args.shapes.split(",") if s.strip()]
    names = (chosen if all(n in TINY for n in chosen) else list(TINY)) if args.tiny else chosen
    known = TINY if args.tiny else SHAPES
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown shape {unknown[0]!r}: choose among {', '.join(known)}")
        return 2
    configs = {n: (TINY if args.tiny else SHAPES)[n] for n in names}
    placement = "cuda" if on_gpu else "cpu"
    prompt, new, ladder = (16, 8, (1, 2, 4)) if args.tiny else (512, 128, (1, 8, 32))
    workload = {"prompt_tokens": prompt, "new_tokens": new, "max_batch": max(ladder), "device": "cuda" if on_gpu else "cpu"}

    # the calibration and margins come from the other shapes: the stores of the repository
    fitted = fitted_on_stores(args.results)

    db = out / "forecast_gpu_shapes.db"
    log(f"{len(names)} shapes x {len(CANDIDATES)} candidates at batch {','.join(map(str, ladder))} on {placement}; store {db}")
    models = {}
    with Store.open(str(db)) as store:
        env_id = store.record_environment(environment)
        for name in names:
            path = build(name, configs[name], out / "models", on_gpu)
            models[name] = add_model(store, str(path), workload).model
            log(f"{name}: built and registered ({path})")

    make_references(db, names, models, environment, placement)

    lock = threading.Lock()
    runs: list[dict[str, Any]] = []
    not_run: list[str] = []

    def measure(name: str, label: str, fields: dict[str, Any]) -> None:
        candidate = Candidate(placement=placement, **fields)
        if left() < 20:
            with lock:
                not_run.append(f"{name} {label}: deadline")
            return
        with Store.open(str(db)) as store:
            model = store.get_model(models[name].name)
            study = store.study_for(model, env_id)
            timeout = None if left() == float("inf") else max(20.0, left())
            trials = measure_candidate(
                store,
                model,
                candidate,
                ladder,
                environment=environment,
                environment_id=env_id,
                study=study,
                origin="measure",
                timeout_s=timeout,
                worker_options=dict(WORKER_OPTIONS),
            )
            limits = DeviceLimits.resolve(study.workload.max_memory, environment, placement)
            forecasts = {}
            for trial in trials:
                before = tuple(b for b in ladder if b < trial.batch_size)
                forecasts[trial.id] = forecast_on(
                    model.config,
                    candidate,
                    study.workload,
                    trial.batch_size,
                    limits,
                    transformers_version=environment.versions.get("transformers"),
                    before=before,
                ).peak_bytes
            store.set_forecasts(forecasts)
        with lock:
            for trial in trials:
                runs.append(
                    {
                        "shape": name,
                        "candidate": candidate.to_dict(),
                        "label": candidate.label(),
                        "prompt_tokens": prompt,
                        "new_tokens": new,
                        "batch_size": trial.batch_size,
                        "ladder": list(ladder),
                        "status": trial.status,
                        "reason": trial.reason,
                        "peak_memory_bytes": trial.metrics.get("peak_memory_bytes"),
                        "torch_reserved_bytes": trial.metrics.get("torch_reserved_bytes"),
                        "torch_allocated_bytes": trial.metrics.get("torch_allocated_bytes"),
                        "forecast_bytes": forecasts.get(trial.id),
                    }
                )
            log(f"{name} {label}: " + ", ".join(f"b{t.batch_size} {t.status}" for t in trials))

    jobs = [(name, label, fields) for label, fields in CANDIDATES for name in names if not args.only or re.search(args.only, label)]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(measure, *job) for job in jobs]:
            future.result()

    kind_names = [g.name for g in environment.gpus] if on_gpu else []
    rows = []
    for run in sorted(runs, key=lambda r: (r["shape"], r["label"], r["batch_size"])):
        if run["status"] != "ok" or not run["peak_memory_bytes"] or not run["forecast_bytes"]:
            continue
        candidate = Candidate.from_dict(run["candidate"])
        kind = device_kind(candidate, kind_names)
        peak, raw = int(run["peak_memory_bytes"]), int(run["forecast_bytes"])
        figure = fitted.figure(raw, kind)
        margin = fitted.margin(candidate, kind)
        admitted = fitted.admitted(raw, candidate, kind)
        rows.append(
            {
                "shape": run["shape"],
                "candidate": run["label"],
                "batch_size": run["batch_size"],
                "prompt_tokens": prompt,
                "peak_bytes": peak,
                "forecast_bytes": figure,
                "error": round((figure - peak) / peak, 5),
                "fitted_on_shape": False,
                "raw_forecast_bytes": raw,
                "margin": margin.value,
                "margin_group": list(margin.group),
                "admitted_bytes": admitted,
                "covered": admitted >= peak,
                "device": kind,
                "source": db.name,
            }
        )
    (out / "forecast_holdout_gpu.json").write_text(json.dumps(rows, indent=1) + "\n")
    shapes_doc = {
        "about": f"Runs of benchmarks/forecast_gpu_shapes.py on {environment.summary()}.",
        "environment": {
            "gpu": environment.gpus[0].name if on_gpu else "cpu",
            "gpu_memory_bytes": environment.gpus[0].total_memory if on_gpu else None,
            "driver": environment.driver_version,
            **{k: environment.versions.get(k) for k in ("torch", "transformers", "accelerate", "bitsandbytes")},
        },
        "shapes": configs,
        "runs": runs,
    }
    (out / "forecast_shapes_gpu.json").write_text(json.dumps(shapes_doc, indent=1) + "\n")
    table = report(rows, runs, not_run, environment.summary(), time.monotonic() - began)
    (out / "forecast_holdout_gpu.md").write_text(table)
    print(table)
    return 0


def report(rows: list[dict[str, Any]], runs: list[dict[str, Any]], not_run: list[str], where: str, seconds: float) -> str:
    gib = 2**30
    lines = [
        f"Measured on {where} in {seconds:.0f} s; forecast calibrated, and margins learned, on the stores of other shapes.",
        "",
        "| shape | candidate | batch | peak GiB | forecast GiB | error | margin | admitted GiB | covered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['candidate']} | {r['batch_size']} | {r['peak_bytes'] / gib:.2f} | "
            f"{r['forecast_bytes'] / gib:.2f} | {r['error']:+.1%} | {r['margin']:+.0%} | {r['admitted_bytes'] / gib:.2f} | "
            f"{'yes' if r['covered'] else 'NO'} |"
        )
    failed = [r for r in runs if r["status"] != "ok"]
    lines.append("")
    if rows:
        errors = [r["error"] for r in rows]
        median, worst, under = statistics.median(abs(e) for e in errors), max(abs(e) for e in errors), min(min(errors), 0.0)
        met = median <= 0.05 and worst <= 0.10 and under >= -0.05
        lines.append(
            f"{len(rows)} held-out points: median |error| {median:.1%}, worst {worst:.1%}, worst under-forecast {under:+.1%}, "
            f"{sum(r['covered'] for r in rows)} of {len(rows)} covered by forecast x (1 + margin); targets (median <= 5%, "
            f"worst <= 10%, no under-forecast beyond 5%): {'met' if met else 'NOT met'}"
        )
    for r in failed:
        lines.append(f"- {r['shape']} {r['label']} batch {r['batch_size']}: {r['status']} ({r['reason']})")
    for item in not_run:
        lines.append(f"- not run: {item}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
