"""FlashAttention-4 against SDPA and eager on one GPU, and the studies that should choose between them.

    python benchmarks/flash_attention.py --out DIR [--deadline S] [--work DIR] [--parts grid,static,study]
    python benchmarks/flash_attention.py --out DIR --tiny      # a tiny Llama on the CPU: checks the script itself

It assumes ``flash_attn.cute`` (the flash-attn-4 package) imports; where it does not, it says so in
one line and reports the FlashAttention-4 rows ``unsupported`` with the reason.

1. ``grid``: a Llama-3-8B-shaped model (Llama-3.1's 128k context; random weights, built on the GPU,
   which time exactly like real ones) is measured in this one process under each attention
   implementation in turn (``set_attn_implementation``), by the trial worker's own code
   (``autotune.worker.measure``: warm-up excluded, GPUs synchronised around each timed call,
   repeats until ``(p90-p10)/p50 <= 5%`` or a cap, NVML's view of the process's peak memory), after
   the worker's read-back (``autotune.worker.attention``: which attention a traced forward pass ran),
   at 512 + 128 tokens (batch 1 and 16), 8,192 + 16 and 32,768 + 16 (batch 1), each beside the
   memory forecast autotune holds against its limit. autotune's validity rules run first: a row
   they refuse is reported with their reason.
2. ``static``: the same rows with a static cache (``cache_implementation="static"``, compiled by
   torch.compile: 30-70 s per row on a 7-8B model), as far as the deadline allows, the 512 + 128
   batch-1 rows first. What fails to compile is reported with its reason.
3. ``study``: ``autotune add`` / ``tune`` / ``recommend`` on the same model, as a user runs them,
   for a short workload (512 + 128, objective latency) and a long prefill-only one (32,768 + 1,
   objective latency: the time to first token), each searching bf16 x {sdpa, eager,
   flash_attention_4} on one GPU. Random weights make the quality floor meaningless, so it is 0.

Results go to DIR/flash_attention_<gpu>.json (rows are written as they finish, and rows already in
that file are kept, not measured again) and DIR/flash_attention_<gpu>.md; the autotune commands'
output to DIR/commands.log. On one H200 the three parts were planned to fit 9 minutes
(--deadline 520): the grid about 3, the studies about 4, static rows with what is left; a static
row starts only when its expected cost still fits before the studies' share.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO, REPO / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from e2e_gpu import LLAMA_8B as LLAMA_8B_CONFIG  # noqa: E402
from e2e_gpu import Autotune, log  # noqa: E402  (the same way of running autotune as a user)

#: Llama-3-8B's shape (the end-to-end run's) with Llama-3.1's context, so that 32k prompts are
#: within it; built here with ``LlamaConfig``, which takes neither the model type nor a dtype.
LLAMA_8B = {k: v for k, v in LLAMA_8B_CONFIG.items() if k not in ("model_type", "dtype")} | {"max_position_embeddings": 131072}
ATTENTIONS = ("flash_attention_4", "sdpa", "eager")
#: (prompt tokens, new tokens, batch sizes); --tiny uses TINY_GRID.
GRID = ((512, 128, (1, 16)), (8192, 16, (1,)), (32768, 16, (1,)))
TINY_GRID = ((64, 16, (1, 4)), (512, 4, (1,)), (1024, 4, (1,)))
#: The studies: name -> (prompt tokens, new tokens); --tiny uses TINY_STUDIES.
STUDIES = {"short": (512, 128), "long": (32768, 1)}
TINY_STUDIES = {"short": (64, 16), "long": (1024, 1)}
SPACE = "dtype=bf16 attn=sdpa,eager,flash_attention_4 quant=none static_cache=false placement={placement}"
#: Seconds planned for the two studies (each: a float32 reference worker and up to three candidates).
STUDY_RESERVE_S = 240
#: Seconds a static-cache row is expected to take (compile included) on a 7-8B model, and a dynamic one.
STATIC_ROW_S = 90
DYNAMIC_ROW_S = 20


def gpu_slug(environment: Any) -> str:
    if not environment.gpus:
        return "cpu"
    words = environment.gpus[0].name.replace("NVIDIA", "").split()
    return words[0].lower() if words else "gpu"


def flash_cute_problem() -> str | None:
    """Why ``flash_attn.cute`` does not import here, or ``None``."""
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as exc:  # a missing package, or a dependency (the CuTe DSL) that fails to load
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def build_model(work: Path, tiny: bool, on_gpu: bool) -> tuple[Any, Path]:
    """The model in memory (bf16, on the GPU or the CPU) and the directory it is saved in."""
    import torch
    import transformers

    path = work / ("llama-tiny" if tiny else "llama-8b")
    started = time.perf_counter()
    if (path / "config.json").exists():
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda:0" if on_gpu else "cpu")
    elif tiny:
        from autotune.testing import build_tiny

        build_tiny("llama", path, max_position_embeddings=2048, dtype="bfloat16")
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cpu")
    else:
        config = transformers.LlamaConfig(**LLAMA_8B)
        config.dtype = torch.bfloat16
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda" if on_gpu else "cpu"):
            model = transformers.LlamaForCausalLM(config)
        torch.set_default_dtype(torch.float32)
        model.save_pretrained(path)
    model.eval()
    log(f"model ready in {time.perf_counter() - started:.0f} s: {path}")
    return model, path


class Grid:
    """Measures rows in this process with the trial worker's code, and keeps them in a JSON file."""

    def __init__(self, model: Any, path: Path, environment: Any, probe: Any, results: Path, max_repeats: int, resume: list[Path]) -> None:
        from autotune.registry import model_capabilities

        self.model, self.path, self.environment, self.probe = model, path, environment, probe
        self.config = json.loads((path / "config.json").read_text())
        self.capabilities = model_capabilities(self.config, "text-generation")
        self.forecast_source = "autotune.memory.forecast_peaks (the fullest device's peak, uncalibrated)"
        self.results = results
        self.max_repeats = max_repeats
        self.document: dict[str, Any] = json.loads(results.read_text()) if results.exists() else {}
        self.document.setdefault("rows", [])
        for earlier in resume:  # rows of earlier runs (another call's results, carried here) count as done
            self.document["rows"] += json.loads(earlier.read_text()).get("rows", [])
        self.done = {self.key(r) for r in self.document["rows"] if r["status"] in ("ok", "oom", "unsupported")}
        unique = {self.key(r): r for r in self.document["rows"] if self.key(r) in self.done}
        self.document["rows"] = list(unique.values())

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["prompt_tokens"], row["new_tokens"], row["batch_size"], row["attn"], row["static_cache"])

    def save(self) -> None:
        self.results.write_text(json.dumps(self.document, indent=1, default=str) + "\n")

    def candidate(self, attn: str, static: bool) -> Any:
        from autotune.candidate import Candidate

        return Candidate(dtype="bfloat16", attn=attn, static_cache=static, placement="cuda" if self.environment.gpus else "cpu")

    def rows(self, attn: str, static: bool, grid: tuple[tuple[int, int, tuple[int, ...]], ...], may_start: Any) -> None:
        """Measure ``attn`` (with or without a static cache) at every point of ``grid`` that
        ``may_start()`` still allows (a row it stops is left for a later run)."""
        from autotune.memory import DeviceLimits
        from autotune.search.space import forecast_peaks
        from autotune.workload import Workload

        candidate = self.candidate(attn, static)
        todo = [(p, n, b) for p, n, sizes in grid for b in sizes if (p, n, b, attn, static) not in self.done]
        if not todo or not may_start():
            if todo:
                log(f"{candidate.label()}: {len(todo)} rows left for a later run (deadline)")
            return
        self.ran: list[str] | None = None
        setup = self.prepare(candidate, Workload(prompt_tokens=todo[0][0], new_tokens=todo[0][1], objective="latency"))
        for prompt, new, batch in todo:
            if not may_start():
                log(f"{candidate.label()} {prompt}+{new} batch {batch}: left for a later run (deadline)")
                continue
            workload = Workload(prompt_tokens=prompt, new_tokens=new, objective="latency")
            row: dict[str, Any] = {
                "prompt_tokens": prompt,
                "new_tokens": new,
                "batch_size": batch,
                "attn": attn,
                "static_cache": static,
                "label": candidate.label(),
                "attention_ran": self.ran,
            }
            try:
                limits = DeviceLimits.resolve(None, self.environment, candidate.placement)
                row["forecast_bytes"] = max(forecast_peaks(self.config, candidate, workload, batch, limits, self.environment))
            except Exception as exc:  # a forecast that cannot size the row does not stop the measurement
                row["forecast_bytes"], row["forecast_error"] = None, f"{type(exc).__name__}: {exc}"
            status, reason = setup if setup is not None else self.check(candidate, workload)
            if status is None:
                status, reason, measured = self.measure(candidate, workload, batch)
                row.update(measured)
            row.update(status=status, reason=reason)
            log(
                f"{candidate.label()} {prompt}+{new} batch {batch}: {status}"
                + (f" ({reason})" if reason else "")
                + (f", {row['metrics']['latency_p50_ms']:.1f} ms" if status == "ok" else "")
            )
            self.document["rows"].append(row)
            self.done.add(self.key(row))
            self.save()

    def check(self, candidate: Any, workload: Any) -> tuple[str | None, str | None]:
        from autotune.candidate import rejection

        reason = rejection(candidate, self.environment, self.capabilities, workload)
        return ("unsupported", f"refused by autotune's rules: {reason}") if reason else (None, None)

    def prepare(self, candidate: Any, workload: Any) -> tuple[str, str] | None:
        """Switch the model to the candidate's attention and read back what runs; ``(status, reason)`` when it cannot."""
        import torch

        from autotune.worker import attention, loading

        status, reason = self.check(candidate, workload)
        if status is not None:
            return status, reason  # type: ignore[return-value]
        try:
            loading.check_importable(candidate)
            self.model.set_attn_implementation(candidate.attn)
            effective = {"attn_implementation": self.model.config._attn_implementation}
            if effective["attn_implementation"] != candidate.attn:
                return "unsupported", f"attention {candidate.attn} did not take effect: the model runs {effective['attn_implementation']}"
            effective.update(attention.trace(self.model, candidate))
            self.ran = effective["attention_ran"]
            attention.check(candidate, effective)
        except loading.OptionNotInEffect as exc:
            return exc.status, exc.reason
        except Exception as exc:
            return loading.classify_load_error(exc, candidate)
        # A static cache compiles per row: forget what an earlier row compiled.
        if hasattr(self.model, "_compiled_call"):
            del self.model._compiled_call
        torch._dynamo.reset()
        return None

    def measure(self, candidate: Any, workload: Any, batch: int) -> tuple[str, str | None, dict[str, Any]]:
        import torch

        from autotune.worker import loading, measure
        from autotune.worker.protocol import WorkerRequest

        request = WorkerRequest(
            model_path=str(self.path),
            model_name=self.path.name,
            task="text-generation",
            candidate=candidate,
            workload=workload,
            batch_sizes=(batch,),
            min_repeats=min(3, self.max_repeats),
            max_repeats=self.max_repeats,
            time_cap_s=30.0,
        )
        if candidate.static_cache and hasattr(self.model, "_compiled_call"):
            del self.model._compiled_call  # one compile per row, timed as its compile_seconds
            torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        started = time.perf_counter()
        try:
            result = measure.measure_batch(self.model, request, batch, self.probe)
        except loading.OptionNotInEffect as exc:
            return exc.status, exc.reason, {"seconds": time.perf_counter() - started}
        except Exception as exc:
            status, reason = loading.classify_run_error(exc, candidate, batch)
            return status, reason, {"seconds": time.perf_counter() - started}
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        keep = (
            "ttft_ms",
            "latency_p50_ms",
            "latency_p90_ms",
            "latency_spread",
            "repeats",
            "throughput_tokens_per_s",
            "decode_tokens_per_s",
            "compile_seconds",
            "peak_memory_bytes",
            "torch_allocated_bytes",
            "torch_reserved_bytes",
            "nvml_used_bytes",
            "rss_bytes",
        )
        return (
            "ok",
            None,
            {
                "metrics": {k: result.metrics.get(k) for k in keep},
                "effective": result.effective,
                "seconds": time.perf_counter() - started,
                "details": {k: result.details.get(k) for k in ("e2e_ms", "ttft_ms_repeats", "first_call_seconds", "capped", "peak_source")},
            },
        )


