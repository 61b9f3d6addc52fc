"""Loading a candidate with ``from_pretrained``, and reading back what was really loaded.

Runs only inside the worker child: imports torch and transformers at module level.
"""

from __future__ import annotations

import importlib
import time
from collections import Counter
from typing import Any

import torch
import transformers

from autotune import axes
from autotune.candidate import Candidate
from autotune.flash import FLASH_ATTENTIONS
from autotune.memory.bnb import linear_classes, should_convert
from autotune.worker.backends._base import Loaded, OptionNotInEffect
from autotune.worker.protocol import WorkerRequest

#: ``Candidate.sdpa_kernel`` -> the ``torch.nn.attention.SDPBackend`` member it pins.
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
_QUANT_TYPES = {"bnb-4bit-nf4": "nf4", "bnb-4bit-fp4": "fp4"}
_MODEL_CLASSES = {
    "text-generation": "AutoModelForCausalLM",
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
}


def transformers_version() -> tuple[int, int]:
    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def dtype_keyword() -> str:
    """``dtype`` where Transformers knows it (4.56+, the only name in 5.x docs), else ``torch_dtype``."""
    return "dtype" if transformers_version() >= (4, 56) else "torch_dtype"


def bnb_config(candidate: Candidate) -> Any:
    """The ``BitsAndBytesConfig`` of a quantized candidate (never the removed load_in_* kwargs)."""
    from transformers import BitsAndBytesConfig

    if candidate.quant == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=_QUANT_TYPES[candidate.quant],
        bnb_4bit_use_double_quant=candidate.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, candidate.effective_compute_dtype),
    )


#: torchao's tensor subclass each ``quant`` leaves in the converted layers (torchao 0.18).
TORCHAO_TENSORS = {
    "torchao-int8wo": "Int8Tensor",
    "torchao-int4wo": "Int4TilePackedTo4dTensor",
    "torchao-float8wo": "Float8Tensor",
    "torchao-float8dq": "Float8Tensor",
}


def torchao_quant_type(candidate: Candidate) -> Any:
    """The torchao config object of a torchao candidate (``TorchAoConfig`` takes it as ``quant_type``;
    the string names of older releases are gone). int4 weight-only uses the tile-packed layout of
    tinygemm's CUDA kernel (the default plain layout needs the ``mslk`` package)."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8WeightOnlyConfig,
        PerRow,
    )

    q = candidate.quant
    if q == "torchao-int8wo":
        return Int8WeightOnlyConfig()
    if q == "torchao-int4wo":
        return Int4WeightOnlyConfig(group_size=candidate.value("group_size"), int4_packing_format="tile_packed_to_4d")
    if q == "torchao-float8wo":
        return Float8WeightOnlyConfig()
    if q == "torchao-float8dq":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    raise ValueError(f"not a torchao quantization: {q}")


def quantization_config(candidate: Candidate) -> Any:
    """The ``quantization_config`` of a quantized candidate: ``BitsAndBytesConfig``,
    ``TorchAoConfig(quant_type=<torchao config>)`` or ``FineGrainedFP8Config()``."""
    if candidate.is_torchao:
        from transformers import TorchAoConfig

        return TorchAoConfig(quant_type=torchao_quant_type(candidate))
    if candidate.quant == axes.FP8_FINE:
        from transformers import FineGrainedFP8Config

        return FineGrainedFP8Config()
    return bnb_config(candidate)


def from_pretrained_kwargs(request: WorkerRequest) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` on the installed Transformers."""
    c = request.candidate
    kwargs: dict[str, Any] = {dtype_keyword(): getattr(torch, c.dtype), "attn_implementation": c.attn}
    if c.quant != "none":
        kwargs["quantization_config"] = quantization_config(c)
    if c.placement == "cpu":
        kwargs["device_map"] = "cpu"
    elif c.placement == "cuda":
        kwargs["device_map"] = "cuda:0"
    else:
        kwargs["device_map"] = "auto"
        if request.max_memory:
            count = torch.cuda.device_count()
            kwargs["max_memory"] = {i: int(cap) for i, cap in request.max_memory.items() if i < count}
    # the levers declared beyond the candidate's fields say their own arguments (autotune.axes)
    kwargs.update(axes.loader_kwargs(c.to_dict(), extra_only=True))
    return kwargs


