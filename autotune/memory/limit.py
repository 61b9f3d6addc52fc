"""The memory a candidate may use where it runs: the workload's limit resolved on each device.

One rule, used by the search (admission), the trials (feasibility), the recommendation and the
written loader:

- a **single-GPU** candidate runs on ``cuda:0`` and is held against that GPU's limit;
- a **multi-GPU** candidate is spread by ``device_map="auto"`` with each GPU's own limit as its
  ``max_memory`` (a per-GPU dict), and each GPU's peak is held against that GPU's limit: on an
  80 GiB and a 24 GiB GPU, a limit of ``0.5`` is 40 GiB on the first and 12 GiB on the second;
- a **CPU** candidate is held against the host's memory: an absolute limit as given (at most
  the host's memory), a fraction of the host's memory;
- **no limit**: nothing is infeasible for its memory, but the search still admits only what
  the forecast says fits each device's total memory.

:meth:`DeviceLimits.resolve` computes it once, for one placement in one environment; the trial
records the per-device limits it ran with (``details["memory_limits"]``), and the loader written
for a trial takes its ``max_memory`` from there. :func:`host_memory_bytes` is the one place that
reads the host's memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotune.units import format_gib

if TYPE_CHECKING:
    from autotune.environment import Environment
    from autotune.workload import MemoryLimit


def host_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class DeviceLimit:
    """One device a candidate runs on: ``cpu`` or ``cuda:N``, its memory, and the limit on it."""

    device: str
    name: str
    total_bytes: int | None
    #: The workload's limit on this device, in bytes (``None``: no limit).
    limit_bytes: int | None

    @property
    def admission_bytes(self) -> int | None:
        """What the search holds a forecast against: the limit, else the device's memory."""
        return self.limit_bytes if self.limit_bytes is not None else self.total_bytes

    @property
    def index(self) -> int | None:
        """The CUDA index of a GPU (``None`` for the CPU)."""
        return int(self.device.split(":")[1]) if self.device.startswith("cuda:") else None


