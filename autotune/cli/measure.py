"""``autotune measure``: measure one candidate configuration of a registered model."""

from __future__ import annotations

import argparse
from typing import Any

from autotune import axes
from autotune.cli._output import print_json, print_table
from autotune.units import format_size
from autotune.worker.protocol import FAULTS

DEFAULT_LADDER = (1, 4, 16)


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "measure",
        help="measure one way of loading a registered model, at one or more batch sizes, in a worker process",
        description="Load a registered model one way (dtype, attention, quantization, placement, cache) in a separate worker "
        "process and measure it at each batch size of a rising ladder, which stops at the first out-of-memory. "
        "Each batch size is recorded as a trial (origin 'measure'). Exits 0 when at least one batch size "
        "measured ok, 1 otherwise. "
        "ONNX Runtime: --runtime onnxruntime --provider NAME [--io-binding] exports the model once (cached) and "
        "measures it in a worker environment registered with autotune env add. "
        "Example: autotune measure tiiuae/falcon-7b --dtype bf16 --attn sdpa --batch 1,8,32 --json",
    )
    p.add_argument("model", metavar="MODEL", help="a registered model (see autotune models)")
    # one option per axis that declares one (autotune.axes): dtype, attention, quantization, placement, cache, runtime, ...
    for axis in axes.AXES:
        if axis.flag is not None:
            p.add_argument(axis.flag.name, dest=axis.name, **axis.flag.kwargs)
    p.add_argument("--batch", metavar="SIZES", help="batch sizes, comma-separated (default 1,4,16 up to the workload's max batch)")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="time limit of the worker (default 300 s + 150 s per batch size, + 1800 s for an ONNX Runtime export)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--inject-fault", choices=FAULTS, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_measure)


def _batches(text: str | None, max_batch: int) -> list[int]:
    from autotune.workload import parse_batch_sizes

    if text is None:
        return [b for b in DEFAULT_LADDER if b <= max_batch] or [1]
    return list(parse_batch_sizes(text, "--batch"))


def _check_attention(name: str, model: Any) -> None:
    """Refuse an attention implementation the installed Transformers does not offer for the model."""
    from autotune.errors import InputError

    offered = model.capabilities.get("attn_implementations")
    if offered and name not in offered:
        version = model.capabilities.get("transformers")
        raise InputError(
            f"--attn {name!r}: {model.capabilities.get('architecture') or model.name} offers {', '.join(offered)} "
            f"(transformers {version or '?'}, read when the model was added; `autotune add {model.name}` reads it again)"
        )


def cmd_measure(args: argparse.Namespace) -> int:
    from autotune.candidate import PROVIDER_PLACEMENT, Candidate
    from autotune.cli import open_store
    from autotune.environment import probe
    from autotune.errors import InputError
    from autotune.store import METRICS
    from autotune.trials import default_placement, measure_candidate

    with open_store(args) as store:
        model = store.get_model(args.model)
        environment = probe()
        workload = model.workload
        # Everything is checked before the environment or a study is recorded: bad input stores nothing.
        ort = args.runtime == "onnxruntime"
        if not ort:
            _check_attention(args.attn, model)
        if (args.provider or args.io_binding) and not ort:
            raise InputError("--provider and --io-binding apply to --runtime onnxruntime only")
        if ort and args.provider and not args.placement and args.provider in PROVIDER_PLACEMENT:
            placement = PROVIDER_PLACEMENT[args.provider]
        else:
            placement = args.placement or default_placement(environment, workload)
        provider = (args.provider or ("CPUExecutionProvider" if placement == "cpu" else "CUDAExecutionProvider")) if ort else None
        asked = {axis.name: getattr(args, axis.name) for axis in axes.AXES if axis.flag is not None}
        candidate = Candidate.from_dict(
            {
                **asked,
                "dtype": args.dtype or ("float32" if placement == "cpu" else "float16" if ort else "bfloat16"),
                "placement": placement,
                "provider": provider,
            }
        )
        batches = _batches(args.batch, workload.max_batch)
        environment_id = store.record_environment(environment)
        study = store.study_for(model, environment_id)
        if not args.json:
            print(
                f"measuring {model.name}: {candidate.label()} at batch {','.join(map(str, batches))} "
                f"({study.workload.describe()}) on {environment.summary()}",
                flush=True,
            )
        trials = measure_candidate(
            store,
            model,
            candidate,
            batches,
            environment=environment,
            environment_id=environment_id,
            study=study,
            origin="measure",
            timeout_s=args.timeout,
            fault=args.inject_fault,
        )
    results = [
        {
            "trial_id": t.id,
            "status": t.status,
            "reason": t.reason,
            "batch_size": t.batch_size,
            "worker_env": t.worker_env,
            **{m: t.metrics.get(m) for m in METRICS},
            "feasible": t.feasible,
            "objective_value": t.objective_value,
            "effective": t.effective,
            "details": t.details,
        }
        for t in trials
    ]
    if args.json:
        print_json(
            {
                "model": model.name,
                "candidate": candidate.to_dict(),
                "label": candidate.label(),
                "study_id": study.id,
                "environment": {"fingerprint": environment.fingerprint, "summary": environment.summary()},
                "workload": study.workload.to_dict(),
                "results": results,
            }
        )
    else:
        if trials and trials[0].worker_env != "default":
            print(f"ran in worker environment {trials[0].worker_env}")
        _print_results(results, study.workload.task)
    return 0 if any(r["status"] == "ok" for r in results) else 1


