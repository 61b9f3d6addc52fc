"""How far the memory forecast is from measured peaks, before and after calibration.

For every ``ok`` trial with a measured peak in a store, prints the raw forecast, the calibrated
forecast (fitted on the *other* trials of its environment and device kind: leave-one-out, the
honest figure for a trial the fit has not seen), the measured peak and both errors; then, per
environment, the median and worst |forecast - measured| / measured before calibration, after it
(in-sample), and leave-one-out. The issue's target on the GPU machine: median <= 5%, worst <= 15%.

    python benchmarks/forecast_accuracy.py --db autotune.db            # a store with measured trials
    python benchmarks/forecast_accuracy.py --db /tmp/acc.db --make-cpu-trials /tmp/acc-models

``--make-cpu-trials DIR`` first builds a few small random-weight models in DIR, registers them,
and measures a candidate matrix on the CPU with the real trial worker (``autotune measure``),
so that the script has something to read on a machine without a GPU (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autotune.memory.calibration import calibrate, forecast_error, leave_one_out  # noqa: E402
from autotune.memory.measured import measured_points  # noqa: E402
from autotune.store import Store  # noqa: E402
from autotune.units import format_gib  # noqa: E402

#: Small models of different shapes, big enough that weights, not the interpreter, dominate the peak.
CPU_MODELS = {
    "llama-64m": (
        "llama",
        dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, vocab_size=32000),
    ),
    "falcon-40m": ("falcon", dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, vocab_size=32000)),
    "gpt2-50m": ("gpt2", dict(n_embd=512, n_layer=8, n_head=8, vocab_size=32000)),
}
#: The candidate matrix measured on the CPU: (measure arguments, batch sizes).
CPU_MATRIX = (
    (["--dtype", "float32", "--attn", "sdpa"], "1,4,16"),
    (["--dtype", "bfloat16", "--attn", "sdpa"], "1,16"),
    (["--dtype", "float32", "--attn", "eager"], "1,16"),
    (["--dtype", "bfloat16", "--attn", "sdpa", "--quant", "bnb-4bit-nf4", "--double-quant"], "1,4"),
    (["--dtype", "float32", "--attn", "sdpa", "--quant", "bnb-8bit"], "1,4"),
)


def make_cpu_trials(db: str, directory: Path, prompt: int, new: int) -> None:
    from autotune.testing import build_tiny

    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AUTOTUNE_DB": db, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for name, (kind, overrides) in CPU_MODELS.items():
        path = directory / name
        if not (path / "config.json").exists():
            build_tiny(kind, path, **overrides)
        run(["add", str(path), "--prompt-tokens", str(prompt), "--new-tokens", str(new), "--device", "cpu"], env)
        for args, batches in CPU_MATRIX:
            run(["measure", str(path), *args, "--placement", "cpu", "--batch", batches], env)


def run(args: list[str], env: dict[str, str]) -> None:
    print("+ autotune " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "autotune", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr.strip()[-2000:], file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="the store: a SQLAlchemy URL or a SQLite file")
    parser.add_argument("--environment", type=int, help="only this environment id (default: each environment in turn)")
    parser.add_argument("--make-cpu-trials", metavar="DIR", type=Path, help="first measure small models on the CPU into --db")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="workload of --make-cpu-trials (default 64)")
    parser.add_argument("--new-tokens", type=int, default=8, help="workload of --make-cpu-trials (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    args = parser.parse_args(argv)

    if args.make_cpu_trials:
        make_cpu_trials(args.db, args.make_cpu_trials, args.prompt_tokens, args.new_tokens)

    # a store file is read from a copy: opening one upgrades its schema, and results/ keeps them as measured
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db if "://" in args.db or args.make_cpu_trials else shutil.copy(args.db, Path(tmp) / "store.db")
        with Store.open(str(url)) as store:
            points = measured_points(store, environment_id=args.environment)
            environments = {p.environment_id: store.environment(p.environment_id) for p in points}
    if not points:
        print(f"no ok trials with a measured peak in {args.db}: measure some first (autotune tune MODEL, or --make-cpu-trials DIR)")
        return 1

    report = []
    for env_id, env in sorted(environments.items()):
        mine = [p for p in points if p.environment_id == env_id]
        calibration = calibrate(p.point for p in mine)
        loo = leave_one_out([p.point for p in mine])
        rows = []
        for p, calibrated in zip(mine, loo):
            measured = p.point.measured_bytes
            rows.append(
                {
                    "trial": p.trial.id,
                    "model": Path(p.model.name).name,
                    "candidate": p.trial.candidate.label(),
                    "batch": p.trial.batch_size,
                    "device": p.point.device_kind,
                    "forecast": p.point.forecast_bytes,
                    "calibrated": calibrated,
                    "measured": measured,
                    "error_before": (p.point.forecast_bytes - measured) / measured,
                    "error_after": (calibrated - measured) / measured,
                    "parts": p.forecast.parts,
                }
            )
        report.append(
            {
                "environment_id": env_id,
                "environment": env.summary(),
                "versions": env.versions,
                "calibration": calibration.to_dict(),
                "rows": rows,
                "leave_one_out": forecast_error((r["calibrated"], r["measured"]) for r in rows).to_dict(),
            }
        )

    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for section in report:
        print(
            f"environment {section['environment_id']}: {section['environment']}; "
            + ", ".join(f"{k} {v}" for k, v in section["versions"].items() if v and k in ("torch", "transformers", "bitsandbytes"))
        )
        headers = ["TRIAL", "MODEL", "CANDIDATE", "BATCH", "DEVICE", "FORECAST", "CALIBRATED*", "MEASURED", "ERR BEFORE", "ERR AFTER*"]
        table = [
            [
                r["trial"],
                r["model"],
                r["candidate"],
                r["batch"],
                r["device"],
                format_gib(r["forecast"]),
                format_gib(r["calibrated"]),
                format_gib(r["measured"]),
                f"{r['error_before']:+.1%}",
                f"{r['error_after']:+.1%}",
            ]
            for r in section["rows"]
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *table)]
        for row in [headers, *table]:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
        cal = section["calibration"]
        print("* calibrated on the other trials of the same device kind (leave-one-out)")
        for kind, fit in cal["fits"].items():
            print(f"fit {kind}: overhead {fit['overhead_bytes'] / 2**30:+.3f} GiB, scale x{fit['scale']:.3f} from {fit['points']} trials")
        for name, err in (
            ("before calibration", cal["before"]),
            ("after (in-sample)", cal["after"]),
            ("after (leave-one-out)", section["leave_one_out"]),
        ):
            if err["n"]:
                print(f"{name:>22}: median {err['median']:.1%}, worst {err['worst']:.1%} over {err['n']} trials")
        loo = section["leave_one_out"]
        if loo["n"]:
            met = loo["median"] <= 0.05 and loo["worst"] <= 0.15
            print(f"target (median <= 5%, worst <= 15%, leave-one-out): {'met' if met else 'NOT met'}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
