"""ONNX Runtime's CUDA provider, with and without IO binding, against PyTorch SDPA in one study per model.

    python benchmarks/onnxruntime_gpu.py --out DIR --ort-python PATH [--work DIR] [--deadline S]
    python benchmarks/onnxruntime_gpu.py --out DIR --ort-python PATH --cpu   # tiny models, the CPU provider: checks the script

``--ort-python`` is an interpreter with optimum-onnx, ``transformers<4.58`` and onnxruntime-gpu
(on the CPU, onnxruntime will do); it is registered as the worker environment ``ort`` with
``autotune env add``, and what it offers (its providers, and why CUDA is not usable there when it
is not) is kept in the results.

For each of two random-weight models, built and saved under --work (a Llama-3.2-1B-shaped causal
LM, text generation; a BERT-base-shaped encoder, feature extraction; tiny ones with --cpu or
--tiny), the script runs, as a user would: ``autotune add``; ``autotune tune --exhaustive`` over
PyTorch SDPA and ONNX Runtime with the CUDA provider (float16; the CPU provider and float32 with
--cpu), IO binding on and off, quality floor 0 (random weights); ``autotune measure`` for an ONNX
Runtime candidate the study left without a trial (the trial then says why); ``autotune
recommend``; ``recommend --write``, and the loader it writes is imported and run in a fresh
process (in the ORT interpreter for an ONNX Runtime winner). The ONNX export is made once per
model and dtype and taken from autotune's cache by the next candidate: each row says the export's
seconds and whether it came from the cache, apart from the timings.

Every figure comes from the trials in the store. Results go to DIR/onnxruntime_gpu.json
(``onnxruntime_cpu.json`` with --cpu): one object per trial with gpu, model, task, runtime,
provider (read back from the session), io_binding, batch_size, tokens_per_s or sequences_per_s,
latency_p50_ms, peak_bytes, export_seconds, status and reason; DIR/onnxruntime_gpu_study.json:
the worker environment, each study's recommendation with the reason ONNX Runtime won or lost, and
its loader's run; DIR/onnxruntime_gpu.md: the table; DIR/commands.log: the commands' output.

On the GPU machine (no network; torch 2.11 and transformers 5.17 there), in two or three device
calls after the transfers. Here, in the project's root::

    ../shared/gpu/wheels.sh     # autotune's own dependencies into .whl/ (optuna, sqlalchemy, alembic, ...)
    ../shared/gpu/bigwheels.sh onnxruntime-gpu==1.31.1 optimum-onnx==0.1.0 optimum==2.1.0 transformers==4.57.6 \\
        tokenizers==0.22.2 huggingface-hub==0.36.2 onnx==1.23.2 ml-dtypes==0.7.0 flatbuffers==25.12.19

It prints the calls: each of the first (carry [".xferK"]) is ``mkdir -p /tmp/xfer && cp .xferK/* /tmp/xfer/``;
the last (carry [".xferN", ".whl"], at once) assembles the ORT site apart from the machine's own
Transformers 5 (not ``eval``: its PYTHONPATH is for the ORT interpreter alone), writes that
interpreter as a wrapper, installs autotune's dependencies and starts the run::

    bash .xferN/assemble.sh /tmp/ortsite >/dev/null &&
    python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl &&
    printf '#!/bin/sh\\nPYTHONPATH=/tmp/ortsite${PYTHONPATH:+:$PYTHONPATH}:/tmp/site exec python3 "$@"\\n' > /tmp/ort-python &&
    chmod +x /tmp/ort-python && export PYTHONPATH=$PWD:/tmp/site &&
    benchmarks/background.sh start /tmp/ortrun 540 -- python3 benchmarks/onnxruntime_gpu.py \\
        --out /tmp/ortrun --work /tmp/ortwork --ort-python /tmp/ort-python --deadline 1000

and, within the warm window, ``benchmarks/background.sh wait /tmp/ortrun 540`` until it says it
ended (exit 0; 3 while it still runs). ``env add`` prints what the ORT interpreter offers: where
CUDAExecutionProvider is not usable there (a missing libcudnn or libcublas, a CPU build), the
first line of the run says why, and the ONNX Runtime rows carry the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from e2e_gpu import Autotune, log  # noqa: E402  (the same way of running autotune as a user)
from worker_matrix import LLAMA_1B  # noqa: E402

#: name -> (task, prompt tokens, new tokens, batch sizes) on a GPU, and with --cpu/--tiny.
MODELS = {"llama-1b": ("text-generation", 256, 64, (1, 8)), "bert-base": ("feature-extraction", 128, None, (1, 32))}
TINY = {"llama-tiny": ("text-generation", 16, 8, (1, 2)), "bert-tiny": ("feature-extraction", 16, None, (1, 2))}
SPACE = "dtype={dtype} attn=sdpa quant=none static_cache=false placement={placement} runtime=pytorch,onnxruntime:{provider},onnxruntime:{provider}+io-binding batch={batches}"
ENV = "ort"


def build(name: str, path: Path, on_gpu: bool) -> Path:
    """Save the random-weight model ``name`` into ``path`` once (float16 on a GPU, float32 tiny)."""
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    from autotune.testing import build_tiny

    if name.endswith("-tiny"):
        return build_tiny("llama" if name.startswith("llama") else "bert", path)
    config = transformers.LlamaConfig(**LLAMA_1B) if name == "llama-1b" else transformers.BertConfig(architectures=["BertModel"])
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = (transformers.LlamaForCausalLM if name == "llama-1b" else transformers.BertModel)(config)
    model.to(torch.float16).save_pretrained(path)
    if name == "llama-1b":  # a pad id, so that batched generate() needs no tokenizer
        transformers.GenerationConfig(bos_token_id=128000, eos_token_id=128001, pad_token_id=128001).save_pretrained(path)
    return path


def rows_of(trials: list[dict[str, Any]], gpu: str, name: str, task: str) -> list[dict[str, Any]]:
    """One row per trial: the figures asked for, read from the trial alone."""
    rows = []
    for t in trials:
        c, m, eff = t["candidate"], t["metrics"] or {}, t["effective"] or {}
        export = eff.get("export") or {}
        ort = c["runtime"] == "onnxruntime"
        provider = (eff.get("providers") or [None])[0] if ort and t["status"] == "ok" else c.get("provider")
        row = {
            "gpu": gpu,
            "model": name,
            "task": task,
            "runtime": c["runtime"],
            "label": t["label"],
            "dtype": c["dtype"],
            "provider": provider,
            "io_binding": bool(c.get("io_binding")),
            "batch_size": t["batch_size"],
            "latency_p50_ms": m.get("latency_p50_ms"),
            "peak_bytes": m.get("peak_memory_bytes"),
            "export_seconds": export.get("seconds") if ort else None,
            "export_cached": export.get("cached") if ort else None,
            "status": t["status"],
            "reason": t["reason"] or "",
            "worker_env": t["worker_env"],
            "trial": t["id"],
        }
        if task == "text-generation":
            row["tokens_per_s"] = m.get("throughput_tokens_per_s")
        else:
            row["sequences_per_s"] = m.get("sequences_per_s")
        rows.append(row)
    return rows


def ort_verdict(doc: dict[str, Any]) -> str:
    """Why ONNX Runtime won or lost, in the recommendation's own words."""
    best = doc.get("recommendation")
    if not best:
        return f"no recommendation: {doc.get('reason') or doc.get('message') or 'no feasible trial'}"
    won = best["candidate"]["runtime"] == "onnxruntime"
    # the verdicts on the runtime that lost: PyTorch's when ONNX Runtime won, ONNX Runtime's otherwise
    other = [
        v for v in doc.get("why_not") or [] if v["option"].startswith("ONNX Runtime") != won and (won is False or v["option"] == "PyTorch")
    ]
    words = "; ".join(f"{v['option']}: {v['kind']}: {v['reason']}" for v in other) or "no verdict on the other runtime"
    return f"ONNX Runtime {'won' if won else 'lost'} ({best['label']}): {words}"


