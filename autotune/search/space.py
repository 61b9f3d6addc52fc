"""The candidate space of one model in one environment, and what was left out of it and why.

The space is the product of the worker's options (dtype × attention (× pinned SDPA kernel) ×
quantization × placement × static cache) minus what :func:`autotune.candidate.rejection`
refuses, minus what the memory forecast (:mod:`autotune.memory`) says cannot fit, on each device,
the workload's limit there (:class:`~autotune.memory.limit.DeviceLimits`). Both kinds of
rejection are kept, grouped by reason, so that ``autotune status`` can say why an option was
never tried. Batch sizes are a ladder of powers of two that one worker measures per candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from autotune import axes
from autotune.axes import (
    ATTENTIONS,
    DTYPE_SHORT,
    ORT_DTYPES,
    PLACEMENTS,
    PROVIDER_PLACEMENT,
    PROVIDER_SHORT,
    PYTORCH,
    QUANT_SHORT,
    normalize_dtype,
    sampler_axes,
)
from autotune.candidate import Candidate, rejection
from autotune.environment import Environment
from autotune.errors import InputError
from autotune.memory import Correction, DeviceLimits, device_kind, forecast_on
from autotune.units import format_gib
from autotune.worker_env import WorkerEnvironment
from autotune.workload import Workload, parse_batch_sizes

#: The axes the sampler sees, one categorical parameter each, are :func:`autotune.axes.sampler_axes`
#: (read when a space is built, so that an axis declared later joins). The SDPA kernel is folded
#: into ``attn`` (``sdpa[flash]``), the execution provider and IO binding into ``runtime``
#: (``onnxruntime:<provider>+io-binding``); 4-bit options are their own axes and read
#: ``False``/``"same"`` on other candidates, so every candidate has a value on every axis.
#: ``--space`` may restrict those axes, and ``batch``: the batch sizes each worker measures.
BATCH = "batch"


def restrictable() -> tuple[str, ...]:
    """What ``--space`` may restrict: the sampler's axes, and the batch sizes each worker measures."""
    return (*sampler_axes(), BATCH)


def pattern_fields(onnxruntime: bool) -> tuple[str, ...]:
    """The :class:`Candidate` fields a rejection's ``pattern`` is written in: those the space varies
    for PyTorch candidates, and for ONNX Runtime ones the runtime, its own options and the placement
    (their PyTorch options are defaults)."""
    if onnxruntime:
        return ("runtime", *(a.name for a in axes.AXES if a.owner == "onnxruntime"), "placement")
    return tuple(a.name for a in axes.AXES if a.owner in (None, PYTORCH) and a.name != "runtime")


@dataclass(frozen=True)
class Rejection:
    """Candidates left out of the space for one reason.

    ``kind`` is ``rule`` (a validity rule), ``memory`` (the forecast) or ``placement`` (the
    workload or machine rules a placement out). ``pattern`` holds the :class:`Candidate` field
    values (of :data:`FIELDS`) all of them share; ``candidate`` is one of them.
    """

    reason: str
    kind: str
    label: str
    count: int
    candidate: Candidate | None
    pattern: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "reason": self.reason,
            "kind": self.kind,
            "count": self.count,
            "candidate": self.candidate.to_dict() if self.candidate else None,
            "pattern": self.pattern,
        }


@dataclass(frozen=True)
class Baseline:
    """A known-good starting point: its name and the candidate it loads."""

    name: str
    candidate: Candidate


@dataclass(frozen=True)
class SearchSpace:
    """The valid candidates in a fixed order, their batch ladders, baselines and rejections."""

    candidates: tuple[Candidate, ...]
    ladders: dict[str, tuple[int, ...]]
    baselines: tuple[Baseline, ...]
    rejected: tuple[Rejection, ...]
    choices: dict[str, tuple[Any, ...]]

    def __len__(self) -> int:
        return len(self.candidates)

    def __contains__(self, candidate: object) -> bool:
        return isinstance(candidate, Candidate) and candidate.key() in self.ladders

    def ladder(self, candidate: Candidate) -> tuple[int, ...]:
        return self.ladders[candidate.key()]

    @property
    def rejected_count(self) -> int:
        return sum(r.count for r in self.rejected)

    def describe(self) -> str:
        reasons = len(self.rejected)
        return (
            f"{len(self.candidates)} candidates, {self.rejected_count} rejected ({reasons} reason{'s' * (reasons != 1)}), "
            f"{len(self.baselines)} baseline{'s' * (len(self.baselines) != 1)}"
        )


