"""Regret of `autotune tune` against an exhaustive grid of the same space, timed on the same GPU.

For each model (random weights of a real shape, built on the machine) and workload, this runs

- **`autotune tune MODEL --budget-minutes 10`**, run as a user runs it, in a fresh database and a
  compile cache of its own (one per model and workload, cold); and the same again with another
  seed (a second database, the cache the first study left: what a second study of the same model
  and batch sizes pays). ``compile_cache.json`` pairs the two studies' compile seconds per
  candidate and batch size, with the worker's own reading of the cache (cold or warm);
- the **grid**, after the model's studies: every candidate of the space at every batch size its
  pairs use, timed in plain PyTorch (its own process per candidate: load, warm-up calls until two
  agree, then repeats until their spread is at most 5% (3 to 10), the median, synchronised; static
  caches first, and a point whose warm call is 30% behind the best so far at its batch size is
  ``screened``: that call's figure, no repeats, never the grid's best). It
  starts from the compile caches the studies left, which cannot help them any more, and its
  GPU-minutes count compiles served from those caches;

then the regret of each recommendation: the share of the grid's best figure it gives up, read
from the grid's own timing of the recommended candidate (throughput: 1 - rec/best; latency:
1 - best/rec), the GPU-minutes of each, candidates per GPU-minute, and, for every candidate and
batch size both measured, autotune's figure against the grid's.

With one GPU visible (``CUDA_VISIBLE_DEVICES``, ``--gpus`` or NVML) every task runs alone, one
after the other, models built one at a time; with several, one task per GPU at once (they share
the host's CPUs, which the report and the rows' ``concurrent`` key say). Results are written as
they come to --out: `regret.json` (one object per model and workload: model, workload, gpu,
gpus, concurrent, date, regret, tune_gpu_minutes, grid_gpu_minutes, candidates_per_gpu_minute,
recommended, grid_best, and the second run's), `compile_cache.json`, `raw.json` (every grid point
and every trial: ``--resume`` keeps the tasks it holds and runs the rest, with the compile caches
under --work left as they are), the studies' databases, `regret.md` and `regret.log`.
``--results FILE`` merges the finished rows into FILE (``benchmarks/results/regret_gpu.json``:
:func:`merge_rows` keeps every other row, the H200 pair's among them, and replaces a rerun's).

    python benchmarks/regret_gpu.py --work /tmp/regret --out OUT \
        --pairs llama-8b:throughput,llama-8b:latency,falcon-7b:throughput --results OUT/regret_gpu.json
    python benchmarks/regret_gpu.py --tiny --work /tmp/regret-tiny --out /tmp/regret-tiny/out   # CPU, tiny models

What issue 25's three pairs cost on one GPU, estimated from measured per-candidate costs (§6 on
an H200: a static-cache grid candidate 52-64 s at batch 1, the others about 35 s, a study 1.8-2.0
GPU-minutes of measuring and 2.0-2.2 wall; issue 25 on an H100: a throughput study at batch 1 and
16, 5.9 minutes; a static cache compiles 35-80 s per batch size cold at 2-8B): the studies about
26 device-minutes (Llama-3-8B throughput 6 + 5, latency 2 + 2, Falcon-7B throughput 6 + 5, the
second seeds a little less for the warm cache), the grids about 25 (Llama-3-8B at batch 1 and 16,
14 candidates: about 14, its 6 bitsandbytes variants screened after their warm-up calls; Falcon-7B,
whose bitsandbytes variants load once and stop: about 11), building the two models about 3: about
54 device-minutes in all,
in 6 to 7 calls of 10 minutes under `benchmarks/background.sh` (``start`` then ``wait`` while it
exits 3), on two or three machines of 30 minutes held (``--resume`` with raw.json copied back).
That is more than the 25 device-minutes issue 25 allows for its whole GPU session; the pairs are
ordered most wanted first (``--pairs``), and ``--deadline`` starts no task that cannot end in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


#: The space of every study and of the grid: dtype x attention x static cache x bitsandbytes (the
#: rules drop what cannot run: bitsandbytes with a compiled static cache, LLM.int8 in bf16).
SPACE = "dtype=bf16,fp16 attn=sdpa,eager quant=none,bnb-8bit,bnb-4bit-nf4 static_cache=false,true placement=cuda"
TINY_SPACE = "dtype=fp32,bf16 attn=sdpa,eager quant=none,bnb-8bit static_cache=false placement=cpu"
PROMPT, NEW = 512, 128
TINY_PROMPT, TINY_NEW = 32, 8
#: Batch sizes: the latency workload measures batch 1; the throughput one batch 1 and 16.
BATCHES = {"latency": (1,), "throughput": (1, 16)}
TINY_BATCHES = {"latency": (1,), "throughput": (1, 4)}
#: The grid's timing, the same stopping rule as the worker's (min 3, max 10 repeats, until the
#: spread (p90 - p10) / p50 is at most 5%, 60 s per series), after warm-up calls that go on until
#: two agree within 5% (at least 2, at most 6). Three fixed repeats were too few where a
#: batch-1 loop spread 10% or more (BENCHMARKS §6: the grid's static cache 864-974 ms over three).
GRID_MIN_REPEATS = 3
GRID_MAX_REPEATS = 10
GRID_TARGET_SPREAD = 0.05
GRID_TIME_CAP_S = 60.0
GRID_WARMUP = 2
GRID_MAX_WARMUP = 6
#: A grid point whose last warm-up call is this far behind the grid's best throughput so far at
#: its batch size is screened: bitsandbytes at 7-8B is 1.4-5x slower than bf16 at small batch
#: (the product design), and its repeats were most of the grid's time; a margin this wide is
#: far outside any repeat spread measured here (§1, §6: up to 13.5%).
GRID_SCREEN_MARGIN = 0.3


def log(message: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, file=sys.stderr, flush=True)
    if LOG is not None:
        with LOG.open("a") as fh:
            fh.write(line + "\n")


LOG: Path | None = None


# -- the grid: one candidate in plain PyTorch ---------------------------------------------------------

GRID_CODE = r"""
import json, statistics, sys, time
spec = json.loads(sys.argv[1])
import torch, transformers
transformers.logging.set_verbosity_error()
kwargs = {"dtype": getattr(torch, spec["dtype"]), "attn_implementation": spec["attn"], "device_map": spec["device"]}
if spec["quant"] == "bnb-8bit":
    kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
