"""What fits: the forecast peak of each way of loading a model, and the largest batch each
device can hold, from its config alone (``autotune estimate``).

The numbers come from :mod:`autotune.memory`; this module picks what to size against and the
candidates worth showing, and gathers the figures; the command only prints them. Where the
workload runs on the CPU (``--device cpu``), or no GPU is here and no GPU size is given, the rows
are CPU loads held against this machine's memory (capped by the workload's limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.memory import (
    Correction,
    DeviceLimits,
    Forecast,
    Margin,
    ModelShape,
    device_kind,
    forecast_shape,
    largest_batch,
    model_shape,
    with_calibration,
)
from autotune.units import format_gib
from autotune.workload import Workload


@dataclass(frozen=True)
class Limit:
    """What to size against: a GPU (or ``count`` GPUs of one kind, each this much), or the CPU's memory."""

    name: str
    bytes: int
    count: int = 1
    cpu: bool = False
    #: Several GPUs, spread over by ``device_map="auto"``: each one's limit, in device order.
    spread: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "bytes": self.bytes, "count": self.count, "cpu": self.cpu}
        if self.spread:
            out["spread"] = list(self.spread)
        return out


@dataclass(frozen=True)
class Row:
    """One candidate: its forecast at each batch size, and the largest batch each limit holds."""

    candidate: Candidate
    forecasts: dict[int, Forecast]
    largest_batch: dict[str, int]
    #: The safety margin admission adds to this candidate's forecast.
    margin: Margin = Margin(0.0)

    @property
    def weights_bytes(self) -> int:
        return next(iter(self.forecasts.values())).parts["weights"]

    @property
    def quant_state_bytes(self) -> int:
        return next(iter(self.forecasts.values())).parts["quant_state"]


@dataclass(frozen=True)
class Estimate:
    """The figures ``autotune estimate`` shows for one model and workload."""

    name: str
    registered: bool
    shape: ModelShape
    workload: Workload
    limits: tuple[Limit, ...]
    limit_source: str
    correction: Correction
    rows: tuple[Row, ...]
    batches: tuple[int, ...]
    cpu: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        shape = self.shape
        return {
            "model": self.name,
            "registered": self.registered,
            "architecture": shape.architecture,
            "model_type": shape.model_type,
            "parameters": shape.parameters,
            "weights_bf16_bytes": shape.weight_bytes("bfloat16")[0],
            "kv_bytes_per_token_bf16": shape.kv_bytes_per_token("bfloat16"),
            "kv_description": shape.kv_description,
            "workload": self.workload.to_dict(),
            "device": "cpu" if self.cpu else "cuda",
            "limits": [lim.to_dict() for lim in self.limits],
            "limit_source": self.limit_source,
            "calibration": self.correction.calibration.to_dict() if self.correction.calibration.fits else None,
            "margins": self.correction.margins.to_dict(),
            "notes": list(self.notes),
            "candidates": [
                {
                    "label": r.candidate.label(),
                    "candidate": r.candidate.to_dict(),
                    "weights_bytes": r.weights_bytes,
                    "quant_state_bytes": r.quant_state_bytes,
                    "forecasts": [f.to_dict() for f in r.forecasts.values()],
                    "largest_batch": r.largest_batch,
                    "margin": r.margin.to_dict(),
                }
                for r in self.rows
            ],
        }


def size_limits(
    workload: Workload, environment: Environment | None, gpu_memory: list[int] | None = None, *, gpu_error: str | None = None
) -> tuple[list[Limit], str, bool]:
    """``(limits, where they come from, on the CPU)`` for ``workload`` here.

    ``gpu_memory`` sizes GPUs of those sizes instead of the ones here (the workload's limit not
    applied: the question is what such a GPU holds). A workload pinned to the CPU, or no GPU here
    and neither a GPU size nor an absolute limit to size one by, is held against this machine's
    memory, capped by the workload's limit. Over several GPUs here, one more limit spreads the
    model over all of them, each under its own limit.
    """
    if gpu_memory:
        return (
            [Limit(f"<={format_gib(s)}", s) for s in gpu_memory],
            f"a GPU of {', '.join(format_gib(s) for s in gpu_memory)} (--gpu-memory)",
            False,
        )
    limit = workload.max_memory
    gpus = environment.gpus if environment is not None and workload.device != "cpu" else ()
    if gpus:
        spread = DeviceLimits.resolve(limit, environment, "multi-gpu")
        groups: dict[tuple[str, int], int] = {}
        for gpu, device in zip(gpus, spread.devices):
            key = (gpu.name, int(device.admission_bytes or gpu.total_memory))
            groups[key] = groups.get(key, 0) + 1
        limits = [Limit(name, cap, count) for (name, cap), count in groups.items()]
        if len(gpus) > 1:
            caps = tuple(int(d.admission_bytes or 0) for d in spread.devices)
            name = f"{len(gpus)}x {gpus[0].name}" if len(groups) == 1 else f"{len(gpus)} GPUs"
            limits.append(Limit(name, min(caps), len(gpus), spread=caps))
        source = "the GPUs here" + (f", capped by the workload limit {limit.text}" if limit else "")
        return limits, source, False
    if workload.device != "cpu" and limit is not None and limit.bytes:
        why = f"no GPU here ({gpu_error})" if gpu_error else "no GPU here"
        return [Limit(f"GPU limit {limit.text}", limit.bytes)], f"{why}; the workload's --max-memory {limit.text}", False
    host = DeviceLimits.resolve(limit, environment, "cpu").devices[0]
    held = host.admission_bytes or 0
    capped = f", capped by the workload limit {limit.text} to {format_gib(held)}" if limit is not None and host.limit_bytes else ""
    if workload.device == "cpu":
        source = f"the CPU (the workload runs on the CPU: --device cpu): this machine's RAM, {format_gib(host.total_bytes)}{capped}"
    else:
        why = f"no GPU here ({gpu_error})" if gpu_error else "no GPU here"
        source = (
            f"{why} and no --gpu-memory: this machine's RAM, {format_gib(host.total_bytes)}{capped}, for CPU placement "
            "(pass --gpu-memory 24GiB to size a GPU)"
        )
    return [Limit("CPU RAM", held, cpu=True)], source, True