# -- parameters the sampler sees --------------------------------------------------------------


def params_of(candidate: Candidate) -> dict[str, Any]:
    """The sampler's view of ``candidate``: one value per axis of :func:`autotune.axes.sampler_axes`."""
    point = candidate.to_dict()
    return {a.name: a.sampler_value(point) for a in axes.AXES if a.sampled}


def candidate_from(params: Mapping[str, Any]) -> Candidate:
    """The canonical candidate a point of the sampler's space stands for.

    Values that do not apply (double quantization or a compute dtype without 4-bit, a compute
    dtype equal to the dtype; for ONNX Runtime every PyTorch loading option) are dropped by
    :func:`autotune.axes.canonical`, so several points may stand for one candidate.
    """
    point: dict[str, Any] = {}
    for a in axes.AXES:
        if a.sampled and a.name in params:
            point.update(a.fields_of(params[a.name]))
    return Candidate.from_dict(axes.canonical(point))


# -- restricting the space ----------------------------------------------------------------------


def parse_restriction(text: str | None) -> dict[str, tuple[Any, ...]]:
    """Parse ``"dtype=fp32,bf16 attn=sdpa,eager quant=none"`` (spaces or ``;`` between axes).

    Each named axis keeps only the values listed; axes not named keep all of theirs. Used to
    keep a study small (CI, benchmarks, or to pin what you already know). ``batch=1,4,16``
    measures only those batch sizes of the ladder (any whole numbers up to the workload's max
    batch): loading is paid once per candidate, but each batch size costs its own timed runs,
    and with a static cache its own compile.
    """
    if not text or not text.strip():
        return {}
    allowed: dict[str, tuple[Any, ...]] = {}
    for part in text.replace(";", " ").split():
        name, sep, values = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in restrictable():
            raise InputError(f"cannot read space restriction {part!r}: write AXIS=V1,V2 with AXIS one of {', '.join(restrictable())}")
        raw = [v for v in values.split(",") if v]
        if not raw:
            raise InputError(f"space restriction {part!r} lists no value")
        if name == BATCH:
            allowed[name] = parse_batch_sizes(values, "space restriction batch=")
            continue
        allowed[name] = tuple(axes.axis(name).read(v) for v in raw)
    return allowed


def _allowed(axis: str, value: Any, allowed: tuple[Any, ...]) -> bool:
    """Whether ``value`` passes a restriction; ``runtime=onnxruntime`` allows every provider, with
    and without IO binding (``onnxruntime:PROVIDER`` is that provider without, ``+io-binding`` with)."""
    if axis == "runtime":
        return value in allowed or ("onnxruntime" in allowed and str(value).startswith("onnxruntime:"))
    if axis == "quant":
        return axes.quant_allowed(value, allowed)
    return value in allowed


# -- building the space ---------------------------------------------------------------------


def checkpoint_dtype(config: dict[str, Any]) -> str:
    """The dtype the checkpoint was saved in (what Transformers 5 loads by default)."""
    for source in (config, config.get("text_config") or {}):
        for name in ("dtype", "torch_dtype"):
            value = source.get(name) if isinstance(source, dict) else None
            if value:
                try:
                    return normalize_dtype(str(value).replace("torch.", ""))
                except InputError:
                    continue
    return "float32"


def allowed_placements(workload: Workload, environment: Environment) -> tuple[list[str], list[tuple[str, str]]]:
    """Placements to try, and those left out with the reason."""
    gpus = len(environment.gpus)
    if workload.device == "cpu":
        wanted = ["cpu"]
    elif workload.device == "cuda" or gpus:
        wanted = ["cuda", "multi-gpu"]
    else:
        wanted = ["cpu"]
    keep, out = [], []
    for placement in PLACEMENTS:
        if placement not in wanted:
            if placement == "cpu":
                why = "the workload runs on GPUs when there are any (--device auto or cuda); register it with --device cpu to tune for the CPU"
            else:
                why = (
                    "the workload is pinned to the CPU (--device cpu)"
                    if workload.device == "cpu"
                    else "no NVIDIA GPU is visible here (autotune gpus shows what NVML sees)"
                )
            out.append((placement, why))
        elif placement == "cuda" and not gpus:
            out.append((placement, "no NVIDIA GPU is visible here (autotune gpus shows what NVML sees)"))
        elif placement == "multi-gpu" and gpus < 2:
            out.append((placement, f"needs two or more GPUs, this machine has {gpus}"))
        else:
            keep.append(placement)
    return keep, out