elif spec["quant"] == "bnb-4bit-nf4":
    kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                    bnb_4bit_compute_dtype=getattr(torch, spec["dtype"]))
out = {"spec": spec, "sizes": {}}
started = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(spec["path"], **kwargs).eval()
out["load_seconds"] = time.perf_counter() - started
if spec["quant"] != "none":
    layers = [m for m in model.modules() if type(m).__name__ in ("Linear8bitLt", "Linear4bit")]
    if not layers:
        out["status"] = "unsupported"
        out["reason"] = "bitsandbytes converted no layer"
        print(json.dumps(out)); sys.exit(0)
cuda = torch.cuda.is_available() and spec["device"] != "cpu"
def sync():
    if cuda: torch.cuda.synchronize()
g = torch.Generator().manual_seed(0)
for batch in spec["batches"]:
    ids = torch.randint(100, model.config.vocab_size - 100, (batch, spec["prompt"]), generator=g).to(model.device)
    gen = {"max_new_tokens": spec["new"], "min_new_tokens": spec["new"], "do_sample": False,
           "pad_token_id": model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0}
    if spec["static"]:
        gen["cache_implementation"] = "static"
    def call():
        sync(); t = time.perf_counter()
        o = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen)
        sync(); return time.perf_counter() - t, o
    def spread(v):
        if len(v) < 2: return 0.0
        q = statistics.quantiles(v, n=10, method="inclusive")
        return (q[8] - q[0]) / statistics.median(v)
    try:
        warm = []
        while len(warm) < spec["max_warmup"]:
            warm.append(call()[0])
            if len(warm) >= spec["warmup"] and abs(warm[-1] - warm[-2]) <= spec["target"] * min(warm[-2:]):
                break
        beat = (spec.get("beat") or {}).get(str(batch))
        if beat and len(warm) >= 2 and batch * spec["new"] / warm[-1] < beat * (1 - spec["screen_margin"]):
            # a warm call far behind the best so far at this size: it cannot be the grid's best
            out["sizes"][str(batch)] = {"status": "screened", "warmup_seconds": warm, "throughput": batch * spec["new"] / warm[-1],
                                        "beat": beat, "first_call_s": warm[0]}
            continue
        times = []
        started_series = time.monotonic()
        while len(times) < spec["max_repeats"]:
            if len(times) >= spec["min_repeats"] and spread(times) <= spec["target"]: break
            if times and time.monotonic() - started_series > spec["time_cap_s"]: break
            seconds, o = call()
            times.append(seconds)
        med = statistics.median(times)
        new = int(o.shape[1] - ids.shape[1])
        out["sizes"][str(batch)] = {"status": "ok", "seconds": times, "median_s": med, "first_call_s": warm[0],
                                    "warmup_seconds": warm, "spread": spread(times),
                                    "latency_ms": med * 1e3, "throughput": batch * new / med, "new_tokens": new,
                                    "compiled": getattr(model, "_compiled_call", None) is not None}
    except torch.cuda.OutOfMemoryError as exc:
        out["sizes"][str(batch)] = {"status": "oom", "reason": str(exc).splitlines()[0]}
        torch.cuda.empty_cache()
    except Exception as exc:
        out["sizes"][str(batch)] = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
