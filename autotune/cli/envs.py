"""Commands for worker environments: env add, env list, env remove."""

from __future__ import annotations

import argparse

from autotune.cli._output import print_json, print_table


def register(commands: argparse._SubParsersAction) -> None:
    env = commands.add_parser(
        "env",
        help="other Python environments trials can run in (e.g. one with optimum-onnx)",
        description="Worker environments: other Python interpreters autotune runs trials in. "
        "Example: autotune env add ort ~/venvs/ort/bin/python",
    )
    sub = env.add_subparsers(dest="env_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser(
        "add",
        help="register (or re-check) an interpreter and what it offers",
        description="Register an interpreter; autotune asks it for its library versions, runtimes and providers. "
        "Example: autotune env add ort /opt/ort/bin/python",
    )
    p.add_argument("name", metavar="NAME", help="a name for it, e.g. ort (trials record it)")
    p.add_argument("python", metavar="PYTHON", help="path of the interpreter, e.g. a virtual environment's bin/python")
    p.set_defaults(func=cmd_env_add)
    p = sub.add_parser(
        "list",
        help="show the environments, their versions and runtimes",
        description="Show the worker environments, the default one first. Example: autotune env list --json",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--check", action="store_true", help="ask each interpreter again before listing")
    p.set_defaults(func=cmd_env_list)
    p = sub.add_parser(
        "remove",
        help="forget an environment (its trials stay)",
        description="Forget a worker environment; trials that ran there stay. Example: autotune env remove ort",
    )
    p.add_argument("name", metavar="NAME", help="a registered worker environment (see autotune env list)")
    p.set_defaults(func=cmd_env_remove)


def cmd_env_add(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autotune.cli import open_store
    from autotune.errors import InputError
    from autotune.worker_env import check_name, probe

    name = check_name(args.name)
    python = str(Path(args.python).expanduser().absolute())
    env = probe(name, python)
    if env.error:
        raise InputError(f"cannot use {args.python} as worker environment {name}: {env.error}")
    if not env.runtimes:
        raise InputError(
            f"{args.python} offers no runtime autotune can use ({'; '.join(env.problems)}); install torch and transformers, or optimum-onnx with onnxruntime, there"
        )
    with open_store(args) as store:
        created = store.save_worker_env(env)
    print(f"{'added' if created else 'updated'} worker environment {name} (python {env.python_version}): {_runtimes(env)}")
    for problem in env.problems:
        print(f"  not available there: {problem}")
    return 0


def _runtimes(env) -> str:  # type: ignore[no-untyped-def]
    return "; ".join(f"{runtime} [{', '.join(providers)}]" for runtime, providers in env.runtimes.items()) or "no runtime"


def cmd_env_list(args: argparse.Namespace) -> int:
    from autotune.cli import open_store
    from autotune.worker_env import default_environment, probe

    with open_store(args) as store:
        envs = store.worker_envs()
        if args.check:
            envs = [probe(e.name, e.python) for e in envs]
            for env in envs:
                store.save_worker_env(env)
    envs = [default_environment(), *envs]
    if args.json:
        print_json([e.to_dict() for e in envs])
        return 0
    rows = [
        [
            e.name,
            e.python,
            e.python_version,
            e.versions.get("transformers"),
            e.versions.get("optimum-onnx"),
            e.versions.get("onnxruntime") or e.versions.get("onnxruntime-gpu"),
            e.error or _runtimes(e),
        ]
        for e in envs
    ]
    print_table(["NAME", "PYTHON", "VERSION", "TRANSFORMERS", "OPTIMUM-ONNX", "ONNXRUNTIME", "RUNTIMES"], rows)
    for env in envs:
        for problem in env.problems:
            print(f"{env.name}: not available: {problem}")
    return 0


def cmd_env_remove(args: argparse.Namespace) -> int:
    from autotune.cli import open_store

    with open_store(args) as store:
        store.remove_worker_env(args.name)
    print(f"removed worker environment {args.name}; trials that ran there stay")
    return 0
