"""Commands that advise: estimate (what fits) and recommend (what wins, why, and its loading code).

Both only parse and print: the figures come from :mod:`autotune.advisor.estimate` and
:mod:`autotune.advisor.recommend`. ``recommend`` reads the store only and never imports torch or
Transformers; ``estimate`` builds models on the meta device and does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotune.cli._output import print_json, print_table
from autotune.errors import AutotuneError, InputError
from autotune.units import format_gib, format_size, parse_size
from autotune.workload import OBJECTIVES

DEFAULT_BATCHES = "1,8,32"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "estimate",
        help="forecast peak memory per candidate from the config alone, and the largest batch that fits",
        description="Forecast, from the model's config.json alone (nothing is downloaded or allocated), the peak memory "
        "of each way of loading it and the largest batch that fits each GPU's limit. MODEL is a registered "
        "model, a directory with config.json, or a Hub id (directory, HF cache, Hub). "
        "Example: autotune estimate tiiuae/falcon-7b --batch 1,8,32 --gpu-memory 24GiB",
    )
    p.add_argument("model", metavar="MODEL", help="a registered model, a directory with config.json, or a Hub id")
    p.add_argument("--batch", default=DEFAULT_BATCHES, metavar="N,N,...", help=f"batch sizes to forecast (default {DEFAULT_BATCHES})")
    p.add_argument(
        "--gpu-memory",
        metavar="SIZE[,SIZE...]",
        help="size a GPU of this much memory (e.g. 24GiB, or 24GiB,80GiB to compare) instead of the GPUs found here",
    )
    p.add_argument("--prompt-tokens", type=_positive, help="prompt length (default: the registered workload's, else 512)")
    p.add_argument("--new-tokens", type=_positive, help="tokens generated (default: the registered workload's, else 128)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_estimate)

    p = commands.add_parser(
        "recommend",
        help="the best measured configuration, why the others lost, and the code that loads it",
        description="Pick the best measured trial of a model under its objective, memory limit and quality floor, "
        "explain why every other option lost, and print the loading code for the library versions where "
        "the trials ran. Without MODEL: every registered model. Exits 1 when a model has no recommendation "
        "(nothing measured, or nothing that fits), with the reason. "
        "Example: autotune recommend tiiuae/falcon-7b --max-memory 20GiB --write app/loaders/falcon_7b.py",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="a registered model (default: every registered model)")
    p.add_argument("--objective", choices=OBJECTIVES, help="override the workload's objective for this choice")
    p.add_argument("--max-memory", metavar="LIMIT", help="override the per-GPU memory limit for this choice (20GiB, 0.5, or none)")
    p.add_argument(
        "--min-quality",
        type=float,
        metavar="Q",
        help="override the quality floor in [0, 1]: greedy-token agreement "
        "(text generation), cosine similarity (feature extraction) or "
        "top-class agreement (classification)",
    )
    p.add_argument(
        "--write", metavar="PATH", help="write an importable loader module (load_model, generate, BATCH_SIZE, GENERATE_KWARGS) to PATH"
    )
    p.add_argument("--no-code", action="store_true", help="do not print the loading code")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_recommend)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number greater than zero, got {text!r}")
    return value


# -- estimate ------------------------------------------------------------------------------------


def _find_model(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any, bool, Any]:
    """``(name, config, workload, registered, store-or-None)``; the store is opened only if it exists."""
    from autotune import registry
    from autotune.errors import ModelNotFoundError
    from autotune.store.engine import resolve_url, sqlite_path
    from autotune.workload import Workload

    url = resolve_url(args.db)
    path = sqlite_path(url)
    store = None
    if path is None or path.exists():
        from autotune.cli import open_store

        store = open_store(args)
        try:
            model = store.get_model(args.model)
            return model.name, model.config, model.workload, True, store
        except ModelNotFoundError:
            pass
    try:
        resolved = registry.resolve(args.model)
        task = registry.infer_task(resolved.config)
    except BaseException:
        if store is not None:
            store.close()
        raise
    workload = Workload(task=task, prompt_tokens=128 if task != "text-generation" else 512)
    return resolved.name, resolved.config, workload, False, store


def cmd_estimate(args: argparse.Namespace) -> int:
    from autotune.advisor.estimate import estimate
    from autotune.environment import probe
    from autotune.workload import parse_batch_sizes

    batches = parse_batch_sizes(args.batch, "--batch")
    gpu_memory = None
    if args.gpu_memory:
        gpu_memory = [parse_size(s) for s in str(args.gpu_memory).split(",") if s.strip()]
        if not gpu_memory:
            raise InputError(f"--gpu-memory {args.gpu_memory!r}: give a size such as 24GiB")
    name, config, workload, registered, store = _find_model(args)
    try:
        changes = {k: v for k, v in (("prompt_tokens", args.prompt_tokens), ("new_tokens", args.new_tokens)) if v}
        workload = workload.with_changes(**changes) if changes else workload
        environment = probe()
        correction = None
        if store is not None:
            from autotune.memory.measured import correction_for

            correction = correction_for(store, fingerprint=environment.fingerprint)
    finally:
        if store is not None:
            store.close()
    result = estimate(
        name,
        config,
        workload,
        batches,
        registered=registered,
        environment=environment,
        gpu_memory=gpu_memory,
        gpu_error=environment.nvml_error,
        correction=correction,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    _print_estimate(result)
    return 0


def _print_estimate(result: Any) -> None:
    shape, workload = result.shape, result.workload
    bf16_weights = shape.weight_bytes("bfloat16")[0]
    print(
        f"{result.name}: {shape.architecture} ({shape.model_type}), {shape.parameters / 1e9:.2f} B parameters, "
        f"weights {format_size(bf16_weights)} ({format_gib(bf16_weights)}) in bf16"
    )
    if workload.task == "text-generation":
        per_token = shape.kv_bytes_per_token("bfloat16")
        print(f"KV cache: {per_token / 1024:.2f} KiB per token in bf16: {shape.kv_description}")
    print(f"workload: {workload.describe()}" + ("" if result.registered else " (defaults: the model is not registered)"))
    print(f"limits: {result.limit_source}")
    if result.correction.calibration.fits:
        print(f"forecast {result.correction.calibration.describe()}")
    else:
        print("forecast uncalibrated: no measured trials in this environment yet")
    margins = sorted({row.margin.describe() for row in result.rows})
    print(f"safety margin the search adds for admission (MAX BATCH includes it): {'; '.join(margins)}")
    for note in result.notes:
        print(f"note: {note}")
    print()
    headers = ["CANDIDATE", "WEIGHTS"] + [f"PEAK B={b}" for b in result.batches] + ["MARGIN"]
    for lim in result.limits:
        if lim.spread:
            headers.append(f"MAX BATCH {lim.name} (device_map=auto)")
        elif lim.name.startswith("<="):
            headers.append(f"MAX BATCH {lim.name}")
        else:
            headers.append(f"MAX BATCH {lim.name} ({format_gib(lim.bytes)}{' each' if lim.count > 1 else ''})")
    table = []
    for row in result.rows:
        line = [row.candidate.label(), format_gib(row.weights_bytes + row.quant_state_bytes)]
        line += [format_gib(row.forecasts[b].total_bytes) for b in result.batches] + [f"{row.margin.value:+.0%}"]
        line += [_fit_text(row.largest_batch[lim.name]) for lim in result.limits]
        table.append(line)
    print_table(headers, table)


def _fit_text(n: int) -> str:
    return "none" if n == 0 else (f"{n}+" if n >= 1 << 16 else str(n))


# -- recommend -----------------------------------------------------------------------------------


def cmd_recommend(args: argparse.Namespace) -> int:
    from autotune.advisor.recommend import effective_workload, loader_spec, recommend
    from autotune.advisor.render import RenderError, render_loader
    from autotune.cli import open_store
    from autotune.environment import probe
    from autotune.workload import Workload

    # validate the overrides before anything is read
    effective_workload(Workload(), objective=args.objective, max_memory=args.max_memory, min_quality=args.min_quality)
    write = _check_write_path(args.write) if args.write else None

    with open_store(args) as store:
        models = [store.get_model(args.model)] if args.model else store.models()
        if write is not None and len(models) != 1:
            raise InputError(
                f"--write writes one model's loader; name the model (registered: {', '.join(m.name for m in models) or 'none'})"
            )
        if not models:
            if args.json:
                print_json([])
            else:
                print("no models registered; add one with `autotune add MODEL`, then `autotune tune MODEL`")
            return 0
        current = probe()
        documents = []
        for model in models:
            rec = recommend(
                store, model, current=current, objective=args.objective, max_memory=args.max_memory, min_quality=args.min_quality
            )
            code = None
            if rec.best is not None:
                try:
                    code = render_loader(loader_spec(rec))
                except RenderError as exc:
                    rec = replace(rec, notes=rec.notes + (str(exc),))
                    code = f"# {exc}\n"
                explanation = _jsonable(rec.to_dict())
                store.add_recommendation(
                    model_id=model.id,
                    environment_id=rec.environment_id,
                    objective=rec.workload.objective,
                    code=code,
                    study_id=rec.study.id if rec.study else None,
                    trial_id=rec.best.id,
                    constraints={
                        "max_memory": rec.workload.max_memory.text if rec.workload.max_memory else None,
                        "limit_bytes": rec.limit_bytes,
                        "min_quality": rec.workload.min_quality,
                    },
                    explanation=explanation,
                )
            if write is not None:
                if code is None:
                    raise AutotuneError(f"nothing to write for {model.name}: {rec.message}")
                write.parent.mkdir(parents=True, exist_ok=True)
                write.write_text(code, encoding="utf-8")
            documents.append((rec, code))

    if args.json:
        out = []
        for rec, code in documents:
            doc = rec.to_dict()
            doc["code"] = code
            doc["written"] = str(write) if write is not None and code else None
            out.append(doc)
        print_json(out[0] if args.model else out)
    else:
        for i, (rec, code) in enumerate(documents):
            if i:
                print()
            _print_recommendation(rec, code, show_code=not args.no_code)
        if write is not None:
            print(f"\nwrote {write}: `from {write.stem} import load_model, generate; model, tokenizer = load_model()`")
    return _no_recommendation([rec for rec, _ in documents if rec.best is None], len(documents))


def _no_recommendation(missing: list[Any], asked: int) -> int:
    """Exit 1, with one line on stderr, when a model asked about has no recommendation."""
    if not missing:
        return 0
    if asked == 1:
        print(f"autotune: no recommendation for {missing[0].model.name}: {missing[0].message}", file=sys.stderr)
    else:
        names = ", ".join(rec.model.name for rec in missing)
        print(f"autotune: no recommendation for {len(missing)} of {asked} models ({names}); the reasons are above", file=sys.stderr)
    return 1


def _check_write_path(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_dir():
        raise InputError(f"--write {text}: is a directory; give a file such as {path / 'loader.py'}")
    if path.suffix != ".py":
        raise InputError(f"--write {text}: a loader module must end in .py")
    if not path.stem.isidentifier():
        raise InputError(f"--write {text}: {path.stem!r} cannot be imported as a module name; use letters, digits and _")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"--write {text}: cannot write under {parent}")
    return path


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


def _print_recommendation(rec: Any, code: str | None, *, show_code: bool) -> None:
    from autotune.advisor.explain import describe_metrics
    from autotune.objective import format_floor

    model = rec.model
    task = rec.workload.task
    if rec.best is None:
        print(f"{model.name}: no recommendation")
        print(f"  {rec.message}")
        if rec.environment is not None:
            print(f"  trials ran on {rec.where()}")
        _print_verdicts(rec)
        for note in rec.notes:
            print(f"note: {note}")
        return
    best = rec.best
    when = best.finished_at.strftime("%Y-%m-%d %H:%M UTC") if best.finished_at else "-"
    limit = rec.limits.describe() if rec.limits is not None else format_gib(rec.limit_bytes) if rec.limit_bytes else "none"
    print(f"{model.name}: {best.candidate.label()} at batch {best.batch_size}")
    print(f"  measured: {describe_metrics(best.metrics, task)}")
    if (line := rec.roofline()) is not None:
        print(f"  {line.describe()}")
    print(
        f"  objective {rec.workload.objective} ({rec.metric}); memory limit {limit}; "
        f"quality floor {format_floor(task, rec.workload.min_quality)}; {rec.trials_considered} trials in study {rec.study.id}"
    )
    print(f"  trials ran on {rec.where()}; this one finished {when}")
    if rec.other_environments:
        print(f"  also measured on: {'; '.join(rec.other_environments)}")
    if rec.runners_up:
        print("runners-up:")
        for up in rec.runners_up:
            print(
                f"  {up.trial.candidate.label()} at batch {up.trial.batch_size}: {describe_metrics(up.trial.metrics, task)} "
                f"({up.behind_pct:.1f}% behind)"
            )
    if rec.margin is not None:
        advice = ""
        if not rec.margin.clear:
            advice = (
                "; the two could trade places, even measured in alternation"
                if rec.margin.rounds
                else f"; the two could trade places: `autotune tune {model.name}` measures a close finish again, interleaved"
            )
        print(f"confidence: {rec.margin.describe()}{advice}")
    if rec.confirmed:
        print(f"re-measured interleaved (each by the median of its re-measurements): {'; '.join(rec.confirmed)}")
    for warning in rec.busy:
        print(f"warning: {warning}")
    _print_verdicts(rec)
    for note in rec.notes:
        print(f"note: {note}")
    if rec.packages:
        where = f"worker environment {rec.worker_env}" if rec.worker_env and rec.worker_env != "default" else "the default environment"
        print(f"the application needs: {', '.join(rec.packages)} (as in {where}, where the winner ran)")
    if show_code and code:
        versions = rec.environment.versions if rec.environment else {}
        if best.worker_env and best.worker_env != "default":
            versions = {**versions, **(best.effective.get("versions") or {})}
        print(
            f"loading code (torch {versions.get('torch') or '?'}, transformers {versions.get('transformers') or '?'}, "
            f"as installed where the trials ran):"
        )
        print()
        print(code.rstrip())


def _print_verdicts(rec: Any) -> None:
    if not rec.verdicts:
        return
    print("why not the others:")
    width = max(len(v.option) for v in rec.verdicts)
    for v in rec.verdicts:
        print(f"  {v.option.ljust(width)}  {v.reason}")