def batch_ladder(workload: Workload, only: Iterable[int] | None = None) -> tuple[int, ...]:
    """Batch sizes one worker measures for a candidate.

    Throughput: powers of two up to ``max_batch``, or the sizes ``only`` names (a ``batch=``
    restriction) up to it. Latency and memory: batch 1 only — a larger batch never lowers the
    time of one request or the peak memory, so measuring it would only cost time.
    """
    if workload.objective != "throughput":
        sizes: list[int] = [1]
    elif only is None:
        sizes, size = [], 1
        while size <= workload.max_batch:
            sizes.append(size)
            size *= 2
    else:
        sizes = [b for b in sorted(set(only)) if b <= workload.max_batch]
    if only is not None:
        sizes = [b for b in sizes if b in set(only)]
        if not sizes:
            allowed = "batch 1" if workload.objective != "throughput" else f"batch sizes up to {workload.max_batch} (--max-batch)"
            raise InputError(
                f"space restriction batch={','.join(map(str, sorted(set(only))))} leaves no batch size to measure: "
                f"the {workload.objective} objective measures {allowed}"
            )
    return tuple(sizes)


def forecast_peaks(
    config: dict[str, Any],
    candidate: Candidate,
    workload: Workload,
    batch_size: int,
    limits: DeviceLimits,
    environment: Environment,
    before: Iterable[int] = (),
) -> tuple[int, ...]:
    """The raw forecast peak of each device ``limits`` names, for the Transformers version of
    ``environment``; ``before`` are the batch sizes the same worker measures first (its ladder).

    Raises :class:`~autotune.errors.InputError` where the memory model cannot read the config.
    """
    version = environment.versions.get("transformers")
    return forecast_on(config, candidate, workload, batch_size, limits, transformers_version=version, before=tuple(before)).device_bytes


def _over(raw: tuple[int, ...], held: tuple[int, ...], limits: DeviceLimits, batch: int, margin: float) -> str:
    """Why a forecast at ``batch`` is not admitted: the first device over what it may hold."""
    for device, peak, need in zip(limits.devices, raw, held):
        if device.admission_bytes is not None and need > device.admission_bytes:
            where = f" on {device.device}" if len(limits.devices) > 1 else ""
            what = (
                f"the limit {format_gib(device.limit_bytes)}"
                if device.limit_bytes is not None
                else f"the {format_gib(device.total_bytes)} of {device.device}"
            )
            return (
                f"forecast {format_gib(peak)}{where} at batch {batch} ({format_gib(need)} with its {margin:+.0%} safety margin) "
                f"is over {what}"
            )
    return f"forecast {format_gib(max(raw))} at batch {batch} is over the limit"


def offered_quants(environment: Environment) -> tuple[str, ...]:
    """The quantizations the space enumerates here: bitsandbytes' always (where its package is
    missing, the rules say so); torchao's only where torchao is installed and Transformers'
    fine-grained FP8 only where its kernels package is, as ONNX Runtime candidates join only for a
    registered environment: ``autotune gpus`` says what is missing."""
    out = [q for q in axes.QUANTS if q not in axes.TORCHAO_QUANTS and q != axes.FP8_FINE]
    if environment.has("torchao"):
        out += axes.TORCHAO_QUANTS
    if environment.has("kernels") and environment.gpus:
        out.append(axes.FP8_FINE)
    return tuple(out)


def enumerate_candidates(
    placements: Iterable[str], attentions: Iterable[str], workload: Workload, quants: Iterable[str] | None = None
) -> list[Candidate]:
    """Every combination of PyTorch options that means something (a compute dtype only with 4-bit,
    and so on): the product of the values of the axes every runtime or PyTorch owns, in
    :data:`autotune.axes.ENUMERATION_ORDER` (outermost first), where a value off its axis's
    default is skipped wherever the axis does not apply (:meth:`autotune.axes.Axis.applies`)."""
    given = {"placement": tuple(placements), "attn": tuple(attentions)}
    if quants is not None:
        given["quant"] = tuple(quants)
    order = [a for a in axes.in_order(axes.ENUMERATION_ORDER) if a.owner == PYTORCH or (a.owner is None and a.name != "runtime")]
    out: dict[str, Candidate] = {}
    for point in _points(order, given, workload, {}):
        candidate = Candidate.from_dict(axes.canonical(point))
        out.setdefault(candidate.key(), candidate)
    return list(out.values())


