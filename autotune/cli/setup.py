"""Commands that set things up: gpus, add, models, remove, db."""

from __future__ import annotations

import argparse

from autotune.cli._output import print_json, print_table
from autotune.units import format_gib
from autotune.workload import DEVICES, OBJECTIVES, TASKS


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "gpus",
        help="show the GPUs NVML sees, what each supports, library versions and the environment fingerprint",
        description="Show the GPUs NVML sees, what each supports, the installed library versions and the environment fingerprint. Example: autotune gpus --json",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_gpus)

    p = commands.add_parser(
        "add",
        help="register a model (a local directory or a Hub id) and its workload",
        description="Register a model and its workload; adding it again updates the workload. "
        "Example: autotune add tiiuae/falcon-7b --max-memory 20GiB --prompt-tokens 512 --new-tokens 128",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a local directory with config.json, a Hub id (resolved: directory, HF cache, Hub), "
        "or a llama.cpp .gguf file (or a directory holding one)",
    )
    p.add_argument("--task", choices=TASKS, help="default: inferred from the config")
    p.add_argument("--prompt-tokens", type=_int, help="prompt length in tokens (default 512; 128 for encoders)")
    p.add_argument("--new-tokens", type=_int, help="tokens generated per request (default 128)")
    p.add_argument("--padding-share", type=float, help="mean share of padding in a batch, in [0, 1) (default 0)")
    p.add_argument("--objective", choices=OBJECTIVES, help="what to optimise (default throughput)")
    p.add_argument(
        "--max-memory", metavar="LIMIT", help="per-GPU memory limit: 20GiB, 600MB, a fraction of each GPU such as 0.5, or none to clear it"
    )
    p.add_argument("--device", choices=DEVICES, help="where to run (default auto: GPUs if any, else the CPU)")
    p.add_argument(
        "--min-quality",
        type=float,
        help="quality floor against the reference, in [0, 1]: greedy-token agreement "
        "(text generation), cosine similarity of the last hidden states (feature "
        "extraction) or top-class agreement (classification) (default 0.9)",
    )
    p.add_argument("--max-batch", type=_int, help="largest batch size to try (default 64)")
    p.add_argument(
        "--quality-prompts",
        metavar="FILE",
        help="measure quality on your own text: a UTF-8 file with one prompt per line, or a JSON list of strings "
        "(at least 8); 'builtin' goes back to autotune's prompts",
    )
    p.add_argument(
        "--prompt-lookup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also compare prompt-lookup decoding (3, 5 or 10 tokens drafted from the prompt) with plain generation: "
        "batch 1, greedy, timed on your --quality-prompts (else the built-in text); --no-prompt-lookup stops",
    )
    p.add_argument(
        "--assistant",
        metavar="DRAFT",
        help="also compare assisted generation with DRAFT, a small model of the same tokenizer and vocabulary "
        "(a directory or a Hub id; checked now); 'none' clears it",
    )
    p.set_defaults(func=cmd_add)

    p = commands.add_parser(
        "models",
        help="list registered models and their workloads",
        description="List registered models and their workloads. Example: autotune models --json",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_models)

    p = commands.add_parser(
        "remove",
        help="unregister a model (its trials stay unless --purge)",
        description="Unregister a model; its studies and trials stay unless --purge. Example: autotune remove tiiuae/falcon-7b --purge",
    )
    p.add_argument("model", metavar="MODEL", help="a registered model (see autotune models)")
    p.add_argument("--purge", action="store_true", help="also delete its studies, trials and recommendations")
    p.set_defaults(func=cmd_remove)

    db = commands.add_parser(
        "db", help="where the data is, and schema upgrades", description="Database commands. Example: autotune db path"
    )
    sub = db.add_subparsers(dest="db_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser(
        "path",
        help="print where the data is (the SQLite file, or the URL without password)",
        description="Print where the data is. Example: autotune db path",
    )
    p.set_defaults(func=cmd_db_path)
    p = sub.add_parser(
        "upgrade",
        help="create or upgrade the schema to this autotune's version",
        description="Create or upgrade the schema. Example: autotune --db postgresql+psycopg://localhost/test db upgrade",
    )
    p.set_defaults(func=cmd_db_upgrade)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def cmd_gpus(args: argparse.Namespace) -> int:
    from autotune.environment import probe

    env = probe()
    if args.json:
        print_json(env.to_dict())
        return 0
    if env.cpu_only:
        print(f"{env.nvml_error or 'no NVIDIA GPU found'}: CPU-only environment")
    else:
        print(f"driver {env.driver_version}, CUDA {env.cuda_driver_version}")
        rows = []
        for gpu in env.gpus:
            supports = gpu.supports(env.versions, env.cuda_driver_version)
            columns = ("bf16", "flash_attention", "flash_attention_4", "bitsandbytes", "fp8")
            rows.append(
                [
                    gpu.index,
                    gpu.name,
                    gpu.uuid,
                    format_gib(gpu.total_memory),
                    format_gib(gpu.free_memory),
                    gpu.cc,
                    *(supports[k].split(":")[0].split(";")[0] for k in columns),
                ]
            )
        print_table(["GPU", "NAME", "UUID", "TOTAL", "FREE", "CC", "BF16", "FLASH-ATTN", "FA4", "BNB", "FP8"], rows)
        notes = {f"{k}: {v}" for g in env.gpus for k, v in g.supports(env.versions, env.cuda_driver_version).items() if v != "yes"}
        for note in sorted(notes):
            print(f"  {note}")
    print("libraries: " + ", ".join(f"{k} {v or '-'}" for k, v in env.versions.items()))
    print(f"python {env.python}; environment fingerprint {env.fingerprint}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from autotune.api import add_model
    from autotune.cli import open_store

    options = {
        "task": args.task,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "padding_share": args.padding_share,
        "objective": args.objective,
        "max_memory": args.max_memory,
        "device": args.device,
        "min_quality": args.min_quality,
        "max_batch": args.max_batch,
        "quality_prompts": args.quality_prompts,
        "prompt_lookup": args.prompt_lookup,
        "assistant": args.assistant,
    }
    result = add_model(None, args.model, options, open_store=lambda: open_store(args))
    model = result.model
    source = f"GGUF file {model.gguf_file}" if model.gguf_file else f"from {model.source}"
    if result.created:
        print(f"added {model.name} ({model.architecture}, {source}): {model.workload.describe()}")
    elif result.changes:
        changed = "; ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in result.changes.items())
        print(f"updated {model.name}: {changed}")
    else:
        print(f"{model.name} is already registered; workload unchanged: {model.workload.describe()}")
    return 0


def _show(value: object) -> str:
    return "-" if value is None else str(value)


def cmd_models(args: argparse.Namespace) -> int:
    from autotune.cli import open_store

    with open_store(args) as store:
        models = store.models()
    if args.json:
        print_json(
            [
                {
                    "name": m.name,
                    "source": m.source,
                    "path": m.path,
                    "revision": m.revision,
                    "model_type": m.model_type,
                    "architecture": m.architecture,
                    "workload": m.workload.to_dict(),
                    "capabilities": m.capabilities,
                    "gguf_file": m.gguf_file,
                    "quality_prompts": len(m.quality_prompts) if m.quality_prompts else None,
                    "created_at": m.created_at,
                    "updated_at": m.updated_at,
                }
                for m in models
            ]
        )
        return 0
    if not models:
        print("no models registered; add one with `autotune add MODEL`")
        return 0
    rows = [
        [
            m.name,
            m.architecture,
            m.workload.task,
            f"{m.workload.prompt_tokens}+{m.workload.new_tokens}" if m.workload.generates else m.workload.prompt_tokens,
            m.workload.objective,
            m.workload.max_memory.text if m.workload.max_memory else None,
            m.workload.device,
            f"{m.source} (GGUF)" if m.gguf_file else m.source,
        ]
        for m in models
    ]
    print_table(["MODEL", "ARCHITECTURE", "TASK", "TOKENS", "OBJECTIVE", "LIMIT", "DEVICE", "SOURCE"], rows)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from autotune.cli import open_store

    with open_store(args) as store:
        model = store.get_model(args.model)
        counts = store.remove_model(args.model, purge=args.purge)
    if args.purge:
        print(f"removed {model.name} with {counts['studies']} studies and {counts['trials']} trials")
    else:
        print(f"removed {model.name}; its {counts['kept_trials']} trials stay (remove --purge deletes them)")
    return 0


def cmd_db_path(args: argparse.Namespace) -> int:
    from autotune.store.engine import describe, resolve_url

    print(describe(resolve_url(args.db)))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from autotune.store import Store
    from autotune.store.engine import create, describe, resolve_url
    from autotune.store.migrate import HEAD, current_revision

    url = resolve_url(args.db)
    engine = create(url)
    before = current_revision(engine)
    engine.dispose()
    with Store.open(url):
        pass
    if before == HEAD:
        print(f"{describe(url)} is at schema revision {HEAD}, the newest; nothing to do")
    else:
        print(f"{describe(url)} upgraded from schema revision {before or 'none'} to {HEAD}")
    return 0