def run_studies(args: argparse.Namespace, path: Path, out: Path, left: Any, on_gpu: bool) -> list[dict[str, Any]]:
    """Two `autotune tune` studies on the same model, a short workload and a long prefill-only one."""
    autotune = Autotune(args.work / "autotune.db", out / "commands.log")
    space = SPACE.format(placement="cuda" if on_gpu else "cpu")
    studies = []
    for name, (prompt, new) in (TINY_STUDIES if args.tiny else STUDIES).items():
        if left() < 60:
            studies.append(
                {"name": name, "prompt_tokens": prompt, "new_tokens": new, "skipped": f"{left():.0f} s left before the deadline"}
            )
            continue
        autotune(
            "add",
            str(path),
            "--prompt-tokens",
            str(prompt),
            "--new-tokens",
            str(new),
            "--objective",
            "latency",
            "--min-quality",
            "0",
            "--max-memory",
            "none",
            "--device",
            "cuda" if on_gpu else "cpu",
        )
        started = time.perf_counter()
        minutes = max(0.5, min(STUDY_RESERVE_S / 2, left() - 30) / 60)
        log(f"study {name}: {prompt}+{new}, up to {minutes:.1f} min")
        autotune(
            "tune",
            str(path),
            "--space",
            space,
            "--trials",
            "3",
            "--patience",
            "3",
            "--max-repeats",
            "3",
            "--budget-minutes",
            f"{minutes:.2f}",
            "--seed",
            "1",
            check=False,
            timeout=max(60.0, min(3600.0, left() - 20)),
        )
        tune_seconds = time.perf_counter() - started
        rec = autotune.json("recommend", str(path), "--no-code")
        rec = rec[0] if isinstance(rec, list) else rec
        loader = args.work / f"loader_{name}.py"
        loader.unlink(missing_ok=True)
        if rec.get("recommendation"):
            autotune("recommend", str(path), "--write", str(loader))
        trials = autotune.json("trials", str(path))
        status = autotune.json("status")
        mine = next((m for m in status.get("models", []) if m.get("name") == str(path)), {})
        studies.append(
            {
                "name": name,
                "prompt_tokens": prompt,
                "new_tokens": new,
                "space": space,
                "tune_seconds": tune_seconds,
                "metric": rec.get("metric"),
                "recommendation": rec.get("recommendation"),
                "why_not": rec.get("why_not"),
                "trials": [
                    {k: t.get(k) for k in ("label", "batch_size", "status", "reason", "feasible", "objective_value")}
                    | {
                        "metrics": {
                            k: (t.get("metrics") or {}).get(k) for k in ("ttft_ms", "latency_p50_ms", "peak_memory_bytes", "forecast_bytes")
                        },
                        "attention_ran": (t.get("effective") or {}).get("attention_ran"),
                    }
                    for study in trials
                    for t in study.get("trials", [])
                ],
                "rejected": [r for r in (mine.get("study") or {}).get("rejected_reasons") or [] if r.get("candidate")],
                "loader_header": [line for line in loader.read_text().splitlines() if line.startswith("#")] if loader.exists() else None,
            }
        )
        log(f"study {name}: recommends {(rec.get('recommendation') or {}).get('label', 'nothing')} after {tune_seconds:.0f} s")
    return studies