def _points(
    order: list[axes.Axis], given: Mapping[str, tuple[Any, ...]], workload: Workload, point: dict[str, Any]
) -> Iterable[dict[str, Any]]:
    if not order:
        yield dict(point)
        return
    axis, rest = order[0], order[1:]
    values = given.get(axis.name) or (axis.offered(workload) if axis.offered is not None else axis.values)
    for value in values:
        point[axis.name] = value
        if value != axis.default and not axis.applies(point):
            continue
        yield from _points(rest, given, workload, point)
    point.pop(axis.name, None)


def drafting_ladder(candidate: Candidate, ladder: tuple[int, ...]) -> tuple[int, ...]:
    """The batch sizes a drafting candidate (prompt lookup, an assistant) is measured at: batch 1
    of ``ladder`` only, since Transformers' assisted generate refuses larger batches."""
    return tuple(b for b in ladder if b == 1)


def onnxruntime_candidates(placements: Iterable[str], worker_envs: list[WorkerEnvironment]) -> list[Candidate]:
    """ONNX Runtime candidates for the providers the worker environments offer, on the allowed placements:
    float32 and float16 exports, IO binding on and off (the rules then refuse what cannot run)."""
    providers = sorted(
        {p for e in worker_envs for p in e.runtimes.get("onnxruntime") or () if p in PROVIDER_PLACEMENT}, key=list(PROVIDER_PLACEMENT).index
    )
    out = []
    for placement in placements:
        for provider in providers:
            if PROVIDER_PLACEMENT[provider] != placement:
                continue
            for dtype in ORT_DTYPES:
                for binding in (False, True):
                    out.append(Candidate(dtype=dtype, placement=placement, runtime="onnxruntime", provider=provider, io_binding=binding))
    return out