def describe_kwargs(kwargs: dict[str, Any]) -> dict[str, str]:
    """The kwargs as short text, for the record."""
    out = {}
    for key, value in kwargs.items():
        if key == "quantization_config" and type(value).__name__ == "TorchAoConfig":
            out[key] = f"TorchAoConfig(quant_type={value.quant_type!r})"
        elif key == "quantization_config" and type(value).__name__ == "FineGrainedFP8Config":
            out[key] = (
                f"FineGrainedFP8Config(activation_scheme={value.activation_scheme!r}, weight_block_size={tuple(value.weight_block_size)})"
            )
        elif key == "quantization_config":
            raw = value.to_dict()
            keep = (
                ("load_in_8bit",)
                if raw.get("load_in_8bit")
                else ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")
            )
            data = {k: raw[k] for k in keep if k in raw}
            out[key] = "BitsAndBytesConfig(" + ", ".join(f"{k}={v!r}" for k, v in data.items()) + ")"
        else:
            out[key] = str(value) if not isinstance(value, str) else repr(value)
    return out


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def check_importable(candidate: Candidate) -> None:
    """Import a FlashAttention candidate's kernels module before loading: raise
    :class:`OptionNotInEffect` (``unsupported``) with the reason when it does not import."""
    fa = FLASH_ATTENTIONS.get(candidate.attn)
    if fa is None:
        return
    try:
        importlib.import_module(fa.module)
    except Exception as exc:  # a missing package, a missing dependency, a library that fails to initialise
        raise OptionNotInEffect(
            "unsupported", f"{candidate.attn}: {fa.module} does not import here ({first_line(exc)}); {fa.install_hint()}"
        ) from None


def load(request: WorkerRequest) -> Loaded:
    """Load the candidate's model; raises whatever ``from_pretrained`` raises."""
    cls = getattr(transformers, _MODEL_CLASSES[request.task])
    kwargs = from_pretrained_kwargs(request)
    # Import the model's modeling code (and bitsandbytes) before the clock starts: load_seconds
    # is the cost of loading weights, not of Python imports. (A GGUF file's config is read from
    # its metadata, which takes seconds: there the import is left inside the clock.)
    if request.gguf_file:
        kwargs["gguf_file"] = request.gguf_file
    else:
        try:
            config = transformers.AutoConfig.from_pretrained(request.model_path)
            cls._model_mapping[type(config)]
        except Exception:  # from_pretrained below reports the real problem
            pass
    if request.candidate.quant != "none":
        try:
            importlib.import_module("torchao" if request.candidate.is_torchao else "bitsandbytes")
        except ImportError:
            pass
    if request.fault == "import":
        raise ModuleNotFoundError("No module named 'autotune_injected_fault' (a fault injected by a test)", name="autotune_injected_fault")
    # Weights missing from the checkpoint (a classifier head) are initialised alike in every worker.
    torch.manual_seed(request.seed)
    synchronize()
    started = time.perf_counter()
    model = cls.from_pretrained(request.model_path, **kwargs)
    model.eval()
    synchronize()
    return Loaded(model, time.perf_counter() - started, describe_kwargs(kwargs))


# -- what was really loaded -----------------------------------------------------------------------


def _is_bnb(module: Any) -> bool:
    return type(module).__module__.startswith("bitsandbytes") and type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def _torchao_tensor(weight: Any) -> str | None:
    """The class name of a torchao tensor subclass (``Int8Tensor``, ...), ``None`` for a plain tensor."""
    cls = type(weight)
    if any(k.__module__.startswith("torchao") and k.__name__ == "TorchAOBaseTensor" for k in cls.__mro__):
        return cls.__name__
    return None


