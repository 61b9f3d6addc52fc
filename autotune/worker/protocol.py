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
#: ok: measured; oom: ran out of memory (a rising ladder stops there, a falling one goes on to the
#: next smaller size); crash: the worker died from a signal; timeout: the worker ran past its time
#: and was killed; unsupported: the candidate cannot run here, or an option did not take effect
#: (the reason says which); error: anything else; skipped: not measured because the ladder ended
#: before it; screened: timed once only, because that one run was already far behind the figure to
#: beat (its figures are a screen, never a measurement: see :class:`Screen`).
STATUSES = ("ok", "oom", "crash", "timeout", "unsupported", "error", "skipped", "screened")
#: The orders a worker measures its batch sizes in (see :class:`WorkerRequest`).
LADDERS = ("rising", "falling")
#: The objective figures a worker can screen on, and which way is better.
SCREEN_METRICS = {
    "throughput_tokens_per_s": "maximize",
    "sequences_per_s": "maximize",
    "latency_p50_ms": "minimize",
    "peak_memory_bytes": "minimize",
}

#: Test-only faults the child can inject: an out-of-memory error at the second batch size it
#: measures, a segfault there, a hang at start-up (ignoring SIGTERM, with a grandchild process),
#: an ImportError while loading, noise added to the weights after loading, an ONNX export that
#: fails (ONNX Runtime candidates), a silent attention fallback (another attention function
#: registered under the candidate's name after loading, the config unchanged), a small
#: ``torch.compile`` after loading (which exercises the compile cache on a CPU, where
#: Transformers compiles nothing by itself), and a drafting strategy whose tokens differ from
#: plain greedy generation's (it suppresses the first token plain generation chose).
FAULTS = ("oom", "crash", "hang", "import", "corrupt", "export", "fallback", "compile", "mismatch")


#: The launcher's pid, in the worker's environment: the worker dies with it (Linux).
PARENT_ENV = "AUTOTUNE_WORKER_PARENT"
#: CPU cores the worker may run on (``0-7`` or ``0,2,4``), set by a daemon that runs several
#: workers on one host; the worker pins itself to them before importing torch.
CPUS_ENV = "AUTOTUNE_WORKER_CPUS"