def _num(value: Any, digits: int = 1) -> str | None:
    return None if value is None else f"{value:,.{digits}f}"


def _print_results(results: list[dict[str, Any]], task: str) -> None:
    from autotune.objective import QUALITY_MEASURES

    if task == "text-generation":
        headers = ["BATCH", "STATUS", "TOK/S", "DECODE TOK/S", "TTFT MS", "P50 MS", "P90 MS", "SPREAD", "PEAK", "AGREE", "KL"]
        rows = [
            [
                r["batch_size"],
                r["status"],
                _num(r["throughput_tokens_per_s"]),
                _num(r["decode_tokens_per_s"]),
                _num(r["ttft_ms"], 2),
                _num(r["latency_p50_ms"], 2),
                _num(r["latency_p90_ms"], 2),
                _pct(r["latency_spread"]),
                format_size(r["peak_memory_bytes"]) if r["peak_memory_bytes"] else None,
                _pct(r["quality_token_agreement"]),
                _num(r["quality_kl"], 4),
            ]
            for r in results
        ]
    else:
        headers = ["BATCH", "STATUS", "SEQ/S", "P50 MS", "P90 MS", "SPREAD", "PEAK", QUALITY_MEASURES[task].upper()]
        rows = [
            [
                r["batch_size"],
                r["status"],
                _num(r["sequences_per_s"]),
                _num(r["latency_p50_ms"], 2),
                _num(r["latency_p90_ms"], 2),
                _pct(r["latency_spread"]),
                format_size(r["peak_memory_bytes"]) if r["peak_memory_bytes"] else None,
                _num(r["quality_token_agreement"], 4),
            ]
            for r in results
        ]
    print_table(headers, rows)
    for r in results:
        if r["status"] != "ok":
            print(f"batch {r['batch_size']}: {r['status']}: {r['reason']}")
        elif r.get("details", {}).get("infeasible"):
            print(f"batch {r['batch_size']}: infeasible: {'; '.join(r['details']['infeasible'])}")
    effective = next((r["effective"] for r in results if r["effective"]), None)
    if effective:
        print("effective: " + _describe_effective(effective, results[0].get("load_seconds")))


def _pct(value: Any) -> str | None:
    return None if value is None else f"{value:.1%}"


def _describe_effective(effective: dict[str, Any], load_seconds: float | None) -> str:
    if effective.get("runtime") == "onnxruntime":
        export = effective.get("export") or {}
        files = effective.get("onnx_files") or {}
        parts = [
            f"ONNX Runtime {', '.join(effective.get('providers') or [])}",
            f"IO binding {'on' if effective.get('io_binding') else 'off'}",
            f"graph {effective.get('onnx_dtype')} ({', '.join(files) or 'no file'}, {format_size(sum(files.values())) if files else '?'})",
            "export "
            + ("cached" if export.get("cached") else "fresh")
            + (f" (made in {export['seconds']:.2f} s)" if export.get("seconds") is not None else ""),
        ]
        if load_seconds is not None:
            parts.append(f"session created in {load_seconds:.2f} s")
        return "; ".join(parts)
    parts = [
        f"attention {effective.get('attn_implementation')}" + (f"[{effective['sdpa_kernel']}]" if effective.get("sdpa_kernel") else ""),
        f"dtype {effective.get('dtype')}",
    ]
    if effective.get("quantized_layers"):
        kinds = ",".join(effective.get("quant_types", {}))
        parts.append(f"{effective['quantized_layers']}/{effective.get('linear_layers')} linear layers quantized ({kinds})")
    devices = effective.get("hf_device_map") or effective.get("param_devices") or {}
    parts.append("on " + ", ".join(sorted(devices)))
    if effective.get("static_cache_compiled") is not None:
        parts.append("static cache " + ("compiled" if effective["static_cache_compiled"] else "not compiled"))
    if load_seconds is not None:
        parts.append(f"loaded in {load_seconds:.2f} s")
    return "; ".join(parts)