@dataclass(frozen=True)
class DeviceLimits:
    """The devices of one placement in one environment, each with its limit.

    ``note`` says why a limit could not be applied (a fraction on a host whose memory is unknown).
    """

    placement: str
    devices: tuple[DeviceLimit, ...]
    note: str | None = None

    @classmethod
    def resolve(
        cls, limit: MemoryLimit | None, environment: Environment | None, placement: str, *, host_bytes: int | None = None
    ) -> DeviceLimits:
        """The workload's ``limit`` on the devices a candidate of ``placement`` runs on here.

        ``environment`` gives the GPUs (in CUDA order: ``cuda:0`` is its first); ``host_bytes``
        the host's memory (default: read here, for a candidate on the CPU).
        """
        if placement == "cpu":
            total = host_bytes if host_bytes is not None else host_memory_bytes()
            note = None
            if limit is None:
                bytes_ = None
            elif limit.fraction is not None:
                bytes_ = int(total * limit.fraction) if total else None
                if bytes_ is None:
                    note = f"the limit {limit.text} is a fraction and this machine's memory is unknown: not applied on the CPU"
            else:
                bytes_ = min(int(limit.bytes or 0), total) if total else limit.bytes
            return cls(placement, (DeviceLimit("cpu", "CPU RAM", total, bytes_),), note)
        gpus = tuple(environment.gpus) if environment is not None else ()
        if placement != "multi-gpu":
            gpus = gpus[:1]
        return cls(
            placement,
            tuple(
                DeviceLimit(f"cuda:{k}", gpu.name, gpu.total_memory, limit.for_device(gpu.total_memory) if limit else None)
                for k, gpu in enumerate(gpus)
            ),
        )

    @classmethod
    def from_trial(cls, placement: str, details: Mapping[str, Any]) -> DeviceLimits | None:
        """The per-device limits a trial recorded it ran with (``None`` if it recorded none)."""
        recorded = details.get("memory_limits")
        if not isinstance(recorded, Mapping) or not recorded:
            return None
        return cls(placement, tuple(DeviceLimit(str(d), str(d), None, None if b is None else int(b)) for d, b in recorded.items()))

    @property
    def limited(self) -> bool:
        """Whether any device has a limit."""
        return any(d.limit_bytes is not None for d in self.devices)

    @property
    def limit_bytes(self) -> int | None:
        """The smallest limit of the devices (``None``: no limit): the one figure to show."""
        values = [d.limit_bytes for d in self.devices if d.limit_bytes is not None]
        return min(values) if values else None

    def max_memory(self) -> dict[int, int] | None:
        """The per-GPU ``max_memory`` a ``multi-gpu`` load is given (``None``: no limit, or not spread)."""
        if self.placement != "multi-gpu" or not self.limited:
            return None
        return {d.index: d.limit_bytes for d in self.devices if d.index is not None and d.limit_bytes is not None}

    def caps(self) -> list[int | None]:
        """Each GPU's ``max_memory`` in device order, for the forecast of a spread load."""
        return [d.limit_bytes for d in self.devices]

    def to_dict(self) -> dict[str, int | None]:
        """``{"cuda:0": bytes, ...}``: what a trial records as the limits it ran with."""
        return {d.device: d.limit_bytes for d in self.devices}

    def describe(self) -> str:
        """``40.00 GiB on cuda:0, 12.00 GiB on cuda:1``, ``12.00 GiB``, or ``none``."""
        if not self.limited:
            return "none"
        values = {d.limit_bytes for d in self.devices}
        if len(self.devices) == 1 or len(values) == 1:
            return format_gib(self.limit_bytes)
        return ", ".join(f"{format_gib(d.limit_bytes)} on {d.device}" for d in self.devices if d.limit_bytes is not None)

    def admits(self, peaks: tuple[int, ...]) -> bool:
        """Whether forecast ``peaks`` (one per device, in order) stay within what each device may hold."""
        return all(d.admission_bytes is None or peak <= d.admission_bytes for d, peak in zip(self.devices, peaks))

    def over(self, metrics: Mapping[str, Any], details: Mapping[str, Any] | None = None) -> list[tuple[str, int, int]]:
        """``(device, peak, limit)`` of each device whose measured peak is over its limit.

        Per-GPU peaks come from the worker's ``details["memory_per_gpu"]`` (NVML, else torch's
        reserved memory); without them, the trial's ``peak_memory_bytes`` (its fullest device)
        is held against the smallest limit.
        """
        per_device = measured_peaks(details or {})
        out = []
        if per_device and self.placement == "multi-gpu":
            for d in self.devices:
                peak = per_device.get(d.device)
                if d.limit_bytes is not None and peak is not None and peak > d.limit_bytes:
                    out.append((d.device, peak, d.limit_bytes))
            return out
        peak = metrics.get("peak_memory_bytes")
        limit = self.limit_bytes
        if limit is not None and isinstance(peak, (int, float)) and peak > limit:
            device = self.devices[0].device if len(self.devices) == 1 else "the fullest GPU"
            out.append((device, int(peak), limit))
        return out

    def reasons(self, metrics: Mapping[str, Any], details: Mapping[str, Any] | None = None) -> list[str]:
        """Why a measured result is over the limit, one sentence per device."""
        spread = len(self.devices) > 1
        return [
            f"peak {format_gib(peak)}{f' on {device}' if spread else ''} over the limit {format_gib(limit)}"
            for device, peak, limit in self.over(metrics, details)
        ]

    def excess(self, metrics: Mapping[str, Any], details: Mapping[str, Any] | None = None) -> float:
        """How far over its limit the fullest device is, as a share of that limit (0: within)."""
        return max(((peak - limit) / limit for _, peak, limit in self.over(metrics, details) if limit), default=0.0)


def measured_peaks(details: Mapping[str, Any]) -> dict[str, int]:
    """Each GPU's measured peak from a trial's ``details["memory_per_gpu"]`` (NVML, else torch reserved)."""
    out: dict[str, int] = {}
    per_gpu = details.get("memory_per_gpu")
    if not isinstance(per_gpu, Mapping):
        return out
    for device, values in per_gpu.items():
        if not isinstance(values, Mapping):
            continue
        peak = values.get("nvml_used") or values.get("torch_reserved")
        if isinstance(peak, (int, float)):
            out[str(device)] = int(peak)
    return out
