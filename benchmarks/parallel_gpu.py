"""One daemon with two workers against one worker, on the same study: wall-clock and timing fidelity.

Two GPUs (written for 2x H200). For one model (random weights of a real shape, built on the
machine) and one workload, the same space is tuned exhaustively twice, each time by
`autotune daemon --once --exhaustive` in a fresh database and a fresh compile cache:

- **alone**: `--gpus 0` — one worker, one candidate at a time (the other GPU idle);
- **concurrent**: `--gpus 0,1` — two workers, each measuring a different candidate at once,
  each pinned to half the host's cores.

It prints (and writes to --out as `parallel.md` and `parallel.json`) the wall-clock time of each
run, and for every candidate and batch size measured in both, its figure alone and concurrent and
the difference: how much two trials on one host distort each other's timings (the target: within
5%). Nothing is made up: a candidate measured in one run only is listed as such.

    python benchmarks/parallel_gpu.py --work /tmp/parallel --out OUT --model llama-8b
    python benchmarks/parallel_gpu.py --tiny --work /tmp/parallel-tiny --out /tmp/parallel-tiny/out   # CPU: cpu0 vs cpu0,cpu1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SPACE = "dtype=bf16,fp16 attn=sdpa,eager quant=none,bnb-4bit-nf4 static_cache=false placement=cuda batch=1,16"
TINY_SPACE = "dtype=fp32,bf16 attn=sdpa,eager quant=none static_cache=false placement=cpu batch=1,4"
PROMPT, NEW = 512, 128
TINY_PROMPT, TINY_NEW = 32, 8
TARGET = 0.05


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def autotune(args: list[str], env: dict[str, str], timeout: float, log_file: Path | None = None) -> tuple[int, str, float]:
    """``python -m autotune ARGS`` as a user runs it; returns (exit code, stdout, seconds)."""
    started = time.perf_counter()
    with open(log_file or os.devnull, "a") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "autotune", *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=timeout
        )
    return proc.returncode, proc.stdout, time.perf_counter() - started


def run(name: str, gpus: str, model: Path, work: Path, tiny: bool, timeout: float) -> dict[str, Any]:
    """Tune ``model`` exhaustively with a daemon on ``gpus`` in a fresh database; its wall clock and figures."""
    root = work / name
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    env = {
        **os.environ,
        "AUTOTUNE_DB": str(root / "autotune.db"),
        "AUTOTUNE_CACHE": str(root / "cache"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    add = ["add", str(model), "--objective", "throughput", "--max-memory", "none", "--min-quality", "0"]
    add += ["--prompt-tokens", str(TINY_PROMPT if tiny else PROMPT), "--new-tokens", str(TINY_NEW if tiny else NEW)]
    add += ["--max-batch", "4" if tiny else "16", "--device", "cpu" if tiny else "cuda"]
    code, _, _ = autotune(add, env, 600, root / "add.log")
    if code != 0:
        raise SystemExit(f"autotune add failed; see {root / 'add.log'}")
    space = TINY_SPACE if tiny else SPACE
    log(f"{name}: autotune daemon --once --exhaustive --gpus {gpus}")
    code, _, seconds = autotune(
        ["daemon", "--once", "--exhaustive", "--gpus", gpus, "--space", space, "--poll", "1"], env, timeout, root / "daemon.log"
    )
    if code != 0:
        raise SystemExit(f"the daemon ({name}) exited {code}; see {root / 'daemon.log'}")
    code, out, _ = autotune(["trials", str(model), "--json"], env, 300)
    rows = [t for study in json.loads(out or "[]") for t in study["trials"]]
    figures = {}
    for row in rows:
        value = (row.get("metrics") or {}).get("throughput_tokens_per_s")
        if row.get("status") == "ok" and row.get("origin") != "confirm" and value:
            figures[f"{row['label']} @{row['batch_size']}"] = float(value)
    log(f"{name}: {seconds:.0f} s wall clock, {len(figures)} candidate x batch figures")
    return {"gpus": gpus, "wall_seconds": round(seconds, 1), "figures": figures, "log": str(root / "daemon.log")}


def table(alone: dict[str, Any], concurrent: dict[str, Any], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| run | GPUs | wall clock |",
        "|---|---|---|",
        f"| alone (one worker) | `--gpus {alone['gpus']}` | {alone['wall_seconds']:.0f} s |",
        f"| concurrent (two workers) | `--gpus {concurrent['gpus']}` | {concurrent['wall_seconds']:.0f} s |",
        "",
        f"Speed-up: {alone['wall_seconds'] / concurrent['wall_seconds']:.2f}x",
        "",
        "| candidate @ batch | alone tok/s | concurrent tok/s | concurrent vs alone |",
        "|---|---|---|---|",
    ]
    differences = []
    for key in sorted(set(alone["figures"]) | set(concurrent["figures"])):
        a, c = alone["figures"].get(key), concurrent["figures"].get(key)
        if a is None or c is None:
            lines.append(f"| {key} | {a or 'not measured'} | {c or 'not measured'} | - |")
            continue
        differences.append(c / a - 1)
        lines.append(f"| {key} | {a:,.1f} | {c:,.1f} | {c / a - 1:+.1%} |")
    if differences:
        within = sum(1 for d in differences if abs(d) <= TARGET)
        lines += [
            "",
            f"Median difference {statistics.median(differences):+.1%}; largest {max(differences, key=abs):+.1%}; "
            f"{within} of {len(differences)} within {TARGET:.0%}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="models, databases and logs")
    parser.add_argument("--out", type=Path, required=True, help="where parallel.md and parallel.json go")
    parser.add_argument("--model", default="llama-8b", help="falcon-7b or llama-8b (random weights of that shape)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, workers cpu0 and cpu0,cpu1 (to try the script)")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds each daemon run may take")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    from autotune.environment import probe
    from benchmarks.e2e_gpu import build

    environment = probe()
    if not args.tiny and len(environment.gpus) < 2:
        raise SystemExit(f"this needs two GPUs; NVML sees {len(environment.gpus)} ({environment.nvml_error or environment.summary()})")
    model = build(args.model, args.work / "models" / ("tiny" if args.tiny else args.model), args.tiny)
    one, two = ("cpu0", "cpu0,cpu1") if args.tiny else ("0", "0,1")
    alone = run("alone", one, model, args.work, args.tiny, args.timeout)
    concurrent = run("concurrent", two, model, args.work, args.tiny, args.timeout)
    machine = f"{environment.summary()}, {os.cpu_count()} CPU cores"
    text = table(alone, concurrent, machine)
    (args.out / "parallel.md").write_text(text)
    (args.out / "parallel.json").write_text(json.dumps({"machine": machine, "alone": alone, "concurrent": concurrent}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
