"""Tiny random-weight models for tests, demos and benchmarks.

They are built from configs with ``save_pretrained``, so nothing is downloaded, and they time like
real models of their shape. :func:`install_in_hf_cache` lays a model out in a Hugging Face cache
so that a Hub id such as ``tiiuae/falcon-7b`` resolves offline exactly as a user would type it.

From the shell, ``python -m autotune.testing KIND DIR`` builds one (``--help`` says more).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

KINDS = ("llama", "falcon", "gpt2", "bert")


def tiny_config(kind: str, **overrides: Any) -> Any:
    """A small config of ``kind``'s architecture (overrides change any field)."""
    import transformers

    common = dict(vocab_size=512, max_position_embeddings=1024)
    if kind == "llama":
        fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, architectures=["LlamaForCausalLM"], **common)
        config = transformers.LlamaConfig(**{**fields, **overrides})
    elif kind == "falcon":
        # Falcon-7B's layout: multi-query attention, parallel attention and MLP, old decoder.
        fields = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                      new_decoder_architecture=False, parallel_attn=True, bias=False, alibi=False,
                      architectures=["FalconForCausalLM"])
        config = transformers.FalconConfig(**{**fields, **overrides})
    elif kind == "gpt2":
        fields = dict(vocab_size=512, n_positions=1024, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
                      architectures=["GPT2LMHeadModel"])
        config = transformers.GPT2Config(**{**fields, **overrides})
    elif kind == "bert":
        fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      architectures=["BertModel"], **common)
        config = transformers.BertConfig(**{**fields, **overrides})
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: choose one of {', '.join(KINDS)}")
    return config


def build_tiny(kind: str, path: str | Path, *, seed: int = 0, dtype: str = "float32", **overrides: Any) -> Path:
    """Build a random-weight ``kind`` model and ``save_pretrained`` it into ``path``."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    config = tiny_config(kind, **overrides)
    torch.manual_seed(seed)
    architecture = config.architectures[0]
    model = getattr(transformers, architecture)(config).to(getattr(torch, dtype))
    path = Path(path)
    model.save_pretrained(path)
    return path


def next_in_pattern(token: int, vocab_size: int) -> int:
    """The deterministic pattern :func:`build_trained_tiny` teaches: the token after ``token``."""
    return (5 * token + 7) % vocab_size


def build_trained_tiny(kind: str, path: str | Path, *, seed: int = 0, steps: int = 60, **overrides: Any) -> Path:
    """Build a tiny causal LM trained for a few seconds, and ``save_pretrained`` it into ``path``.

    Random weights give flat next-token distributions, on which any numeric noise flips the
    greedy choice, so quality measures cannot tell a faithful load from a broken one. This model
    learns a deterministic pattern instead (the token after ``t`` is :func:`next_in_pattern`,
    whatever came before), so its greedy continuations are confident: a faithful candidate
    (fp32, bf16) agrees with the reference on nearly every token and a broken one does not.
    60 steps take a few seconds on one CPU core.
    """
    import torch
    import transformers

    if kind not in ("llama", "falcon", "gpt2"):
        raise ValueError(f"build_trained_tiny builds causal LMs: choose llama, falcon or gpt2, not {kind!r}")
    config = tiny_config(kind, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, config.architectures[0])(config)
    model.train()
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batch, length = 32, 24
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread, and many times faster on a busy machine
    try:
        _train(model, optimizer, generator, vocab, batch, length, steps)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = Path(path)
    model.save_pretrained(path)
    return path


def _train(model: Any, optimizer: Any, generator: Any, vocab: int, batch: int, length: int, steps: int) -> None:
    import torch

    for _ in range(steps):
        # A random lead-in of 1..8 tokens, then the pattern; only the pattern's steps are learned.
        ids = torch.randint(0, vocab, (batch, length), generator=generator)
        starts = torch.randint(1, 9, (batch,), generator=generator)
        labels = torch.full_like(ids, -100)
        for row in range(batch):
            for t in range(int(starts[row]), length):
                ids[row, t] = next_in_pattern(int(ids[row, t - 1]), vocab)
                labels[row, t] = ids[row, t]
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def install_in_hf_cache(model_dir: str | Path, repo_id: str, cache_dir: str | Path) -> Path:
    """Lay ``model_dir``'s files out in the HF hub cache at ``cache_dir`` as ``repo_id``'s main revision.

    ``cache_dir`` is the hub cache itself (``$HF_HOME/hub`` or ``$HF_HUB_CACHE``). Returns the snapshot.
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file())).hexdigest()
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / digest
    snapshot.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, snapshot / item.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(digest)
    return snapshot


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m autotune.testing",
        description="Build a tiny random-weight model (2 layers, hidden size 64, a vocabulary of 512) and save it "
                    "with save_pretrained into DIR, to try autotune without downloading anything: "
                    "python -m autotune.testing llama ./tiny-llama && autotune add ./tiny-llama --device cpu. "
                    "Random weights time like real ones of the same shape, but their quality figures mean nothing; "
                    "--trained teaches a causal LM a simple pattern for a few seconds, so that quality figures do.",
    )
    parser.add_argument("kind", choices=KINDS, metavar="KIND", help=f"the architecture: {', '.join(KINDS)}")
    parser.add_argument("dir", metavar="DIR", help="where to save the model (created; must not hold a model already)")
    parser.add_argument("--trained", action="store_true", help="train it for a few seconds on a pattern (llama, falcon, gpt2 only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        parser.exit(2, f"{parser.prog}: error: {target} is a file; give a directory to save the model in\n")
    if (target / "config.json").exists():
        parser.exit(2, f"{parser.prog}: error: {target} already holds a model (config.json); give another directory\n")
    if args.trained and args.kind not in ("llama", "falcon", "gpt2"):
        parser.exit(2, f"{parser.prog}: error: --trained builds causal LMs: choose llama, falcon or gpt2, not {args.kind}\n")
    build = build_trained_tiny if args.trained else build_tiny
    print(build(args.kind, target, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
