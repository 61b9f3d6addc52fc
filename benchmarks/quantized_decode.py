"""Quantized decoding against the memory-bandwidth floor: torchao and fine-grained FP8 beside bf16.

    python benchmarks/quantized_decode.py --out DIR [--deadline S] [--work DIR] [--parts grid,study]
    python benchmarks/quantized_decode.py --out DIR --tiny      # a tiny Llama on the CPU: checks the script itself

1. ``grid``: a Llama-3-8B-shaped model (random weights, saved once under --work; they time exactly
   like real ones) measured by autotune's own trial worker (a separate process per candidate:
   ``from_pretrained`` with the candidate's ``quantization_config``, the effective-config read-back,
   warm-up excluded, repeats until the timing settles) at 512 + 128 tokens, batch 1 and 16, for
   bf16 and every new quantization (torchao int8 weight-only, int4 weight-only at group sizes 32,
   64 and 128, float8 weight-only, float8 weights with per-row dynamic float8 activations;
   Transformers' fine-grained FP8), each with a compiled static cache. autotune's validity rules run
   first: a row they refuse is reported with their reason, as is a load that did not take effect.
   Each row sets the decode step against the floor of its weights' bytes (read back from the loaded
   model) at the GPU's memory bandwidth (:mod:`autotune.bandwidth`).
2. ``study``: ``autotune add`` / ``tune`` / ``recommend`` on the same model, as a user runs them, over
   bf16 sdpa with a static cache on one GPU and every quantization this machine offers
   (objective latency, 512 + 128, quality floor 0: random weights), and the recommendation's line
   against the floor.

With --tiny the model is a tiny Llama on the CPU (32 + 8 tokens, batch 1 and 4, no static cache:
the rules refuse it on the CPU), where torchao's int8 and float8 weight-only run and the others are
refused with their reasons.

Results: DIR/quantized_decode.json (one object per row: gpu, candidate, batch_size, tokens_per_s,
decode_ms_per_token, weights_bytes, roofline_ms_per_token, peak_bytes, load_seconds,
compile_seconds, status, reason, and more), DIR/quantized_decode_study.json and
DIR/quantized_decode.md; the autotune commands' output in DIR/commands.log. ``decode_ms_per_token``
is the time of one decode step (one new token for every sequence of the batch); the floor is the
weights read once per step, so at batch 16 it is the same as at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from e2e_gpu import Autotune, build, log  # noqa: E402  (the same model and the same way of running autotune)

#: The quantizations measured beside bf16, in the table's order: (quant, int4 group size).
QUANTS = (
    ("none", None),
    ("torchao-int8wo", None),
    ("torchao-int4wo", 128),
    ("torchao-int4wo", 64),
    ("torchao-int4wo", 32),
    ("torchao-float8wo", None),
    ("torchao-float8dq", None),
    ("fp8-fine", None),
)
WORKLOAD = (512, 128, (1, 16))
TINY_WORKLOAD = (32, 8, (1, 4))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where the results go")
    p.add_argument("--work", type=Path, help="where the model is saved, outside OUT (default: TMPDIR/autotune-quantized-decode)")
    p.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU: checks the script itself")
    p.add_argument("--parts", default="grid,study", help="grid,study (default both)")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds for this run (default 540); run again to go on")
    p.add_argument("--max-repeats", type=int, default=5, help="timed repeats per batch size, at most (default 5)")
    args = p.parse_args()
    unknown = set(args.parts.split(",")) - {"grid", "study"}
    if unknown:
        p.error(f"--parts {args.parts}: unknown part {', '.join(sorted(unknown))}; choose among grid, study")
    if args.deadline <= 0:
        p.error(f"--deadline {args.deadline}: give a number of seconds above 0")
    return args


def candidate_of(quant: str, group: int | None, static: bool, placement: str) -> Any:
    from autotune.candidate import Candidate

    extra = (("group_size", group),) if group else ()
    return Candidate(dtype="bfloat16", attn="sdpa", quant=quant, static_cache=static, placement=placement, extra=extra)


def gpu_name(environment: Any) -> str:
    return environment.gpus[0].name if environment.gpus else "CPU"


def measure_row(
    path: Path,
    candidate: Any,
    environment: Any,
    workload: tuple[int, int, tuple[int, ...]],
    args: argparse.Namespace,
    reference: Path,
    deadline: float,
) -> list[dict[str, Any]]:
    """One candidate at each batch size, by the trial worker; refused rows carry the rule's reason."""
    from autotune.bandwidth import decode_step_ms, floor_ms, memory_bandwidth
    from autotune.candidate import rejection
    from autotune.registry import model_capabilities
    from autotune.worker import WorkerRequest, launch
    from autotune.workload import Workload

    prompt, new, batches = workload
    config = json.loads((path / "config.json").read_text())
    caps = model_capabilities(config, "text-generation")
    base = {
        "gpu": gpu_name(environment),
        "candidate": candidate.label(),
        "quant": candidate.quant,
        "group_size": candidate.value("group_size") if candidate.quant == "torchao-int4wo" else None,
    }
    base |= {"prompt_tokens": prompt, "new_tokens": new, "static_cache": candidate.static_cache}
    reason = rejection(candidate, environment, caps)
    if reason is not None:
        return [{**base, "batch_size": b, "status": "unsupported", "reason": f"refused by autotune's rules: {reason}"} for b in batches]
    request = WorkerRequest(
        model_path=str(path),
        model_name=path.name,
        task="text-generation",
        candidate=candidate,
        workload=Workload(prompt_tokens=prompt, new_tokens=new, device="cuda" if candidate.on_gpu else "cpu"),
        batch_sizes=tuple(batches),
        reference_path=str(reference),
        make_reference=not reference.exists(),
        max_repeats=args.max_repeats,
        min_repeats=min(3, args.max_repeats),
        timeout_s=max(120.0, deadline - time.monotonic()),
    )
    started = time.perf_counter()
    outcome = launch(request, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    log(f"{candidate.label()}: worker finished in {time.perf_counter() - started:.0f} s")
    bandwidth = memory_bandwidth(environment.gpus[0]) if environment.gpus and candidate.on_gpu else None
    rows = []
    for result in outcome.results:
        m, eff = result.metrics, result.effective
        weights = eff.get("weights_bytes")
        rows.append(
            {
                **base,
                "batch_size": result.batch_size,
                "status": result.status,
                "reason": result.reason,
                "tokens_per_s": m.get("throughput_tokens_per_s"),
                "decode_tokens_per_s": m.get("decode_tokens_per_s"),
                "decode_ms_per_token": decode_step_ms(m, result.batch_size),
                "weights_bytes": weights,
                "roofline_ms_per_token": floor_ms(weights, bandwidth) if weights and bandwidth else None,
                "bandwidth_bytes_per_s": bandwidth.bytes_per_s if bandwidth else None,
                "bandwidth_source": bandwidth.source if bandwidth else None,
                "peak_bytes": m.get("peak_memory_bytes"),
                "forecast_bytes": m.get("forecast_bytes"),
                "load_seconds": m.get("load_seconds"),
                "compile_seconds": m.get("compile_seconds"),
                "quantized_layers": eff.get("quantized_layers"),
                "linear_layers": eff.get("linear_layers"),
                "quant_types": eff.get("quant_types"),
                "quality_token_agreement": m.get("quality_token_agreement"),
                "reference_flatness": result.details.get("quality_reference_flatness"),
            }
        )
    if not rows:
        why = f"the worker ended with exit status {outcome.returncode}: {outcome.stderr_tail[-300:]}"
        rows = [{**base, "batch_size": b, "status": "error", "reason": why} for b in batches]
    return rows


def grid(path: Path, environment: Any, args: argparse.Namespace, deadline: float, work: Path) -> list[dict[str, Any]]:
    workload = TINY_WORKLOAD if args.tiny else WORKLOAD
    placement = "cuda" if environment.gpus else "cpu"
    reference = work / f"reference-{workload[0]}-{workload[1]}.pt"
    rows: list[dict[str, Any]] = []
    # rows of an earlier run into the same OUT are kept, not measured again (a run stopped by its deadline goes on)
    target = args.out / "quantized_decode.json"
    done = [r for r in json.loads(target.read_text()) if r.get("status") != "skipped"] if target.exists() else []
    for quant, group in QUANTS:
        candidate = candidate_of(quant, group, static=placement == "cuda", placement=placement)
        kept = [r for r in done if r.get("candidate") == candidate.label()]
        if kept:
            rows += kept
            continue
        if time.monotonic() > deadline:
            rows += [{"gpu": gpu_name(environment), "candidate": candidate.label(), "batch_size": b, "status": "skipped",
                      "reason": "the run's --deadline was reached first"} for b in workload[2]]  # fmt: skip
            continue
        rows += measure_row(path, candidate, environment, workload, args, reference, deadline)
        (args.out / "quantized_decode.json").write_text(json.dumps(rows, indent=1) + "\n")  # kept as the rows finish
    return rows


def study(path: Path, environment: Any, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    autotune = Autotune(args.out / "study.db", args.out / "commands.log")
    prompt, new, _ = TINY_WORKLOAD if args.tiny else WORKLOAD
    placement = "cuda" if environment.gpus else "cpu"
    from autotune.search.space import offered_quants

    # bitsandbytes stays out: it cannot be compiled with a static cache, and on the CPU it is 5-15x slower to measure
    quants = ",".join(q for q in offered_quants(environment) if not q.startswith("bnb-"))
    static = "true" if placement == "cuda" else "false"
    space = f"dtype=bf16 attn=sdpa placement={placement} static_cache={static} quant={quants}"
    autotune("add", str(path), "--prompt-tokens", str(prompt), "--new-tokens", str(new), "--objective", "latency",
             "--max-batch", "1", "--max-memory", "none", "--device", placement, "--min-quality", "0")  # fmt: skip
    budget = max(60.0, deadline - time.monotonic() - 60)
    started = time.perf_counter()
    autotune("tune", str(path), "--space", space, "--max-repeats", str(args.max_repeats), "--seed", "1", "--exhaustive",
             "--budget-minutes", f"{budget / 60:.2f}", check=False, timeout=budget + 60)  # fmt: skip
    rec = autotune.json("recommend", str(path), "--no-code", ok=(0, 1))
    rec = rec[0] if isinstance(rec, list) else rec
    trials = [t for s in autotune.json("trials", str(path)) for t in s.get("trials", [])]
    return {
        "space": space,
        "tune_seconds": time.perf_counter() - started,
        "recommendation": rec.get("recommendation"),
        "roofline": rec.get("roofline"),
        "why_not": rec.get("why_not"),
        "explanation": autotune("recommend", str(path), "--no-code", check=False),
        "trials": [
            {k: t.get(k) for k in ("label", "batch_size", "status", "reason", "feasible")} | {"metrics": t.get("metrics")} for t in trials
        ],
    }


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[dict[str, Any]], study_doc: dict[str, Any] | None, environment: Any) -> str:
    lines = [f"# Quantized decoding on {gpu_name(environment)}", ""]
    lines.append(
        "| candidate | batch | tok/s | decode ms/step | floor ms | of the limit | weights MB | peak GiB | load s | compile s | status |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        share = (
            r["roofline_ms_per_token"] / r["decode_ms_per_token"]
            if r.get("roofline_ms_per_token") and r.get("decode_ms_per_token")
            else None
        )
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason') or ''}"
        lines.append(
            f"| {r['candidate']} | {r['batch_size']} | {_num(r.get('tokens_per_s'))} | {_num(r.get('decode_ms_per_token'), 2)} | "
            f"{_num(r.get('roofline_ms_per_token'), 2)} | {'-' if share is None else f'{share:.0%}'} | "
            f"{_num((r.get('weights_bytes') or 0) / 1e6 if r.get('weights_bytes') else None, 1)} | "
            f"{_num((r.get('peak_bytes') or 0) / 2**30 if r.get('peak_bytes') else None, 2)} | {_num(r.get('load_seconds'))} | "
            f"{_num(r.get('compile_seconds'))} | {status} |"
        )
    if study_doc is not None:
        label = (study_doc.get("recommendation") or {}).get("label", "nothing")
        roof = f"; {study_doc['roofline']['text']}" if study_doc.get("roofline") else ""
        lines += ["", "## Study", "", f"space `{study_doc['space']}`: recommends **{label}**{roof}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    deadline = time.monotonic() + args.deadline
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.gettempdir()) / "autotune-quantized-decode"
    work.mkdir(parents=True, exist_ok=True)
    from autotune.environment import probe

    environment = probe()
    if args.tiny:
        environment = replace(environment, gpus=())  # the CPU, whatever this machine has
    elif not environment.gpus:
        print("quantized_decode.py: no NVIDIA GPU is visible here; run it on a GPU machine, or with --tiny on the CPU", file=sys.stderr)
        return 2
    path = build("llama-8b", work / ("llama-tiny" if args.tiny else "llama-8b"), smoke=args.tiny)
    parts = set(args.parts.split(","))
    rows = grid(path, environment, args, deadline, work) if "grid" in parts else []
    study_doc = study(path, environment, args, deadline) if "study" in parts and time.monotonic() < deadline - 60 else None
    (args.out / "quantized_decode.json").write_text(json.dumps(rows, indent=1) + "\n")
    if study_doc is not None:
        (args.out / "quantized_decode_study.json").write_text(json.dumps(study_doc, indent=1, default=str) + "\n")
    (args.out / "quantized_decode.md").write_text(table(rows, study_doc, environment))
    log(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