def build_space(
    config: dict[str, Any],
    capabilities: dict[str, Any],
    workload: Workload,
    environment: Environment,
    *,
    restrict: Mapping[str, Iterable[Any]] | None = None,
    worker_envs: list[WorkerEnvironment] | None = None,
    limits: Mapping[str, DeviceLimits] | None = None,
    correction: Correction | None = None,
) -> SearchSpace:
    """The search space of a model (its ``config`` and ``capabilities``) for ``workload`` here.

    A candidate is admitted at the batch sizes whose forecast peak, calibrated and raised by its
    group's safety margin (``correction``, learned from the store's measured trials; without
    one, no calibration and the default margin), fits on each device the workload's limit there
    (without a limit, the device's memory): ``limits`` per placement, as
    :meth:`DeviceLimits.resolve` gives them (resolved here when not given). A config the memory
    model cannot read admits every candidate unforecast: the measurements will tell.
    ``worker_envs`` are the registered worker environments: ONNX Runtime candidates join the
    space for the providers they offer (no memory forecast: they are measured). An empty list
    records why there are none; ``None`` leaves ONNX Runtime out without a word.
    """
    restrict = {k: tuple(v) for k, v in (restrict or {}).items()}
    placements, placement_out = allowed_placements(workload, environment)
    limits = {p: (limits or {}).get(p) or DeviceLimits.resolve(workload.max_memory, environment, p) for p in placements}
    correction = correction or Correction()
    gpu_names = [g.name for g in environment.gpus]
    forecastable = True
    rejected: list[tuple[Candidate | None, str, str, dict[str, Any]]] = [
        (None, f"placement {p}: {why}", "placement", {"placement": p}) for p, why in placement_out
    ]
    supported = list(capabilities.get("attn_implementations") or ["eager", "sdpa"])
    # FlashAttention-2 (the guide's first lever) and -4 are always offered, so that where they
    # cannot run the rules say why (the model class, the GPU, the package, the dtype).
    attentions = [a for a in ATTENTIONS if a in supported or a in ("flash_attention_2", "flash_attention_4")]
    for name in supported:
        if name not in ATTENTIONS:
            rejected.append((None, f"{name}: autotune does not measure this attention implementation yet", "rule", {"attn": name}))

    ladder = batch_ladder(workload, restrict.pop("batch", None))
    valid: list[Candidate] = []
    ladders: dict[str, tuple[int, ...]] = {}
    ort = onnxruntime_candidates(placements, worker_envs) if worker_envs is not None else []
    if worker_envs is not None and not ort and _allowed("runtime", "onnxruntime", restrict.get("runtime", ("onnxruntime",))):
        reason = (
            rejection(
                Candidate(dtype="float32", placement="cpu", runtime="onnxruntime", provider="CPUExecutionProvider"),
                environment,
                capabilities,
                None,
                worker_envs,
            )
            or "runtime onnxruntime: no worker environment offers a provider for these placements"
        )
        rejected.append((None, reason, "rule", {"runtime": "onnxruntime"}))
    for candidate in [*enumerate_candidates(placements, attentions, workload, offered_quants(environment)), *ort]:
        params = params_of(candidate)
        if any(not _allowed(axis, params[axis], allowed) for axis, allowed in restrict.items()):
            continue
        reason = rejection(candidate, environment, capabilities, workload, worker_envs)
        own = drafting_ladder(candidate, ladder) if axes.drafts(candidate.to_dict()) else ladder
        if reason is None and not own:
            reason = (
                f"generation {candidate.value('generation')}: Transformers drafts tokens at batch size 1 only, "
                f"and the batch sizes measured here ({', '.join(map(str, ladder))}) leave it out"
            )
        if reason is not None:
            rejected.append((candidate, reason, "rule", {}))
            continue
        fits = own
        if forecastable and not candidate.is_onnxruntime:
            placed = limits[candidate.placement]
            kind = device_kind(candidate, gpu_names)
            try:
                peaks = [forecast_peaks(config, candidate, workload, b, placed, environment, own[:i]) for i, b in enumerate(own)]
            except InputError:  # the memory model cannot read this config: measure instead
                forecastable = False
            else:
                held = [tuple(correction.admitted(p, candidate, kind) for p in raw) for raw in peaks]
                fits = tuple(b for b, need in zip(own, held) if placed.admits(need))
                if not fits or fits[0] != own[0]:
                    margin = correction.margin(candidate, kind).value
                    rejected.append((candidate, _over(peaks[0], held[0], placed, own[0], margin), "memory", {}))
                    continue
        valid.append(candidate)
        ladders[candidate.key()] = fits

    points = [params_of(c) for c in valid]
    choices = {name: axes.axis(name).ordered({p[name] for p in points}) for name in sampler_axes()}
    return SearchSpace(
        candidates=tuple(valid),
        ladders=ladders,
        baselines=tuple(_baselines(config, capabilities, placements, ladders)),
        rejected=tuple(_group(rejected)),
        choices=choices,
    )


def _baselines(config: dict[str, Any], capabilities: dict[str, Any], placements: list[str], valid: Mapping[str, Any]) -> list[Baseline]:
    """Transformers' defaults, a compiled static cache, then the GPU inference guide's
    suggestions, where valid here: on the first placement, else on the next one.

    On the CPU the guide's 4-bit and 8-bit suggestions are left to the sampler: bitsandbytes runs
    there, but a candidate took 5 to 15 times as long to measure as an unquantized one.
    """
    if not placements:
        return []
    placement = placements[0]
    supported = capabilities.get("attn_implementations") or ["eager", "sdpa"]
    default_attn = "sdpa" if "sdpa" in supported else "eager"
    options: list[tuple[str, list[Candidate]]] = [
        ("transformers defaults", [Candidate(dtype=checkpoint_dtype(config), attn=default_attn, placement=placement)]),
        # At small batches a GPU spends most of generate waiting on Python; a compiled static
        # cache removes that wait, so on a GPU it is measured right after the defaults.
        ("static cache, compiled", [Candidate(dtype=checkpoint_dtype(config), attn=default_attn, static_cache=True, placement=placement)]),
        ("bf16 + FlashAttention-2", [Candidate(dtype="bfloat16", attn="flash_attention_2", placement=placement)]),
        ("bf16 + FlashAttention-4", [Candidate(dtype="bfloat16", attn="flash_attention_4", placement=placement)]),
        ("bf16 + SDPA flash kernel", [Candidate(dtype="bfloat16", attn="sdpa", sdpa_kernel="flash", placement=placement)]),
        (
            "4-bit nf4, bf16 compute",
            [
                Candidate(dtype="bfloat16", attn=default_attn, quant="bnb-4bit-nf4", placement=placement),
                Candidate(dtype="float16", attn=default_attn, quant="bnb-4bit-nf4", placement=placement),
            ],
        ),
        ("8-bit, fp16", [Candidate(dtype="float16", attn=default_attn, quant="bnb-8bit", placement=placement)]),
        (
            "ONNX Runtime",
            [
                Candidate(dtype="float16", placement=placement, runtime="onnxruntime", provider="CUDAExecutionProvider", io_binding=True),
                Candidate(dtype="float32", placement=placement, runtime="onnxruntime", provider="CPUExecutionProvider"),
            ],
        ),
    ]
    if placement == "cpu":
        options = [(name, tries) for name, tries in options if not any(c.quant != "none" for c in tries)]
    out: list[Baseline] = []
    seen: set[str] = set()
    for name, tries in options:
        # Where the first placement cannot hold a baseline (a memory limit one GPU's share is
        # too small for), the same load spread over several GPUs stands in for it.
        tries = [c if p == placement or c.is_onnxruntime else replace(c, placement=p) for p in placements for c in tries]
        for candidate in tries:
            if candidate.key() in valid and candidate.key() not in seen:
                if candidate.is_4bit and candidate.dtype == "float16":
                    name = "4-bit nf4, fp16 compute"
                out.append(Baseline(name, candidate))
                seen.add(candidate.key())
                break
    return out


