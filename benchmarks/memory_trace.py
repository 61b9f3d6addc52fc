"""The dynamic cache's memory on a GPU, traced: what the caching allocator keeps, and fresh shapes.

One command does the GPU part of settling the dynamic cache's allocator share (BENCHMARKS.md §7):
it builds random-weight models of four shapes locally (configs + ``save_pretrained``; nothing is
downloaded), registers each in a SQLite store under ``--out``, and measures them through
autotune's own trial worker as a study does (a quality reference first, one worker per candidate,
batch sizes in rising order in that worker, the worker emptying the cache between sizes), with
the worker's memory trace on (``AUTOTUNE_MEMORY_TRACE``, :mod:`autotune.worker.trace`): the
allocator's history and a snapshot at the end of each batch size's memory pass.

Shapes (bf16, SDPA, dynamic cache; batch 1, 8, 32):

- ``smollm2-1.7b-like``: the forecast's worst miss in the stores (24 layers, 32 K/V heads,
  512 + 128 tokens: −12% at batch 32);
- ``phi3-mini-like``: the over-forecast a new user met (+32% at batch 32, 512 + 64 tokens). That
  shape is known only as "32 K/V heads, about 3.8B parameters"; this script *assumes* Phi-3-mini's
  dimensions (hidden 3072, 32 layers, MLP 8192, vocabulary 32064, untied), built as a Llama,
  whose forecast before this script (22.78 GiB at batch 32 after 1 and 8) is the issue's figure;
- ``pythia-1.4b-like``: multi-head attention without grouped K/V (GPT-NeoX, 16 heads), also eager;
- ``gemma-2b-like``: a 256k vocabulary and one K/V head (Gemma), also eager.

Writes under ``--out``:

- ``trace/*.pickle`` and ``trace/*.json``: the worker's snapshots (open them in
  https://pytorch.org/memory_viz) and per-pass summaries (peaks, segments by size, split free
  bytes, the large pool's events in order); the summaries and the largest batch's snapshots are
  packed in ``memory_trace_snapshots.tar.gz``;
- ``memory_trace.json``: one entry per point: the worker's peaks (NVML, torch reserved and
  allocated), its trace summary, what the allocator replay (:mod:`autotune.memory.replay`)
  predicts for the same sequence, and the raw forecast under either cache model;
- ``forecast_shapes_trace.json``: the runs in the format ``forecast_holdout.py`` reads
  (``benchmarks/results/forecast_shapes_*.json``, or ``--runs FILE``), with the GPU named;
- ``forecast_holdout_trace.json``: the points as held-out rows (``shape``, ``candidate``,
  ``batch_size``, ``peak_bytes``, ``forecast_bytes``, ``error``, ``fitted_on_shape``, ``gpu``),
  the forecast calibrated and its margins learned on the stores in ``benchmarks/results`` only;
- ``memory_trace.md``: the table.

About 6-8 minutes on one H100 or H200 (not yet measured there); ``--deadline S`` starts no
candidate after S seconds. Run it under ``benchmarks/background.sh`` (a call of the GPU machine
lasts at most 10 minutes; it brings back the files directly under the folder, so ``--out`` is that
folder; the models it builds stay in ``OUT/models``)::

    benchmarks/background.sh start /tmp/trace 570 -- python3 benchmarks/memory_trace.py --out /tmp/trace --deadline 420
    python benchmarks/memory_trace.py --out /tmp/t --cpu --tiny      # the same code path on the CPU, tiny shapes, no trace

The GPU machine needs autotune's store and probe dependencies besides torch and Transformers
(sqlalchemy, alembic, optuna, platformdirs, nvidia-ml-py: ``../shared/gpu/wheels.sh``); no bitsandbytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from forecast_gpu_shapes import WORKER_OPTIONS, build, fitted_on_stores, log, make_references  # noqa: E402

from autotune.candidate import Candidate  # noqa: E402

#: name -> (config, prompt tokens, new tokens, candidate labels measured)
SHAPES: dict[str, tuple[dict[str, Any], int, int, tuple[str, ...]]] = {
    "smollm2-1.7b-like": (
        dict(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=49152,
            max_position_embeddings=8192,
            rope_theta=130000.0,
            tie_word_embeddings=True,
            dtype="bfloat16",
        ),
        512,
        128,
        ("bf16 sdpa",),
    ),
    "phi3-mini-like": (
        dict(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
            dtype="bfloat16",
        ),
        512,
        64,
        ("bf16 sdpa",),
    ),
    "pythia-1.4b-like": (
        dict(
            model_type="gpt_neox",
            architectures=["GPTNeoXForCausalLM"],
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=16,
            vocab_size=50304,
            max_position_embeddings=2048,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            dtype="bfloat16",
        ),
        512,
        128,
        ("bf16 sdpa", "bf16 eager"),
    ),
    "gemma-2b-like": (
        dict(
            model_type="gemma",
            architectures=["GemmaForCausalLM"],
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=256000,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            dtype="bfloat16",
        ),
        512,
        128,
        ("bf16 sdpa", "bf16 eager"),
    ),
}
#: --tiny: the same architectures, small enough for a CPU (16 + 8 tokens, batch 1, 2, 4).
TINY: dict[str, tuple[dict[str, Any], int, int, tuple[str, ...]]] = {
    "llama-tiny": (
        dict(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=2048,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            dtype="float32",
        ),
        16,
        8,
        ("fp32 sdpa",),
    ),
    "neox-tiny": (
        dict(
            model_type="gpt_neox",
            architectures=["GPTNeoXForCausalLM"],
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=2048,
            max_position_embeddings=256,
            rotary_pct=0.25,
            tie_word_embeddings=False,
            dtype="float32",
        ),
        16,
        8,
        ("fp32 eager",),
    ),
}
CANDIDATES: dict[str, dict[str, Any]] = {
    "bf16 sdpa": dict(dtype="bfloat16", attn="sdpa"),
    "bf16 eager": dict(dtype="bfloat16", attn="eager"),
    "fp32 sdpa": dict(dtype="float32", attn="sdpa"),
    "fp32 eager": dict(dtype="float32", attn="eager"),
}
#: Allocator events each batch size's history keeps (the latest; no tracebacks): a whole pass of
#: the largest shape at batch 32 (its prompt pass and 63 decode steps, about 2,100 events a step
#: with the small pool's), some 15 MB per snapshot.
TRACE_ENTRIES = 200_000


def replayed(config: dict[str, Any], candidate: Candidate, prompt: int, new: int, ladder: list[int]) -> list[dict[str, Any]]:
    """What the allocator replay predicts for the worker's ladder (the running part; no weights)."""
    from autotune.memory.replay import replay_ladder
    from autotune.memory.shape import DTYPE_BYTES, model_shape

    shape = model_shape(config, "text-generation")
    return [dict(r.to_dict(), kept=r.kept) for r in replay_ladder(shape, ladder, prompt, new, DTYPE_BYTES[candidate.dtype])]


