"""What a registered model is asked to do: its workload and its constraints."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from autotune.errors import InputError
from autotune.units import format_gib, parse_size

TASKS = ("text-generation", "feature-extraction", "text-classification")
OBJECTIVES = ("throughput", "latency", "memory")
DEVICES = ("auto", "cuda", "cpu")

#: The largest prompt or generation length, and batch size, a workload may ask for: beyond any
#: model's context (the longest in Transformers are a few million positions) and any batch a
#: single host serves. ``autotune add`` also holds the token counts against the model's own context.
MAX_TOKENS = 1 << 24
MAX_BATCH = 1 << 16

#: Default minimum greedy-token agreement with the reference. A faithful bf16 or fp16 load of a
#: real model agrees on nearly every token; a broken quantization does not.
DEFAULT_MIN_QUALITY = 0.9


def parse_batch_sizes(text: str, option: str = "--batch") -> tuple[int, ...]:
    """Batch sizes as users write them (``1,8,32``), rising and without repeats.

    The one reader of ``measure --batch``, ``estimate --batch`` and ``--space batch=``; ``option``
    names where the text came from, for the message. Sizes may come in any order.
    """
    sizes = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise InputError(
                f"{option}{'' if option.endswith('=') else ' '}{text}: give batch sizes as whole numbers "
                f"of at least 1, separated by commas, e.g. 1,8,32"
            )
        sizes.append(int(part))
    return tuple(sorted(set(sizes)))


@dataclass(frozen=True)
class MemoryLimit:
    """A per-GPU memory limit: an absolute size, or a fraction of each GPU's total memory."""

    text: str
    bytes: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> MemoryLimit:
        raw = str(text).strip()
        try:
            number = float(raw)
        except ValueError:
            return cls(text=raw, bytes=parse_size(raw))
        if 0 < number <= 1:
            return cls(text=raw, fraction=number)
        if number > 1 and number == int(number):
            return cls(text=raw, bytes=int(number))
        raise InputError(f"memory limit {text!r} is neither a size (20GiB, 600MB) nor a fraction of each GPU in (0, 1]")

    def for_device(self, total_bytes: int) -> int:
        """The limit in bytes on a device of ``total_bytes``."""
        if self.fraction is not None:
            return int(total_bytes * self.fraction)
        return min(int(self.bytes or total_bytes), total_bytes)

    def describe(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction:g} of each GPU"
        return format_gib(self.bytes)


@dataclass(frozen=True)
class Workload:
    """How a model is served: task, sequence lengths, objective and constraints.

    ``padding_share`` is the mean share of padding tokens in a batch: rows of a batch get
    prompts of falling length, left-padded, so that the average row is that much shorter.
    """

    task: str = "text-generation"
    prompt_tokens: int = 512
    new_tokens: int = 128
    padding_share: float = 0.0
    objective: str = "throughput"
    max_memory: MemoryLimit | None = None
    device: str = "auto"
    min_quality: float = DEFAULT_MIN_QUALITY
    max_batch: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}: choose one of {', '.join(TASKS)}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.device not in DEVICES:
            raise InputError(f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)}")
        for name, largest in (("prompt_tokens", MAX_TOKENS), ("new_tokens", MAX_TOKENS), ("max_batch", MAX_BATCH)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= largest:
                raise InputError(f"--{name.replace('_', '-')} must be a whole number from 1 to {largest:,}, got {value!r}")
        if not 0 <= self.padding_share < 1:
            raise InputError(f"--padding-share must be in [0, 1), got {self.padding_share!r}")
        if self.prompt_tokens * (1 - self.padding_share) < 1:
            most = 1 - 1 / self.prompt_tokens
            raise InputError(
                f"--padding-share {self.padding_share!r} leaves less than one real token in a row of {self.prompt_tokens} "
                f"prompt tokens: give a share from 0 to {math.floor(most * 1000) / 1000:g}"
            )
        if not 0 <= self.min_quality <= 1:
            raise InputError(f"--min-quality must be in [0, 1], got {self.min_quality!r}")

    @property
    def generates(self) -> bool:
        return self.task == "text-generation"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["max_memory"] = self.max_memory.text if self.max_memory else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        data = dict(data)
        limit = data.get("max_memory")
        data["max_memory"] = MemoryLimit.parse(limit) if limit else None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def key(self) -> str:
        """A short stable hash of everything that changes what a trial measures or may pick."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def with_changes(self, **changes: Any) -> Workload:
        return replace(self, **changes)

    def describe(self) -> str:
        parts = [self.task]
        if self.generates:
            parts.append(f"{self.prompt_tokens} prompt + {self.new_tokens} new tokens")
        else:
            parts.append(f"{self.prompt_tokens} tokens")
        if self.padding_share:
            parts.append(f"{self.padding_share:.0%} padding")
        parts.append(f"objective {self.objective}")
        if self.max_memory:
            parts.append(f"limit {self.max_memory.describe()}")
        parts.append(f"device {self.device}")
        if self.extra.get("quality_prompts"):
            parts.append("quality on your prompts")
        drafting = (["prompt lookup"] if self.extra.get("prompt_lookup") else []) + (
            [f"assistant {self.extra['assistant'].get('name')}"] if isinstance(self.extra.get("assistant"), dict) else []
        )
        if drafting:
            parts.append(f"generation plain vs {' and '.join(drafting)}")
        return ", ".join(parts)