def estimate_candidates(task: str, cpu: bool) -> list[Candidate]:
    """The meaningful subset for memory: bf16 with SDPA and with eager (FlashAttention and flex
    attention forecast as SDPA: none materialises the scores), fp16 and fp32, bnb 8-bit and 4-bit
    (with and without double quantization), and a static cache."""
    placement = "cpu" if cpu else "cuda"
    rows = [
        Candidate(dtype="bfloat16", attn="sdpa", placement=placement),
        Candidate(dtype="bfloat16", attn="eager", placement=placement),
        Candidate(dtype="float16", attn="sdpa", placement=placement),
        Candidate(dtype="float32", attn="sdpa", placement=placement),
        Candidate(dtype="float16", attn="sdpa", quant="bnb-8bit", placement=placement),
        Candidate(dtype="bfloat16", attn="sdpa", quant="bnb-4bit-nf4", placement=placement),
        Candidate(dtype="bfloat16", attn="sdpa", quant="bnb-4bit-nf4", double_quant=True, placement=placement),
    ]
    if task == "text-generation":
        rows.append(Candidate(dtype="bfloat16", attn="sdpa", static_cache=True, placement=placement))
    return rows


def estimate(
    name: str,
    config: dict[str, Any],
    workload: Workload,
    batches: tuple[int, ...],
    *,
    registered: bool = False,
    environment: Environment | None = None,
    gpu_memory: list[int] | None = None,
    gpu_error: str | None = None,
    correction: Correction | None = None,
) -> Estimate:
    """Forecast each of :func:`estimate_candidates` at ``batches``, and the largest batch each limit holds.

    ``environment`` is this machine (its GPUs, and the CPU's memory). ``correction`` (learned from
    measured trials; default: none, and the default safety margin) calibrates the forecasts of
    the device kinds it has points for; the largest batch is the one admission would take: the
    calibrated forecast plus the candidate's safety margin within the limit.
    """
    shape = model_shape(config, workload.task)
    limits, source, cpu = size_limits(workload, environment, gpu_memory, gpu_error=gpu_error)
    correction = correction or Correction()
    calibration = correction.calibration if correction.calibration.fits else None
    here = not cpu and not gpu_memory and environment is not None and environment.gpus
    gpu_names = [environment.gpus[0].name] if here else []  # type: ignore[union-attr]
    rows = []
    for candidate in estimate_candidates(workload.task, cpu):
        kind = device_kind(candidate, gpu_names)

        def adjust(peak: int, kind: str = kind, candidate: Candidate = candidate) -> int:
            return correction.admitted(peak, candidate, kind)  # type: ignore[union-attr]

        forecasts = {
            b: with_calibration(forecast_shape(shape, candidate, workload, b, task=workload.task), calibration, kind) for b in batches
        }
        fits = {}
        for lim in limits:
            if lim.spread:
                spread = replace(candidate, placement="multi-gpu")
                fits[lim.name] = largest_batch(
                    config,
                    spread,
                    workload,
                    list(lim.spread),
                    task=workload.task,
                    adjust=lambda peak, c=spread, k=kind: correction.admitted(peak, c, k),
                )
            else:
                fits[lim.name] = largest_batch(config, candidate, workload, [lim.bytes], task=workload.task, adjust=adjust)
        rows.append(Row(candidate, forecasts, fits, correction.margin(candidate, kind)))
    return Estimate(
        name=name,
        registered=registered,
        shape=shape,
        workload=workload,
        limits=tuple(limits),
        limit_source=source,
        correction=correction,
        rows=tuple(rows),
        batches=tuple(batches),
        cpu=cpu,
        notes=tuple(shape.notes),
    )
