"""How many graphs a compiled static cache makes over several batch sizes, and what each costs.

Transformers 5 compiles the decode step of a static-cache ``generate`` with
``torch.compile(model.__call__, **CompileConfig)``; ``CompileConfig.dynamic`` defaults to ``None``
(torch.compile's automatic dynamic shapes: the first recompile for a changed size marks that
dimension dynamic) and ``True`` asks for dynamic shapes up front. This script times, each in a
fresh process (one process per line of the table), every batch size in turn with

- ``auto``: the default, sizes in one process (what autotune's worker does with a candidate's
  batch sizes);
- ``dynamic``: ``CompileConfig(dynamic=True)``, sizes in one process;
- ``fresh``: each size in a process of its own (one static graph each);

and each of them again with the compile cache the first left (``warm``). Per size: the first
call's seconds, the median of 5 timed calls, and the graphs torch.compile made (its
``unique_graphs`` count). The CPU runs compile with ``mode="default"`` (``reduce-overhead``'s CUDA
graphs need a GPU; Transformers compiles on the CPU only when asked, with
``CompileConfig._compile_all_devices``): its seconds are CPU figures, not GPU ones.

    python benchmarks/compile_shapes.py --tiny --out /tmp/shapes          # the CPU, a small random Llama
    python benchmarks/compile_shapes.py --model-path DIR --device cuda --sizes 1,8,16 --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RUN_CODE = r"""
import json, statistics, sys, time
spec = json.loads(sys.argv[1])
import torch, transformers
from torch._dynamo.utils import counters
transformers.logging.set_verbosity_error()
cpu = spec["device"] == "cpu"
if cpu:
    torch.set_num_threads(1)
model = transformers.AutoModelForCausalLM.from_pretrained(
    spec["path"], dtype=getattr(torch, spec["dtype"]), attn_implementation="sdpa", device_map=spec["device"]).eval()
config = transformers.CompileConfig(dynamic=True if spec["mode"] == "dynamic" else None,
                                    **({"mode": "default"} if cpu else {}))
if cpu:
    config._compile_all_devices = True
def sync():
    if not cpu: torch.cuda.synchronize()
out = {"sizes": {}}
for batch in spec["sizes"]:
    ids = torch.randint(100, model.config.vocab_size - 100, (batch, spec["prompt"]), generator=torch.Generator().manual_seed(0))
    ids = ids.to(model.device)
    kw = dict(max_new_tokens=spec["new"], min_new_tokens=spec["new"], do_sample=False, pad_token_id=0,
              cache_implementation="static", compile_config=config)
    def call():
        sync(); t = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        sync(); return time.perf_counter() - t
    before = counters["stats"]["unique_graphs"]
    first = call()
    made = counters["stats"]["unique_graphs"] - before
    call()
    times = [call() for _ in range(5)]
    out["sizes"][str(batch)] = {"first_s": first, "median_s": statistics.median(times), "graphs_made": made,
                                "graphs_after_first": counters["stats"]["unique_graphs"] - before - made}
print(json.dumps(out))
"""


def run(path: Path, mode: str, sizes: list[int], cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "path": str(path),
        "mode": mode,
        "sizes": sizes,
        "device": args.device,
        "dtype": args.dtype,
        "prompt": args.prompt,
        "new": args.new,
    }
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
    proc = subprocess.run([sys.executable, "-c", RUN_CODE, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(lines[-1])["sizes"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path)
    parser.add_argument("--tiny", action="store_true", help="a small random Llama (hidden 256, 4 layers), built in a temporary directory")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, help="float32 on the CPU, bfloat16 on a GPU by default")
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        print(f"compile_shapes: --sizes must be whole numbers separated by commas, got {args.sizes!r}", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 1 or (not args.model_path and not args.tiny):
        print("compile_shapes: give --model-path DIR or --tiny, and --sizes of whole numbers from 1 up", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compile-shapes-"))
    path = args.model_path
    if path is None:
        from autotune.testing import build_tiny

        path = build_tiny(
            "llama",
            work / "llama",
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
        )
    results: dict[str, Any] = {"device": args.device, "sizes": sizes, "prompt": args.prompt, "new": args.new, "runs": {}}
    for mode in ("auto", "dynamic", "fresh"):
        for state in ("cold", "warm"):  # the second time, the compile cache the first filled
            cache = work / f"cache-{mode}"
            if mode == "fresh":
                merged: dict[str, Any] = {}
                for size in sizes:
                    merged.update(run(path, "auto", [size], cache / str(size), args))
                results["runs"][f"{mode} {state}"] = merged
            else:
                results["runs"][f"{mode} {state}"] = run(path, mode, sizes, cache, args)
            print(f"{mode} {state}: {json.dumps(results['runs'][f'{mode} {state}'])}", file=sys.stderr, flush=True)
    (args.out / "compile_shapes.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| run | " + " | ".join(f"batch {s}: first call s / median s / graphs" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, sizes_out in results["runs"].items():
        cells = []
        for s in sizes:
            m = sizes_out.get(str(s)) if isinstance(sizes_out, dict) else None
            cells.append("-" if not m or "first_s" not in m else f"{m['first_s']:.2f} / {m['median_s']:.4f} / {m['graphs_made']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (args.out / "compile_shapes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
