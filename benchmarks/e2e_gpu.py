"""The whole job on real GPUs, run exactly as a user would: add, tune, recommend --write, import.

On the GPU machine this builds random-weight models of real shapes (random weights time exactly
like real ones), then for each workload runs the `autotune` command line in fresh processes:

    autotune add MODEL ...              the workload
    autotune tune MODEL --trials N      the search, in the foreground, with a budget
    autotune trials MODEL --json        what was measured
    autotune recommend MODEL --write    the advice and an importable loader
    python -c 'from loader import load_model, generate; ...'   the loader, in a fresh process

and writes a table per workload: the recommendation and its measured figures, the Transformers
default load (`from_pretrained(model_id, dtype="auto")` on one GPU: bf16 + sdpa) and the guide's
suggestions where they ran, the speedup over the default, trials and GPU-minutes the search
took, and the memory forecast against each measured peak.

    python benchmarks/e2e_gpu.py --work /tmp/e2e --out results/ --models falcon-7b
    python benchmarks/e2e_gpu.py --smoke --work /tmp/e2e-smoke --out /tmp/e2e-smoke/out   # CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Real shapes. Falcon-7B: tiiuae/falcon-7b's config (multi-query attention: one KV head).
FALCON_7B = dict(
    model_type="falcon",
    architectures=["FalconForCausalLM"],
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
    dtype="bfloat16",
)
#: An 8B Llama-3-shaped model (grouped-query attention: 8 KV heads).
LLAMA_8B = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
    dtype="bfloat16",
)

#: Workloads per model: (name, `autotune add` options, what the limit is for).
WORKLOADS = {
    "throughput": [
        "--objective",
        "throughput",
        "--prompt-tokens",
        "512",
        "--new-tokens",
        "128",
        "--max-batch",
        "16",
        "--max-memory",
        "none",
    ],
    "latency": ["--objective", "latency", "--prompt-tokens", "512", "--new-tokens", "128", "--max-batch", "1", "--max-memory", "none"],
    "limited": ["--objective", "throughput", "--prompt-tokens", "512", "--new-tokens", "128", "--max-batch", "16", "--max-memory", "12GiB"],
    "two-gpu": ["--objective", "throughput", "--prompt-tokens", "512", "--new-tokens", "128", "--max-batch", "4", "--max-memory", "10GiB"],
}
#: What each study may spend, in minutes of measuring, and the space it searches. A GPU lease is
#: short, so each space keeps the levers that can win there (the user's `--space` option) and the
#: batch sizes that matter (a 7B candidate costs about a minute per batch size with two repeats,
#: and a static cache compiles once per batch size); what a space leaves out is listed with the
#: results. A study goes on where it stopped when the script runs again with the same --work.
BUDGETS = {"throughput": 4.0, "latency": 2.5, "limited": 2.0, "two-gpu": 3.0}
SPACES = {
    "throughput": "dtype=bf16,fp16 attn=sdpa,eager quant=none,bnb-8bit,bnb-4bit-nf4 placement=cuda static_cache=false,true batch=1,16",
    "latency": "dtype=bf16 attn=sdpa,eager quant=none placement=cuda static_cache=false,true",
    "limited": "dtype=bf16,fp16 attn=sdpa quant=none,bnb-8bit,bnb-4bit-nf4 placement=cuda static_cache=false,true batch=1,4",
    "two-gpu": "dtype=bf16 attn=sdpa quant=none,bnb-4bit-nf4 placement=cuda,multi-gpu static_cache=false batch=1,4",
}
#: Seconds kept back from --deadline for what follows a study: trials, recommend, the loader.
RESERVE_S = 75


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(name: str, path: Path, smoke: bool) -> Path:
    """Save a random-weight model of ``name``'s shape into ``path`` (once)."""
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    if smoke:
        from autotune.testing import build_tiny

        return build_tiny("falcon" if name.startswith("falcon") else "llama", path)
    fields = dict(FALCON_7B if name == "falcon-7b" else LLAMA_8B)
    model_type = fields.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **fields)
    started = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = getattr(transformers, config.architectures[0])(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    log(f"built {name} ({sum(f.stat().st_size for f in path.iterdir()) / 1e9:.2f} GB on disk) in {time.perf_counter() - started:.0f} s")
    return path


class Autotune:
    """Runs `autotune` as a user would, each command a fresh process, against one database."""

    def __init__(self, db: Path, log_file: Path) -> None:
        self.env = {**os.environ, "AUTOTUNE_DB": str(db), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.log_file = log_file

    def __call__(self, *args: str, check: bool = True, ok: tuple[int, ...] = (0,), timeout: float = 3600) -> str:
        """Run one command; past ``timeout`` it gets SIGINT (a tuner finishes the trial in hand
        and stops), then a second one a minute later (the worker is killed, the trial marked)."""
        command = [sys.executable, "-m", "autotune", *args]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            log(f"autotune {args[0]}: deadline reached, stopping it gently")
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate()
        seconds = time.perf_counter() - started
        with self.log_file.open("a") as fh:
            fh.write(f"$ autotune {shlex.join(args)}   # {seconds:.1f} s, exit {proc.returncode}\n{out}{err}\n")
        if check and proc.returncode not in ok:
            raise RuntimeError(f"autotune {' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}")
        return out

    def json(self, *args: str, ok: tuple[int, ...] = (0,)) -> Any:
        return json.loads(self(*args, "--json", ok=ok))


def run_loader(path: Path, prompt: int, smoke: bool) -> dict[str, Any]:
    """Import the written loader in a fresh process, load, and generate one batch with it."""
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {str(path.parent)!r})
started = time.perf_counter()
from {path.stem} import BATCH_SIZE, GENERATE_KWARGS, generate, load_model
model, tokenizer = load_model()
loaded = time.perf_counter() - started
device = next(model.parameters()).device
ids = torch.randint(10, min(1000, model.config.vocab_size - 1), (BATCH_SIZE, {prompt}), device=device)
out = generate(model, input_ids=ids, attention_mask=torch.ones_like(ids))
if device.type == "cuda":
    torch.cuda.synchronize()
started = time.perf_counter()
out = generate(model, input_ids=ids, attention_mask=torch.ones_like(ids))
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - started
new = out.shape[1] - ids.shape[1]
print(json.dumps({{"batch_size": BATCH_SIZE, "load_seconds": loaded, "new_tokens": int(new), "seconds": seconds,
                  "throughput_tokens_per_s": BATCH_SIZE * new / seconds, "generate_kwargs": GENERATE_KWARGS}}))
"""
    # The loader needs torch and transformers (and bitsandbytes when quantized), never autotune:
    # run it from the loader's own directory with the caller's environment.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=path.parent)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def is_default(candidate: dict[str, Any]) -> bool:
    """The Transformers default load on one GPU: the checkpoint's dtype (bf16 here), sdpa."""
    return (
        candidate["dtype"] == "bfloat16"
        and candidate["attn"] == "sdpa"
        and not candidate.get("sdpa_kernel")
        and candidate["quant"] == "none"
        and candidate["placement"] in ("cuda", "cpu")
        and not candidate["static_cache"]
    )


GUIDE = {
    "bf16 + FlashAttention-2": lambda c: c["dtype"] == "bfloat16" and c["attn"] == "flash_attention_2" and c["quant"] == "none",
    "bf16 + SDPA flash kernel": lambda c: c["dtype"] == "bfloat16"
    and c["attn"] == "sdpa"
    and c.get("sdpa_kernel") == "flash"
    and c["quant"] == "none",
    "4-bit nf4": lambda c: c["quant"] == "bnb-4bit-nf4",
    "8-bit": lambda c: c["quant"] == "bnb-8bit",
}


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


#: Random weights give flat next-token distributions, on which bf16 rounding alone flips greedy
#: tokens; the recommendation is also shown with this floor so the choice among quantized
#: candidates stays visible. The default floor's answer is always shown first.
RELAXED_FLOOR = 0.5


def summarise(
    model: str,
    workload: str,
    trials_doc: list[dict[str, Any]],
    rec: dict[str, Any],
    relaxed: dict[str, Any] | None,
    loader: dict[str, Any],
    tune_seconds: float,
    space: str,
) -> list[str]:
    trials = [t for study in trials_doc for t in study["trials"]]
    metric = "latency_p50_ms" if workload == "latency" else "throughput_tokens_per_s"
    lines = [f"### {model}, workload `{workload}`", ""]
    ok = [t for t in trials if t["status"] == "ok"]
    candidates = {t["label"] for t in trials}
    lines.append(
        f"Search space `{space}`: {len(candidates)} candidates measured, {len(trials)} trials "
        f"({len(ok)} ok); `autotune tune` took {tune_seconds / 60:.1f} min of wall time."
    )
    best = rec.get("recommendation") or {}
    lines.append("")
    lines.append(f"| configuration | batch | {metric} | TTFT ms | peak GiB | token agreement | feasible |")
    lines.append("|---|---|---|---|---|---|---|")

    def row(name: str, t: dict[str, Any] | None) -> None:
        if t is None:
            lines.append(f"| {name} | - | not measured | | | | |")
            return
        m = t["metrics"]
        value = m.get(metric)
        lines.append(
            f"| {name}: `{t['label']}` | {t['batch_size']} | {num(value, 1)} | {num(m.get('ttft_ms'), 1)} | "
            f"{gib(m.get('peak_memory_bytes'))} | {num(m.get('quality_token_agreement'), 3)} | "
            f"{t['feasible']} ({t['status']}{': ' + t['reason'] if t.get('reason') and t['status'] != 'ok' else ''}) |"
        )

    chosen = next((t for t in trials if t["id"] == best.get("trial_id")), None)
    row("recommended", chosen)
    if not chosen:
        lines.insert(-3, f"No feasible trial: {rec.get('message') or rec.get('reason') or 'see recommend output'}")
    relaxed_best = (relaxed or {}).get("recommendation") or {}
    relaxed_pick = next((t for t in trials if t["id"] == relaxed_best.get("trial_id")), None)
    if relaxed_pick is not None and relaxed_pick is not chosen:
        row(f"recommended with the quality floor at {RELAXED_FLOOR:.0%} (random weights)", relaxed_pick)
    # The speedups are of the recommendation, or, where nothing met the floor, of the pick at the
    # relaxed floor (said so).
    pick, which = (
        (chosen, "") if chosen else (relaxed_pick, f" (the pick at the {RELAXED_FLOOR:.0%} floor)") if relaxed_pick else (None, "")
    )
    defaults = [t for t in trials if is_default(t["candidate"])]
    default_same = next((t for t in defaults if pick and t["batch_size"] == pick["batch_size"]), None)
    default_one = next((t for t in defaults if t["batch_size"] == 1), None)
    row("Transformers default, same batch", default_same)
    row("Transformers default, batch 1", default_one)
    for name, match in GUIDE.items():
        measured = [t for t in trials if match(t["candidate"])]
        good = [t for t in measured if t["status"] == "ok"]
        best_of = max if metric != "latency_p50_ms" else min
        pick_guide = (
            best_of(good, key=lambda t: t["metrics"].get(metric) or (0 if best_of is max else 1e18))
            if good
            else (measured[0] if measured else None)
        )
        row(f"guide: {name}", pick_guide)
    lines.append("")
    for label, base in (("at the same batch size", default_same), ("at batch 1", default_one)):
        if pick and base and pick["metrics"].get(metric) and base["metrics"].get(metric):
            a, b = pick["metrics"][metric], base["metrics"][metric]
            lines.append(f"Speedup{which} over the default load {label}: {(a / b if metric != 'latency_p50_ms' else b / a):.2f}x")
    lines.append(f"Loader written by `recommend --write`, imported in a fresh process: {json.dumps(loader)}")
    lines.append("")
    return lines


def backup(db: Path, copy: Path) -> None:
    """Copy the store (every trial) next to the tables, for BENCHMARKS.md and the forecast benchmark."""
    import sqlite3

    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="where models and the database live")
    parser.add_argument("--out", type=Path, required=True, help="where the tables, trials and logs go")
    parser.add_argument("--models", default="falcon-7b,llama-8b")
    parser.add_argument("--workloads", default="throughput,latency,limited")
    parser.add_argument("--trials", default="12", help="candidates per study at most")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every study's minutes (BUDGETS) by this")
    parser.add_argument("--patience", default="5")
    parser.add_argument("--max-repeats", default="2", help="timed repeats per batch size at most (a lease is short)")
    parser.add_argument(
        "--deadline",
        type=float,
        metavar="S",
        help="wall-clock seconds for the whole run: a study still "
        "running when only the time for recommend and the loader is left is stopped gently (a lease's command limit)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: check the script itself")
    args = parser.parse_args()
    began = time.monotonic()

    def left() -> float:
        return float("inf") if args.deadline is None else args.deadline - (time.monotonic() - began)

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    autotune = Autotune(args.work / "autotune.db", args.out / "commands.log")
    report = ["# autotune end to end", ""]
    autotune("gpus")
    report += ["```", autotune("gpus").strip(), "```", ""]
    for name in args.models.split(","):
        path = build(name, args.work / "models" / name, args.smoke)
        for workload in args.workloads.split(","):
            if left() < 2 * RESERVE_S:
                log(f"{name} / {workload}: skipped, {left():.0f} s left before the deadline")
                report += [f"### {name}, workload `{workload}`", "", f"Not run: {left():.0f} s were left before the deadline.", ""]
                continue
            options = list(WORKLOADS[workload])
            if args.smoke:
                options = [o if o not in ("512", "128") else {"512": "16", "128": "8"}[o] for o in options]
                options += ["--device", "cpu"]
            log(f"{name} / {workload}: add")
            autotune("add", str(path), *options)
            started = time.perf_counter()
            log(f"{name} / {workload}: tune")
            space = SPACES[workload] if not args.smoke else "dtype=fp32,bf16 attn=sdpa,eager quant=none batch=1,2"
            minutes = BUDGETS[workload] * args.budget_scale
            autotune(
                "tune",
                str(path),
                "--trials",
                args.trials,
                "--budget-minutes",
                f"{minutes:g}",
                "--patience",
                args.patience,
                "--space",
                space,
                "--max-repeats",
                args.max_repeats,
                check=False,
                timeout=min(3600.0, left() - RESERVE_S),
            )
            tune_seconds = time.perf_counter() - started
            trials = autotune.json("trials", str(path))
            loader_path = args.work / f"loader_{name.replace('-', '_')}_{workload.replace('-', '_')}.py"
            loader_path.unlink(missing_ok=True)
            # recommend exits 1 when nothing fits (its JSON says why)
            rec = autotune.json("recommend", str(path), "--no-code", ok=(0, 1))
            relaxed = autotune.json("recommend", str(path), "--min-quality", str(RELAXED_FLOOR), "--no-code", ok=(0, 1))
            if rec.get("recommendation"):
                autotune("recommend", str(path), "--write", str(loader_path))
                floor = "the workload's quality floor"
            elif relaxed.get("recommendation"):
                # Random weights can put bf16 itself below the floor; the loader of the pick at the
                # relaxed floor still shows the whole path (written, imported, generating).
                autotune("recommend", str(path), "--min-quality", str(RELAXED_FLOOR), "--write", str(loader_path))
                floor = f"the quality floor at {RELAXED_FLOOR:.0%} (nothing met the workload's floor)"
            (args.out / "recommendations.jsonl").open("a").write(
                json.dumps({"model": name, "workload": workload, **rec}, default=str) + "\n"
            )
            loader = (
                run_loader(loader_path, 16 if args.smoke else 512, args.smoke) if loader_path.exists() else {"error": "no loader written"}
            )
            if loader_path.exists():
                loader["written_for"] = floor
            report += summarise(name, workload, trials, rec, relaxed, loader, tune_seconds, space)
            (args.out / "e2e.md").write_text("\n".join(report) + "\n")
            backup(args.work / "autotune.db", args.out / f"autotune-{'-'.join(args.models.split(','))}.db")
            log(f"{name} / {workload}: done")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
