"""What a model's files on this machine hold, read without loading anything: used by the registry
when a model is added and by the trial worker before it measures quality on text."""

from __future__ import annotations

from pathlib import Path

#: Files whose presence in a model directory means it has a tokenizer (a GGUF file carries its own).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def has_tokenizer(path: str | None, gguf_file: str | None = None) -> bool:
    """Whether a model's files on this machine include a tokenizer (a GGUF file always does)."""
    if gguf_file:
        return True
    if not path:
        return False
    directory = Path(path)
    return any((directory / name).is_file() for name in TOKENIZER_FILES)
