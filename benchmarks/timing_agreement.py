"""autotune's timing of a candidate against an independent plain-PyTorch timing of the same call.

A tuner whose figures are 10% off an independent measurement can rank two close candidates
wrongly (issue 25: +1.4%, +10.2% and +7.6% on three candidates of a Llama-3-8B shape on one H100;
BENCHMARKS §6: -10.5% and +10.5% on two H200s at once). This script times each candidate at each
batch size two ways, strictly one process at a time, interleaved over rounds (A B, then B A, ...)
so that a drift of the machine falls on both sides alike:

- **A, autotune**: one trial worker (``autotune.worker.launcher``), the request a study makes:
  the batch sizes largest first in one process (the search's falling ladder), the worker's
  warm-up, time-to-first-token series, end-to-end series and p50, the shared compile cache.
- **B, independent**: plain Transformers in a fresh process per batch size, no autotune code in
  the timed path: ``from_pretrained(dtype, attn_implementation, device_map)``, prompts
  ``randint(100, vocab - 100)`` with an all-ones mask, ``generate(max_new_tokens=min_new_tokens=
  NEW, do_sample=False)``, warm-up calls until two agree within 5% (at least 2, at most 6),
  then synchronised repeats until their spread ``(p90 - p10) / p50`` is at most 5% (at least 5,
  at most 15), the median.

Then **ablations** of B, each adding one of the worker's habits to the independent timing, so
that one run attributes a gap: ``one_warmup`` (a single warm-up call), ``ttft_first`` (the
worker's first-token-only calls before the series), ``sdpa_pin`` (the candidate's SDPA kernel
pinned; only for a candidate that pins one), ``cpu_pin`` (the process pinned to the cores and
thread count autotune's daemon gives a worker), ``quality_first`` (a quality pass's shape of work
first: 8 rows, 64-token prompts, 32 new tokens, a forward pass, then ``gc.collect`` and
``empty_cache``), ``min_new_off`` (no ``min_new_tokens``: the tokens counted are those made),
``worker_inputs`` (the worker's prompts: seeded ids that avoid special ids, its pad id and
padding), and ``same_process`` (every batch size in one process, smallest first, as ``autotune
measure``'s rising ladder and regret_gpu.py's grid measure them: a compiled static cache then
recompiles for the second size, and torch.compile's automatic dynamic shapes make that graph a
dynamic-batch one, which a third size reuses; batch 1 always gets a graph of its own, as
torch.compile specialises sizes 0 and 1; benchmarks/compile_shapes.py shows it on the CPU). ``--ablations auto`` (the
default) runs them only where A and B differ by more than the target, at that batch size, and
``same_process`` for the first compiled candidate whatever the gap: it is how autotune's worker
measures a second batch size, and what a server that serves several sizes from one process runs;
and ``dynamic_compile`` for that candidate (every size in one process, smallest first,
with ``CompileConfig(dynamic=True)``: one dynamic-batch graph compiled up front, which the next
sizes reuse; each size's compile seconds and graphs made are recorded, so that it shows what a
dynamic graph saves in compiling and costs in speed).

Outputs in --out: ``agreement.json`` (every run, every repeat), ``agreement.md`` (the table:
candidate, batch, autotune's figure, the independent figure, the difference, each side's spread
and range over rounds, the host's load; a verdict line per candidate; the ablations). Exit status
1 when a candidate misses the target (``--target``, 5%), 2 on bad input.

On one GPU (the issue's shape and candidates; the model is built once under --work)::

    python benchmarks/timing_agreement.py --build llama-8b --work /tmp/agree --out OUT \\
        --candidates bf16:sdpa:static,bf16:eager:static,bf16:sdpa --batches 1,16 --rounds 2

Cost, estimated from measured parts (BENCHMARKS §6 and §2 on H200, issue 25 on H100): a compiled
candidate's process compiles once per batch size (35-80 s cold at 2-8B; the compile cache, which A
and B share, shortens later ones), then times 10-25 s at batch 16; an uncompiled candidate at 8B
takes 4-5 s per batch-1 call. Two rounds of the three candidates at batch 1 and 16 are 12
processes: about 10-14 device-minutes; each ablation process about 1 more, the two one-process
checks of a compiled candidate 2-3 each (two compiles): about 18-20 in all with ``auto``. Run it
alone on the machine (no other task sharing the host's CPUs).

On the CPU, a check that it runs end to end (tiny random models; CPU timings under other load are
not GPU results)::

    python benchmarks/timing_agreement.py --cpu --tiny --work /tmp/agree-tiny --out /tmp/agree-tiny/out
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ABLATIONS = (
    "one_warmup",
    "ttft_first",
    "sdpa_pin",
    "cpu_pin",
    "quality_first",
    "min_new_off",
    "worker_inputs",
    "same_process",
    "dynamic_compile",
)
#: The ablations that time every batch size in one process (the others: one size per process).
ONE_PROCESS = ("same_process", "dynamic_compile")
TARGET = 0.05
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class BadInput(Exception):
    """A command-line value this script cannot use; its message is the one line printed."""


# -- the independent timing: plain Transformers, a fresh process ------------------------------------

PLAIN_CODE = r"""
import contextlib, gc, json, os, statistics, sys, time
spec = json.loads(sys.argv[1])
ablation = spec.get("ablation")
if ablation == "cpu_pin":
    cores = spec["cores"]
    os.sched_setaffinity(0, set(cores))
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
import torch, transformers
from transformers import StoppingCriteria, StoppingCriteriaList
transformers.logging.set_verbosity_error()
if ablation == "cpu_pin":
    torch.set_num_threads(len(spec["cores"]))