out["status"] = "ok"
out["seconds"] = time.perf_counter() - started
print(json.dumps(out))
"""


def candidates(space: str, tiny: bool) -> list[dict[str, Any]]:
    """The grid's candidates: the same rules as the study's space (autotune's own validity rules)."""
    from autotune.candidate import Candidate, rejection
    from autotune.environment import probe
    from autotune.search.space import parse_restriction
    from autotune.workload import Workload

    allowed = parse_restriction(space)
    env = probe()
    workload = Workload(
        device="cpu" if tiny else "cuda", prompt_tokens=TINY_PROMPT if tiny else PROMPT, new_tokens=TINY_NEW if tiny else NEW
    )
    caps = {"attn_implementations": ["eager", "sdpa"]}
    out = []
    placement = allowed["placement"][0]
    for dtype in allowed["dtype"]:
        for attn in allowed["attn"]:
            for quant in allowed["quant"]:
                for static in allowed["static_cache"]:
                    c = Candidate(dtype=dtype, attn=attn, quant=quant, static_cache=static, placement=placement)
                    if rejection(c, env, caps, workload, None) is None:
                        out.append({"dtype": dtype, "attn": attn, "quant": quant, "static": static, "label": c.label(), "key": c.key()})
    return out


def on_gpu(gpu: str, **extra: str) -> dict[str, str]:
    """This process's environment for a child on ``gpu`` (``cpu``: as it is)."""
    env = {**os.environ, **extra}
    if gpu != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def grid_one(
    path: Path,
    spec: dict[str, Any],
    batches: tuple[int, ...],
    cache: Path,
    tiny: bool,
    timeout: float,
    gpu: str,
    beat: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Time one candidate at every batch size in a fresh process; never raises.

    ``beat`` holds the grid's best throughput so far per batch size: a size whose last warm-up
    call is more than :data:`GRID_SCREEN_MARGIN` behind it is recorded ``screened`` (that call's
    figure, no repeats): it cannot be the grid's best, and it is never compared with autotune's.
    """
    full = {
        **spec,
        "beat": {str(k): v for k, v in (beat or {}).items()},
        "screen_margin": GRID_SCREEN_MARGIN,
        "path": str(path),
        "batches": list(batches),
        "prompt": TINY_PROMPT if tiny else PROMPT,
        "new": TINY_NEW if tiny else NEW,
        "warmup": GRID_WARMUP,
        "max_warmup": GRID_MAX_WARMUP,
        "min_repeats": GRID_MIN_REPEATS,
        "max_repeats": GRID_MAX_REPEATS,
        "target": GRID_TARGET_SPREAD,
        "time_cap_s": GRID_TIME_CAP_S,
        "device": "cpu" if tiny else "cuda:0",
    }
    env = on_gpu(gpu, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", GRID_CODE, json.dumps(full)], capture_output=True, text=True, timeout=timeout, env=env)
        lines = proc.stdout.strip().splitlines()
        result = (
            json.loads(lines[-1])
            if proc.returncode == 0 and lines
            else {"status": "crash", "reason": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        )
    except subprocess.TimeoutExpired:
        result = {"status": "timeout", "reason": f"over {timeout:.0f} s"}
    result["wall_seconds"] = time.perf_counter() - started
    result["spec"] = spec
    return result


# -- the study, as a user runs it ---------------------------------------------------------------------


def autotune(args: list[str], db: Path, cache: Path, timeout: float, gpu: str = "cpu") -> tuple[int, str, str, float]:
    env = on_gpu(
        gpu, AUTOTUNE_DB=str(db), AUTOTUNE_CACHE=str(cache), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # finish the trial in hand, then stop
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    return proc.returncode, out, err, time.perf_counter() - started


def tune(
    model: str, path: Path, workload: str, run: str, seed: int, work: Path, cache: Path, budget: float, tiny: bool, timeout: float, gpu: str
) -> dict[str, Any]:
    db = work / f"study_{model}_{workload}_{run}.db"
    db.unlink(missing_ok=True)
    batches = (TINY_BATCHES if tiny else BATCHES)[workload]
    space = (TINY_SPACE if tiny else SPACE) + f" batch={','.join(map(str, batches))}"
    add = [
        "add",
        str(path),
        "--objective",
        workload,
        "--prompt-tokens",
        str(TINY_PROMPT if tiny else PROMPT),
        "--new-tokens",
        str(TINY_NEW if tiny else NEW),
        "--max-batch",
        str(max(batches)),
        "--max-memory",
        "none",
        "--min-quality",
        "0",
        "--device",
        "cpu" if tiny else "cuda",
    ]
    code, out, err, _ = autotune(add, db, cache, 300, gpu)
    if code != 0:
        return {"error": f"autotune add failed: {err.strip()[-300:]}"}
    command = ["tune", str(path), "--budget-minutes", f"{budget:g}", "--space", space, "--seed", str(seed)]
    code, out, err, seconds = autotune(command, db, cache, timeout, gpu)
    trials = json.loads(autotune(["trials", str(path), "--json"], db, cache, 120, gpu)[1] or "[]")
    code_rec, rec_out, rec_err, _ = autotune(["recommend", str(path), "--json", "--no-code"], db, cache, 120, gpu)
    try:
        rec = json.loads(rec_out)
        rec = rec[0] if isinstance(rec, list) else rec
    except ValueError:
        rec = {"message": rec_err.strip()[-300:]}
    rows = [t for s in trials for t in s["trials"]]
    spent = measuring_seconds(rows)
    return {
        "model": model,
        "workload": workload,
        "run": run,
        "seed": seed,
        "db": db.name,
        "exit": code,
        "wall_seconds": seconds,
        "measuring_seconds": spent,
        "stderr_tail": err[-3000:],
        "trials": rows,
        "stop_reason": trials[0]["stop_reason"] if trials else None,
        "recommendation": (rec or {}).get("recommendation"),
        "recommend_message": (rec or {}).get("message"),
        "notes": (rec or {}).get("notes"),
    }


def measuring_seconds(rows: list[dict[str, Any]]) -> float:
    """The study's own count of measuring time (:func:`autotune.search.results.spent_seconds`) from ``trials --json`` rows."""
    from datetime import datetime
    from types import SimpleNamespace

    from autotune.candidate import Candidate
    from autotune.search.results import spent_seconds

    def when(text: Any) -> datetime | None:
        return datetime.fromisoformat(str(text).rstrip("Z")) if text else None

    trials = [
        SimpleNamespace(
            candidate=Candidate.from_dict(t["candidate"]),
            status=t["status"],
            started_at=when(t["started_at"]),
            finished_at=when(t.get("finished_at")),
        )
        for t in rows
        if t.get("started_at")
    ]
    return spent_seconds(trials)  # type: ignore[arg-type]


# -- the queue over the GPUs ----------------------------------------------------------------------------


@dataclass
class Task:
    name: str
    kind: str  # grid or tune
    run: Any
    estimate_s: float
    result: Any = None
    gpu: str | None = None
    seconds: float = 0.0


@dataclass
class Queue:
    tasks: list[Task]
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: list[Task] = field(default_factory=list)

    def take(self) -> Task | None:
        with self.lock:
            left = self.deadline - time.monotonic()
            for i, task in enumerate(self.tasks):
                if task.estimate_s <= left:
                    return self.tasks.pop(i)
            if self.tasks:
                log(f"deadline: {len(self.tasks)} task(s) not started ({', '.join(t.name for t in self.tasks)})")
                self.tasks.clear()
            return None


def worker(queue: Queue, gpu: str, on_done: Any) -> None:
    while (task := queue.take()) is not None:
        started = time.perf_counter()
        log(f"gpu {gpu}: {task.name} ...")
        try:
            task.result = task.run(gpu)
        except Exception as exc:  # a broken task is reported, the others go on
            task.result = {"error": f"{type(exc).__name__}: {exc}"}
        task.seconds = time.perf_counter() - started
        task.gpu = gpu
        log(f"gpu {gpu}: {task.name} done in {task.seconds:.0f} s")
        with queue.lock:
            queue.done.append(task)
        on_done()


# -- the report -------------------------------------------------------------------------------------------


def grid_figures(grid: list[dict[str, Any]], workload: str, batches: tuple[int, ...], status: str = "ok") -> dict[tuple[str, int], float]:
    """(candidate key, batch) -> the grid's figure for the workload (tok/s, or ms for latency), of
    the points with ``status`` (``screened``: one warm call's figure, never a measurement)."""
    out = {}
    for result in grid:
        for size, m in (result.get("sizes") or {}).items():
            if m.get("status") != status or int(size) not in batches:
                continue
            if workload != "latency":
                out[(result["spec"]["key"], int(size))] = m["throughput"]
            elif "latency_ms" in m:
                out[(result["spec"]["key"], int(size))] = m["latency_ms"]
            else:  # a screened point keeps the call's seconds
                out[(result["spec"]["key"], int(size))] = m["warmup_seconds"][-1] * 1e3
    return out


def speed(workload: str, value: float) -> float:
    return 1.0 / value if workload == "latency" else value


def summarise(
    model: str, workload: str, grid: list[dict[str, Any]], runs: list[dict[str, Any]], grid_seconds: float, tiny: bool
) -> dict[str, Any]:
    from autotune.candidate import Candidate

    batches = (TINY_BATCHES if tiny else BATCHES)[workload]
    figures = grid_figures(grid, workload, batches)
    screened = grid_figures(grid, workload, batches, "screened")
    if not figures:
        return {"model": model, "workload": workload, "error": "the grid measured nothing"}
    best_key = max(figures, key=lambda k: speed(workload, figures[k]))
    labels = {r["spec"]["key"]: r["spec"]["label"] for r in grid}
    entry: dict[str, Any] = {
        "model": model,
        "workload": workload,
        "grid_best": {"label": labels[best_key[0]], "batch_size": best_key[1], "value": figures[best_key]},
        "grid_gpu_minutes": grid_seconds / 60,
        "grid_points": len(figures),
        "grid_screened": len(screened),
        "grid_candidates": len(grid),
    }
    for run in runs:
        rec = run.get("recommendation") or {}
        key = Candidate.from_dict(rec["candidate"]).key() if rec.get("candidate") else None
        value = figures.get((key, rec.get("batch_size"))) if key else None
        if value is None and key:  # the grid screened it out: far behind its best, by one warm call
            value = screened.get((key, rec.get("batch_size")))
        regret = None
        if value is not None:
            regret = 1 - speed(workload, value) / speed(workload, figures[best_key])
        minutes = run.get("measuring_seconds", 0) / 60
        measured = {t["label"] for t in run.get("trials", []) if t["status"] not in ("skipped",)}
        agreement = []
        for t in run.get("trials", []):
            if t["status"] != "ok":
                continue
            mine = t["metrics"].get("latency_p50_ms" if workload == "latency" else "throughput_tokens_per_s")
            theirs = figures.get((Candidate.from_dict(t["candidate"]).key(), t["batch_size"]))
            if mine and theirs:
                agreement.append(
                    {"label": t["label"], "batch_size": t["batch_size"], "autotune": mine, "grid": theirs, "difference": mine / theirs - 1}
                )
        prefix = "" if run["run"] == "first" else f"{run['run']}_"
        entry.update(
            {
                f"{prefix}regret": regret,
                f"{prefix}tune_gpu_minutes": minutes,
                f"{prefix}tune_wall_minutes": run.get("wall_seconds", 0) / 60,
                f"{prefix}candidates_per_gpu_minute": len(measured) / minutes if minutes else None,
                f"{prefix}candidates_measured": len(measured),
                f"{prefix}recommended": {
                    "label": rec.get("label"),
                    "batch_size": rec.get("batch_size"),
                    "autotune_value": rec.get("value"),
                    "grid_value": value,
                    "grid_value_screened": key is not None and (key, rec.get("batch_size")) not in figures and value is not None,
                }
                if rec
                else {"message": run.get("recommend_message") or run.get("error")},
                f"{prefix}stop_reason": run.get("stop_reason"),
                f"{prefix}seed": run.get("seed"),
                f"{prefix}agreement": agreement,
            }
        )
    if entry.get("tune_gpu_minutes"):
        entry["grid_over_tune"] = entry["grid_gpu_minutes"] / entry["tune_gpu_minutes"]
    return entry


def table(entries: list[dict[str, Any]], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| model | workload | grid best | recommended (seed 1) | regret | tune GPU-min | grid GPU-min | grid/tune | "
        "candidates/GPU-min | seed 2: recommended, regret, GPU-min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        if "error" in e:
            lines.append(f"| {e['model']} | {e['workload']} | {e['error']} |||||||")
            continue
        unit = "ms" if e["workload"] == "latency" else "tok/s"
        g = e["grid_best"]
        r = e.get("recommended") or {}
        s = e.get("second_recommended") or {}

        def pct(x: Any) -> str:
            return "-" if x is None else f"{x:.1%}"

        def num(x: Any, d: int = 1) -> str:
            return "-" if x is None else f"{x:,.{d}f}"

        lines.append(
            f"| {e['model']} | {e['workload']} | {g['label']} @{g['batch_size']}: {num(g['value'])} {unit} | "
            f"{r.get('label', r.get('message', '-'))} @{r.get('batch_size', '-')}: {num(r.get('grid_value'))} {unit} | "
            f"{pct(e.get('regret'))} | {num(e.get('tune_gpu_minutes'), 2)} | {num(e.get('grid_gpu_minutes'), 2)} | "
            f"{num(e.get('grid_over_tune'))}x | {num(e.get('candidates_per_gpu_minute'), 2)} | "
            f"{s.get('label', '-')} @{s.get('batch_size', '-')}, {pct(e.get('second_regret'))}, {num(e.get('second_tune_gpu_minutes'), 2)} |"
        )
    lines.append("")
    lines.append("autotune's figure against the grid's, for every candidate and batch both measured (seed 1 run):")
    lines.append("")
    lines.append("| model | workload | candidate | batch | autotune | grid | difference |")
    lines.append("|---|---|---|---|---|---|---|")
    for e in entries:
        for a in e.get("agreement", []):
            lines.append(
                f"| {e['model']} | {e['workload']} | {a['label']} | {a['batch_size']} | {a['autotune']:,.1f} | "
                f"{a['grid']:,.1f} | {a['difference']:+.1%} |"
            )
    return "\n".join(lines) + "\n"


# -- the compile cache's savings, and the results file ------------------------------------------------------


def compile_savings(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, workload, candidate and batch size both studies compiled: the first study's compile
    seconds (its cache cold for that graph, unless an earlier study of the run compiled it) against
    the second's (the same cache, which the first filled), from the studies' own trials.

    ``compile_seconds`` is the worker's first call less its p50 (the compile and what else the first
    call pays); ``warm`` is the worker's own reading of the cache (it added no file).
    """
    by_run: dict[tuple[str, str, str], dict[tuple[str, int], dict[str, Any]]] = {}
    for run in runs:
        table = by_run.setdefault((run.get("model", "?"), run.get("workload", "?"), run.get("run", "?")), {})
        for t in run.get("trials", []):
            seconds = (t.get("metrics") or {}).get("compile_seconds")
            if t.get("status") in ("ok", "screened") and seconds is not None:
                cache = (t.get("details") or {}).get("compile_cache") or {}
                table[(t["label"], t["batch_size"])] = {"seconds": seconds, "warm": cache.get("warm"), "added": cache.get("added")}
    out = []
    for (model, workload, run), first in sorted(by_run.items()):
        if run != "first":
            continue
        second = by_run.get((model, workload, "second"), {})
        for (label, batch), cold in sorted(first.items()):
            warm = second.get((label, batch))
            row = {"model": model, "workload": workload, "label": label, "batch_size": batch, "first_seconds": cold["seconds"]}
            row.update(first_cache_warm=cold["warm"], first_files_added=cold["added"])
            if warm is not None:
                row.update(second_seconds=warm["seconds"], second_cache_warm=warm["warm"], second_files_added=warm["added"])
                row["saved"] = 1 - warm["seconds"] / cold["seconds"] if cold["seconds"] > 0 else None
            out.append(row)
    return out


def savings_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Compile seconds per candidate and batch size: the first study (cache cold for the graph unless marked) "
        "against the second (the same cache):",
        "",
        "| model | workload | candidate | batch | first study s (cache) | second study s (cache) | saved |",
        "|---|---|---|---|---|---|---|",
    ]

    def cache(warm: Any, added: Any) -> str:
        return "?" if warm is None else ("warm" if warm else f"cold, +{added} files")

    for r in rows:
        second = (
            "-" if "second_seconds" not in r else f"{r['second_seconds']:.1f} ({cache(r['second_cache_warm'], r['second_files_added'])})"
        )
        saved = "-" if r.get("saved") is None else f"{r['saved']:.0%}"
        lines.append(
            f"| {r['model']} | {r['workload']} | {r['label']} | {r['batch_size']} | "
            f"{r['first_seconds']:.1f} ({cache(r['first_cache_warm'], r['first_files_added'])}) | {second} | {saved} |"
        )
    return "\n".join(lines) + "\n"


#: What the first rows of the results file were: one H200 of a two-GPU host while the other GPU ran
#: the other task (BENCHMARKS §6, 2026-11-29).
H200_PAIR = {
    "gpu": "NVIDIA H200",
    "gpus": 2,
    "concurrent": True,
    "date": "2026-11-29",
    "note": "2x H200, one task per GPU at once: each study's timings are of its own GPU, but both shared the host's CPUs",
}


def mark_two_h200(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results/regret_h200.json``'s rows as rows of the results file: measured on two H200s at once."""
    return [{**row, **H200_PAIR} for row in rows]


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("model"), row.get("workload"), row.get("gpu"), bool(row.get("concurrent")))


def merge_rows(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results file's rows with ``new`` merged in: a new row replaces the row of the same model,
    workload, GPU and concurrency (a rerun); every other row stays, in its place; the rest are appended.
    A row without a ``gpu`` key is refused: a figure whose GPU is not known cannot be compared."""
    for row in [*existing, *new]:
        if not row.get("gpu"):
            raise ValueError(f"a regret row without a gpu key: {row.get('model')} {row.get('workload')}")
    fresh = {row_key(r): r for r in new}
    merged = [fresh.pop(row_key(r), r) for r in existing]
    return merged + [r for r in new if row_key(r) in fresh]


def update_results(path: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``new`` into the results file at ``path`` (created if missing) and write it back."""
    existing = json.loads(path.read_text()) if path.exists() else []
    merged = merge_rows(existing, new)
    path.write_text(json.dumps(merged, indent=1, default=str) + "\n")
    return merged


def parse_pairs(text: str, known: tuple[str, ...]) -> list[tuple[str, str]]:
    """``llama-8b:latency,falcon-7b:throughput`` -> pairs; a bad item raises SystemExit with one line."""
    pairs = []
    for item in [i.strip() for i in text.split(",") if i.strip()]:
        model, _, workload = item.partition(":")
        if model not in known or workload not in BATCHES:
            raise SystemExit(
                f"regret_gpu: --pairs {item!r}: expected MODEL:WORKLOAD with MODEL one of {', '.join(known)} "
                f"and WORKLOAD one of {', '.join(BATCHES)}"
            )
        if (model, workload) not in pairs:
            pairs.append((model, workload))
    if not pairs:
        raise SystemExit("regret_gpu: --pairs names no pair")
    return pairs


def visible_gpus(chosen: str | None, environ: Any, tiny: bool) -> list[str]:
    """The GPUs to spread the tasks over, one task per GPU at a time: ``--gpus``, else
    ``CUDA_VISIBLE_DEVICES``, else every GPU NVML sees; ``["cpu"]`` for --tiny. With one, every
    task runs alone."""
    if tiny:
        return ["cpu"]
    if chosen:
        return [g for g in chosen.split(",") if g]
    if environ.get("CUDA_VISIBLE_DEVICES"):
        return [g for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g]
    from autotune.environment import probe_gpus

    return [str(g.index) for g in probe_gpus()[0]] or ["0"]


def gpu_name(tiny: bool, gpus: list[str]) -> str:
    """The name of the GPU(s) the tasks ran on, as NVML gives it (``cpu`` for --tiny)."""
    if tiny:
        return "cpu"
    from autotune.environment import probe_gpus

    found = probe_gpus()[0]
    names = sorted({g.name for g in found if str(g.index) in gpus or g.uuid in gpus} or {g.name for g in found})
    return " + ".join(names) or "unknown GPU"


# -- main -----------------------------------------------------------------------------------------------------


def build_models(names: list[str], work: Path, tiny: bool, gpus: list[str]) -> dict[str, Path]:
    """Build every model, a fresh process each: in parallel, one per GPU, on several GPUs; one after
    the other on one GPU (nothing shares the device or the host's CPUs with anything else)."""
    paths = {name: work / "models" / name for name in names}
    procs = []
    for i, name in enumerate(names):
        if (paths[name] / "config.json").exists():
            continue
        code = (
            "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]); from benchmarks.e2e_gpu import build; "
            "build(sys.argv[1], Path(sys.argv[2]), sys.argv[4] == '1')"
        )
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if not tiny else dict(os.environ)
        proc = subprocess.Popen([sys.executable, "-c", code, name, str(paths[name]), str(REPO), "1" if tiny else "0"], env=env)
        procs.append((name, proc))
        if len(gpus) == 1 and proc.wait() != 0:
            raise SystemExit(f"building {name} failed")
    for name, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"building {name} failed")
    return paths


def done_before(out: Path) -> dict[str, Any]:
    """Task name -> result of the tasks an earlier run of this script finished (its ``raw.json``)."""
    raw = out / "raw.json"
    if not raw.exists():
        return {}
    data = json.loads(raw.read_text())
    done: dict[str, Any] = {}
    for model, results in (data.get("grid") or {}).items():
        for r in results:
            if r.get("status") not in ("crash", "timeout") and r.get("spec"):
                done[f"grid {model} {r['spec']['label']}"] = r
    for r in data.get("tune") or []:
        if "error" not in r and r.get("model") and r.get("exit") == 0:
            done[f"tune {r['model']} {r['workload']} ({r['run']} run, seed {r['seed']})"] = r
    return done


def main() -> int:
    global LOG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="falcon-7b,llama-8b")
    parser.add_argument("--workloads", default="latency,throughput")
    parser.add_argument("--pairs", help="MODEL:WORKLOAD,... instead of every model with every workload")
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--seeds", default="1,2", help="the first run's seed and the second's (no second run: one seed)")
    parser.add_argument("--deadline", type=float, default=1500, help="seconds from the start; no task starts that cannot end by then")
    parser.add_argument("--gpus", help="GPU ids to spread the work over (default: CUDA_VISIBLE_DEVICES, else all NVML sees)")
    parser.add_argument("--resume", action="store_true", help="keep the tasks --out/raw.json holds and the compile caches; run the rest")
    parser.add_argument("--results", type=Path, help="a results file (benchmarks/results/regret_gpu.json) to merge the rows into")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a check of the script)")
    args = parser.parse_args()
    started = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    LOG = args.out / "regret.log"
    tiny = args.tiny
    gpus = visible_gpus(args.gpus, os.environ, tiny)
    known = ("falcon-7b", "llama-8b")
    if args.pairs:
        pairs = parse_pairs(args.pairs, known)
    else:
        pairs = [(m, w) for m in args.models.split(",") if m for w in args.workloads.split(",") if w]
        pairs = parse_pairs(",".join(f"{m}:{w}" for m, w in pairs), known)
    names = list(dict.fromkeys(m for m, _ in pairs))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    gpu = gpu_name(tiny, gpus)
    concurrent = len(gpus) > 1
    paths = build_models(names, args.work, tiny, gpus)
    log(
        f"models built ({time.monotonic() - started:.0f} s); GPUs {gpus} ({gpu}); "
        + ("one task per GPU at once" if concurrent else "one task at a time")
    )

    earlier = done_before(args.out) if args.resume else {}
    if earlier:
        log(f"resuming: {len(earlier)} task(s) done before are kept")
    grid_root = args.work / "grid-compile-cache"
    tune_root = args.work / "tune-cache"
    if not args.resume:
        for cache in (grid_root, tune_root):
            shutil.rmtree(cache, ignore_errors=True)
    tasks: list[Task] = []
    timeout = args.budget_minutes * 60 + 240
    grid_estimate = 20.0 if tiny else 45.0
    tune_estimate = 30.0 if tiny else 120.0

    ineffective: set[str] = set()  # models where bitsandbytes converted no layer
    best: dict[str, dict[int, float]] = {}  # model -> batch size -> the grid's best throughput so far
    best_lock = threading.Lock()
    grid_size: dict[str, int] = {}  # model -> how many grid candidates its space has

    def grid_task(model: str, spec: dict[str, Any], batches: tuple[int, ...]) -> Task:
        def run(gpu: str) -> Any:
            if spec["quant"] != "none" and model in ineffective:
                # as autotune does: once bitsandbytes converted no layer of a model, its other variants load the same
                return {
                    "status": "unsupported",
                    "reason": "bitsandbytes converted no layer (seen on another variant)",
                    "spec": spec,
                    "sizes": {},
                    "wall_seconds": 0.0,
                }
            # The grid runs after the model's studies and starts from the compile caches they left
            # (they are finished: nothing the grid compiles can help them); compiling is not timed.
            cache = grid_root / model
            for study_cache in sorted(tune_root.glob(f"{model}_*")):
                shutil.copytree(study_cache, cache, dirs_exist_ok=True)
            with best_lock:
                beat = dict(best.get(model, {}))
            result = grid_one(paths[model], spec, batches, cache, tiny, 900, gpu, beat)
            if result.get("status") == "unsupported":
                ineffective.add(model)
            with best_lock:
                mine = best.setdefault(model, {})
                for size, m in (result.get("sizes") or {}).items():
                    if m.get("status") == "ok":
                        mine[int(size)] = max(mine.get(int(size), 0.0), m["throughput"])
            return result

        return Task(f"grid {model} {spec['label']}", "grid", run, grid_estimate)

    def tune_task(model: str, workload: str, run_name: str, seed: int) -> Task:
        def run(gpu: str) -> Any:
            # past the script's deadline the study is stopped gently (Ctrl-C: the trial in hand finishes)
            left = min(timeout, queue.deadline - time.monotonic() + 30)
            # One compile cache per model and workload: the first study finds it cold, the second
            # (another seed) finds what the first compiled: the saving a second study of the same
            # model and batch sizes gets.
            cache = tune_root / f"{model}_{workload}"
            return tune(model, paths[model], workload, run_name, seed, args.work, cache, args.budget_minutes, tiny, left, gpu)

        return Task(f"tune {model} {workload} ({run_name} run, seed {seed})", "tune", run, tune_estimate)

    # Each model: its first studies, its second studies, then its grid (every batch size its pairs use).
    space = TINY_SPACE if tiny else SPACE
    batch_table = TINY_BATCHES if tiny else BATCHES
    for model in names:
        workloads = [w for m, w in pairs if m == model]
        for run_name, seed in zip(("first", "second"), seeds):
            tasks.extend(tune_task(model, w, run_name, seed) for w in workloads)
        batches = tuple(sorted({b for w in workloads for b in batch_table[w]}))
        # Static caches first, bitsandbytes last: the likely fastest set the figure the rest are screened against.
        ordered = sorted(candidates(space, tiny), key=lambda c: (not c["static"], c["quant"] != "none"))
        tasks.extend(grid_task(model, spec, batches) for spec in ordered)
        grid_size[model] = len(ordered)
    queue = Queue([t for t in tasks if t.name not in earlier], started + args.deadline)
    for task in tasks:
        if task.name in earlier:
            result = dict(earlier[task.name])
            task.gpu, task.seconds = result.pop("gpu", None), result.pop("task_seconds", 0.0)
            task.result = result
            queue.done.append(task)
            if task.kind == "grid":
                model = task.name.split(" ")[1]
                for size, m in (result.get("sizes") or {}).items():
                    if m.get("status") == "ok":
                        mine = best.setdefault(model, {})
                        mine[int(size)] = max(mine.get(int(size), 0.0), m["throughput"])

    def write() -> None:
        with queue.lock:
            done = list(queue.done)
        # The raw results first (they survive a bug below), then the summary.
        raw: dict[str, Any] = {"gpu": gpu, "concurrent": concurrent, "grid": {}, "tune": []}
        for model in names:
            raw["grid"][model] = [
                {**t.result, "gpu": t.gpu, "task_seconds": t.seconds}
                for t in done
                if t.kind == "grid" and t.name.startswith(f"grid {model} ")
            ]
        raw["tune"] = [{**(t.result or {}), "gpu": t.gpu, "task_seconds": t.seconds} for t in done if t.kind == "tune"]
        (args.out / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
        for db in args.work.glob("study_*.db"):
            shutil.copy(db, args.out / db.name)
        try:
            entries = []
            for model in names:
                grid = raw["grid"][model]
                grid_seconds = sum(g["task_seconds"] for g in grid)
                for workload in [w for m, w in pairs if m == model]:
                    runs = [r for r in raw["tune"] if r.get("model") == model and r.get("workload") == workload]
                    if grid and runs:
                        entry = summarise(model, workload, grid, sorted(runs, key=lambda r: r["run"] != "first"), grid_seconds, tiny)
                        entry.update(gpu=gpu, gpus=len(gpus), concurrent=concurrent, date=time.strftime("%Y-%m-%d"))
                        entry["grid_complete"] = len(grid) == grid_size[model]
                        entries.append(entry)
            savings = compile_savings(raw["tune"])
            (args.out / "regret.json").write_text(json.dumps(entries, indent=1, default=str))
            (args.out / "compile_cache.json").write_text(json.dumps(savings, indent=1, default=str))
            (args.out / "regret.md").write_text(table(entries, describe_machine(tiny, concurrent)) + "\n" + savings_table(savings))
        except Exception as exc:  # the raw results are written; the summary can be made again from them
            log(f"summary failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(queue, g, write), daemon=True) for g in gpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    write()
    if args.results and (args.out / "regret.json").exists():
        rows = json.loads((args.out / "regret.json").read_text())
        # only rows whose grid is whole: a partial grid's best may not be the space's
        finished = [r for r in rows if "error" not in r and r.get("regret") is not None and r.get("grid_complete")]
        merged = update_results(args.results, finished)
        log(f"{len(finished)} row(s) merged into {args.results} ({len(merged)} in all)")
    if (args.out / "regret.md").exists():
        print((args.out / "regret.md").read_text())
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


def describe_machine(tiny: bool, concurrent: bool) -> str:
    if tiny:
        return "CPU (tiny models, a check of the script)"
    from autotune.environment import probe

    env = probe()
    return (
        f"{env.summary()}; torch {env.versions.get('torch')}, transformers {env.versions.get('transformers')}, "
        f"bitsandbytes {env.versions.get('bitsandbytes')}; "
        + ("one task per GPU at once: tasks share the host's CPUs" if concurrent else "one task at a time on one GPU")
    )


if __name__ == "__main__":
    raise SystemExit(main())
