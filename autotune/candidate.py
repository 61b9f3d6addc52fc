"""One way of loading and running a model, and the rules that say whether it can work here.

A :class:`Candidate` is what the search proposes and the trial worker measures (batch size
aside: a worker measures a ladder of batch sizes for one candidate, since loading costs the
most). :func:`rejection` applies the validity rules before anything is loaded, so that a user
sees *why* an option was never tried.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from autotune import axes
from autotune.axes import (
    ATTENTIONS,
    DTYPE_ALIASES,
    DTYPE_SHORT,
    DTYPES,
    FLOAT8_QUANTS,
    FP8_FINE,
    ORT_DTYPES,
    PLACEMENTS,
    PROVIDER_PLACEMENT,
    PROVIDER_SHORT,
    QUANTS,
    RUNTIMES,
    SDPA_KERNELS,
    TORCHAO_QUANTS,
    normalize_dtype,
)
from autotune.errors import InputError
from autotune.flash import FLASH_ATTENTIONS

if TYPE_CHECKING:
    from autotune.environment import Environment
    from autotune.worker_env import WorkerEnvironment
    from autotune.workload import Workload

#: What to do when no worker environment offers ONNX Runtime.
REGISTER_ORT_HINT = "register one: autotune env add ort /path/to/python with optimum-onnx installed"

__all__ = [
    "ATTENTIONS",
    "DTYPES",
    "DTYPE_ALIASES",
    "DTYPE_SHORT",
    "ORT_DTYPES",
    "PLACEMENTS",
    "PROVIDER_PLACEMENT",
    "PROVIDER_SHORT",
    "QUANTS",
    "REGISTER_ORT_HINT",
    "RUNTIMES",
    "SDPA_KERNELS",
    "Candidate",
    "choose_worker_env",
    "flash_rejection",
    "generation_rejection",
    "normalize_dtype",
    "onnxruntime_rejection",
    "rejection",
    "torchao_rejection",
]


@dataclass(frozen=True)
class Candidate:
    """A loading configuration, batch size aside; its levers are declared in :mod:`autotune.axes`.

    ``compute_dtype`` applies to 4-bit quantization (``bnb_4bit_compute_dtype``); ``None``
    means "the same as ``dtype``". ``placement`` is ``cpu``, ``cuda`` (one GPU) or
    ``multi-gpu`` (``device_map="auto"`` over every GPU, each capped by the workload's limit).
    ``runtime`` ``onnxruntime`` runs an ONNX export through Optimum with the execution
    ``provider`` (e.g. ``CPUExecutionProvider``) and optionally IO binding. ``extra`` holds the
    values of axes declared beyond these fields (:func:`autotune.axes.extra_axes`), only those
    off their default, sorted by name; read any axis with :meth:`value`.
    """

    dtype: str = "bfloat16"
    attn: str = "sdpa"
    sdpa_kernel: str | None = None
    quant: str = "none"
    double_quant: bool = False
    compute_dtype: str | None = None
    placement: str = "cuda"
    static_cache: bool = False
    runtime: str = "pytorch"
    provider: str | None = None
    io_binding: bool = False
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        if self.compute_dtype is not None:
            object.__setattr__(self, "compute_dtype", normalize_dtype(self.compute_dtype))
        if self.sdpa_kernel is not None and self.sdpa_kernel not in SDPA_KERNELS:
            raise InputError(f"unknown SDPA kernel {self.sdpa_kernel!r}: choose one of {', '.join(SDPA_KERNELS)}")
        if self.quant not in QUANTS:
            raise InputError(f"unknown quantization {self.quant!r}: choose one of {', '.join(QUANTS)}")
        if self.placement not in PLACEMENTS:
            raise InputError(f"unknown placement {self.placement!r}: choose one of {', '.join(PLACEMENTS)}")
        if self.runtime not in RUNTIMES:
            raise InputError(f"unknown runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if not self.attn or not isinstance(self.attn, str):
            raise InputError(f"attention implementation must be a name such as sdpa, got {self.attn!r}")
        if self.extra:
            declared = {a.name: a for a in axes.extra_axes()}
            unknown = [name for name, _ in self.extra if name not in declared]
            if unknown:
                raise InputError(f"unknown axis {unknown[0]!r}: declared ones are {', '.join(axes.names())}")
            for name, value in self.extra:
                if declared[name].values and value not in declared[name].values:
                    raise InputError(f"unknown {name} {value!r}: choose one of {', '.join(map(str, declared[name].values))}")
            kept = tuple(sorted((n, v) for n, v in dict(self.extra).items() if v != declared[n].default))
            object.__setattr__(self, "extra", kept)

    @property
    def is_4bit(self) -> bool:
        return self.quant.startswith("bnb-4bit")

    @property
    def is_bnb(self) -> bool:
        return self.quant.startswith("bnb-")

    @property
    def is_torchao(self) -> bool:
        return self.quant in TORCHAO_QUANTS

    @property
    def effective_compute_dtype(self) -> str:
        return self.compute_dtype or self.dtype

    @property
    def on_gpu(self) -> bool:
        return self.placement != "cpu"

    def value(self, name: str) -> Any:
        """The candidate's value on the axis ``name`` (a field, or an axis declared beyond them)."""
        if name in axes.BUILT_IN:
            return getattr(self, name)
        extra = dict(self.extra)
        return extra[name] if name in extra else axes.axis(name).default

    def to_dict(self) -> dict[str, Any]:
        """Every field, then the axes declared beyond them that are off their default: what
        :meth:`key` hashes, so an axis added later leaves the keys of earlier candidates as they were."""
        data = {name: getattr(self, name) for name in axes.BUILT_IN}
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = tuple((a.name, data[a.name]) for a in axes.extra_axes() if a.name in data)
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)

    def key(self) -> str:
        """A stable identity: two candidates with the same key load the same way."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def is_onnxruntime(self) -> bool:
        return self.runtime == "onnxruntime"

    def measure_args(self) -> str:
        """The ``autotune measure`` options that measure this candidate (batch sizes aside)."""
        return axes.measure_args(self.to_dict())

    def label(self) -> str:
        """Short human text, e.g. ``bf16 sdpa[flash] nf4+dq(bf16) cuda static`` or ``fp32 onnxruntime[CPU] cpu``."""
        return axes.label(self.to_dict())


def rejection(
    candidate: Candidate,
    environment: Environment,
    capabilities: dict[str, Any],
    workload: Workload | None = None,
    worker_envs: list[WorkerEnvironment] | None = None,
) -> str | None:
    """Why ``candidate`` cannot work here, in words a user can act on; ``None`` if it may.

    ``capabilities`` is what the installed Transformers says of the model's class (see
    :func:`autotune.registry.model_capabilities`). ``worker_envs`` are the registered worker
    environments (see :mod:`autotune.worker_env`): given, an ONNX Runtime candidate is refused
    unless one of them offers its provider; ``None`` skips that check.
    """
    c = candidate
    gpus = environment.gpus
    if c.placement == "cuda" and not gpus:
        return "placement cuda: no NVIDIA GPU is visible here (autotune gpus shows what NVML sees)"
    if c.placement == "multi-gpu" and len(gpus) < 2:
        return f"placement multi-gpu: needs two or more GPUs, this machine has {len(gpus)}"
    gguf = capabilities.get("gguf_file")
    if gguf and c.is_onnxruntime:
        return f"runtime onnxruntime: the model is the GGUF file {gguf}, which Optimum's ONNX export does not read"
    if c.is_onnxruntime:
        return onnxruntime_rejection(c, worker_envs) or _extra_rejection(c) or _workload_rejection(c, workload)
    if c.provider is not None or c.io_binding:
        what = f"execution provider {c.provider}" if c.provider is not None else "IO binding"
        return f"{what}: applies only to runtime onnxruntime, not pytorch"
    min_cc = min((g.compute_capability for g in gpus), default=None) if c.on_gpu else None

    if c.on_gpu and min_cc is not None and min_cc < (8, 0):
        for what, dtype in (("dtype", c.dtype), ("compute dtype", c.compute_dtype)):
            if dtype == "bfloat16":
                return f"{what} bfloat16: needs compute capability 8.0 or newer, this GPU has {min_cc[0]}.{min_cc[1]} (use float16)"

    supported = capabilities.get("attn_implementations")
    if supported is not None and c.attn not in supported:
        return f"{c.attn}: {capabilities.get('architecture', 'this model')} does not support it in transformers {environment.version('transformers')} (supported: {', '.join(supported)})"

    if c.attn in FLASH_ATTENTIONS:
        reason = flash_rejection(c, environment)
        if reason is not None:
            return reason

    if c.sdpa_kernel is not None:
        if c.attn != "sdpa":
            return f"SDPA kernel {c.sdpa_kernel}: applies only with attention sdpa, not {c.attn}"
        if not c.on_gpu and c.sdpa_kernel in ("efficient", "cudnn"):
            return f"SDPA kernel {c.sdpa_kernel}: runs only on CUDA; on the CPU use flash or math"
        if c.on_gpu and c.sdpa_kernel in ("flash", "cudnn") and min_cc is not None and min_cc < (8, 0):
            return f"SDPA kernel {c.sdpa_kernel}: needs compute capability 8.0 or newer, this GPU has {min_cc[0]}.{min_cc[1]}"
        if c.on_gpu and c.sdpa_kernel == "flash" and c.dtype == "float32" and not c.is_4bit:
            return "SDPA kernel flash: runs only in float16 or bfloat16 on CUDA, not float32"
        if c.sdpa_kernel == "flash" and workload is not None and workload.padding_share > 0:
            return "SDPA kernel flash: refuses attention masks, and this workload pads its batches (pin efficient or cudnn, or leave the kernel to PyTorch)"

    if c.quant != "none" and gguf:
        return (
            f"{c.quant}: the model is the GGUF file {gguf}, and Transformers refuses a quantization_config with "
            f"gguf_file (it dequantizes the file on load); to try {'bitsandbytes' if c.is_bnb else 'it'}, save the loaded model as safetensors"
        )
    if c.quant in TORCHAO_QUANTS or c.quant == FP8_FINE:
        reason = torchao_rejection(c, environment, capabilities.get("architecture"))
        if reason is not None:
            return reason
    elif c.quant != "none":
        if not environment.has("bitsandbytes"):
            return f"{c.quant}: package bitsandbytes is not installed (pip install bitsandbytes)"
        if c.quant == "bnb-8bit":
            if c.dtype == "bfloat16":
                return "bnb-8bit: LLM.int8 computes in float16 and casts bfloat16 inputs; load it with dtype float16"
            if c.on_gpu and min_cc is not None and min_cc < (7, 5):
                return f"bnb-8bit: LLM.int8 needs compute capability 7.5 or newer, this GPU has {min_cc[0]}.{min_cc[1]}"
        if c.static_cache:
            return f"{c.quant} with a static cache: bitsandbytes layers cannot be compiled with torch.compile"
    if c.static_cache and not c.on_gpu:
        return "static cache: transformers compiles static-cache generate only on CUDA; on the CPU it would run uncompiled"
    if c.double_quant and not c.is_4bit:
        return "double quantization applies only to 4-bit (bnb-4bit-nf4 or bnb-4bit-fp4)"
    if c.compute_dtype is not None and not c.is_4bit:
        return "a compute dtype applies only to 4-bit quantization"

    if workload is not None and c.static_cache and not workload.generates:
        return f"static cache: applies only to text generation, not {workload.task}"
    return _extra_rejection(c) or generation_rejection(c, workload) or _workload_rejection(c, workload)


def generation_rejection(candidate: Candidate, workload: Workload | None) -> str | None:
    """Why ``candidate``'s generation strategy (:data:`autotune.axes.GENERATION`) cannot be measured
    for ``workload``; ``None`` if it can (plain generation always can).

    Drafting runs at batch size 1 only (Transformers' assisted generate refuses larger batches: the
    space measures such a candidate at batch 1) and with greedy decoding only (autotune measures
    greedy decoding, where the drafted tokens are exactly the plain ones); it competes with the
    static cache rather than stacking on it (:func:`autotune.axes.canonical` holds it at plain there).
    """
    generation = candidate.value("generation")
    if generation == axes.PLAIN or workload is None:
        return None
    if not workload.generates:
        return f"generation {generation}: drafting applies only to text generation, not {workload.task}"
    if generation == axes.ASSISTANT and not workload.extra.get("assistant"):
        return "generation assistant: no draft model is registered for this model (autotune add MODEL --assistant DRAFT)"
    return None


def flash_rejection(candidate: Candidate, environment: Environment) -> str | None:
    """Why a FlashAttention ``candidate`` cannot run here (dtype, device, GPU, package); ``None`` if it may.

    Whether the package also imports (``flash_attn.cute`` needs the CuTe DSL) is for the trial
    worker to find: nothing here imports it.
    """
    c = candidate
    fa = FLASH_ATTENTIONS[c.attn]
    if c.dtype == "float32":
        # Quantized or not, the attention gets its inputs in the load dtype: bitsandbytes casts a
        # layer's output back to its input's dtype, and Transformers' flash_attention_forward casts
        # float32 queries to config.dtype (transformers 5.17 and 5.24 source).
        quantized = f" (a {c.quant} load runs attention in the load dtype, whatever the compute dtype)" if c.quant != "none" else ""
        return f"{c.attn}: FlashAttention runs only in float16 or bfloat16, not float32{quantized}"
    if not c.on_gpu:
        return f"{c.attn}: FlashAttention runs only on NVIDIA GPUs, not on the CPU"
    gpus = environment.gpus if c.placement == "multi-gpu" else environment.gpus[:1]
    unable = next((g for g in gpus if not fa.runs_on(g.compute_capability)), None)
    if unable is not None:
        return f"{c.attn}: runs on {fa.gpus}, and GPU {unable.index} ({unable.name}) has compute capability {unable.cc}"
    if not environment.has(fa.package):
        return f"{c.attn}: package {fa.package} is not installed ({fa.install_hint(environment.cuda_driver_version)})"
    return None


#: The oldest torchao whose config classes and tensor subclasses autotune writes and reads
#: (``Int8WeightOnlyConfig`` ... of the version-2 tensors: ``Int8Tensor``, ``Int4TilePackedTo4dTensor``,
#: ``Float8Tensor``), and the torch each torchao needs: torchao 0.18's ``__init__`` refuses to
#: load its C++ extensions below torch 2.11, and its weight-only kernels then fall back or fail.
TORCHAO_MIN = (0, 18)
TORCHAO_TORCH = {(0, 18): (2, 11)}
TORCHAO_INSTALL = "pip install 'autotune[torchao]'"


def _version(text: str | None) -> tuple[int, int]:
    parts = (str(text or "0").split("+")[0].split(".") + ["0"])[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


#: Model classes whose projections are GPT-2's ``Conv1D``, not ``nn.Linear``: torchao's
#: ``quantize_`` converts ``nn.Linear`` (subclasses too: Falcon's ``FalconLinear`` becomes an
#: ``Int8Tensor``) and leaves every ``Conv1D`` as it was (read back on transformers 5.24, torchao 0.18).
CONV1D_PREFIXES = ("GPT2", "OpenAIGPT")
#: Model classes whose linear layers compute ``input @ self.weight.T`` in a forward of their own
#: (Falcon's ``FalconLinear``): torchao converts their weights, then the first forward pass fails
#: in ``aten.permute``, which torchao 0.18's tensors do not implement (read on transformers 5.24).
OWN_MATMUL_PREFIXES = ("Falcon",)


def torchao_rejection(candidate: Candidate, environment: Environment, architecture: str | None = None) -> str | None:
    """Why a torchao or fine-grained FP8 ``candidate`` cannot run here (``architecture``: the model's
    class, where known); ``None`` if it may.

    Measured on the CPU (torch 2.13, torchao 0.18): int8 and float8 weight-only load and generate
    there; int4 weight-only does not (its tile-packed layout is tinygemm's CUDA kernel, and the
    plain layout needs the ``mslk`` package), nor does Transformers' fine-grained FP8 ("A GPU or
    XPU is needed for FP8 quantization").
    """
    c = candidate
    q = c.quant
    gpus = environment.gpus if c.placement == "multi-gpu" else environment.gpus[:1]
    if architecture and architecture.startswith(CONV1D_PREFIXES):
        return f"{q}: {architecture}'s projections are Conv1D layers, which it leaves unconverted (it quantizes nn.Linear): nothing would be quantized"
    if architecture and architecture.startswith(OWN_MATMUL_PREFIXES) and q != FP8_FINE:
        return (
            f"{q}: {architecture}'s linear layers multiply by weight.T themselves, which torchao's tensors do not implement "
            f"(aten.permute, torchao 0.18)"
        )
    if q == FP8_FINE:
        if not c.on_gpu:
            return "fp8-fine: Transformers' fine-grained FP8 runs only on a GPU (compute capability 8.9 or newer), not on the CPU"
        if not environment.has("kernels"):
            return "fp8-fine: Transformers' FP8 linear layers load their kernel through the package kernels, which is not installed (pip install kernels)"
    else:
        if not environment.has("torchao"):
            return f"{q}: package torchao is not installed ({TORCHAO_INSTALL})"
        have = _version(environment.version("torchao"))
        if have < TORCHAO_MIN:
            return f"{q}: torchao {environment.version('torchao')} is older than 0.18, whose config classes autotune writes ({TORCHAO_INSTALL})"
        need = max((t for v, t in TORCHAO_TORCH.items() if have >= v), default=None)
        torch_version = environment.version("torch")
        if need is not None and torch_version and _version(torch_version) < need:
            return (
                f"{q}: torchao {environment.version('torchao')} pairs with torch {need[0]}.{need[1]} or newer, and torch here is "
                f"{torch_version} (install a torchao that matches, or upgrade torch)"
            )
        if q == "torchao-int4wo" and not c.on_gpu:
            return "torchao-int4wo: int4 weight-only runs on CUDA (tinygemm's tile-packed kernel), not on the CPU"
        if q == "torchao-float8dq" and not c.on_gpu:
            return "torchao-float8dq: float8 activations need float8 matmuls (torch._scaled_mm) on a GPU, not the CPU"
    if c.on_gpu and q in FLOAT8_QUANTS:
        old = next((g for g in gpus if g.compute_capability < (8, 9)), None)
        if old is not None:
            return f"{q}: float8 needs compute capability 8.9 or newer (Ada, Hopper), and GPU {old.index} ({old.name}) has {old.cc}"
    if q in ("torchao-int4wo", FP8_FINE) and c.dtype != "bfloat16":
        return f"{q}: its kernels take bfloat16 activations; load it with dtype bfloat16, not {c.dtype}"
    return None


def _extra_rejection(c: Candidate) -> str | None:
    """Why an axis declared beyond the candidate's fields does not apply where it is set."""
    data = c.to_dict()
    for axis in axes.extra_axes():
        if c.value(axis.name) != axis.default and not axis.applies(data):
            return axis.why_not(data) or f"{axis.name}: applies only to runtime {axis.owner}, not {c.runtime}"
    return None