#: The forecast's cache model is a module setting; the workers' threads report at once.
_SWITCH = threading.Lock()


def raw_forecasts(
    config: dict[str, Any], candidate: Candidate, prompt: int, new: int, batch: int, before: tuple[int, ...], version: str | None
) -> dict[str, int]:
    """The raw forecast (before calibration) under each model of the dynamic cache's allocator share."""
    from autotune.memory import forecast
    from autotune.workload import Workload

    workload = Workload(prompt_tokens=prompt, new_tokens=new)
    out = {}
    with _SWITCH:
        kept = forecast.CACHE_MODEL
        try:
            for model in ("classes", "replay"):
                forecast.CACHE_MODEL = model
                out[model] = forecast.forecast_parts(
                    config, candidate, workload, batch, transformers_version=version, before=before
                ).peak_bytes
        finally:
            forecast.CACHE_MODEL = kept
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the store, the traces, the JSON and the table go")
    parser.add_argument(
        "--deadline", type=float, metavar="S", help="start no candidate after S seconds; running ones get what is left and two minutes"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (no trace: the worker's switch is a no-op there)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, 16 + 8 tokens, batch 1, 2, 4 (checks the script)")
    parser.add_argument("--shapes", help=f"comma-separated, of {', '.join(SHAPES)} (or, with --tiny, {', '.join(TINY)}); default all")
    parser.add_argument("--jobs", type=int, default=2, help="workers at once (default 2; NVML reads each process's own memory)")
    parser.add_argument("--entries", type=int, default=TRACE_ENTRIES, help=f"allocator events each trace keeps (default {TRACE_ENTRIES})")
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
    trace_dir = out / "trace"
    os.environ.setdefault("AUTOTUNE_CACHE", str(out / "cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the worker children inherit this environment: every GPU worker traces its allocator
    os.environ["AUTOTUNE_MEMORY_TRACE"] = str(trace_dir)
    os.environ["AUTOTUNE_MEMORY_TRACE_ENTRIES"] = str(args.entries)

    from autotune.api import add_model
    from autotune.environment import probe
    from autotune.memory import device_kind
    from autotune.store import Store
    from autotune.trials import measure_candidate

    environment = probe()
    on_gpu = bool(environment.gpus) and not args.cpu
    if not on_gpu and not args.cpu:
        print(f"no GPU here ({environment.nvml_error}); run with --cpu --tiny to check the script on the CPU")
        return 2
    known = TINY if args.tiny else SHAPES
    names = [s.strip() for s in args.shapes.split(",") if s.strip()] if args.shapes else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown shape {unknown[0]!r}: choose among {', '.join(known)}")
        return 2
    placement = "cuda" if on_gpu else "cpu"
    ladder = [1, 2, 4] if args.tiny else [1, 8, 32]
    gpu = environment.gpus[0].name if on_gpu else "cpu"
    version = environment.versions.get("transformers")

    fitted = fitted_on_stores(args.results)

    db = out / "memory_trace.db"
    log(f"{len(names)} shapes at batch {','.join(map(str, ladder))} on {placement} ({gpu}); store {db}; traces in {trace_dir}")
    models = {}
    with Store.open(str(db)) as store:
        env_id = store.record_environment(environment)
        for name in names:
            config, prompt, new, _ = known[name]
            workload = {"prompt_tokens": prompt, "new_tokens": new, "max_batch": max(ladder), "device": placement}
            path = build(name, config, out / "models", on_gpu)
            models[name] = add_model(store, str(path), workload).model
            log(f"{name}: built and registered ({path})")
    make_references(db, names, models, environment, placement)

    lock = threading.Lock()
    runs: list[dict[str, Any]] = []
    not_run: list[str] = []

    def measure(name: str, label: str) -> None:
        config, prompt, new, _ = known[name]
        candidate = Candidate(placement=placement, **CANDIDATES[label])
        if left() < 20:
            with lock:
                not_run.append(f"{name} {label}: deadline")
            return
        with Store.open(str(db)) as store:
            model = store.get_model(models[name].name)
            study = store.study_for(model, env_id)
            trials = measure_candidate(
                store,
                model,
                candidate,
                ladder,
                environment=environment,
                environment_id=env_id,
                study=study,
                origin="measure",
                # a worker started just before the deadline still gets two minutes to finish its ladder
                timeout_s=None if left() == float("inf") else max(20.0, left()) + 120.0,
                worker_options=dict(WORKER_OPTIONS),
            )
        predicted = replayed(config, candidate, prompt, new, ladder)
        with lock:
            for trial in trials:
                before = tuple(b for b in ladder if b < trial.batch_size)
                runs.append(
                    {
                        "shape": name,
                        "candidate": candidate.to_dict(),
                        "label": candidate.label(),
                        "prompt_tokens": prompt,
                        "new_tokens": new,
                        "batch_size": trial.batch_size,
                        "ladder": list(ladder),
                        "quality_reference": True,
                        "status": trial.status,
                        "reason": trial.reason,
                        "peak_memory_bytes": trial.metrics.get("peak_memory_bytes"),
                        "torch_reserved_bytes": trial.metrics.get("torch_reserved_bytes"),
                        "torch_allocated_bytes": trial.metrics.get("torch_allocated_bytes"),
                        "replay": next((p for p in predicted if p["batch_size"] == trial.batch_size), None),
                        "raw_forecast_bytes": raw_forecasts(config, candidate, prompt, new, trial.batch_size, before, version),
                    }
                )
            log(f"{name} {label}: " + ", ".join(f"b{t.batch_size} {t.status}" for t in trials))

    # the two points first: they are what the trace is for
    jobs = [(name, label) for name in names for label in known[name][3]]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(measure, *job) for job in jobs]:
            future.result()

    summaries = _trace_summaries(trace_dir)
    for run in runs:
        stem = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{run['shape']}_{run['label']}_")
        found = [s for s in summaries if s["file"].startswith(stem) and s["batch_size"] == run["batch_size"]]
        run["trace"] = {k: v for k, v in found[-1].items() if k != "large_events"} if found else None

    runs.sort(key=lambda r: (r["shape"], r["label"], r["batch_size"]))
    configs = {name: known[name][0] for name in names}
    env_doc = {
        "gpu": gpu,
        "gpu_memory_bytes": environment.gpus[0].total_memory if on_gpu else None,
        "driver": environment.driver_version,
        **{k: environment.versions.get(k) for k in ("torch", "transformers", "accelerate")},
    }
    (out / "memory_trace.json").write_text(json.dumps({"environment": env_doc, "runs": runs}, indent=1) + "\n")
    shapes_doc = {
        "about": f"Runs of benchmarks/memory_trace.py on {environment.summary()}: peaks through autotune's trial worker, "
        "a quality reference first, batch sizes in rising order in one worker per candidate, the allocator traced.",
        "environment": env_doc,
        "shapes": configs,
        "runs": [{k: v for k, v in r.items() if k not in ("trace", "replay", "raw_forecast_bytes")} for r in runs],
    }
    (out / "forecast_shapes_trace.json").write_text(json.dumps(shapes_doc, indent=1) + "\n")

    kinds = [g.name for g in environment.gpus] if on_gpu else []
    rows = []
    for run in runs:
        if run["status"] != "ok" or not run["peak_memory_bytes"]:
            continue
        candidate = Candidate.from_dict(run["candidate"])
        kind = device_kind(candidate, kinds)
        peak, raw = int(run["peak_memory_bytes"]), int(run["raw_forecast_bytes"]["classes"])
        figure = fitted.figure(raw, kind)
        admitted = fitted.admitted(raw, candidate, kind)
        replay_figure = fitted.figure(int(run["raw_forecast_bytes"]["replay"]), kind)
        rows.append(
            {
                "shape": run["shape"],
                "candidate": run["label"],
                "batch_size": run["batch_size"],
                "prompt_tokens": run["prompt_tokens"],
                "peak_bytes": peak,
                "forecast_bytes": figure,
                "error": round((figure - peak) / peak, 5),
                "fitted_on_shape": False,
                "gpu": gpu,
                "raw_forecast_bytes": raw,
                "margin": fitted.margin(candidate, kind).value,
                "admitted_bytes": admitted,
                "covered": admitted >= peak,
                "replay_forecast_bytes": replay_figure,
                "replay_error": round((replay_figure - peak) / peak, 5),
                "device": kind,
                "source": db.name,
            }
        )
    (out / "forecast_holdout_trace.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = report(rows, runs, not_run, environment.summary(), time.monotonic() - began)
    (out / "memory_trace.md").write_text(table)
    if trace_dir.is_dir():
        # one file beside the others (background.sh brings back the files directly under a folder)
        import tarfile

        # every summary, and the snapshots of the largest batch (the points that miss): the others
        # stay in OUT/trace (about 15 MB each at the default history)
        with tarfile.open(out / "memory_trace_snapshots.tar.gz", "w:gz") as tar:
            for path in sorted(trace_dir.iterdir()):
                if path.suffix == ".json" or path.stem.endswith(f"_b{max(ladder)}"):
                    tar.add(path, arcname=f"trace/{path.name}")
    print(table)
    return 0


def _trace_summaries(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        summary = json.loads(path.read_text())
        summary["file"] = path.stem
        out.append(summary)
    return out


def report(rows: list[dict[str, Any]], runs: list[dict[str, Any]], not_run: list[str], where: str, seconds: float) -> str:
    gib = 2**30

    def g(value: Any) -> str:
        return "-" if value is None else f"{value / gib:.2f}"

    lines = [
        f"Measured on {where} in {seconds:.0f} s; forecast calibrated, and margins learned, on the stores of other shapes.",
        "",
        "| shape | candidate | batch | peak | torch reserved | torch allocated | kept (traced) | kept (replay) | "
        "forecast (classes) | error | forecast (replay) | error | covered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_point = {(r["shape"], r["candidate"], r["batch_size"]): r for r in rows}
    for run in runs:
        row = by_point.get((run["shape"], run["label"], run["batch_size"]))
        if row is None:
            continue
        reserved, allocated = run["torch_reserved_bytes"], run["torch_allocated_bytes"]
        kept = reserved - allocated if reserved and allocated else None
        replay = run.get("replay") or {}
        lines.append(
            f"| {run['shape']} | {run['label']} | {run['batch_size']} | {g(row['peak_bytes'])} | {g(reserved)} | {g(allocated)} | "
            f"{g(kept)} | {g(replay.get('kept'))} | {g(row['forecast_bytes'])} | {row['error']:+.1%} | "
            f"{g(row['replay_forecast_bytes'])} | {row['replay_error']:+.1%} | {'yes' if row['covered'] else 'NO'} |"
        )
    lines.append("")
    if rows:
        for key, name in (("error", "outgrown-classes rule"), ("replay_error", "allocator replay")):
            errors = [r[key] for r in rows]
            lines.append(
                f"{name}: {len(rows)} held-out points, median |error| {statistics.median(abs(e) for e in errors):.1%}, "
                f"worst {max(abs(e) for e in errors):.1%}, worst under-forecast {min(min(errors), 0.0):+.1%}"
            )
    for run in runs:
        if run["status"] != "ok":
            lines.append(f"- {run['shape']} {run['label']} batch {run['batch_size']}: {run['status']} ({run['reason']})")
    for item in not_run:
        lines.append(f"- not run: {item}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