cuda = spec["device"] != "cpu"
def sync():
    if cuda: torch.cuda.synchronize()
def cpu_jiffies():
    with open("/proc/stat") as fh:
        f = [int(v) for v in fh.readline().split()[1:]]
    return sum(f[:8]) - f[3] - f[4], sum(f[:8])
def load_share(before, own_before):
    after = cpu_jiffies(); t = os.times(); own = t.user + t.system - own_before
    hz = os.sysconf("SC_CLK_TCK"); total = (after[1] - before[1]) / hz
    return round(min(1.0, max(0.0, ((after[0] - before[0]) / hz - own) / total)), 3) if total > 0 else None
def spread(v):
    if len(v) < 2: return 0.0
    q = statistics.quantiles(v, n=10, method="inclusive")
    return (q[8] - q[0]) / statistics.median(v)
started = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(
    spec["path"], dtype=getattr(torch, spec["dtype"]), attn_implementation=spec["attn"], device_map=spec["device"]).eval()
out = {"spec": spec, "load_seconds": time.perf_counter() - started, "sizes": {}}
pin = contextlib.nullcontext()
if ablation == "sdpa_pin" and spec.get("kernel"):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
    pin = sdpa_kernel([getattr(SDPBackend, names[spec["kernel"]])])
if ablation == "quality_first":
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(100, model.config.vocab_size - 100, (8, min(64, spec["prompt"])), generator=g).to(model.device)
    with torch.no_grad():
        model.generate(input_ids=rows, attention_mask=torch.ones_like(rows), max_new_tokens=32, do_sample=False, pad_token_id=0)
        model(input_ids=rows)
    gc.collect()
    if cuda: torch.cuda.empty_cache()
class FirstToken(StoppingCriteria):
    def __init__(self, n): self.n = n
    def __call__(self, ids, scores, **kw):
        return torch.full((ids.shape[0],), ids.shape[1] > self.n, dtype=torch.bool, device=ids.device)