def run_loader(path: Path, python: str, generates: bool, prompt: int) -> dict[str, Any]:
    """Import the written loader in a fresh process, load, and run one batch."""
    call = "generate(model, **inputs)" if generates else "forward(model, **inputs)"
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {str(path.parent)!r})
started = time.perf_counter()
import {path.stem} as loader
model, _ = loader.load_model()
loaded = time.perf_counter() - started
device = model.device
ids = torch.randint(10, min(1000, model.config.vocab_size - 1), (loader.BATCH_SIZE, {prompt}), device=device)
inputs = {{"input_ids": ids, "attention_mask": torch.ones_like(ids)}}
out = loader.{call}
shape = list(out.shape) if hasattr(out, "shape") else list(out.last_hidden_state.shape)
print(json.dumps({{"class": type(model).__name__, "device": str(device), "load_seconds": loaded, "output_shape": shape,
                  "providers": model.model.get_providers() if hasattr(model, "model") and hasattr(model.model, "get_providers") else None}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the loader needs no autotune
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=1800, cwd=path.parent, env=env)
    if proc.returncode != 0:
        return {"status": "error", "reason": (proc.stderr.strip().splitlines() or ["no output"])[-1], "python": python}
    return {"status": "ok", "python": python, **json.loads(proc.stdout.strip().splitlines()[-1])}


def table(rows: list[dict[str, Any]]) -> str:
    head = "| model | runtime | provider | IO binding | batch | tokens/s or seq/s | p50 ms | peak MiB | export s | status |"
    lines = [head, "|---" * 10 + "|"]
    for r in rows:
        rate = r.get("tokens_per_s", r.get("sequences_per_s"))
        export = "" if r["export_seconds"] is None else f"{r['export_seconds']:.1f}{' (cached)' if r['export_cached'] else ''}"
        cells = [
            r["model"],
            r["label"],
            r["provider"] or "",
            "yes" if r["io_binding"] else "no",
            r["batch_size"],
            "" if rate is None else f"{rate:,.1f}",
            "" if r["latency_p50_ms"] is None else f"{r['latency_p50_ms']:.2f}",
            "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:,.0f}",
            export,
            r["status"] + (f": {r['reason']}" if r["reason"] else ""),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def study(at: Autotune, name: str, spec: tuple[Any, ...], args: argparse.Namespace, gpu: str, seconds: float) -> tuple[list[dict], dict]:
    """One model's study as a user runs it; its rows and its recommendation."""
    task, prompt, new, batches = spec
    on_gpu = not args.cpu
    provider = "CUDAExecutionProvider" if on_gpu else "CPUExecutionProvider"
    started = time.monotonic()
    path = str(build(name, args.work / name, on_gpu))
    log(f"{name}: saved in {path}")
    device = ["--device", "cuda" if on_gpu else "cpu"]
    generation = ["--new-tokens", str(new)] if new else []
    at(
        "add",
        path,
        "--task",
        task,
        "--prompt-tokens",
        str(prompt),
        *generation,
        *device,
        "--min-quality",
        "0",
        "--max-batch",
        str(max(batches)),
    )
    space = SPACE.format(
        dtype="fp16" if on_gpu else "fp32",
        placement="cuda" if on_gpu else "cpu",
        provider=provider,
        batches=",".join(map(str, batches)),
    )
    repeats = ["--max-repeats", str(args.max_repeats)] if args.max_repeats else []
    budget = max(1.0, (seconds - 120) / 60)
    log(f"{name}: tune over {space} ({budget:.1f} min)")
    at("tune", path, "--space", space, "--seed", "1", "--exhaustive", "--budget-minutes", f"{budget:.1f}", *repeats, timeout=seconds - 60)
    trials = at.json("trials", path)[0]["trials"]
    for binding in (False, True):  # an ONNX Runtime candidate the study left without a trial says why through measure
        if not any(t["candidate"]["runtime"] == "onnxruntime" and bool(t["candidate"].get("io_binding")) == binding for t in trials):
            dtype = ["--dtype", "fp16" if on_gpu else "fp32"]
            binding_flag = ["--io-binding"] if binding else []
            at(
                "measure",
                path,
                "--runtime",
                "onnxruntime",
                "--provider",
                provider,
                *binding_flag,
                *dtype,
                "--batch",
                str(batches[0]),
                check=False,
            )
    trials = at.json("trials", path)[0]["trials"]
    doc = at.json("recommend", path)
    doc = doc[0] if isinstance(doc, list) else doc
    result: dict[str, Any] = {
        "model": name,
        "task": task,
        "space": space,
        "recommendation": doc.get("recommendation"),
        "why_not": doc.get("why_not"),
    }
    result["verdict"] = ort_verdict(doc)
    best = doc.get("recommendation")
    if best:
        loader = args.work / "loaders" / f"{name.replace('-', '_')}_loader.py"
        loader.parent.mkdir(parents=True, exist_ok=True)
        at("recommend", path, "--write", str(loader), "--no-code")
        python = args.ort_python if best["candidate"]["runtime"] == "onnxruntime" else sys.executable
        result["loader"] = {"path": str(loader), **run_loader(loader, python, task == "text-generation", prompt)}
        log(f"{name}: loader in a fresh process: {result['loader']['status']} {result['loader'].get('reason', '')}")
    log(f"{name}: {result['verdict']} ({time.monotonic() - started:.0f} s)")
    return rows_of(trials, gpu, name, task), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where the results go")
    p.add_argument("--work", type=Path, help="models, exports, loaders and the database (default OUT/work)")
    p.add_argument("--ort-python", default=os.environ.get("AUTOTUNE_ORT_PYTHON"), help="the interpreter with optimum-onnx and onnxruntime")
    p.add_argument("--deadline", type=float, default=1000, metavar="S", help="seconds for the whole run (default 1000)")
    p.add_argument("--cpu", action="store_true", help="tiny models on the CPU provider: checks the script")
    p.add_argument("--tiny", action="store_true", help="tiny models (on the GPU unless --cpu)")
    p.add_argument("--max-repeats", type=int, metavar="N", help="timed repeats per batch size at most (tune's)")
    args = p.parse_args(argv)
    if not args.ort_python or not Path(args.ort_python).exists():
        print(f"--ort-python {args.ort_python or '(not given)'}: give an interpreter with optimum-onnx and onnxruntime", file=sys.stderr)
        return 2
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu to check the script on the CPU provider", file=sys.stderr)
        return 2
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = (args.work or args.out / "work").resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["AUTOTUNE_CACHE"] = str(args.work / "cache")  # the ONNX exports, kept for the next candidate
    gpu = "CPU" if args.cpu else torch.cuda.get_device_name(0)
    stem = "onnxruntime_cpu" if args.cpu else "onnxruntime_gpu"
    at = Autotune(args.work / "autotune.db", args.out / "commands.log")
    at("env", "add", ENV, args.ort_python)
    environment = next(e for e in at.json("env", "list") if e["name"] == ENV)
    provider = "CPUExecutionProvider" if args.cpu else "CUDAExecutionProvider"
    if provider not in (environment["runtimes"].get("onnxruntime") or []):
        problems = "; ".join(environment["problems"]) or "not listed by onnxruntime"
        print(f"worker environment {ENV} does not offer {provider} ({problems}); its candidates are reported with the reason")
    models = TINY if args.cpu or args.tiny else MODELS
    rows: list[dict[str, Any]] = []
    studies = []
    for i, (name, spec) in enumerate(models.items()):
        share = (args.deadline - (time.monotonic() - started)) / (len(models) - i)
        model_rows, result = study(at, name, spec, args, gpu, share)
        rows += model_rows
        studies.append(result)
        (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    document = {"gpu": gpu, "worker_env": environment, "studies": studies, "seconds": time.monotonic() - started}
    (args.out / f"{stem}_study.json").write_text(json.dumps(document, indent=1) + "\n")
    verdicts = "\n".join(f"- {s['model']}: {s['verdict']}" for s in studies)
    offered = "; ".join(f"{k} [{', '.join(v)}]" for k, v in environment["runtimes"].items())
    where = f"Worker environment {ENV} ({environment['python']}): {offered}" + "".join(
        f"; not available: {p}" for p in environment["problems"]
    )
    (args.out / f"{stem}.md").write_text(f"# ONNX Runtime against PyTorch SDPA on {gpu}\n\n{where}\n\n{table(rows)}\n{verdicts}\n")
    print(verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
