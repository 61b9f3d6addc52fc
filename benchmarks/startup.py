"""How fast the read-only commands start: each is a fresh process, as a user runs it.

Times ``autotune recommend``, ``status``, ``trials MODEL``, ``models`` and ``report MODEL``
(commands this autotune does not have are skipped) against a store holding a few models and
trials, and checks that none of them imports torch or Transformers. Prints the median of N runs after a warm-up, with the
minimum and maximum. The issue's target: under 0.5 s on this project's machines.

    python benchmarks/startup.py [--runs 7] [--db PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autotune.candidate import Candidate  # noqa: E402
from autotune.environment import Environment, Gpu, probe  # noqa: E402
from autotune.registry import ResolvedModel  # noqa: E402
from autotune.store import Store  # noqa: E402
from autotune.workload import MemoryLimit, Workload  # noqa: E402

TARGET_S = 0.5
#: Runs the command in-process the way the entry point does, then reports what it imported.
PROBE = (
    "import sys\n"
    "from autotune.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')})\n"
    "sys.stderr.write('HEAVY ' + ','.join(heavy) + '\\n')\n"
    "raise SystemExit(code)\n"
)


def fill(db: str) -> str:
    """A store with three models, a GPU study and a CPU study each, and 24 trials per model."""
    gpu = Environment(
        gpus=(Gpu(0, "GPU-0", "NVIDIA H100 80GB HBM3", 80 * 2**30, 79 * 2**30, (9, 0)),),
        versions={"torch": "2.11.0", "transformers": "5.17.0"},
        driver_version="580.159.04",
        hostname="gpu-box",
    )
    candidates = [
        Candidate(dtype=d, attn=a, quant=q) for d in ("bfloat16", "float16") for a in ("sdpa", "eager") for q in ("none", "bnb-4bit-nf4")
    ]
    with Store.open(db) as store:
        names = []
        for i in range(3):
            name = f"org/model-{i}"
            resolved = ResolvedModel(
                name=name,
                source="hf-cache",
                path=None,
                revision="a" * 40,
                config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
            )
            model, _, _ = store.upsert_model(
                resolved,
                {"architecture": "LlamaForCausalLM", "attn_implementations": ["eager", "sdpa"]},
                Workload(max_memory=MemoryLimit.parse("20GiB")),
            )
            for env in (gpu, probe()):
                study = store.study_for(model, store.record_environment(env))
                for j, candidate in enumerate(candidates):
                    for batch in (1, 16):
                        metrics = {
                            "throughput_tokens_per_s": 100.0 + 10 * j + batch,
                            "latency_p50_ms": 500.0 - j,
                            "peak_memory_bytes": (8 + j) * 2**30,
                            "quality_token_agreement": 1.0 if "4bit" not in candidate.quant else 0.95,
                        }
                        store.record_trial(study.id, candidate, batch, "ok", metrics=metrics)
            names.append(name)
    return names[0]


def available_commands() -> set[str]:
    from autotune.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            return set(action.choices)
    return set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command after one warm-up (default 7)")
    parser.add_argument("--db", help="an existing store to time against (default: a temporary one filled with trials)")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    db = args.db or str(Path(tmp.name) / "startup.db")
    model = fill(db) if not args.db else None
    if model is None:
        with Store.open(db) as store:
            models = store.models()
        model = models[0].name if models else "none"
    env = {**os.environ, "PYTHONPATH": str(REPO), "AUTOTUNE_DB": db, "HF_HUB_OFFLINE": "1"}
    commands = {
        "recommend": ["recommend"],
        "recommend MODEL": ["recommend", model],
        "status": ["status"],
        "trials MODEL": ["trials", model],
        "models": ["models"],
        "report MODEL": ["report", model, "--out", str(Path(tmp.name) / "report.html")],
    }
    have = available_commands()
    rows = []
    skipped = []
    for label, command in commands.items():
        if command[0] not in have:
            skipped.append(label)
            continue
        times = []
        for i in range(args.runs + 1):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "autotune", *command], env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0 and not (command[0] == "recommend" and proc.returncode == 1):  # 1: nothing fits
                print(f"autotune {' '.join(command)} failed: {proc.stderr.strip()}", file=sys.stderr)
                return 1
            if i:  # the first run warms the page cache
                times.append(elapsed)
        probe_run = subprocess.run([sys.executable, "-c", PROBE, *command], env=env, capture_output=True, text=True)
        heavy = next((line[6:] for line in probe_run.stderr.splitlines() if line.startswith("HEAVY ")), "?")
        rows.append((f"autotune {label}", statistics.median(times), min(times), max(times), heavy or "none"))

    baseline = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        baseline.append(time.perf_counter() - start)

    print(
        f"store: {db}; {args.runs} runs after a warm-up; python {sys.version.split()[0]}; "
        f"bare interpreter start {statistics.median(baseline):.3f} s (median)"
    )
    headers = ("COMMAND", "MEDIAN S", "MIN S", "MAX S", "TORCH/TRANSFORMERS IMPORTED", f"UNDER {TARGET_S} S")
    table = [(name, f"{med:.3f}", f"{lo:.3f}", f"{hi:.3f}", heavy, "yes" if med < TARGET_S else "NO") for name, med, lo, hi, heavy in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table)]
    for row in (headers, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    if skipped:
        print(f"skipped (no such command in this autotune): {', '.join(skipped)}")
    failed = [r for r in rows if r[4] != "none" or r[1] >= TARGET_S]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
