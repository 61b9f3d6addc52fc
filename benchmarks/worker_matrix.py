"""The trial worker's candidate matrix on real shapes, and a plain-PyTorch check of its timings.

On the GPU machine this builds random-weight models of real shapes (random weights time exactly
like real ones): a Llama-3.2-1B-shaped model and a Falcon-7B-shaped model, ``save_pretrained``
into ``--models-dir``. It then measures the candidate matrix through ``autotune.worker.launch``
— dtypes x attention (eager, sdpa, sdpa with each pinned kernel, flex_attention,
flash_attention_2) x bitsandbytes (none, 8-bit, nf4, fp4, double quant) x static cache — on one
GPU, and with ``multi-gpu`` + ``max_memory`` when two GPUs are visible. Candidates the rules
reject are listed with their reason (nothing is launched for them); combinations that teach
nothing new are pruned with the reason; the rest run in priority order within a time budget,
and what the budget left out is listed too.

For three candidates the same ``generate`` call is also timed in this process in plain PyTorch
with CUDA events, and the agreement with the worker's median is reported (target: within 10%).

Output: ``--out DIR`` gets ``worker_matrix.md`` (the tables) and ``worker_matrix.json`` (every
result); the tables are printed too. Quality is not measured: random weights have flat
next-token distributions, so agreement with a reference says nothing about a real model.

    python benchmarks/worker_matrix.py --out "$OUT/worker-matrix"          # GPU: about 8 minutes
    python benchmarks/worker_matrix.py --out "$OUT/wm2" --only 'llama-1b .*(fp4|static|cudnn|flex)'   # more of it
    python benchmarks/worker_matrix.py --smoke --out /tmp/wm-smoke      # CPU, tiny models, < 2 minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from autotune.candidate import Candidate, rejection  # noqa: E402
from autotune.environment import Environment, probe  # noqa: E402
from autotune.worker import WorkerOutcome, WorkerRequest, launch  # noqa: E402
from autotune.workload import Workload  # noqa: E402

#: Llama-3.2-1B's shape (grouped-query attention, 8 KV heads, tied embeddings).
LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
    architectures=["LlamaForCausalLM"],
)
#: tiiuae/falcon-7b's shape (multi-query attention: one KV head; parallel attention and MLP).
FALCON_7B = dict(
    vocab_size=65024,
    hidden_size=4544,
    num_hidden_layers=32,
    num_attention_heads=71,
    multi_query=True,
    parallel_attn=True,
    new_decoder_architecture=False,
    bias=False,
    alibi=False,
    layer_norm_epsilon=1e-5,
    bos_token_id=11,
    eos_token_id=11,
    architectures=["FalconForCausalLM"],
)
#: Per-GPU limit for the two-GPU runs: below one H100's share, so the model must spread.
MULTI_GPU_LIMIT = 10 * 2**30


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- models -------------------------------------------------------------------------------------


def build_models(root: Path, smoke: bool, names: list[str]) -> dict[str, Path]:
    """Random-weight models saved with save_pretrained (reused when already there)."""
    import torch
    import transformers

    from autotune.worker.loading import dtype_keyword

    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in names:
        path = root / name
        out[name] = path
        if (path / "config.json").exists() and any(path.glob("*.safetensors")):
            log(f"model {name}: reusing {path}")
            continue
        started = time.monotonic()
        if smoke:
            from autotune.testing import build_tiny

            build_tiny(name, path)
        else:
            if name == "llama-1b":
                config = transformers.LlamaConfig(**LLAMA_1B)
            else:
                config = transformers.FalconConfig(**FALCON_7B)
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
            torch.manual_seed(0)
            with torch.device(device):
                model = transformers.AutoModelForCausalLM.from_config(config, **{dtype_keyword(): torch.bfloat16})
            model.save_pretrained(path, max_shard_size="5GB")
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log(f"model {name}: built in {time.monotonic() - started:.1f} s at {path}")
    return out


def capabilities(path: Path) -> dict[str, Any]:
    from autotune.registry import model_capabilities, read_config

    return model_capabilities(read_config(path / "config.json"), "text-generation")


# -- the matrix ---------------------------------------------------------------------------------


@dataclass
class Spec:
    model: str
    candidate: Candidate
    ladder: tuple[int, ...]
    tier: int
    compare: bool = False
    rank: int = 0


@dataclass
class Plan:
    run: list[Spec] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # model, label, reason
    pruned: list[tuple[str, str, str]] = field(default_factory=list)
    not_run: list[tuple[str, str, str]] = field(default_factory=list)


ATTNS = [
    ("eager", None),
    ("sdpa", None),
    ("sdpa", "flash"),
    ("sdpa", "efficient"),
    ("sdpa", "cudnn"),
    ("sdpa", "math"),
    ("flex_attention", None),
    ("flash_attention_2", None),
]
QUANTS = [
    ("none", False),
    ("bnb-8bit", False),
    ("bnb-4bit-nf4", False),
    ("bnb-4bit-nf4", True),
    ("bnb-4bit-fp4", False),
    ("bnb-4bit-fp4", True),
]


def _prune(model: str, c: Candidate, smoke: bool) -> str | None:
    """Why a valid combination is not worth a worker here (None: measure it)."""
    quant = c.quant != "none"
    if c.dtype == "float32" and (quant or c.static_cache or c.attn not in ("eager", "sdpa") or c.sdpa_kernel):
        return "float32 is measured plain (eager, sdpa) as the precision reference point only"
    if c.dtype == "float16" and not (c.attn == "sdpa" and c.sdpa_kernel is None and not c.static_cache and c.quant in ("none", "bnb-8bit")):
        return "float16 runs like bfloat16 on this hardware: measured with plain sdpa only (and as LLM.int8's dtype)"
    if quant and (c.attn != "sdpa" or c.sdpa_kernel):
        return "quantization is orthogonal to the attention kernel: measured with plain sdpa"
    if c.sdpa_kernel and (quant or c.static_cache):
        return "pinned SDPA kernels are measured without quantization or static cache"
    if c.attn == "flex_attention" and (c.static_cache or c.dtype != "bfloat16"):
        return "flex_attention is measured once, bf16 with the dynamic cache"
    if c.static_cache and (c.attn not in ("sdpa", "eager") or c.sdpa_kernel):
        return "the static cache is measured with eager and sdpa"
    if model.startswith("falcon") and quant and (c.double_quant or c.quant == "bnb-4bit-fp4"):
        return "bitsandbytes leaves Falcon's FalconLinear layers unquantized; 8-bit and nf4 show it, fp4/double quant add nothing"
    if smoke and (c.attn == "flex_attention" or c.static_cache):
        return "compile-heavy on the CPU and not compiled there: left to the GPU run"
    if smoke and (c.dtype == "float16" and c.quant == "none" or c.quant == "bnb-4bit-fp4" or c.double_quant or c.sdpa_kernel == "math"):
        return "smoke run: a short matrix (the GPU run measures it)"
    return None


def _tier(model: str, c: Candidate) -> tuple[int, int, tuple[int, ...], bool]:
    """(priority tier, rank in it, ladder, timed again in plain PyTorch) of a candidate worth measuring.

    Tier 1: the default load (bf16 sdpa) and eager on one device, and the two-GPU load. Tier 2:
    the levers most likely to matter (bitsandbytes, static cache, pinned kernels). Tier 3: the rest.
    """
    llama = model.startswith("llama")
    base = c.dtype == "bfloat16" and c.quant == "none" and not c.static_cache and c.sdpa_kernel is None
    full, short = (1, 8, 32), (1, 32)
    if c.placement == "multi-gpu":
        return 1, 5, (1, 8), False
    if base and c.attn == "sdpa":
        return 1, 0 if llama else 2, full, True
    if base and c.attn == "eager" and llama:
        return 1, 1, full, True
    if llama and c.static_cache and c.attn == "sdpa" and c.quant == "none" and c.dtype == "bfloat16" and c.sdpa_kernel is None:
        return 1, 6, (1, 8, 32), True
    ranks = [
        (c.quant == "bnb-4bit-nf4" and not c.double_quant, short),
        (c.quant == "bnb-8bit", short),
        (c.static_cache and c.attn == "sdpa", short),
        (c.sdpa_kernel == "flash", short),
        (c.sdpa_kernel == "efficient", short),
        (c.sdpa_kernel == "cudnn", short),
        (base and c.attn == "eager", short),
    ]
    for rank, (hit, ladder) in enumerate(ranks):
        if hit:
            return 2, rank * 2 + (0 if llama else 1), ladder, False
    if c.attn == "flex_attention" or c.dtype == "float32":
        return 3, 5, (1,), False
    return 3, 0 if llama else 1, short, False


def plan_matrix(models: dict[str, Path], environment: Environment, workload: Workload, smoke: bool) -> Plan:
    plan = Plan()
    placements = ["cpu"] if smoke else ["cuda"] + (["multi-gpu"] if len(environment.gpus) >= 2 else [])
    for model, path in models.items():
        caps = capabilities(path)
        if "multi-gpu" in placements:
            plan.pruned.append(
                (
                    model,
                    "multi-gpu: every combination but bf16 sdpa",
                    "on two GPUs only the default load is measured, spread under max_memory",
                )
            )
        for placement in placements:
            for dtype in ("float32", "float16", "bfloat16"):
                for attn, kernel in ATTNS:
                    for quant, dq in QUANTS:
                        for static in (False, True):
                            c = Candidate(
                                dtype=dtype,
                                attn=attn,
                                sdpa_kernel=kernel,
                                quant=quant,
                                double_quant=dq,
                                placement=placement,
                                static_cache=static,
                            )
                            if placement == "multi-gpu" and not (
                                dtype == "bfloat16" and attn == "sdpa" and kernel is None and quant == "none" and not static
                            ):
                                continue  # two GPUs: the default load, spread under max_memory
                            reason = rejection(c, environment, caps, workload)
                            if reason is not None:
                                plan.rejected.append((model, c.label(), reason))
                                continue
                            why = _prune(model, c, smoke)
                            if why is not None:
                                plan.pruned.append((model, c.label(), why))
                                continue
                            tier, rank, ladder, compare = _tier(model, c)
                            if smoke:
                                ladder = (1, 2)
                            plan.run.append(Spec(model, c, ladder, tier, compare, rank=rank))
    plan.run.sort(key=lambda s: (s.tier, s.rank))
    return plan


# -- running ------------------------------------------------------------------------------------


@dataclass
class Budget:
    deadline: float
    per_batch: dict[str, list[float]] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def estimate(self, spec: Spec, smoke: bool) -> float:
        seen = self.per_batch.get(spec.model)
        per = statistics.mean(seen) if seen else (2.0 if smoke else 15.0)
        extra = 0.0 if smoke else (40.0 if spec.candidate.attn == "flex_attention" else 0.0)
        if spec.candidate.static_cache and not smoke:
            extra += 25.0 * len(spec.ladder)
        return (4.0 if smoke else 10.0) + per * len(spec.ladder) + extra

    def observe(self, spec: Spec, wall: float) -> None:
        if spec.candidate.static_cache or spec.candidate.attn == "flex_attention" or spec.candidate.quant != "none":
            return
        self.per_batch.setdefault(spec.model, []).append(wall / len(spec.ladder))


def run_spec(
    spec: Spec, path: Path, workload: Workload, smoke: bool, timeout: float, env: dict[str, str] | None, gpus: int = 2
) -> WorkerOutcome:
    static = spec.candidate.static_cache
    request = WorkerRequest(
        model_path=str(path),
        model_name=spec.model,
        task="text-generation",
        candidate=spec.candidate,
        workload=workload,
        batch_sizes=spec.ladder,
        max_memory={i: MULTI_GPU_LIMIT for i in range(gpus)} if spec.candidate.placement == "multi-gpu" else None,
        # Candidates checked against plain PyTorch get as many repeats as the plain timing (5).
        warmup=2 if static else 1,
        min_repeats=5 if spec.compare else 2,
        max_repeats=6 if spec.compare else 4,
        target_spread=0.10,
        time_cap_s=10.0 if smoke else (60.0 if spec.compare else 30.0),
        timeout_s=timeout,
    )
    return launch(request, env=env)


def plain_pytorch(path: Path, spec: Spec, batch: int, workload: Workload, smoke: bool) -> dict[str, Any]:
    """The same generate call, in this process, timed with CUDA events (perf_counter on the CPU)."""
    import torch
    import transformers

    c = spec.candidate
    kwargs: dict[str, Any] = {"attn_implementation": c.attn, "device_map": "cpu" if smoke else "cuda:0"}
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = getattr(torch, c.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
    device = model.get_input_embeddings().weight.device
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(100, vocab - 100, (batch, workload.prompt_tokens), generator=torch.Generator().manual_seed(1)).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    gen = {
        "do_sample": False,
        "max_new_tokens": workload.new_tokens,
        "min_new_tokens": workload.new_tokens,
        "pad_token_id": model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0,
    }
    if c.static_cache:
        gen["cache_implementation"] = "static"
    times = []
    with torch.no_grad():
        for _ in range(2 if c.static_cache else 1):  # warm-up (the first static call compiles)
            model.generate(**inputs, **gen)
        for _ in range(5):
            if smoke:
                started = time.perf_counter()
                model.generate(**inputs, **gen)
                times.append((time.perf_counter() - started) * 1e3)
            else:
                torch.cuda.synchronize()
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                model.generate(**inputs, **gen)
                end.record()
                torch.cuda.synchronize()
                times.append(begin.elapsed_time(end))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "median_ms": statistics.median(times),
        "times_ms": [round(t, 2) for t in times],
        "clock": "perf_counter (CPU)" if smoke else "CUDA events",
    }


# -- output -------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render(meta: dict[str, Any], rows: list[dict[str, Any]], comparisons: list[dict[str, Any]], plan: Plan) -> str:
    lines = [f"# Trial worker matrix ({meta['mode']})", ""]
    lines += [
        f"- GPUs: {meta['gpus']}",
        f"- libraries: {meta['libraries']}",
        f"- workload: {meta['workload']}",
        "- timing: warm-up excluded, synchronised, 2-4 repeats until (p90-p10)/p50 <= 10%; median shown",
        "- quality: not measured (random weights: flat distributions)",
        f"- wall time: {meta['wall_seconds']:.0f} s",
        "",
    ]
    lines += [
        "| model | candidate | batch | status | tok/s | decode tok/s | TTFT ms | p50 ms | p90 ms | spread | peak GiB | load s | compile s | effective | reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, e = r["metrics"], r["effective"]
        eff = e.get("attn_implementation") or "-"
        if e.get("quantized_layers") is not None and r["candidate"]["quant"] != "none":
            eff += f", {e.get('quantized_layers')}/{e.get('linear_layers')} quantized"
        if e.get("hf_device_map") and len(e["hf_device_map"]) > 1:
            eff += ", " + "+".join(sorted(e["hf_device_map"]))
        if e.get("static_cache_compiled") is not None:
            eff += ", compiled" if e["static_cache_compiled"] else ", not compiled"
        peak = m.get("peak_memory_bytes")
        reason = (r["reason"] or "").replace("|", "/")
        lines.append(
            f"| {r['model']} | {r['label']} | {r['batch_size']} | {r['status']} | {_f(m.get('throughput_tokens_per_s'))} | "
            f"{_f(m.get('decode_tokens_per_s'))} | {_f(m.get('ttft_ms'), 2)} | {_f(m.get('latency_p50_ms'), 1)} | "
            f"{_f(m.get('latency_p90_ms'), 1)} | {_pct(m.get('latency_spread'))} | "
            f"{_f(peak / 2**30 if peak else None, 2)} | {_f(m.get('load_seconds'), 2)} | {_f(m.get('compile_seconds'), 2)} | {eff} | {reason[:160]} |"
        )
    lines += [
        "",
        "## Worker vs plain PyTorch (same generate call, this process)",
        "",
        "| model | candidate | batch | worker p50 ms | plain median ms | clock | difference | within 10% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        if c.get("error"):
            lines.append(f"| {c['model']} | {c['label']} | {c['batch_size']} | - | - | - | {c['error'][:120]} | - |")
            continue
        lines.append(
            f"| {c['model']} | {c['label']} | {c['batch_size']} | {_f(c['worker_ms'], 1)} | {_f(c['plain_ms'], 1)} | {c['clock']} | "
            f"{c['difference'] * 100:+.1f}% | {'yes' if abs(c['difference']) <= 0.10 else 'NO'} |"
        )
    for title, items in (
        ("Rejected before loading (the rules' reason)", plan.rejected),
        ("Pruned (why not worth a worker)", plan.pruned),
        ("Not run (time budget)", plan.not_run),
    ):
        lines += ["", f"## {title}: {len(items)}", ""]
        by_reason: dict[str, list[str]] = {}
        for model, label, reason in items:
            by_reason.setdefault(reason, []).append(f"{model}: {label}")
        for reason, labels in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
            lines.append(f"- {reason}: {shown}")
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the trial worker's candidate matrix on real shapes.")
    parser.add_argument("--out", required=True, type=Path, help="directory for worker_matrix.md and worker_matrix.json")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("/tmp/autotune-worker-matrix-models"),
        help="where models are built, outside --out (they are GBs); reused when present (default %(default)s)",
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, short workload: check the script end to end")
    parser.add_argument("--models", default=None, help="comma-separated: llama-1b,falcon-7b (smoke: llama,falcon)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 512 (smoke 16)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (smoke 8)")
    parser.add_argument("--deadline", type=float, default=None, help="seconds for the whole script (default 470; smoke 100)")
    parser.add_argument("--max-tier", type=int, default=3, help="measure tiers up to this one (1: baselines, 2: levers, 3: the rest)")
    parser.add_argument("--only", metavar="REGEX", help="measure only candidates whose 'MODEL LABEL' matches (e.g. 'llama-1b .*nf4')")
    args = parser.parse_args(argv)

    started = time.monotonic()
    smoke = args.smoke
    deadline = started + (args.deadline or (100.0 if smoke else 470.0))
    names = (args.models or ("llama,falcon" if smoke else "llama-1b,falcon-7b")).split(",")
    workload = Workload(prompt_tokens=args.prompt_tokens or (16 if smoke else 512), new_tokens=args.new_tokens or (8 if smoke else 128))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    worker_env = {**os.environ, "OMP_NUM_THREADS": "1"} if smoke else None
    if smoke:
        import torch

        torch.set_num_threads(1)  # the plain-PyTorch timings use what the workers use

    environment = probe()
    if not smoke and not environment.gpus:
        log(f"no GPU here ({environment.nvml_error}); use --smoke on a CPU machine")
        return 2
    models = build_models(args.models_dir / ("smoke" if smoke else "gpu"), smoke, names)
    plan = plan_matrix(models, environment, workload, smoke)
    log(f"matrix: {len(plan.run)} to measure, {len(plan.rejected)} rejected by the rules, {len(plan.pruned)} pruned")

    budget = Budget(deadline - (20.0 if smoke else 45.0))  # keep time for the plain-PyTorch timings and the tables
    rows: list[dict[str, Any]] = []
    outcomes: dict[tuple[str, str], WorkerOutcome] = {}
    comparisons: list[dict[str, Any]] = []
    compared = False

    def compare_one(spec: Spec, outcome: WorkerOutcome | None, batch: int) -> dict[str, Any]:
        result = next((r for r in outcome.results if r.batch_size == batch and r.ok), None) if outcome else None
        entry: dict[str, Any] = {"model": spec.model, "label": spec.candidate.label(), "batch_size": batch}
        if result is None:
            entry["error"] = "the worker did not measure this batch size"
            return entry
        try:
            plain = plain_pytorch(models[spec.model], spec, batch, workload, smoke)
            worker = result.metrics["latency_p50_ms"]
            entry.update(
                worker_ms=worker,
                plain_ms=plain["median_ms"],
                clock=plain["clock"],
                plain_times_ms=plain["times_ms"],
                worker_times_ms=result.details.get("e2e_ms"),
                difference=(worker - plain["median_ms"]) / plain["median_ms"],
            )
            log(
                f"plain PyTorch {spec.model} {spec.candidate.label()} batch {batch}: worker {worker:.1f} ms, "
                f"plain {plain['median_ms']:.1f} ms ({entry['difference']:+.1%})"
            )
        except Exception as exc:  # report, do not lose the matrix
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return entry

    def compare_now() -> None:
        for spec in [s for s in plan.run if s.compare and (s.model, s.candidate.label()) in outcomes][:4]:
            # Batch 8 is bound by generate's per-token Python work, batch 32 more by the GPU: check both.
            for batch in (2,) if smoke else (8, 32):
                comparisons.append(compare_one(spec, outcomes.get((spec.model, spec.candidate.label())), batch))

    for spec in plan.run:
        if not compared and spec.tier > 1:
            compare_now()
            compared = True
        label = spec.candidate.label()
        if spec.tier > args.max_tier:
            plan.not_run.append((spec.model, label, f"tier {spec.tier} above --max-tier {args.max_tier}"))
            continue
        if args.only and not re.search(args.only, f"{spec.model} {label}"):
            plan.not_run.append((spec.model, label, f"not selected by --only {args.only!r}"))
            continue
        estimate = budget.estimate(spec, smoke)
        left = budget.left()
        if estimate > left:
            plan.not_run.append((spec.model, label, f"time budget: needs about {estimate:.0f} s, {max(0.0, left):.0f} s left"))
            continue
        timeout = max(30.0, min(300.0, left))
        log(f"{spec.model}: {label} at batch {','.join(map(str, spec.ladder))} (tier {spec.tier}, ~{estimate:.0f} s)")
        outcome = run_spec(spec, models[spec.model], workload, smoke, timeout, worker_env, max(len(environment.gpus), 2))
        budget.observe(spec, outcome.wall_seconds)
        outcomes[(spec.model, label)] = outcome
        for result in outcome.results:
            rows.append(
                {
                    "model": spec.model,
                    "label": label,
                    "candidate": spec.candidate.to_dict(),
                    "tier": spec.tier,
                    "batch_size": result.batch_size,
                    "status": result.status,
                    "reason": result.reason,
                    "metrics": result.metrics,
                    "effective": result.effective,
                    "details": {k: v for k, v in result.details.items() if k not in ("traceback", "output_tail")},
                    "worker_wall_seconds": outcome.wall_seconds,
                }
            )
        summary = ", ".join(
            f"{r.batch_size}:{r.status}" + (f" {r.metrics.get('throughput_tokens_per_s', 0):.0f} tok/s" if r.ok else "")
            for r in outcome.results
        )
        log(f"  -> {summary} ({outcome.wall_seconds:.1f} s)" + (f"; {outcome.results[0].reason}" if not outcome.results[0].ok else ""))
    if not compared:
        compare_now()

    versions = environment.versions
    meta = {
        "mode": "smoke: CPU, tiny models" if smoke else "GPU",
        "gpus": ", ".join(f"{g.name} ({g.total_memory / 2**30:.0f} GiB, cc {g.cc})" for g in environment.gpus) or "none (CPU)",
        "driver": environment.driver_version,
        "libraries": ", ".join(
            f"{k} {versions.get(k) or '-'}" for k in ("torch", "transformers", "accelerate", "bitsandbytes", "flash-attn")
        ),
        "python": platform.python_version(),
        "workload": workload.describe(),
        "wall_seconds": time.monotonic() - started,
    }
    table = render(meta, rows, comparisons, plan)
    (out / "worker_matrix.md").write_text(table)
    (out / "worker_matrix.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "environment": environment.to_dict(),
                "results": rows,
                "comparisons": comparisons,
                "rejected": plan.rejected,
                "pruned": plan.pruned,
                "not_run": plan.not_run,
            },
            indent=1,
            default=str,
        )
    )
    print(table)
    log(f"done in {meta['wall_seconds']:.0f} s; wrote {out / 'worker_matrix.md'} and {out / 'worker_matrix.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