def _workload_rejection(c: Candidate, workload: Workload | None) -> str | None:
    if workload is not None:
        if workload.device == "cpu" and c.on_gpu:
            return f"placement {c.placement}: the workload is pinned to the CPU (--device cpu)"
        if workload.device == "cuda" and not c.on_gpu:
            return "placement cpu: the workload is pinned to CUDA (--device cuda)"
    return None


def onnxruntime_rejection(candidate: Candidate, worker_envs: list[WorkerEnvironment] | None = None) -> str | None:
    """Why an ONNX Runtime ``candidate`` cannot run, ``None`` if it may.

    The PyTorch loading options (attention, SDPA kernel, quantization, static cache) must keep
    their defaults; the provider decides the placement; exports are float32 or float16, and
    float16 only on a GPU. With ``worker_envs`` given, one of them must offer the provider.
    """
    c = candidate
    if c.provider is None:
        return "runtime onnxruntime: needs an execution provider (" + ", ".join(PROVIDER_PLACEMENT) + ")"
    if c.provider not in PROVIDER_PLACEMENT:
        known = ", ".join(f"{p} ({where})" for p, where in PROVIDER_PLACEMENT.items())
        return f"execution provider {c.provider}: autotune places only {known}"
    for option in axes.owned_by("pytorch"):
        value = c.value(option.name)
        if value != option.default:
            return (
                f"{option.what or option.name} {value}: a PyTorch loading option; ONNX Runtime runs the exported graph as it is "
                f"(leave it at its default, {option.default}, for runtime onnxruntime)"
            )
    if c.dtype not in ORT_DTYPES:
        return f"dtype {c.dtype}: ONNX Runtime candidates are exported in float32 or float16 (its CPU and CUDA providers lack bfloat16 kernels)"
    if c.placement == "multi-gpu":
        return "placement multi-gpu: an ONNX Runtime session runs on one device"
    want = PROVIDER_PLACEMENT[c.provider]
    if c.placement != want:
        return f"placement {c.placement}: {c.provider} runs on {'the CPU' if want == 'cpu' else 'one GPU'} (placement {want})"
    if c.dtype == "float16" and c.placement == "cpu":
        return (
            "dtype float16 on the CPU: optimum exports float16 graphs on a GPU only (on the CPU the export makes a graph that "
            "CPUExecutionProvider refuses to load: LayerNormalization bound to float and float16); use float32"
        )
    if worker_envs is not None:
        offering = [e for e in worker_envs if e.offers("onnxruntime")]
        if not offering:
            return f"runtime onnxruntime: no worker environment offers ONNX Runtime ({REGISTER_ORT_HINT})"
        if not any(e.offers("onnxruntime", c.provider) for e in offering):
            offered = "; ".join(f"{e.name} offers {', '.join(e.runtimes['onnxruntime']) or 'no provider'}" for e in offering)
            return f"execution provider {c.provider}: no worker environment offers it ({offered})"
    return None


def choose_worker_env(candidate: Candidate, worker_envs: list[WorkerEnvironment]) -> WorkerEnvironment | None:
    """The registered environment an ONNX Runtime ``candidate`` runs in (the first by name that
    offers its provider); ``None`` for a PyTorch candidate (it runs in ``default``) or when none does."""
    if not candidate.is_onnxruntime:
        return None
    return next((e for e in sorted(worker_envs, key=lambda e: e.name) if e.offers("onnxruntime", candidate.provider)), None)