def _group(entries: list[tuple[Candidate | None, str, str, dict[str, Any]]]) -> list[Rejection]:
    """One :class:`Rejection` per distinct reason, labelled by what its candidates share."""
    groups: dict[tuple[str, str], list[tuple[Candidate | None, dict[str, Any]]]] = {}
    for candidate, reason, kind, pattern in entries:
        groups.setdefault((reason, kind), []).append((candidate, pattern))
    out = []
    for (reason, kind), members in groups.items():
        candidates = [c for c, _ in members if c is not None]
        if not candidates:
            pattern = members[0][1]
            out.append(Rejection(reason, kind, " ".join(str(v) for v in pattern.values()), 1, None, pattern))
            continue
        first = candidates[0]
        names = pattern_fields(all(c.is_onnxruntime for c in candidates))
        shared = {name: first.value(name) for name in names if all(c.value(name) == first.value(name) for c in candidates)}
        # an axis declared beyond the candidate's fields says nothing at its default (as in the key)
        shared = {k: v for k, v in shared.items() if k in axes.BUILT_IN or v != axes.axis(k).default}
        label = candidates[0].label() if len(candidates) == 1 else f"{_pattern_label(shared)} ({len(candidates)} candidates)"
        out.append(Rejection(reason, kind, label, len(candidates), candidates[0], shared))
    return out


def _pattern_label(shared: dict[str, Any]) -> str:
    if shared.get("runtime") == "onnxruntime":
        provider = shared.get("provider")
        parts = [f"onnxruntime[{PROVIDER_SHORT.get(provider, provider) if provider else '*'}]"]
        if shared.get("io_binding"):
            parts.append("io-binding")
        if "placement" in shared:
            parts.append(shared["placement"])
        return " ".join(parts)
    parts = []
    if "dtype" in shared:
        parts.append(DTYPE_SHORT[shared["dtype"]])
    if "attn" in shared:
        kernel = shared.get("sdpa_kernel")
        parts.append(
            shared["attn"] + (f"[{kernel}]" if kernel else "" if "sdpa_kernel" in shared else "[*]" if shared["attn"] == "sdpa" else "")
        )
    if "quant" in shared:
        quant = {"none": "unquantized", **QUANT_SHORT}[shared["quant"]]
        if shared["quant"] == "torchao-int4wo" and "group_size" in shared:
            quant += f"-g{shared['group_size']}"
        if shared.get("double_quant") and shared["quant"].startswith("bnb-4bit"):
            quant += "+dq"
        parts.append(quant)
    if shared.get("compute_dtype") is not None:
        parts.append(f"compute {DTYPE_SHORT[shared['compute_dtype']]}")
    if "placement" in shared:
        parts.append(shared["placement"])
    if shared.get("static_cache"):
        parts.append("static")
    parts += [a.label(shared) or "" for a in axes.extra_axes() if a.name in shared]
    return " ".join(p for p in parts if p) or "any"
