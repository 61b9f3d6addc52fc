"""What this machine has: GPUs through NVML, library versions, and a fingerprint of both.

Trials are comparable only inside one environment fingerprint: a new GPU, driver or library
version starts new studies. Nothing here imports torch: versions are read from package metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

#: Distributions whose versions change what a trial measures. Each maps to the names it may be
#: installed under.
TRACKED_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "accelerate": ("accelerate",),
    "bitsandbytes": ("bitsandbytes",),
    "flash-attn": ("flash-attn", "flash_attn"),
    "flash-attn-3": ("flash-attn-3", "flash_attn_3"),
    "flash-attn-4": ("flash-attn-4", "flash_attn_4"),
    # FlashAttention-4's kernels are compiled by the CuTe DSL at run time: its version changes them.
    "nvidia-cutlass-dsl": ("nvidia-cutlass-dsl",),
    "kernels": ("kernels",),
    "optimum": ("optimum",),
    "optimum-onnx": ("optimum-onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    # torchao quantization candidates (quant=torchao-*).
    "torchao": ("torchao",),
}
#: Packages tracked after environments were first fingerprinted: where one is not installed, it
#: is left out of the fingerprint, so that studies of a machine without it carry on as they were.
TRACKED_LATER = ("torchao",)


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML sees it. ``index`` is NVML's, which ignores CUDA_VISIBLE_DEVICES."""

    index: int
    uuid: str
    name: str
    total_memory: int
    free_memory: int
    compute_capability: tuple[int, int]
    pci_bus_id: str | None = None
    #: NVML's memory bus width (bits) and maximum memory clock (MHz): the peak memory bandwidth
    #: of a GPU that :mod:`autotune.bandwidth` has no datasheet figure for.
    memory_bus_width: int | None = None
    max_memory_clock_mhz: int | None = None

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    def supports(self, versions: dict[str, str | None], cuda_driver_version: str | None = None) -> dict[str, str]:
        """What this GPU can run, each as ``yes`` or ``no: why`` (``flash_attention`` is FlashAttention-2)."""
        from autotune.flash import FLASH_ATTENTIONS

        cc = self.compute_capability
        out: dict[str, str] = {}
        out["bf16"] = "yes" if cc >= (8, 0) else f"no: compute capability {self.cc} < 8.0"
        for key, attn in (("flash_attention", "flash_attention_2"), ("flash_attention_4", "flash_attention_4")):
            fa = FLASH_ATTENTIONS[attn]
            if not fa.runs_on(cc):
                out[key] = f"no: compute capability {self.cc}; {fa.package} runs on {fa.gpus}"
            elif not versions.get(fa.package):
                out[key] = f"hardware yes; package {fa.package} not installed ({fa.install_hint(cuda_driver_version)})"
            else:
                out[key] = "yes"
        if not versions.get("bitsandbytes"):
            out["bitsandbytes"] = "no: package bitsandbytes not installed"
        elif cc < (7, 5):
            out["bitsandbytes"] = f"4-bit only: LLM.int8 needs compute capability 7.5, this has {self.cc}"
        else:
            out["bitsandbytes"] = "yes"
        out["fp8"] = "yes" if cc >= (8, 9) else f"no: compute capability {self.cc} < 8.9"
        if not versions.get("torchao"):
            out["torchao"] = "no: package torchao not installed (pip install 'autotune[torchao]')"
        else:
            out["torchao"] = "int8/int4 weight-only" + (
                ", float8" if cc >= (8, 9) else f"; float8 needs compute capability 8.9, this has {self.cc}"
            )
        return out