def _is_quantized_layer(module: Any) -> bool:
    if _is_bnb(module):
        return True
    if type(module).__name__ == "FP8Linear":  # Transformers' fine-grained FP8
        return True
    return _torchao_tensor(getattr(module, "weight", None)) is not None


def stored_bytes(model: Any) -> int:
    """What the weights and buffers hold in memory: a torchao tensor counts its inner tensors
    (``qdata``, ``scale``, ...), since ``get_memory_footprint`` counts it at the load dtype."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        inner = getattr(tensor, "tensor_data_names", None) if _torchao_tensor(tensor) else None
        if inner:
            total += sum(getattr(tensor, n).numel() * getattr(tensor, n).element_size() for n in inner if getattr(tensor, n) is not None)
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def _short(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def read_effective(model: Any, candidate: Candidate, gguf_file: str | None = None) -> dict[str, Any]:
    """The configuration in force, read from the loaded model (not from what was asked).

    A model loaded from a GGUF file also says how many layers kept llama.cpp's packed blocks
    (``gguf_packed_layers``; Transformers 5.24 keeps them only with the ``kernels`` package and a
    kernel for the device, and otherwise dequantizes every weight to the load dtype).
    """
    effective: dict[str, Any] = {
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "sdpa_kernel": candidate.sdpa_kernel,
    }
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, linear_classes())]
    quantized = [(n, m) for n, m in linear if _is_quantized_layer(m)]
    # Only a bitsandbytes load is checked for layers left unconverted (a GGUF load has a quantizer of its own).
    quantizer = getattr(model, "hf_quantizer", None) if candidate.quant != "none" else None
    skip = list(getattr(quantizer, "modules_to_not_convert", None) or [])
    plain = [(n, m) for n, m in linear if not _is_quantized_layer(m)]
    # the name rule alone: a layer the quantizer meant to convert and left alone is a finding
    by_design = [n for n, _ in plain if quantizer is not None and not should_convert(n, skip)]
    missed = [(n, m) for n, m in plain if quantizer is not None and should_convert(n, skip)]
    effective.update(
        {
            "linear_layers": len(linear),
            "quantized_layers": len(quantized),
            "layer_classes": dict(Counter(type(m).__name__ for _, m in linear)),
            "kept_unquantized": by_design[:20],
            "unquantized_layers": len(missed),
            "unquantized_examples": [f"{n} ({type(m).__name__})" for n, m in missed[:5]],
            "is_quantized": bool(getattr(model, "is_quantized", False)),
        }
    )
    if quantized and not candidate.is_bnb:
        effective["quant_types"] = dict(Counter(_torchao_tensor(m.weight) or type(m).__name__ for _, m in quantized))
    elif quantized:
        quant_types = Counter()
        nested = set()
        compute = set()
        for _, m in quantized:
            weight = m.weight
            quant_types[getattr(weight, "quant_type", None) or ("int8" if type(m).__name__ == "Linear8bitLt" else "?")] += 1
            state = getattr(weight, "quant_state", None)
            if state is not None:
                nested.add(bool(getattr(state, "nested", False)))
            if getattr(m, "compute_dtype", None) is not None:
                compute.add(_short(m.compute_dtype))
        effective["quant_types"] = dict(quant_types)
        effective["double_quant"] = sorted(nested) if len(nested) > 1 else (next(iter(nested)) if nested else None)
        effective["compute_dtypes"] = sorted(compute)

    dtypes: Counter[str] = Counter()
    float_dtypes: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    for param in model.parameters():
        count = param.numel()
        dtypes[_short(param.dtype)] += count
        devices[str(param.device)] += count
        if param.dtype.is_floating_point and param.dtype.itemsize > 1:  # float8 weights are the quantization, not the dtype
            float_dtypes[_short(param.dtype)] += count
    effective["param_dtypes"] = dict(dtypes)
    effective["dtype"] = float_dtypes.most_common(1)[0][0] if float_dtypes else None
    effective["param_devices"] = dict(devices)
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        effective["hf_device_map"] = dict(Counter(str(v) if not isinstance(v, int) else f"cuda:{v}" for v in device_map.values()))
    try:
        effective["weights_bytes"] = stored_bytes(model) if candidate.is_torchao else int(model.get_memory_footprint())
    except Exception:  # odd buffers: the figure is optional
        effective["weights_bytes"] = None
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if quantized and candidate.is_torchao:
        import torchao

        versions["torchao"] = torchao.__version__
    elif quantized and candidate.is_bnb:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    if gguf_file:
        import importlib.metadata

        effective["gguf_file"] = gguf_file
        effective["gguf_packed_layers"] = sum(1 for _, m in model.named_modules() if type(m).__name__.startswith("Gguf"))
        try:
            versions["gguf"] = importlib.metadata.version("gguf")
        except importlib.metadata.PackageNotFoundError:
            pass
    effective["versions"] = versions
    return effective


def check_effective(candidate: Candidate, effective: dict[str, Any], max_memory: dict[int, int] | None = None) -> None:
    """Raise :class:`OptionNotInEffect` if any requested option did not take effect."""
    c = candidate
    attn = effective.get("attn_implementation")
    if attn != c.attn:
        why = ""
        if c.attn in FLASH_ATTENTIONS and "/" in str(attn):
            why = (
                f", a kernel from the Hugging Face Hub that transformers {transformers.__version__} loads when the package "
                f"{FLASH_ATTENTIONS[c.attn].package} is missing and `kernels` is installed"
            )
        raise OptionNotInEffect("unsupported", f"attention {c.attn} did not take effect: the loaded model runs {attn}{why}")

    if c.quant != "none":
        done = effective["quantized_layers"]
        missed = effective["unquantized_layers"]
        if done == 0 or missed:
            classes = sorted({e.split(" (")[1].rstrip(")") for e in effective["unquantized_examples"]})
            meant = missed + done
            what = (
                f"none of the {meant} linear layers meant to be quantized was converted"
                if done == 0
                else f"{missed} of the {meant} linear layers meant to be quantized were left as they were"
            )
            raise OptionNotInEffect(
                "unsupported",
                f"{c.quant} did not take effect: {what} ({', '.join(classes)} stayed {effective.get('dtype')}, "
                f"e.g. {effective['unquantized_examples'][0].split(' (')[0]}) although model.is_quantized is "
                f"{effective['is_quantized']}; transformers {transformers.__version__} does not convert these layers",
            )
        if c.is_torchao or c.quant == axes.FP8_FINE:
            want = TORCHAO_TENSORS.get(c.quant, "FP8Linear")
            types = set(effective.get("quant_types", {}))
            if types != {want}:
                raise OptionNotInEffect(
                    "unsupported",
                    f"{c.quant} did not take effect: the converted layers hold {', '.join(sorted(map(str, types)))}, not {want}",
                )
        elif c.is_4bit:
            want = _QUANT_TYPES[c.quant]
            types = set(effective.get("quant_types", {}))
            if types != {want}:
                raise OptionNotInEffect(
                    "unsupported", f"{c.quant} did not take effect: the layers hold {', '.join(sorted(map(str, types)))}"
                )
            if effective.get("double_quant") not in (c.double_quant, None):
                raise OptionNotInEffect("unsupported", f"double quantization {'on' if c.double_quant else 'off'} did not take effect")
        elif set(effective.get("quant_types", {})) != {"int8"}:
            raise OptionNotInEffect("unsupported", f"bnb-8bit did not take effect: the layers hold {effective.get('quant_types')}")

    if effective.get("dtype") and effective["dtype"] != c.dtype:
        raise OptionNotInEffect("unsupported", f"dtype {c.dtype} did not take effect: most floating-point weights are {effective['dtype']}")

    devices = {d.split(":")[0] for d in effective.get("param_devices", {})}
    mapped = set(effective.get("hf_device_map", {}))
    if c.placement == "cpu" and devices != {"cpu"}:
        raise OptionNotInEffect("unsupported", f"placement cpu did not take effect: weights on {', '.join(sorted(devices))}")
    if c.on_gpu:
        offloaded = sorted(d for d in mapped | devices if d in ("cpu", "disk", "meta"))
        if offloaded:
            caps = ", ".join(f"{i}: {cap / 2**30:.2f} GiB" for i, cap in sorted((max_memory or {}).items()))
            limit = f" under max_memory {{{caps}}}" if caps else ""
            raise OptionNotInEffect(
                "oom", f"the weights do not fit the GPUs{limit}: accelerate offloaded modules to {', '.join(offloaded)}"
            )
        gpus = {d for d in effective.get("param_devices", {}) if d.startswith("cuda")}
        if c.placement == "cuda" and len(gpus) != 1:
            raise OptionNotInEffect("unsupported", f"placement cuda did not take effect: weights on {', '.join(sorted(gpus))}")


# -- errors while loading -------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc).lower()
    if type(exc).__module__.startswith("onnxruntime") and ("failed to allocate memory" in text or "out of memory" in text):
        return True  # ONNX Runtime: "Failed to allocate memory for requested buffer of size ...", "CUDA failure 2: out of memory"
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "cuda_error_out_of_memory" in text)


def first_line(exc: BaseException, limit: int = 400) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify_run_error(exc: BaseException, candidate: Candidate, batch: int) -> tuple[str, str]:
    """``(status, reason)`` for an exception raised while measuring ``candidate`` at ``batch``.

    ``unsupported``: what cannot run here — torch.compile failing on a static cache (or on flex
    attention), a FlashAttention kernel refusing the call (raised from inside its package), no
    SDPA kernel for a pinned backend. ``oom`` for memory, ``error`` for anything else.
    """
    message = first_line(exc)
    if is_out_of_memory(exc):
        return "oom", f"out of memory at batch size {batch}: {message}"
    if "no available kernel" in str(exc).lower():
        return "unsupported", f"SDPA kernel {candidate.sdpa_kernel or '(default)'}: PyTorch found no kernel for this call ({message})"
    if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
        what = "a static cache" if candidate.static_cache else candidate.attn
        return "unsupported", f"torch.compile failed on {what} with attention {candidate.attn} at batch size {batch}: {message}"
    if candidate.is_torchao and raised_in(exc, "torchao"):
        return "unsupported", f"{candidate.quant}: torchao's tensors refused an operation of this model at batch size {batch}: {message}"
    if candidate.attn in FLASH_ATTENTIONS and raised_in(exc, FLASH_ATTENTIONS[candidate.attn].module):
        return "unsupported", f"{candidate.attn}: its kernel refused batch size {batch}: {message}"
    return "error", f"measuring batch size {batch} failed: {message}"


def raised_in(exc: BaseException, package: str) -> bool:
    """Whether ``exc`` was raised from code of the Python package ``package``."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return bool(last) and (last == package or str(last).startswith(package + "."))


_UNSUPPORTED_HINTS = (
    "attn",
    "attention",
    "quantiz",
    "bitsandbytes",
    "not supported",
    "does not support",
    "not available",
    "flash",
    "sdpa",
    "requires",
    "dtype",
    "compute capability",
)


def classify_load_error(exc: BaseException, candidate: Candidate) -> tuple[str, str]:
    """``(status, reason)`` for an exception raised while loading ``candidate``."""
    if is_out_of_memory(exc):
        return "oom", f"out of memory while loading: {first_line(exc)}"
    message = first_line(exc)
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and name:
            return "unsupported", f"loading {candidate.label()} needs the package {name.split('.')[0]}, which is not importable ({message})"
        return "unsupported", f"loading {candidate.label()} needs a package that is not usable here: {message}"
    if isinstance(exc, (ValueError, NotImplementedError, RuntimeError)) and any(h in str(exc).lower() for h in _UNSUPPORTED_HINTS):
        return "unsupported", f"transformers {transformers.__version__} refused {candidate.label()}: {message}"
    return "error", f"loading failed: {message}"
