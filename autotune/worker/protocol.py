"""What goes into a trial worker and what comes back: plain, JSON-serialisable values.

The caller writes a :class:`WorkerRequest` as JSON; the child process appends one JSON line per
event to a results file (so what it finished survives a crash); the launcher turns those lines,
the exit status and stderr into :class:`BatchResult` values. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.candidate import Candidate
from autotune.errors import InputError
from autotune.workload import Workload

#: How one batch size of one candidate ended.
#: ok: measured; oom: ran out of memory (the ladder stops there); crash: the worker died from a
#: signal; timeout: the worker ran past its time and was killed; unsupported: the candidate cannot
#: run here, or an option did not take effect (the reason says which); error: anything else;
#: skipped: not measured because an earlier batch size ended the ladder.
STATUSES = ("ok", "oom", "crash", "timeout", "unsupported", "error", "skipped")

#: Test-only faults the child can inject: an out-of-memory error from the second batch size on,
#: a segfault in the second batch size, a hang at start-up (ignoring SIGTERM, with a grandchild
#: process), an ImportError while loading, noise added to the weights after loading, and an ONNX
#: export that fails (ONNX Runtime candidates).
FAULTS = ("oom", "crash", "hang", "import", "corrupt", "export")


#: The launcher's pid, in the worker's environment: the worker dies with it (Linux).
PARENT_ENV = "AUTOTUNE_WORKER_PARENT"

@dataclass(frozen=True)
class WorkerRequest:
    """One candidate to load once and measure at each batch size of a rising ladder.

    ``model_path`` is what ``from_pretrained`` gets (a directory or a Hub id); ``model_name`` is
    the registered name, for messages. ``batch_sizes`` rise strictly; the ladder stops at the
    first out-of-memory. ``max_memory_bytes`` is the per-GPU cap handed to ``device_map="auto"``
    as ``max_memory`` when the placement is ``multi-gpu``.

    Quality: with ``make_reference`` the worker writes the reference outputs of this (highest
    precision) configuration to ``reference_path`` before measuring; otherwise, when
    ``reference_path`` names an existing file, it compares its own outputs with it. With
    ``make_reference`` and no batch sizes it only writes the reference, and reports one result
    with batch size 0.

    Timing: ``warmup`` untimed calls (the first also gives the compile cost), then repeats until
    ``min_repeats`` are done and their relative spread is at most ``target_spread``, or
    ``max_repeats`` or ``time_cap_s`` (per timed series) is reached. ``timeout_s`` bounds the
    whole worker: past it the process group is killed.

    ``gguf_file`` names a llama.cpp file inside ``model_path`` (``from_pretrained(model_path,
    gguf_file=...)``). ``quality_prompts`` are the user's quality prompts (``None``: the built-in
    ones, :data:`autotune.prompts.PROMPTS`), used when the model has a tokenizer.
    """

    model_path: str
    model_name: str
    task: str
    candidate: Candidate
    workload: Workload
    batch_sizes: tuple[int, ...]
    max_memory_bytes: int | None = None
    reference_path: str | None = None
    make_reference: bool = False
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 10
    target_spread: float = 0.05
    time_cap_s: float = 60.0
    timeout_s: float = 900.0
    seed: int = 0
    fault: str | None = None
    model_revision: str | None = None
    onnx_cache: str | None = None
    gguf_file: str | None = None
    quality_prompts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        sizes = tuple(int(b) for b in self.batch_sizes)
        object.__setattr__(self, "batch_sizes", sizes)
        if self.quality_prompts is not None:
            object.__setattr__(self, "quality_prompts", tuple(str(p) for p in self.quality_prompts))
        if any(b <= 0 for b in sizes) or any(a >= b for a, b in zip(sizes, sizes[1:])):
            raise InputError(f"batch sizes must be whole numbers above zero in rising order, got {list(sizes)}")
        if not sizes and not self.make_reference:
            raise InputError("a worker needs at least one batch size to measure (or make_reference)")
        if self.make_reference and not self.reference_path:
            raise InputError("make_reference needs a reference_path to write to")
        if self.fault is not None and self.fault not in FAULTS:
            raise InputError(f"unknown fault {self.fault!r}: choose one of {', '.join(FAULTS)}")
        if self.warmup < 1 or self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise InputError(
                f"timing needs warmup >= 1 and 1 <= min_repeats <= max_repeats, got warmup={self.warmup}, "
                f"min_repeats={self.min_repeats}, max_repeats={self.max_repeats}"
            )
        if self.timeout_s <= 0 or self.time_cap_s <= 0 or self.target_spread < 0:
            raise InputError(f"timeout_s and time_cap_s must be above zero and target_spread not negative, "
                             f"got {self.timeout_s}, {self.time_cap_s}, {self.target_spread}")
        if self.max_memory_bytes is not None and self.max_memory_bytes <= 0:
            raise InputError(f"max_memory_bytes must be above zero, got {self.max_memory_bytes}")

    @property
    def expected_batches(self) -> tuple[int, ...]:
        """The batch sizes results come back for (``(0,)`` for a reference-only request)."""
        return self.batch_sizes or (0,)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidate"] = self.candidate.to_dict()
        data["workload"] = self.workload.to_dict()
        data["batch_sizes"] = list(self.batch_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerRequest:
        data = dict(data)
        data["candidate"] = Candidate.from_dict(data["candidate"])
        data["workload"] = Workload.from_dict(data["workload"])
        data["batch_sizes"] = tuple(data.get("batch_sizes") or ())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerRequest:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class BatchResult:
    """How one batch size of a candidate ended, with what was measured.

    ``metrics`` is keyed by :data:`autotune.store.records.METRICS` names (absent or ``None``:
    not measured). ``effective`` is the configuration read back from the loaded model;
    ``details`` holds everything else (raw repeat timings, per-device memory, stderr tail...).
    """

    status: str
    reason: str | None
    batch_size: int
    metrics: dict[str, Any] = field(default_factory=dict)
    effective: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown trial status {self.status!r}: choose one of {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResult:
        return cls(
            status=str(data["status"]), reason=data.get("reason"), batch_size=int(data["batch_size"]),
            metrics=dict(data.get("metrics") or {}), effective=dict(data.get("effective") or {}),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class WorkerOutcome:
    """Everything one worker run gave back.

    ``results`` holds one :class:`BatchResult` per expected batch size, in ladder order.
    ``returncode`` is the child's exit status (negative: killed by that signal; ``None``: never
    started). ``reference`` is the child's report on writing the reference, when it was asked to.
    """

    results: tuple[BatchResult, ...]
    returncode: int | None
    timed_out: bool
    pid: int | None
    wall_seconds: float
    stderr_tail: str
    reference: dict[str, Any] | None = None