@dataclass(frozen=True)
class Environment:
    """GPUs, driver and library versions of the machine trials run on."""

    gpus: tuple[Gpu, ...]
    versions: dict[str, str | None]
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    python: str = field(default_factory=platform.python_version)
    hostname: str = field(default_factory=socket.gethostname)
    nvml_error: str | None = None

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    def version(self, package: str) -> str | None:
        return self.versions.get(package)

    def has(self, package: str) -> bool:
        return bool(self.versions.get(package))

    @property
    def fingerprint(self) -> str:
        """Changes when a GPU, the driver, the Python or a tracked library changes."""
        return self._digest(with_uuids=True)

    @property
    def kind_fingerprint(self) -> str:
        """Like :attr:`fingerprint`, without what tells two machines of one kind apart (the GPUs'
        UUIDs): what compiled kernels depend on, so that two identical GPUs share them."""
        return self._digest(with_uuids=False)

    def _digest(self, *, with_uuids: bool) -> str:
        identity = {
            "gpus": [
                [g.uuid, g.name, g.total_memory, list(g.compute_capability)]
                if with_uuids
                else [g.name, g.total_memory, list(g.compute_capability)]
                for g in self.gpus
            ],
            "driver": self.driver_version,
            "cuda": self.cuda_driver_version,
            "python": self.python,
            "versions": {k: v for k, v in sorted(self.versions.items()) if v is not None or k not in TRACKED_LATER},
        }
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def summary(self) -> str:
        if not self.gpus:
            return f"CPU only ({self.hostname})"
        names: dict[str, int] = {}
        for gpu in self.gpus:
            names[gpu.name] = names.get(gpu.name, 0) + 1
        return ", ".join(f"{n}x {name}" for name, n in names.items()) + f" (driver {self.driver_version})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fingerprint"] = self.fingerprint
        data["cpu_only"] = self.cpu_only
        for gpu, raw in zip(self.gpus, data["gpus"]):
            raw["compute_capability"] = gpu.cc
            raw["supports"] = gpu.supports(self.versions, self.cuda_driver_version)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Environment:
        gpus = tuple(
            Gpu(
                index=g["index"],
                uuid=g["uuid"],
                name=g["name"],
                total_memory=g["total_memory"],
                free_memory=g.get("free_memory", 0),
                compute_capability=tuple(int(x) for x in str(g["compute_capability"]).split(".")),  # type: ignore[arg-type]
                pci_bus_id=g.get("pci_bus_id"),
                memory_bus_width=g.get("memory_bus_width"),
                max_memory_clock_mhz=g.get("max_memory_clock_mhz"),
            )
            for g in data.get("gpus", [])
        )
        return cls(
            gpus=gpus,
            versions=dict(data.get("versions", {})),
            driver_version=data.get("driver_version"),
            cuda_driver_version=data.get("cuda_driver_version"),
            python=data.get("python", platform.python_version()),
            hostname=data.get("hostname", socket.gethostname()),
            nvml_error=data.get("nvml_error"),
        )


def installed_versions() -> dict[str, str | None]:
    """Versions of the tracked packages, from metadata (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for package, names in TRACKED_PACKAGES.items():
        versions[package] = None
        for name in names:
            try:
                versions[package] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def visible_order(uuids: list[str], visible: str | None) -> list[int]:
    """NVML indices of the GPUs CUDA will use, in CUDA's order, from ``CUDA_VISIBLE_DEVICES``.

    ``visible`` lists NVML indices or UUIDs (or their prefixes); ``None`` (not set) means every
    GPU, an empty value none. Like CUDA, the list ends at the first entry that names no GPU.
    """
    if visible is None:
        return list(range(len(uuids)))
    order: list[int] = []
    for item in (part.strip() for part in visible.split(",")):
        if item.isdigit() and int(item) < len(uuids):
            match: int | None = int(item)
        else:
            match = next((n for n, u in enumerate(uuids) if item and (u == item or u.startswith(item))), None)
        if match is None or match in order:
            break
        order.append(match)
    return order


def probe_gpus() -> tuple[list[Gpu], str | None, str | None, str | None]:
    """``(gpus, driver_version, cuda_driver_version, error)`` from NVML.

    With no NVIDIA driver (or no nvidia-ml-py) the list is empty and ``error`` says why. Only the
    GPUs ``CUDA_VISIBLE_DEVICES`` leaves visible are listed, in CUDA's order, so that a tuner
    pinned to one GPU of a machine tunes for that GPU alone (``index`` stays NVML's).
    """
    try:
        import pynvml
    except ImportError:
        return [], None, None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], None, None, f"no NVIDIA driver found (NVML: {exc})"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda_text = f"{cuda // 1000}.{cuda % 1000 // 10}"
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                bus = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
            except pynvml.NVMLError:
                bus = None
            try:
                width = int(pynvml.nvmlDeviceGetMemoryBusWidth(handle))
                clock = int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM))
            except (pynvml.NVMLError, AttributeError):  # not reported by every GPU and driver
                width = clock = None
            gpus.append(
                Gpu(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    total_memory=int(memory.total),
                    free_memory=int(memory.free),
                    compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),  # type: ignore[arg-type]
                    pci_bus_id=bus,
                    memory_bus_width=width,
                    max_memory_clock_mhz=clock,
                )
            )
        order = visible_order([g.uuid for g in gpus], os.environ.get("CUDA_VISIBLE_DEVICES"))
        return [gpus[i] for i in order], driver, cuda_text, None
    except pynvml.NVMLError as exc:
        return [], None, None, f"NVML failed while listing GPUs: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def probe() -> Environment:
    """The environment of this process: NVML's GPUs and the installed library versions."""
    gpus, driver, cuda, error = probe_gpus()
    return Environment(
        gpus=tuple(gpus),
        versions=installed_versions(),
        driver_version=driver,
        cuda_driver_version=cuda,
        nvml_error=error,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