def gib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def table(document: dict[str, Any]) -> str:
    """The markdown report: one table per workload, then the studies."""
    rows = document.get("rows", [])
    lines = [
        f"# FlashAttention-4, SDPA and eager: {document.get('machine')}",
        "",
        f"Model: {document.get('model')}; bf16; random weights. Libraries: {document.get('versions')}.",
        f"flash_attn.cute: {document.get('flash_attn_cute')}. Forecast: {document.get('forecast')}.",
        "",
        "Timing: the trial worker's (warm-up excluded, synchronised, repeats until (p90-p10)/p50 <= 5% or a cap); peak: "
        "the process during the first call as the worker sees it (on a GPU NVML's figure, CUDA context included, and "
        "torch's reserved peak beside it; on the CPU the peak RSS since the process started); forecast: what autotune "
        "holds against the memory limit.",
        "",
    ]
    shapes = sorted({(r["prompt_tokens"], r["new_tokens"], r["batch_size"]) for r in rows})
    for prompt, new, batch in shapes:
        lines += [
            f"## {prompt:,} prompt + {new} new tokens, batch {batch}",
            "",
            "| attention | cache | TTFT ms | latency ms (spread) | tok/s | vs sdpa | compile s | peak GiB | torch peak GiB | "
            "forecast GiB | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        here = [r for r in rows if (r["prompt_tokens"], r["new_tokens"], r["batch_size"]) == (prompt, new, batch)]
        for r in sorted(here, key=lambda r: (r["static_cache"], ATTENTIONS.index(r["attn"]) if r["attn"] in ATTENTIONS else 9)):
            m = r.get("metrics") or {}
            base = next((x for x in here if x["attn"] == "sdpa" and x["static_cache"] == r["static_cache"] and x["status"] == "ok"), None)
            versus = "-"
            if base and r["status"] == "ok" and m.get("latency_p50_ms"):
                versus = f"{base['metrics']['latency_p50_ms'] / m['latency_p50_ms']:.2f}x"
            status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
            spread = f" ({m['latency_spread']:.1%})" if m.get("latency_spread") is not None else ""
            lines.append(
                f"| {r['attn']} | {'static' if r['static_cache'] else 'dynamic'} | {_num(m.get('ttft_ms'), 1)} | "
                f"{_num(m.get('latency_p50_ms'), 1)}{spread} | {_num(m.get('throughput_tokens_per_s'), 1)} | {versus} | "
                f"{_num(m.get('compile_seconds'), 1)} | {gib(m.get('peak_memory_bytes'))} | {gib(m.get('torch_reserved_bytes'))} | "
                f"{gib(r.get('forecast_bytes'))} | {status} |"
            )
        lines.append("")
    for study in document.get("studies", []):
        lines += [
            f"## Study `{study['name']}`: {study['prompt_tokens']:,} prompt + {study['new_tokens']} new tokens, objective latency",
            "",
        ]
        if study.get("skipped"):
            lines += [f"Not run: {study['skipped']}.", ""]
            continue
        rec = study.get("recommendation") or {}
        lines.append(
            f'`autotune tune --space "{study["space"]}"` took {study["tune_seconds"]:.0f} s; recommends '
            f"**{rec.get('label', 'nothing')}**" + (f" ({study.get('metric')} {_num(rec.get('value'), 1)})" if rec else "") + "."
        )
        lines += [
            "",
            "| candidate | status | TTFT ms | latency ms | peak GiB | forecast GiB | attention ran |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in study.get("trials", []):
            m = t.get("metrics") or {}
            lines.append(
                f"| {t['label']} | {t['status']}{': ' + t['reason'] if t.get('reason') else ''} | {_num(m.get('ttft_ms'), 1)} | "
                f"{_num(m.get('latency_p50_ms'), 1)} | {gib(m.get('peak_memory_bytes'))} | {gib(m.get('forecast_bytes'))} | "
                f"{', '.join(t.get('attention_ran') or []) or '-'} |"
            )
        for r in study.get("rejected", []):
            lines.append(f"| {r.get('label')} | rejected ({r.get('kind')}): {r.get('reason')} | | | | | |")
        if study.get("loader_header"):
            lines += ["", "Loader header (`autotune recommend --write`):", "", "```", *study["loader_header"], "```"]
        lines.append("")
    return "\n".join(lines) + "\n"


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON, the markdown table and the command log go")
    parser.add_argument("--work", type=Path, help="where the model and the study database live (default: OUT/work)")
    parser.add_argument("--deadline", type=float, metavar="S", help="wall-clock seconds for the whole run (520 fits a 10-minute call)")
    parser.add_argument("--parts", default="grid,static,study", help="which parts to run (default: all three)")
    parser.add_argument("--max-repeats", type=int, default=5, help="timed repeats per row at most (default 5)")
    parser.add_argument(
        "--resume",
        type=Path,
        action="append",
        default=[],
        metavar="JSON",
        help="the results of an earlier run: its rows are kept and not measured again (repeatable)",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU (or the GPU): checks the script")
    args = parser.parse_args()
    began = time.monotonic()

    def left() -> float:
        return float("inf") if args.deadline is None else args.deadline - (time.monotonic() - began)

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"grid", "static", "study"}
    if unknown:
        parser.error(f"unknown part {', '.join(sorted(unknown))}: choose among grid, static, study")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or args.out / "work"
    args.work.mkdir(parents=True, exist_ok=True)

    from autotune.environment import probe as probe_environment
    from autotune.worker.measure import GpuMemoryProbe

    environment = probe_environment()
    on_gpu = bool(environment.gpus)
    gpu_probe = GpuMemoryProbe.create() if on_gpu else None  # before CUDA starts: NVML's baseline
    problem = flash_cute_problem()
    if problem:
        print(f"flash_attn.cute is not importable ({problem}): the FlashAttention-4 rows are reported unsupported", flush=True)
    name = "flash_attention_" + ("tiny" if args.tiny else gpu_slug(environment))
    results = args.out / f"{name}.json"
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if on_gpu:
        torch.cuda.init()
        if gpu_probe is not None:
            gpu_probe.bind()
    model, path = build_model(args.work, args.tiny, on_gpu)
    grid = Grid(model, path, environment, gpu_probe, results, args.max_repeats, args.resume)
    grid.document.update(
        machine=environment.summary(),
        model=("tiny Llama" if args.tiny else "Llama-3-8B shape, 128k context"),
        versions={k: v for k, v in environment.versions.items() if v},
        flash_attn_cute=f"not importable: {problem}" if problem else "importable",
        forecast=grid.forecast_source,
    )
    points = TINY_GRID if args.tiny else GRID
    reserve = STUDY_RESERVE_S if "study" in parts else 0
    if "grid" in parts:
        for attn in ATTENTIONS:  # eager last: its 32k row may run out of memory
            grid.rows(attn, False, points, lambda: left() - reserve > DYNAMIC_ROW_S)
    if "static" in parts:
        # the 512 + 128 batch-1 rows first (where a static cache matters most), then the rest, while the deadline allows
        first = (points[0][0], points[0][1], (1,))
        rest = ((points[0][0], points[0][1], points[0][2][1:]), *points[1:])
        for chunk in ((first,), rest):
            for attn in ATTENTIONS:
                grid.rows(attn, True, chunk, lambda: left() - reserve > STATIC_ROW_S)
    torch._dynamo.reset()  # compiled graphs hold the model
    del grid.model, model
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    if "study" in parts:
        grid.document["studies"] = run_studies(args, path, args.out, left, on_gpu)
    grid.save()
    (args.out / f"{name}.md").write_text(table(grid.document))
    log(f"done in {time.monotonic() - began:.0f} s: {results} and {name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
