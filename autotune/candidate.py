"""One way of loading and running a model, and the rules that say whether it can work here.

A :class:`Candidate` is what the search proposes and the trial worker measures (batch size
aside: a worker measures a ladder of batch sizes for one candidate, since loading costs the
most). :func:`rejection` applies the validity rules before anything is loaded, so that a user
sees *why* an option was never tried.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from autotune.errors import InputError
from autotune.flash import FLASH_ATTENTIONS

if TYPE_CHECKING:
    from autotune.environment import Environment
    from autotune.worker_env import WorkerEnvironment
    from autotune.workload import Workload

DTYPES = ("float32", "float16", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: Attention implementations autotune knows how to reason about. What a given model accepts is
#: read from the installed Transformers at ``autotune add`` time (the model's capabilities).
ATTENTIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")
QUANTS = ("none", "bnb-8bit", "bnb-4bit-nf4", "bnb-4bit-fp4")
PLACEMENTS = ("cpu", "cuda", "multi-gpu")
RUNTIMES = ("pytorch", "onnxruntime")

#: ONNX Runtime execution providers autotune can place, and the placement each one runs on.
PROVIDER_PLACEMENT = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
PROVIDER_SHORT = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}
#: The dtypes an ONNX export is made in (bfloat16 graphs do not run on ONNX Runtime's CPU and CUDA providers).
ORT_DTYPES = ("float32", "float16")
#: What to do when no worker environment offers ONNX Runtime.
REGISTER_ORT_HINT = "register one: autotune env add ort /path/to/python with optimum-onnx installed"


def normalize_dtype(name: str) -> str:
    value = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if value not in DTYPES:
        raise InputError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)} (or fp32, fp16, bf16)")
    return value


@dataclass(frozen=True)
class Candidate:
    """A loading configuration, batch size aside.

    ``compute_dtype`` applies to 4-bit quantization (``bnb_4bit_compute_dtype``); ``None``
    means "the same as ``dtype``". ``placement`` is ``cpu``, ``cuda`` (one GPU) or
    ``multi-gpu`` (``device_map="auto"`` over every GPU, each capped by the workload's limit).
    ``runtime`` ``onnxruntime`` runs an ONNX export through Optimum with the execution
    ``provider`` (e.g. ``CPUExecutionProvider``) and optionally IO binding.
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

    @property
    def is_4bit(self) -> bool:
        return self.quant.startswith("bnb-4bit")

    @property
    def effective_compute_dtype(self) -> str:
        return self.compute_dtype or self.dtype

    @property
    def on_gpu(self) -> bool:
        return self.placement != "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def key(self) -> str:
        """A stable identity: two candidates with the same key load the same way."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def is_onnxruntime(self) -> bool:
        return self.runtime == "onnxruntime"

    def measure_args(self) -> str:
        """The ``autotune measure`` options that measure this candidate (batch sizes aside)."""
        args = [f"--dtype {DTYPE_SHORT[self.dtype]}", f"--placement {self.placement}"]
        if self.is_onnxruntime:
            args += ["--runtime onnxruntime"] + ([f"--provider {self.provider}"] if self.provider else [])
            return " ".join(args + (["--io-binding"] if self.io_binding else []))
        args.append(f"--attn {self.attn}")
        if self.sdpa_kernel:
            args.append(f"--sdpa-kernel {self.sdpa_kernel}")
        if self.quant != "none":
            args.append(f"--quant {self.quant}")
        if self.double_quant:
            args.append("--double-quant")
        if self.compute_dtype and self.compute_dtype != self.dtype:
            args.append(f"--compute-dtype {DTYPE_SHORT[self.compute_dtype]}")
        if self.static_cache:
            args.append("--static-cache")
        return " ".join(args)

    def label(self) -> str:
        """Short human text, e.g. ``bf16 sdpa[flash] nf4+dq(bf16) cuda static`` or ``fp32 onnxruntime[CPU] cpu``."""
        if self.is_onnxruntime:
            provider = PROVIDER_SHORT.get(self.provider or "", self.provider or "no provider")
            parts = [DTYPE_SHORT[self.dtype], f"onnxruntime[{provider}]"] + (["io-binding"] if self.io_binding else [])
            return " ".join([*parts, self.placement])
        attn = self.attn + (f"[{self.sdpa_kernel}]" if self.sdpa_kernel else "")
        parts = [DTYPE_SHORT[self.dtype], attn]
        if self.quant != "none":
            quant = {"bnb-8bit": "int8", "bnb-4bit-nf4": "nf4", "bnb-4bit-fp4": "fp4"}[self.quant]
            if self.double_quant:
                quant += "+dq"
            if self.is_4bit and self.compute_dtype and self.compute_dtype != self.dtype:
                quant += f"({DTYPE_SHORT[self.compute_dtype]})"
            parts.append(quant)
        parts.append(self.placement)
        if self.static_cache:
            parts.append("static")
        return " ".join(parts)


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
        return onnxruntime_rejection(c, worker_envs) or _workload_rejection(c, workload)
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

    if c.quant != "none":
        if gguf:
            return (
                f"{c.quant}: the model is the GGUF file {gguf}, and Transformers refuses a quantization_config with "
                f"gguf_file (it dequantizes the file on load); to try bitsandbytes, save the loaded model as safetensors"
            )
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
    return _workload_rejection(c, workload)


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
    defaults = Candidate()
    for name, what in (
        ("attn", "attention"),
        ("sdpa_kernel", "SDPA kernel"),
        ("quant", "quantization"),
        ("double_quant", "double quantization"),
        ("compute_dtype", "compute dtype"),
        ("static_cache", "static cache"),
    ):
        value = getattr(c, name)
        if value != getattr(defaults, name):
            return (
                f"{what} {value}: a PyTorch loading option; ONNX Runtime runs the exported graph as it is "
                f"(leave it at its default, {getattr(defaults, name)}, for runtime onnxruntime)"
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