batches = spec["batches"]
for index, batch in enumerate(batches):
    if index:
        gc.collect()
        if cuda: torch.cuda.empty_cache()
    if ablation == "worker_inputs":
        from autotune.candidate import Candidate
        from autotune.worker.measure import batch_inputs
        from autotune.worker.protocol import WorkerRequest
        from autotune.workload import Workload
        request = WorkerRequest(model_path=spec["path"], model_name="m", task="text-generation", candidate=Candidate(),
                                workload=Workload(prompt_tokens=spec["prompt"], new_tokens=spec["new"],
                                                  padding_share=spec.get("padding_share", 0.0)),
                                batch_sizes=(batch,), seed=spec.get("seed", 0))
        inputs, _ = batch_inputs(model, batch, request, left=True)
        from autotune.worker.measure import pad_id
        pad = pad_id(model)
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, model.config.vocab_size - 100, (batch, spec["prompt"]), generator=g).to(model.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        eos = model.config.eos_token_id
        pad = eos if isinstance(eos, int) else (eos[0] if eos else 0)
    gen = {"max_new_tokens": spec["new"], "do_sample": False, "pad_token_id": pad}
    if ablation != "min_new_off":
        gen["min_new_tokens"] = spec["new"]
    if spec["static"]:
        gen["cache_implementation"] = "static"
        if ablation == "dynamic_compile":
            gen["compile_config"] = transformers.CompileConfig(dynamic=True)
    def graphs():
        try:
            from torch._dynamo.utils import counters
            return int(counters["stats"]["unique_graphs"])
        except Exception:
            return 0
    graphs_before = graphs()
    def call(**extra):
        sync(); t = time.perf_counter()
        o = model.generate(**inputs, **gen, **extra)
        sync(); return time.perf_counter() - t, o
    try:
        with pin:
            warm = []
            cap = 1 if ablation == "one_warmup" else spec["max_warmup"]
            least = 1 if ablation == "one_warmup" else 2
            while len(warm) < cap:
                seconds, o = call()
                warm.append(seconds)
                if len(warm) >= least and (least == 1 or abs(warm[-1] - warm[-2]) <= spec["target"] * min(warm[-2:])):
                    break
            if ablation == "ttft_first":
                for _ in range(3):
                    call(stopping_criteria=StoppingCriteriaList([FirstToken(inputs["input_ids"].shape[1])]))
            graphs_warm = graphs()
            jiffies = cpu_jiffies(); t0 = os.times(); own = t0.user + t0.system
            times, made = [], []
            series_started = time.monotonic()
            while len(times) < spec["max_repeats"]:
                if len(times) >= spec["min_repeats"] and spread(times) <= spec["target"]: break
                if times and time.monotonic() - series_started > spec["time_cap_s"]: break
                seconds, o = call()
                times.append(seconds); made.append(int(o.shape[1] - inputs["input_ids"].shape[1]))
            med = statistics.median(times)
            new = statistics.median(made)
            out["sizes"][str(batch)] = {
                "status": "ok", "seconds": times, "median_s": med, "spread": spread(times),
                "low_s": min(times), "high_s": max(times), "warmup_seconds": warm, "new_tokens": made,
                "throughput": batch * new / med, "latency_ms": med * 1e3,
                "compiled": getattr(model, "_compiled_call", None) is not None,
                "graphs_made_warming": graphs_warm - graphs_before, "graphs_made_timing": graphs() - graphs_warm,
                "compile_seconds": max(0.0, warm[0] - med),
                "host": {"other_cpu_share": load_share(jiffies, own), "load_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}}
    except Exception as exc:
        out["sizes"][str(batch)] = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        if cuda: torch.cuda.empty_cache()
out["seconds"] = time.perf_counter() - started
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Spec:
    """One candidate as this script names it: ``dtype:attn[:static][:kernel=NAME]``."""

    dtype: str
    attn: str
    static: bool = False
    kernel: str | None = None

    @property
    def label(self) -> str:
        parts = [next(k for k, v in DTYPES.items() if v == self.dtype), self.attn]
        if self.kernel:
            parts.append(f"{self.kernel} kernel")
        if self.static:
            parts.append("static cache")
        return " ".join(parts)

    def candidate(self, placement: str) -> Any:
        from autotune.candidate import Candidate

        return Candidate(dtype=self.dtype, attn=self.attn, sdpa_kernel=self.kernel, static_cache=self.static, placement=placement)


def parse_specs(text: str) -> list[Spec]:
    """``bf16:sdpa:static,bf16:eager`` -> specs; a bad item raises :class:`BadInput` naming it."""
    specs = []
    for item in [i.strip() for i in text.split(",") if i.strip()]:
        parts = item.split(":")
        if len(parts) < 2 or parts[0] not in DTYPES or parts[1] not in ("sdpa", "eager"):
            raise BadInput(
                f"--candidates: {item!r} is not dtype:attn[:static][:kernel=NAME] with dtype in {', '.join(DTYPES)} and attn sdpa or eager"
            )
        static, kernel = False, None
        for extra in parts[2:]:
            if extra == "static":
                static = True
            elif extra.startswith("kernel=") and extra[7:] in ("flash", "efficient", "cudnn", "math"):
                kernel = extra[7:]
            else:
                raise BadInput(f"--candidates: {item!r}: unknown part {extra!r} (static, or kernel=flash|efficient|cudnn|math)")
        specs.append(Spec(DTYPES[parts[0]], parts[1], static, kernel))
    if not specs:
        raise BadInput("--candidates names no candidate")
    return specs


def parse_batches(text: str) -> list[int]:
    try:
        batches = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise BadInput(f"--batches must be whole numbers separated by commas, got {text!r}") from None
    if not batches or batches[0] < 1:
        raise BadInput(f"--batches must be whole numbers from 1 up, got {text!r}")
    return batches


# -- the two sides --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    path: Path
    device: str  # cpu or cuda:0
    prompt: int
    new: int
    cache: Path
    timeout_s: float


def run_autotune(setup: Setup, spec: Spec, batches: list[int]) -> dict[str, Any]:
    """Side A: one trial worker, the batch sizes largest first (the study's ladder); never raises."""
    from autotune.worker.launcher import launch
    from autotune.worker.protocol import Screen, WorkerRequest
    from autotune.workload import Workload

    placement = "cpu" if setup.device == "cpu" else "cuda"
    workload = Workload(prompt_tokens=setup.prompt, new_tokens=setup.new, device="cpu" if placement == "cpu" else "cuda")
    request = WorkerRequest(
        model_path=str(setup.path),
        model_name=setup.path.name,
        task="text-generation",
        candidate=spec.candidate(placement),
        workload=workload,
        batch_sizes=tuple(batches),
        ladder="falling",
        # The study's objective with no figure to beat yet: nothing is screened, every size is measured.
        screen=Screen(metric="throughput_tokens_per_s"),
        compile_cache=str(setup.cache),
        timeout_s=setup.timeout_s,
    )
    started = time.perf_counter()
    outcome = launch(request)
    sizes: dict[str, Any] = {}
    for result in outcome.results:
        if result.status != "ok":
            sizes[str(result.batch_size)] = {"status": result.status, "reason": result.reason}
            continue
        m, d = result.metrics, result.details
        e2e = [t / 1e3 for t in d["e2e_ms"]]
        sizes[str(result.batch_size)] = {
            "status": "ok",
            "seconds": e2e,
            "median_s": m["latency_p50_ms"] / 1e3,
            "spread": m["latency_spread"],
            "low_s": min(e2e),
            "high_s": max(e2e),
            "warmup_seconds": d.get("warmup_seconds"),
            "throughput": m["throughput_tokens_per_s"],
            "latency_ms": m["latency_p50_ms"],
            "ttft_ms": m.get("ttft_ms"),
            "compile_seconds": m.get("compile_seconds"),
            "recompiled_during_timing": d.get("recompiled_during_timing", 0),
            "host": d.get("machine"),
        }
    return {"side": "autotune", "spec": spec.label, "sizes": sizes, "wall_seconds": time.perf_counter() - started}


def run_plain(setup: Setup, spec: Spec, batches: list[int], ablation: str | None = None) -> dict[str, Any]:
    """Side B (or one of its ablations): plain Transformers in a fresh process; never raises."""
    from autotune.service.workers import cpu_shares

    full = {
        "path": str(setup.path),
        "dtype": spec.dtype,
        "attn": spec.attn,
        "static": spec.static,
        "kernel": spec.kernel,
        "device": setup.device,
        "prompt": setup.prompt,
        "new": setup.new,
        "batches": batches,
        "ablation": ablation,
        "cores": cpu_shares(1)[0],
        "target": TARGET,
        "max_warmup": 6,
        "min_repeats": 5,
        "max_repeats": 15,
        "time_cap_s": 90.0,
    }
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(setup.cache / "inductor"),
        "TRITON_CACHE_DIR": str(setup.cache / "triton"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PLAIN_CODE, json.dumps(full)], capture_output=True, text=True, timeout=setup.timeout_s, env=env
        )
        lines = proc.stdout.strip().splitlines()
        result = (
            json.loads(lines[-1])
            if proc.returncode == 0 and lines
            else {"sizes": {}, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        )
    except subprocess.TimeoutExpired:
        result = {"sizes": {}, "error": f"over {setup.timeout_s:.0f} s"}
    result.pop("spec", None)
    return {"side": ablation or "plain", "spec": spec.label, **result, "wall_seconds": time.perf_counter() - started}


# -- the comparison -------------------------------------------------------------------------------------


def figures(runs: list[dict[str, Any]], side: str, spec: str, batch: int) -> list[dict[str, Any]]:
    """Every ``ok`` measurement of ``side`` for ``spec`` at ``batch``, in run order."""
    return [
        r["sizes"][str(batch)]
        for r in runs
        if r["side"] == side and r["spec"] == spec and r.get("sizes", {}).get(str(batch), {}).get("status") == "ok"
    ]


def compare(runs: list[dict[str, Any]], specs: list[str], batches: list[int], target: float) -> list[dict[str, Any]]:
    """One row per candidate and batch size both sides measured: the medians over rounds of each
    side's per-run median throughput, the difference ``A / B - 1``, and whether it is within target."""
    rows = []
    for spec in specs:
        for batch in batches:
            a, b = figures(runs, "autotune", spec, batch), figures(runs, "plain", spec, batch)
            if not a or not b:
                rows.append({"candidate": spec, "batch": batch, "status": "not measured by both"})
                continue
            av = statistics.median(x["throughput"] for x in a)
            bv = statistics.median(x["throughput"] for x in b)
            rows.append(
                {
                    "candidate": spec,
                    "batch": batch,
                    "status": "ok",
                    "autotune": av,
                    "independent": bv,
                    "difference": av / bv - 1,
                    "within": abs(av / bv - 1) <= target,
                    "autotune_rounds": [x["throughput"] for x in a],
                    "independent_rounds": [x["throughput"] for x in b],
                    "autotune_spread": max(x["spread"] for x in a),
                    "independent_spread": max(x["spread"] for x in b),
                    "autotune_repeats": [len(x["seconds"]) for x in a],
                    "independent_repeats": [len(x["seconds"]) for x in b],
                    "recompiled_during_timing": sum(x.get("recompiled_during_timing") or 0 for x in a),
                    "host_other_cpu_share": max(((x.get("host") or {}).get("other_cpu_share") or 0.0 for x in a + b), default=None),
                }
            )
    return rows


def verdicts(rows: list[dict[str, Any]], target: float) -> tuple[list[str], bool]:
    """A line per candidate and whether all agree: a candidate fails when any batch size both sides
    measured differs by more than ``target``, or when no batch size was measured by both."""
    lines, ok = [], True
    for spec in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == spec and r["status"] == "ok"]
        if not mine:
            lines.append(f"{spec}: FAIL - no batch size was measured by both sides")
            ok = False
            continue
        worst = max(mine, key=lambda r: abs(r["difference"]))
        good = all(r["within"] for r in mine)
        ok &= good
        lines.append(
            f"{spec}: {'agrees' if good else 'FAIL'} - largest difference {worst['difference']:+.1%} at batch {worst['batch']} "
            f"(target within {target:.0%})"
        )
    return lines, ok


def ablation_rows(runs: list[dict[str, Any]], specs: list[str], batches: list[int]) -> list[dict[str, Any]]:
    """Each ablation's figure against the plain timing's and autotune's, where it was run."""
    out = []
    for spec in specs:
        for batch in batches:
            plain = figures(runs, "plain", spec, batch)
            auto = figures(runs, "autotune", spec, batch)
            for name in ABLATIONS:
                got = figures(runs, name, spec, batch)
                if not got or not plain:
                    continue
                value = statistics.median(x["throughput"] for x in got)
                base = statistics.median(x["throughput"] for x in plain)
                row = {"candidate": spec, "batch": batch, "ablation": name, "value": value, "vs_plain": value / base - 1}
                if auto:
                    row["autotune_vs_it"] = statistics.median(x["throughput"] for x in auto) / value - 1
                out.append(row)
    return out


def markdown(rows: list[dict[str, Any]], lines: list[str], ablations: list[dict[str, Any]], machine: str, target: float) -> str:
    def pct(x: Any) -> str:
        return "-" if x is None else f"{x:.1%}"

    text = [
        f"Machine: {machine}",
        "",
        "| candidate | batch | autotune tok/s (rounds) | independent tok/s (rounds) | difference | spread A / B (worst round) | "
        "repeats A / B | other processes' CPU share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            text.append(f"| {r['candidate']} | {r['batch']} | {r['status']} ||||||")
            continue
        a = ", ".join(f"{v:,.1f}" for v in r["autotune_rounds"])
        b = ", ".join(f"{v:,.1f}" for v in r["independent_rounds"])
        text.append(
            f"| {r['candidate']} | {r['batch']} | **{r['autotune']:,.1f}** ({a}) | **{r['independent']:,.1f}** ({b}) | "
            f"**{r['difference']:+.1%}** | {pct(r['autotune_spread'])} / {pct(r['independent_spread'])} | "
            f"{r['autotune_repeats']} / {r['independent_repeats']} | {pct(r['host_other_cpu_share'])} |"
        )
    text += ["", f"Verdicts (target: within {target:.0%}):", ""] + [f"- {line}" for line in lines]
    if ablations:
        text += [
            "",
            "Ablations: the independent timing with one of the worker's habits added.",
            "",
            "| candidate | batch | ablation | tok/s | against the plain timing | autotune against it |",
            "|---|---|---|---|---|---|",
        ]
        for a in ablations:
            text.append(
                f"| {a['candidate']} | {a['batch']} | {a['ablation']} | {a['value']:,.1f} | {a['vs_plain']:+.1%} | "
                f"{'-' if a.get('autotune_vs_it') is None else format(a['autotune_vs_it'], '+.1%')} |"
            )
    return "\n".join(text) + "\n"


# -- main -----------------------------------------------------------------------------------------------


def machine_line(cpu: bool) -> str:
    import platform

    if cpu:
        return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}); CPU timings, not GPU results"
    from autotune.environment import probe

    env = probe()
    return f"{env.summary()}; torch {env.versions.get('torch')}, transformers {env.versions.get('transformers')}"


def plan(specs: list[Spec], rounds: int) -> list[tuple[str, Spec]]:
    """The main runs, one process at a time: per candidate and round, A then B, the next round B then A."""
    order = []
    for spec in specs:
        for r in range(rounds):
            order.extend([("autotune", spec), ("plain", spec)] if r % 2 == 0 else [("plain", spec), ("autotune", spec)])
    return order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="a saved model directory")
    parser.add_argument("--build", choices=("llama-8b", "falcon-7b"), help="build this random-weight shape under --work")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--candidates", help="dtype:attn[:static][:kernel=NAME], comma-separated")
    parser.add_argument("--batches", default=None, help="batch sizes (default 1,16; --tiny 1,4)")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 512; --tiny 32)")
    parser.add_argument("--new", type=int, default=None, help="new tokens (default 128; --tiny 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of A and B, alternating their order (default 2)")
    parser.add_argument("--ablations", default="auto", help="auto (where a gap exceeds the target), all, none, or names")
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--deadline", type=float, default=3000, help="seconds from the start; no run starts after it")
    parser.add_argument("--cpu", action="store_true", help="time on the CPU")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama (with --cpu: a check of the script)")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except BadInput as exc:
        print(f"timing_agreement: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tiny = args.tiny
    specs = parse_specs(args.candidates or ("fp32:sdpa,fp32:eager" if args.cpu else "bf16:sdpa:static,bf16:eager:static,bf16:sdpa"))
    batches = parse_batches(args.batches or ("1,4" if tiny else "1,16"))
    if args.rounds < 1:
        raise BadInput(f"--rounds must be 1 or more, got {args.rounds}")
    if args.ablations in ("auto", "all", "none"):
        chosen = list(ABLATIONS) if args.ablations != "none" else []
    else:
        chosen = [a for a in args.ablations.split(",") if a]
        unknown = [a for a in chosen if a not in ABLATIONS]
        if unknown:
            raise BadInput(f"--ablations: unknown {', '.join(unknown)}; choose auto, all, none or from {', '.join(ABLATIONS)}")
    if args.cpu and any(s.static for s in specs):
        raise BadInput("--cpu: a static cache is compiled only on a GPU; leave :static out")
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            raise BadInput("no GPU is visible: pass --cpu to time on the CPU")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model_path:
        path = args.model_path
        if not (path / "config.json").exists():
            raise BadInput(f"--model-path {path}: no config.json there")
    elif tiny:
        from autotune.testing import build_tiny

        path = args.work / "tiny-llama"
        if not (path / "config.json").exists():
            build_tiny("llama", path)
    elif args.build:
        from benchmarks.e2e_gpu import build

        path = build(args.build, args.work / "models" / args.build, False)  # where regret_gpu.py builds it too
    else:
        raise BadInput("name the model: --model-path DIR, --build llama-8b|falcon-7b, or --tiny")
    setup = Setup(
        path=path,
        device="cpu" if args.cpu else "cuda:0",
        prompt=args.prompt or (32 if tiny else 512),
        new=args.new or (8 if tiny else 128),
        cache=args.work / "compile-cache",
        timeout_s=900.0,
    )
    runs: list[dict[str, Any]] = []
    deadline = started + args.deadline
    labels = [s.label for s in specs]
    machine = machine_line(args.cpu)

    def write() -> tuple[list[str], bool]:
        rows = compare(runs, labels, batches, args.target)
        lines, ok = verdicts(rows, args.target)
        abl = ablation_rows(runs, labels, batches)
        document = {
            "machine": machine,
            "model": str(path),
            "prompt": setup.prompt,
            "new": setup.new,
            "target": args.target,
            "rows": rows,
            "verdicts": lines,
            "all_agree": ok,
            "ablations": abl,
            "runs": runs,
        }
        (args.out / "agreement.json").write_text(json.dumps(document, indent=1, default=str))
        (args.out / "agreement.md").write_text(markdown(rows, lines, abl, machine, args.target))
        return lines, ok

    def one(side: str, spec: Spec, sizes: list[int]) -> None:
        if time.monotonic() > deadline:
            log(f"deadline: {side} {spec.label} not run")
            return
        log(f"{side} {spec.label} at batch {','.join(map(str, sizes))} ...")
        if side == "autotune":
            result = run_autotune(setup, spec, sizes)
        elif side in ONE_PROCESS:
            result = run_plain(setup, spec, sorted(sizes), side)
        else:
            result = run_plain(setup, spec, sizes, None if side == "plain" else side)
        runs.append(result)
        for size, m in sorted(result.get("sizes", {}).items(), key=lambda kv: int(kv[0])):
            figure = f"{m['throughput']:,.1f} tok/s, spread {m['spread']:.1%}" if m.get("status") == "ok" else m.get("reason")
            log(f"  batch {size}: {figure}")
        if result.get("error"):
            log(f"  failed: {result['error']}")
        write()

    for side, spec in plan(specs, args.rounds):
        if side == "autotune":
            one(side, spec, batches)
        else:
            for batch in batches:  # a fresh process per batch size: one compiled shape each
                one(side, spec, [batch])
    rows = compare(runs, labels, batches, args.target)
    # The largest gaps first: if the deadline comes, what is left unattributed is the smallest.
    order = sorted(
        (
            (spec, batch, next(r for r in rows if r["candidate"] == spec.label and r["batch"] == batch))
            for spec in specs
            for batch in batches
        ),
        key=lambda item: -abs(item[2].get("difference") or 0.0),
    )
    for spec, batch, row in order:
        gap = row["status"] == "ok" and not row["within"]
        first_static = spec == next((s for s in specs if s.static), None)
        if args.ablations == "auto" and not gap and not first_static:
            continue
        for name in chosen:
            if args.ablations == "auto" and not gap and name not in ONE_PROCESS:
                continue  # a compiled candidate within target: only the second-size checks below
            if name == "sdpa_pin" and not spec.kernel:
                continue  # pins nothing: the worker pins only a candidate's named kernel
            if name == "dynamic_compile" and not spec.static:
                continue  # nothing is compiled
            if name in ONE_PROCESS:
                if args.ablations == "auto" and not first_static:
                    continue  # the one-process checks cost a compile per size: the first compiled candidate only
                if batch != min(batches) or len(batches) < 2:
                    continue  # once per candidate, every size in one process
                one(name, spec, batches)
            else:
                one(name, spec, [batch])
    lines, ok = write()
    print((args.out / "agreement.md").read_text())
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0 if ok else 1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