@dataclass(frozen=True)
class Screen:
    """The objective figure of a study, and the best value so far: what lets a worker stop early.

    ``metric`` is the figure the study optimises (one of :data:`SCREEN_METRICS`). With ``beat``
    (the study's best so far), a batch size whose first timed run is more than ``margin`` behind
    it ends as ``screened``: one run, no repeats — a clear loser costs a warm-up and one call, not
    a full measurement. A falling ladder also uses the figure to decide whether a smaller batch
    size is worth measuring: only while the candidate is within ``contend`` of ``beat`` (or ahead
    of it) — a contender (see :mod:`autotune.worker.ladder`). Screens are never measurements:
    they are stored with status ``screened`` and are never recommended.
    """

    metric: str
    beat: float | None = None
    margin: float = 0.15
    contend: float = 0.03

    def __post_init__(self) -> None:
        if self.metric not in SCREEN_METRICS:
            raise InputError(f"cannot screen on {self.metric!r}: choose one of {', '.join(SCREEN_METRICS)}")
        if not 0 < self.margin < 1 or not 0 <= self.contend < 1:
            raise InputError(
                f"the screening margin must be in (0, 1) and the contender margin in [0, 1), got {self.margin!r} and {self.contend!r}"
            )
        if self.beat is not None and not self.beat > 0:
            raise InputError(f"the figure to beat must be above zero, got {self.beat!r}")

    @property
    def direction(self) -> str:
        return SCREEN_METRICS[self.metric]

    def behind(self, value: float) -> float:
        """How far ``value`` is behind ``beat``, as a share of it (negative: ahead; 0 without a figure to beat)."""
        if self.beat is None:
            return 0.0
        if self.direction == "maximize":
            return (self.beat - value) / self.beat
        return (value - self.beat) / self.beat

    def hopeless(self, value: float) -> bool:
        """Whether one run at ``value`` is so far behind that measuring it fully cannot change the study's best."""
        return self.beat is not None and self.behind(value) > self.margin

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerRequest:
    """One candidate to load once and measure at each batch size of a rising ladder.

    ``model_path`` is what ``from_pretrained`` gets (a directory or a Hub id); ``model_name`` is
    the registered name, for messages. ``batch_sizes`` rise strictly; the ladder stops at the
    first out-of-memory. ``max_memory`` maps each GPU's CUDA index to its cap in bytes, handed to
    ``device_map="auto"`` as ``max_memory`` when the placement is ``multi-gpu``.

    Quality: with ``make_reference`` the worker writes the reference outputs of this (highest
    precision) configuration to ``reference_path`` before measuring; otherwise, when
    ``reference_path`` names an existing file, it compares its own outputs with it. With
    ``make_reference`` and no batch sizes it only writes the reference, and reports one result
    with batch size 0.

    Timing: at least ``warmup`` untimed calls, more until the last two agree within
    ``target_spread`` (the first also gives the compile cost), then repeats until
    ``min_repeats`` are done and their relative spread is at most ``target_spread``, or
    ``max_repeats`` or ``time_cap_s`` (per timed series) is reached. ``timeout_s`` bounds the
    whole worker: past it the process group is killed.

    The ladder: ``rising`` measures the batch sizes smallest first and stops at the first
    failure (``autotune measure``); ``falling`` measures the largest first, goes on past an
    out-of-memory to the next smaller size, and after a measured size goes down only while the
    candidate is a contender and the smaller size gains (the search, for throughput: the largest
    batch that fits is nearly always the fastest, and a static cache compiles once per size).
    ``screen`` carries the study's objective and best value (see :class:`Screen`).

    ``compile_cache`` is the directory torch.compile keeps its caches in (Inductor's FX graph
    and autograd caches, Triton's kernels): shared by every worker of an environment, it
    survives the process, so a graph compiled once is loaded, not compiled, the next time.

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
    max_memory: dict[int, int] | None = None
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
    ladder: str = "rising"
    screen: Screen | None = None
    compile_cache: str | None = None
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
            raise InputError(
                f"timeout_s and time_cap_s must be above zero and target_spread not negative, "
                f"got {self.timeout_s}, {self.time_cap_s}, {self.target_spread}"
            )
        if self.max_memory is not None:
            caps = {int(k): int(v) for k, v in dict(self.max_memory).items()}  # JSON gives the indices as text
            if not caps or any(k < 0 or v <= 0 for k, v in caps.items()):
                raise InputError(f"max_memory must map GPU indices to sizes above zero, got {self.max_memory}")
            object.__setattr__(self, "max_memory", caps)
        if self.ladder not in LADDERS:
            raise InputError(f"unknown ladder {self.ladder!r}: choose one of {', '.join(LADDERS)}")

    @property
    def expected_batches(self) -> tuple[int, ...]:
        """The batch sizes results come back for (``(0,)`` for a reference-only request)."""
        return self.batch_sizes or (0,)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidate"] = self.candidate.to_dict()
        data["workload"] = self.workload.to_dict()
        data["batch_sizes"] = list(self.batch_sizes)
        data["screen"] = self.screen.to_dict() if self.screen else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerRequest:
        data = dict(data)
        data["candidate"] = Candidate.from_dict(data["candidate"])
        data["workload"] = Workload.from_dict(data["workload"])
        data["batch_sizes"] = tuple(data.get("batch_sizes") or ())
        data["screen"] = Screen(**data["screen"]) if data.get("screen") else None
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
            status=str(data["status"]),
            reason=data.get("reason"),
            batch_size=int(data["batch_size"]),
            metrics=dict(data.get("metrics") or {}),
            effective=dict(data.get("effective") or {}),
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
