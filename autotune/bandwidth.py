"""A GPU's memory bandwidth, and the floor it puts under decoding: the roofline.

Decoding one token at batch 1 reads every weight once, so a decode step cannot take less than
the weights' bytes divided by the memory bandwidth (the KV cache and activations add a little
more). The bandwidth comes from NVIDIA's datasheets for the GPUs named in :data:`DATASHEET`;
for any other GPU it is computed from what NVML reports, the memory bus width and the maximum
memory clock (``bus bits / 8 x clock x 2``: two transfers a clock, which gives the datasheets'
figures for the GPUs of the table: an H100 SXM's 5120-bit bus at 2619 MHz is 3.35 TB/s).

Nothing here imports torch; :func:`roofline` reads a trial's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.environment import Environment, Gpu
    from autotune.store import TrialRecord

#: Peak memory bandwidth in bytes per second, from NVIDIA's product datasheets, by a part of the
#: name NVML reports (the first match wins, so the more specific names come first).
DATASHEET: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),  # H200 SXM (141 GB HBM3e)
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # H100 SXM5 80GB HBM3 ("NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100-PCIE-80GB", 1.935e12),
    ("A100", 1.555e12),  # the 40 GB A100s
    ("L40S", 864e9),
    ("L4", 300e9),
    ("A10G", 600e9),
    ("A10", 600e9),
    ("RTX 4090", 1.008e12),
    ("T4", 320e9),
    ("V100", 900e9),
)


@dataclass(frozen=True)
class Bandwidth:
    """A GPU's peak memory bandwidth and where the figure comes from."""

    bytes_per_s: float
    source: str

    def describe(self) -> str:
        return f"{self.bytes_per_s / 1e12:.2f} TB/s ({self.source})"


def memory_bandwidth(gpu: Gpu) -> Bandwidth | None:
    """The datasheet's figure for a GPU of :data:`DATASHEET`, else NVML's bus width and memory
    clock, else ``None`` (an environment recorded before autotune read them)."""
    for part, value in DATASHEET:
        if part.lower() in gpu.name.lower():
            return Bandwidth(value, f"NVIDIA's datasheet for {part}")
    if gpu.memory_bus_width and gpu.max_memory_clock_mhz:
        value = gpu.memory_bus_width / 8 * gpu.max_memory_clock_mhz * 1e6 * 2
        return Bandwidth(value, f"NVML: {gpu.memory_bus_width}-bit bus at {gpu.max_memory_clock_mhz} MHz")
    return None


@dataclass(frozen=True)
class Roofline:
    """A measured decode step against the memory-bandwidth floor of the weights it reads."""

    weights_bytes: int
    bandwidth: Bandwidth
    batch_size: int
    #: The floor: the weights read once per step at the peak bandwidth.
    floor_ms: float
    #: The measured time of one decode step (``batch_size`` tokens), ``None`` where not measured.
    step_ms: float | None

    @property
    def share(self) -> float | None:
        """How close the measured step is to the floor (1.0: at the floor)."""
        return self.floor_ms / self.step_ms if self.step_ms else None

    def describe(self) -> str:
        weights = f"{self.weights_bytes / 1e9:.2f} GB of weights at {self.bandwidth.describe()}"
        if self.step_ms is None:
            return f"memory-bandwidth floor {self.floor_ms:.2f} ms a decode step ({weights}); decode speed was not measured"
        return (
            f"decode {self.step_ms:.2f} ms a step at batch {self.batch_size}, against a memory-bandwidth floor of {self.floor_ms:.2f} ms "
            f"({weights}): {self.share:.0%} of the limit"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights_bytes,
            "bandwidth_bytes_per_s": self.bandwidth.bytes_per_s,
            "bandwidth_source": self.bandwidth.source,
            "batch_size": self.batch_size,
            "floor_ms_per_step": self.floor_ms,
            "decode_ms_per_step": self.step_ms,
            "share_of_limit": self.share,
            "text": self.describe(),
        }


def floor_ms(weights_bytes: int, bandwidth: Bandwidth) -> float:
    """Milliseconds to read ``weights_bytes`` once at ``bandwidth``: a decode step's floor."""
    return weights_bytes / bandwidth.bytes_per_s * 1e3


def decode_step_ms(metrics: dict[str, Any], batch_size: int) -> float | None:
    """The measured time of one decode step, from ``decode_tokens_per_s`` (``batch_size`` tokens a step)."""
    rate = metrics.get("decode_tokens_per_s")
    return batch_size / rate * 1e3 if rate else None


def roofline(trial: TrialRecord, environment: Environment | None) -> Roofline | None:
    """The winner's decode step against its floor, on one GPU (``None`` on the CPU, over several
    GPUs, or where the weights' bytes or the GPU's bandwidth are not known)."""
    if environment is None or not environment.gpus or trial.candidate.placement != "cuda" or trial.candidate.is_onnxruntime:
        return None
    weights = (trial.effective or {}).get("weights_bytes")
    bandwidth = memory_bandwidth(environment.gpus[0])
    if not weights or bandwidth is None:
        return None
    return Roofline(
        weights_bytes=int(weights),
        bandwidth=bandwidth,
        batch_size=trial.batch_size,
        floor_ms=floor_ms(int(weights), bandwidth),
        step_ms=decode_step_ms(trial.metrics, trial.batch_size),
    )
