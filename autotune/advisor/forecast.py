"""The memory model: a candidate's peak memory, predicted from the model's config alone.

Nothing is downloaded and no weight is allocated: the model is built on the meta device
(``with torch.device("meta")``, which keeps tied weights tied — ``accelerate.init_empty_weights``
does not on Transformers 5) to count its parameters and find which layers bitsandbytes would
quantize. The rest follows from the config:

- **weights** by dtype, or by quantized layout: bitsandbytes replaces only plain ``nn.Linear``
  (and GPT-2's ``Conv1D``) layers and keeps embeddings, the output head, norms, biases and any
  other layer class in the load dtype. On Transformers 5 that rule leaves Falcon's ``FalconLinear``
  layers unquantized, and the forecast says so. 4-bit stores half a byte per weight plus its
  **quantization state** (an fp32 absmax per 64-weight block; with double quantization a byte per
  block plus an fp32 absmax per 256 blocks); 8-bit stores int8 plus one fp32 scale per output row.
- **KV cache** by architecture: K and V for ``num_key_value_heads`` heads of ``head_dim`` (from the
  config where set) per layer and cached token. Falcon-7B (``multi_query``, old decoder) caches one
  head although its config reports 71; Falcon-40B (``new_decoder_architecture``) broadcasts K/V to
  every head before caching; DeepSeek's MLA caches its compressed latent. Sliding-window layers
  cap at the window. After ``generate(P prompt, N new)`` a dynamic cache holds ``P+N-1`` tokens,
  grown step by step; a static cache is allocated whole, for the same ``P+N-1``, before prefill.
- **activations**: the prefill transient of one layer, ``B·P·(MLP width + hidden)``, plus the
  attention scores where they are materialised, which grow with ``B·heads·P²``: eager attention,
  SDPA pinned to its math kernel, and SDPA on Falcon-7B-style multi-query attention, which hands
  SDPA one K/V head for all query heads without ``enable_gqa``: no fused kernel accepts that, so
  PyTorch runs the math kernel. Quantized matmuls add copies of the largest quantized layer:
  4-bit dequantizes it to the compute dtype; LLM.int8 multiplies the input columns that hold an
  outlier (``|x| >= 6``) in fp16, dequantizing those columns of the weight through an int8 copy
  and two fp32 products (9 bytes per element; forecast for the whole layer, its upper bound).
- **logits**: Transformers 5 computes only the last position's logits during generate.
- **loading** (CPU only): the checkpoint's pages, read through a memory map, count towards the
  process's resident peak while it loads; when the file is larger than the loaded model (a bf16
  or quantized load of an fp32 checkpoint) the load, not the run, sets the peak.
- **runtime context**: the CUDA context per GPU, or the baseline of a worker process with torch
  and Transformers (and bitsandbytes) on the CPU.
- **allocator slack**: caching-allocator rounding and fragmentation. LLM.int8 on a GPU adds more:
  its outlier copies change size from layer to layer with the outlier count, and the caching
  allocator keeps each block it outgrew, about ``H(L) - 1`` more generations of them over ``L``
  layers (``H`` the harmonic number: the expected running maxima of ``L`` random sizes).

Over several GPUs (``device_map="auto"``) each GPU's peak is forecast from what
:func:`device_split` places on it, as Transformers balances the GPUs: its weights, the KV cache
of its layers, the prefill transient where it runs layers, the logits where the output head is,
its own CUDA context and slack. The peak that matters is the largest of them.

:func:`calibrate` fits a per-device-kind correction (overhead and scale) from measured trials and
reports the forecast's own error before and after it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from autotune.candidate import Candidate
from autotune.errors import InputError
from autotune.workload import Workload

#: The parts of a forecast, in the order they are shown.
PARTS = ("weights", "quant_state", "kv_cache", "activations", "logits", "loading", "runtime_context", "allocator_slack")

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

#: What a CUDA context with torch's kernels loaded costs on each GPU (NVML, H100: about 0.5 GiB).
CUDA_CONTEXT_BYTES = 512 * 2**20
#: Resident memory of a worker process that has imported torch and Transformers and built a model.
CPU_BASELINE_BYTES = 430 * 10**6
#: What importing bitsandbytes adds to it on the CPU (its CPU kernels and their dependencies).
BNB_CPU_IMPORT_BYTES = 120 * 10**6
#: Caching-allocator rounding and fragmentation, as a share of what is allocated while running
#: (KV cache, activations, logits) and of the weights.
SLACK_RUNNING = 0.15
SLACK_STATIC = 0.05
SLACK_WEIGHTS = 0.01
#: bitsandbytes 4-bit block size, and the block size of the double-quantized absmax.
BNB_BLOCK = 64
BNB_NESTED_BLOCK = 256
#: Bytes per attention score where scores are materialised: the scores in the compute dtype, the
#: softmax in fp32, and the cast back (``3 x dtype + 4``: 10 B in bf16, measured ~10 on an H100;
#: SDPA's math kernel on Falcon-7B's shapes measured 10.0-10.2 on an H200).
SCORE_EXTRA_BYTES = 4
#: LLM.int8's outlier path per element of the weight columns it dequantizes: the int8 copy of the
#: columns, then ``copy * row scale`` and ``* 1/127`` in fp32 (1 + 4 + 4; on an H200, Llama-8B's
#: batch-1 peak sat 0.39 GiB above bf16's, 9 B x the 47 M elements of the outlier columns seen).
INT8_OUTLIER_BYTES = 9
#: ``get_balanced_memory``'s margin over an even split: 1.25x the largest block or leaf module.
BALANCE_MARGIN = 1.25
#: The share of ``max_memory`` the bitsandbytes quantizers let accelerate fill (``adjust_max_memory``).
BNB_MAX_MEMORY_SHARE = 0.9

_TASK_CLASSES = {
    "text-generation": "AutoModelForCausalLM",
    "text-classification": "AutoModelForSequenceClassification",
    "feature-extraction": "AutoModel",
}


@dataclass(frozen=True)
class KvLayer:
    """One layer's cache: K+V elements per cached token, and the window that caps it (if any)."""

    elements_per_token: int
    window: int | None = None
    cross: bool = False  # a cross-attention cache over the encoder's tokens


@dataclass(frozen=True)
class Unit:
    """A module ``device_map="auto"`` places whole on one GPU, in the order it places them.

    A decoder block (a ``_no_split_modules`` class), an embedding, a norm, the output head, or a
    parameter of the model itself. Its parameters are counted as :class:`ModelShape` counts the
    whole model's, so the same rule sizes both.
    """

    quantizable: tuple[tuple[int, int], ...] = ()
    other_elements: int = 0
    fp32_elements_fp16: int = 0
    fp32_elements_strict: int = 0
    buffer_bytes: int = 0
    #: A repeated block: it holds one layer's KV cache and runs that layer's prefill transient.
    block: bool = False
    #: The output head: the logits are computed where it is.
    head: bool = False
    #: The unit whose weight this one shares (a tied output head): placed with it, not counted twice.
    tied_to: int | None = None


@dataclass(frozen=True)
class ModelShape:
    """What the forecast needs to know of a model, read once from its config and meta model."""

    model_type: str
    architecture: str
    parameters: int
    #: Elements of the layers bitsandbytes would quantize: (weight elements, output rows) each.
    quantizable: tuple[tuple[int, int], ...]
    #: Parameter elements that stay in the load dtype under quantization (embeddings, head, norms, biases, skipped layers).
    other_elements: int
    #: Parameter elements kept in fp32 for fp16 loads (``_keep_in_fp32_modules``), and for fp16 and bf16 (``..._strict``).
    fp32_elements_fp16: int
    fp32_elements_strict: int
    buffer_bytes: int
    #: The dtype the checkpoint was saved in (``dtype``/``torch_dtype`` in the config; fp32 if unsaid).
    checkpoint_dtype: str
    kv_layers: tuple[KvLayer, ...]
    hidden_size: int
    mlp_width: int
    gated_mlp: bool
    attention_heads: int
    vocab_size: int
    is_encoder_decoder: bool
    #: Names of linear layer classes bitsandbytes would leave unquantized (e.g. FalconLinear on Transformers 5).
    unquantized_linear_classes: tuple[str, ...]
    kv_description: str
    notes: tuple[str, ...] = ()
    #: The modules ``device_map="auto"`` places, in order (see :func:`device_split`).
    units: tuple[Unit, ...] = ()
    #: Modules that own parameters or buffers, and the largest element count such a module keeps in
    #: the load dtype: what ``get_balanced_memory`` sizes its per-GPU margin from.
    leaf_modules: int = 0
    largest_plain_leaf: int = 0
    #: Why the default SDPA call cannot use a fused kernel for this model (None: it can).
    sdpa_math_fallback: str | None = None

    @property
    def quantizable_elements(self) -> int:
        return sum(e for e, _ in self.quantizable)

    def kv_bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """KV cache bytes per cached token of one sequence (all layers, no window cap)."""
        return sum(layer.elements_per_token for layer in self.kv_layers if not layer.cross) * DTYPE_BYTES[dtype]

    def weight_bytes(self, dtype: str, quant: str = "none", double_quant: bool = False) -> tuple[int, int]:
        """``(weights, quantization state)`` in bytes for a load in ``dtype`` with ``quant``."""
        return _weight_bytes(self, dtype, quant, double_quant)

    @property
    def blocks(self) -> int:
        """How many repeated blocks (decoder layers) the model has, as ``device_map`` sees them."""
        return sum(1 for unit in self.units if unit.block)


def _weight_bytes(counts: ModelShape | Unit, dtype: str, quant: str, double_quant: bool) -> tuple[int, int]:
    """``(weights, quantization state)`` of a model or of one of its units (same fields)."""
    size = DTYPE_BYTES[dtype]
    base = counts.other_elements * size + counts.buffer_bytes
    if dtype == "float16":
        base += (counts.fp32_elements_fp16 + counts.fp32_elements_strict) * 4
    elif dtype == "bfloat16":
        base += counts.fp32_elements_fp16 * size + counts.fp32_elements_strict * 4
    else:
        base += (counts.fp32_elements_fp16 + counts.fp32_elements_strict) * size
    quantizable = sum(e for e, _ in counts.quantizable)
    if quant == "none":
        return base + quantizable * size, 0
    if quant == "bnb-8bit":
        return base + quantizable, sum(rows * 4 for _, rows in counts.quantizable)
    if quant.startswith("bnb-4bit"):
        weights = base + sum((e + 1) // 2 for e, _ in counts.quantizable)
        return weights, sum(_quant_state_4bit(e, double_quant) for e, _ in counts.quantizable)
    raise InputError(f"cannot forecast quantization {quant!r}")


def _quant_state_4bit(elements: int, double_quant: bool) -> int:
    blocks = math.ceil(elements / BNB_BLOCK)
    code = 16 * 4  # the 4-bit code book (nf4/fp4 values) in fp32
    if not double_quant:
        return blocks * 4 + code
    nested = math.ceil(blocks / BNB_NESTED_BLOCK)
    return blocks + nested * 4 + 256 * 4 + 4 + code  # uint8 absmax, fp32 nested absmax, nested code, offset


@dataclass(frozen=True)
class Forecast:
    """A predicted peak, in bytes, and what it is made of (``parts``, keyed as in :data:`PARTS`).

    ``total_bytes`` covers every device the model is spread over. Under ``device_map="auto"``
    ``device_parts`` holds the parts of each GPU's own peak, in device order, and
    :attr:`per_device_bytes` is the largest of them.
    """

    total_bytes: int
    parts: dict[str, int]
    batch_size: int
    devices: int = 1
    parameters: int = 0
    kv_bytes_per_token: int = 0
    notes: tuple[str, ...] = ()
    device_parts: tuple[dict[str, int], ...] = ()

    @property
    def per_device_bytes(self) -> int:
        if self.devices <= 1:
            return self.total_bytes
        if self.device_parts:
            return max(sum(parts.values()) for parts in self.device_parts)
        context = self.parts.get("runtime_context", 0) // self.devices
        return context + math.ceil((self.total_bytes - context * self.devices) / self.devices)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total_bytes": self.total_bytes, "per_device_bytes": self.per_device_bytes, "devices": self.devices,
            "batch_size": self.batch_size, "parts": dict(self.parts), "parameters": self.parameters,
            "kv_bytes_per_token": self.kv_bytes_per_token, "notes": list(self.notes),
        }
        if self.device_parts:
            out["device_parts"] = [dict(parts) for parts in self.device_parts]
        return out


# -- the model's shape ---------------------------------------------------------------------------

def model_shape(config: dict[str, Any], task: str | None = None) -> ModelShape:
    """Read ``config`` (a ``config.json`` as a dict) into a :class:`ModelShape`.

    Builds the model on the meta device with the installed Transformers; the result is cached.
    Raises :class:`InputError` for a config the installed Transformers cannot build.
    """
    if not isinstance(config, dict) or not config.get("model_type"):
        raise InputError("a model config needs a model_type to be forecast")
    task = task or _infer_task(config)
    key = json.dumps(config, sort_keys=True, default=str)
    return _model_shape(key, task)


def _infer_task(config: dict[str, Any]) -> str:
    from autotune.registry import infer_task

    return infer_task(config)


@lru_cache(maxsize=32)
def _model_shape(config_json: str, task: str) -> ModelShape:
    import torch
    import transformers
    from transformers import CONFIG_MAPPING

    config = json.loads(config_json)
    model_type = config["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise InputError(
            f"model_type {model_type!r} is not known to the installed transformers {transformers.__version__}; "
            "upgrade transformers to forecast it"
        )
    try:
        cfg = CONFIG_MAPPING[model_type].from_dict({k: v for k, v in config.items() if k != "auto_map"})
    except Exception as exc:  # a config Transformers refuses: one line for the user
        raise InputError(f"transformers {transformers.__version__} cannot read this {model_type} config: {_first_line(exc)}") from None
    auto_name = _TASK_CLASSES.get(task, "AutoModel")
    if task == "text-generation" and getattr(cfg, "is_encoder_decoder", False):
        auto_name = "AutoModelForSeq2SeqLM"
    auto = getattr(transformers, auto_name)
    try:
        with torch.device("meta"):
            model = auto.from_config(cfg, dtype=torch.float32)
    except Exception as exc:
        raise InputError(f"cannot build {model_type} for {task} from its config on the meta device: {_first_line(exc)}") from None
    saved = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return _shape_of(model, cfg, task, saved if saved in DTYPE_BYTES else "float32")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _shape_of(model: Any, cfg: Any, task: str, checkpoint_dtype: str) -> ModelShape:
    import transformers
    from torch import nn

    major = _major(transformers.__version__)
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported Transformers has it
        Conv1D = ()  # type: ignore[assignment,misc]

    skip = set(_keys_not_converted(model))
    strict = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    fp16_only = set(getattr(model, "_keep_in_fp32_modules", None) or ()) - strict
    skip |= strict | fp16_only

    quantizable: list[tuple[int, int]] = []
    quantized_names: dict[str, tuple[int, int]] = {}
    unquantized_classes: set[str] = set()
    for name, module in model.named_modules():
        is_conv1d = bool(Conv1D) and isinstance(module, Conv1D)
        plain_linear = type(module) is nn.Linear if major >= 5 else isinstance(module, nn.Linear)
        if not (is_conv1d or plain_linear):
            if isinstance(module, nn.Linear) and _should_convert(name, skip):
                unquantized_classes.add(type(module).__name__)
            continue
        if not _should_convert(name, skip):
            continue
        weight = module.weight
        rows = weight.shape[1] if is_conv1d else weight.shape[0]
        quantizable.append((weight.numel(), int(rows)))
        quantized_names[f"{name}.weight" if name else "weight"] = quantizable[-1]

    parameters = other = fp32_fp16 = fp32_strict = 0
    for name, param in model.named_parameters():
        n = param.numel()
        parameters += n
        if name in quantized_names:
            continue
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        if strict and _matches(module_name, strict):
            fp32_strict += n
        elif fp16_only and _matches(module_name, fp16_only):
            fp32_fp16 += n
        else:
            other += n
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())

    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    hidden = int(_first_attr(text, "hidden_size", "n_embd", "d_model", default=0) or 0)
    heads = int(_first_attr(text, "num_attention_heads", "n_head", "num_heads", "decoder_attention_heads", default=1) or 1)
    width = _mlp_width(text, hidden)
    gated = any(n.endswith(("gate_proj", "gate_up_proj", "w3", "wi_0", "gate")) for n, _ in model.named_modules())
    kv_layers, kv_text, notes = _kv_layers(text, cfg, task)
    if unquantized_classes:
        notes = notes + (
            f"bitsandbytes on transformers {transformers.__version__} leaves {', '.join(sorted(unquantized_classes))} layers "
            "unquantized (it replaces plain nn.Linear only): forecast in the load dtype",
        )
    vocab = int(_first_attr(text, "vocab_size", default=0) or 0)
    units, leaf_modules, largest_plain_leaf = _placement_units(model, quantized_names, strict, fp16_only)
    return ModelShape(
        model_type=str(cfg.model_type), architecture=type(model).__name__, parameters=parameters,
        quantizable=tuple(quantizable), other_elements=other, fp32_elements_fp16=fp32_fp16,
        fp32_elements_strict=fp32_strict, buffer_bytes=buffers, checkpoint_dtype=checkpoint_dtype,
        kv_layers=kv_layers, hidden_size=hidden,
        mlp_width=width, gated_mlp=gated, attention_heads=heads, vocab_size=vocab,
        is_encoder_decoder=bool(getattr(cfg, "is_encoder_decoder", False)),
        unquantized_linear_classes=tuple(sorted(unquantized_classes)), kv_description=kv_text, notes=notes,
        units=units, leaf_modules=leaf_modules, largest_plain_leaf=largest_plain_leaf,
        sdpa_math_fallback=_sdpa_math_fallback(text, heads),
    )


def _sdpa_math_fallback(text: Any, heads: int) -> str | None:
    """Why SDPA's fused kernels refuse this model's attention call, if they do.

    Falcon's old decoder with ``multi_query`` hands ``scaled_dot_product_attention`` one K/V head
    for all its query heads, without ``enable_gqa``; the flash, memory-efficient and cuDNN kernels
    all require as many K/V heads as query heads, so PyTorch falls back to its math kernel, which
    materialises the scores (checked on an H200 with torch 2.11: only the math kernel accepts the
    call, with or without a mask). Falcon-40B's new decoder broadcasts K/V to every head first.
    """
    model_type = str(getattr(text, "model_type", ""))
    if model_type in ("falcon", "RefinedWeb", "RefinedWebModel") and heads > 1 \
            and getattr(text, "multi_query", True) and not getattr(text, "new_decoder_architecture", False):
        return (f"SDPA gets 1 K/V head for {heads} query heads (Falcon's multi-query attention, no enable_gqa): "
                "no fused kernel takes that, so it runs its math kernel and materialises the scores")
    return None


def _placement_units(
    model: Any, quantized: dict[str, tuple[int, int]], strict: set[str], fp16_only: set[str],
) -> tuple[tuple[Unit, ...], int, int]:
    """The modules ``device_map="auto"`` places whole, in its order; leaf modules and the largest.

    Accelerate walks the model's own parameters, then its children, splitting any child that is
    neither a leaf nor a ``_no_split_modules`` class into its parameters and children in turn: the
    units are what that walk cannot split further. Returns the units, how many modules own
    parameters or buffers, and the most elements one such module keeps in the load dtype.
    """
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    names: list[str] = []
    blocks: set[str] = set()

    def visit(prefix: str, module: Any) -> None:
        names.extend(prefix + name for name, _ in module.named_parameters(recurse=False))
        for name, child in module.named_children():
            full = prefix + name
            if type(child).__name__ in no_split:
                blocks.add(full)
                names.append(full)
            elif next(child.children(), None) is None:
                names.append(full)
            else:
                visit(full + ".", child)
        names.extend(prefix + name for name, _ in module.named_buffers(recurse=False))

    visit("", model)
    index = {name: i for i, name in enumerate(names)}

    def unit_of(name: str) -> int:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            found = index.get(".".join(parts[:k]))
            if found is not None:
                return found
        return 0

    quantizable: list[list[tuple[int, int]]] = [[] for _ in names]
    plain = [Counter[str]() for _ in names]  # elements in the load dtype ("other"), kept in fp32 ("fp16", "strict")
    buffers = [0] * len(names)
    leaves: dict[str, int] = {}
    owners: dict[int, int] = {}
    tied: dict[int, int] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        unit = unit_of(name)
        owner = owners.setdefault(id(param), unit)
        if owner != unit:
            tied.setdefault(unit, owner)
            continue
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        if name in quantized:
            quantizable[unit].append(quantized[name])
            leaves.setdefault(module_name, 0)
            continue
        leaves[module_name] = leaves.get(module_name, 0) + param.numel()
        if strict and _matches(module_name, strict):
            plain[unit]["strict"] += param.numel()
        elif fp16_only and _matches(module_name, fp16_only):
            plain[unit]["fp16"] += param.numel()
        else:
            plain[unit]["other"] += param.numel()
    for name, buffer in model.named_buffers():
        buffers[unit_of(name)] += buffer.numel() * buffer.element_size()
        leaves.setdefault(name.rsplit(".", 1)[0] if "." in name else "", 0)
    head_module = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = next((n for n, m in model.named_modules() if head_module is not None and m is head_module), None)
    head = unit_of(head_name) if head_name is not None else None
    units = tuple(
        Unit(quantizable=tuple(quantizable[i]), other_elements=plain[i]["other"], fp32_elements_fp16=plain[i]["fp16"],
             fp32_elements_strict=plain[i]["strict"], buffer_bytes=buffers[i], block=name in blocks, head=i == head,
             tied_to=tied.get(i))
        for i, name in enumerate(names)
    )
    return units, len(leaves), max(leaves.values(), default=0)


def _keys_not_converted(model: Any) -> list[str]:
    """What Transformers' bitsandbytes integration keeps in high precision (tied weights, the output head)."""
    try:
        from transformers.quantizers.base import get_keys_to_not_convert
    except ImportError:
        try:
            from transformers.integrations import get_keys_to_not_convert  # type: ignore[no-redef]
        except ImportError:
            get_keys_to_not_convert = None  # type: ignore[assignment]
    if get_keys_to_not_convert is not None:
        try:
            return list(get_keys_to_not_convert(model))
        except Exception:  # noqa: BLE001 - fall back to the documented default below
            pass
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if head is not None and m is head]


def _should_convert(name: str, skip: set[str]) -> bool:
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:
        return not _matches(name, skip)
    return bool(should_convert_module(name, list(skip) or None))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or name.endswith("." + p) or f".{p}." in f".{name}." for p in patterns)


def _first_attr(cfg: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def _mlp_width(cfg: Any, hidden: int) -> int:
    experts = getattr(cfg, "num_experts_per_tok", None)
    moe = getattr(cfg, "moe_intermediate_size", None)
    if experts and moe:
        shared = getattr(cfg, "n_shared_experts", 0) or 0
        return int(moe) * (int(experts) + int(shared))
    width = _first_attr(cfg, "intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim", "d_ff", "decoder_ffn_dim")
    return int(width) if width else 4 * hidden


def _kv_layers(text: Any, cfg: Any, task: str) -> tuple[tuple[KvLayer, ...], str, tuple[str, ...]]:
    """Per-layer KV cache sizes, a one-line description, and notes."""
    if task != "text-generation":
        return (), "no KV cache (not text generation)", ()
    notes: list[str] = []
    model_type = str(getattr(text, "model_type", ""))
    hidden = int(_first_attr(text, "hidden_size", "n_embd", "d_model", default=0) or 0)
    heads = int(_first_attr(text, "num_attention_heads", "n_head", "num_heads", "decoder_attention_heads", default=1) or 1)
    head_dim = int(_first_attr(text, "head_dim", "d_kv", default=0) or 0) or (hidden // heads if heads else 0)

    if getattr(cfg, "is_encoder_decoder", False):
        layers = int(_first_attr(text, "num_decoder_layers", "decoder_layers", "num_layers", default=0) or 0)
        kv_heads = int(_first_attr(text, "num_key_value_heads", default=heads) or heads)
        per = 2 * kv_heads * head_dim
        out = tuple(KvLayer(per) for _ in range(layers)) + tuple(KvLayer(per, cross=True) for _ in range(layers))
        return out, f"{kv_heads} KV heads x {head_dim} x {layers} decoder layers (+ cross-attention over the prompt)", ()

    n_layers = int(_first_attr(text, "num_hidden_layers", "n_layer", "num_layers", default=0) or 0)
    if getattr(text, "kv_lora_rank", None):
        latent = int(text.kv_lora_rank) + int(getattr(text, "qk_rope_head_dim", 0) or 0)
        return tuple(KvLayer(latent) for _ in range(n_layers)), f"MLA latent of {latent} per token x {n_layers} layers", ()

    if model_type in ("falcon", "RefinedWeb", "RefinedWebModel"):
        if getattr(text, "new_decoder_architecture", False):
            kv_heads = heads
            why = f"all {heads} heads (new decoder architecture: K/V are broadcast to every head before caching)"
        elif getattr(text, "multi_query", True):
            kv_heads = 1
            reported = getattr(text, "num_kv_heads", None)
            why = "1 KV head (multi-query" + (f"; the config's num_kv_heads={reported} is not what is cached)" if reported and reported != 1 else ")")
        else:
            kv_heads = int(getattr(text, "num_kv_heads", heads) or heads)
            why = f"{kv_heads} KV heads"
    elif getattr(text, "multi_query", False):
        kv_heads, why = 1, "1 KV head (multi-query)"
    else:
        kv_heads = int(_first_attr(text, "num_key_value_heads", default=heads) or heads)
        why = f"{kv_heads} KV heads" + (f" (grouped-query, {heads} query heads)" if kv_heads != heads else "")

    per = 2 * kv_heads * head_dim
    layer_types = getattr(text, "layer_types", None)
    if not layer_types:
        window = getattr(text, "sliding_window", None)
        chunk = getattr(text, "attention_chunk_size", None)
        if window and getattr(text, "use_sliding_window", True) is not False:
            layer_types = ["sliding_attention"] * n_layers
        elif chunk:
            layer_types = ["chunked_attention"] * n_layers
        else:
            layer_types = ["full_attention"] * n_layers
    out: list[KvLayer] = []
    stateful: set[str] = set()
    for kind in layer_types[:n_layers] if n_layers else layer_types:
        if kind == "full_attention":
            out.append(KvLayer(per))
        elif kind in ("sliding_attention", "hybrid_sliding", "reference_sliding_attention"):
            out.append(KvLayer(per, window=int(getattr(text, "sliding_window", 0) or 0) or None))
        elif kind == "chunked_attention":
            out.append(KvLayer(per, window=int(getattr(text, "attention_chunk_size", 0) or 0) or None))
        else:
            stateful.add(str(kind))
    windows = sorted({layer.window for layer in out if layer.window})
    text_out = f"{why} x {head_dim} dims x {len(out)} layers"
    if windows:
        sliding = sum(1 for layer in out if layer.window)
        text_out += f"; {sliding} of them capped at a window of {', '.join(map(str, windows))} tokens"
    if stateful:
        notes.append(f"layers of type {', '.join(sorted(stateful))} keep a recurrent state instead of a KV cache; not forecast")
    return tuple(out), text_out, tuple(notes)


def _major(version: str | None) -> int:
    try:
        return int(str(version).split(".")[0])
    except (TypeError, ValueError):
        return 5


# -- the forecast --------------------------------------------------------------------------------

def forecast(
    config: dict[str, Any],
    candidate: Candidate,
    workload: Workload,
    batch_size: int,
    *,
    task: str | None = None,
    devices: int | None = None,
    max_memory_bytes: int | None = None,
    transformers_version: str | None = None,
) -> Forecast:
    """The predicted peak memory of ``candidate`` running ``workload`` at ``batch_size``.

    ``config`` is the model's ``config.json`` as a dict; ``task`` defaults to the workload's.
    ``devices`` is how many GPUs a ``multi-gpu`` placement spreads over (default 2), and
    ``max_memory_bytes`` the per-GPU ``max_memory`` it is loaded with (None: no cap).
    ``transformers_version`` is the version the candidate runs with (default: the installed one):
    it decides how ``device_map="auto"`` balances the GPUs and whether every logit is computed.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    task = task or workload.task
    shape = model_shape(config, task)
    return forecast_shape(shape, candidate, workload, batch_size, task=task, devices=devices,
                          max_memory_bytes=max_memory_bytes, transformers_version=transformers_version)


@dataclass(frozen=True)
class _Running:
    """What running allocates besides the weights, before it is placed on devices."""

    kv: int
    #: The prefill transient of one layer, the attention scores where they are materialised, and
    #: the copies of the largest quantized layer a quantized matmul makes.
    activations: int
    #: LLM.int8 on a GPU: the bytes of one generation of its outlier copies that the caching
    #: allocator keeps cached per new running maximum (0 otherwise).
    int8_outlier_copies: int
    logits: int


def forecast_shape(
    shape: ModelShape, candidate: Candidate, workload: Workload, batch_size: int, *, task: str, devices: int | None = None,
    max_memory_bytes: int | None = None, transformers_version: str | None = None,
) -> Forecast:
    """:func:`forecast` for a :class:`ModelShape` already read (no torch needed)."""
    c = candidate
    if c.runtime != "pytorch":
        raise InputError(f"no memory forecast for runtime {c.runtime}: only PyTorch loads are forecast")
    version = _version_tuple(transformers_version) if transformers_version else _installed_transformers()
    notes = list(shape.notes) if c.quant != "none" else [n for n in shape.notes if "bitsandbytes" not in n]
    running = _running(shape, c, workload, batch_size, task, version, notes)

    n_devices = (devices or 2) if c.placement == "multi-gpu" else 1
    device_parts: tuple[dict[str, int], ...] = ()
    if n_devices > 1 and shape.units:
        split = device_split(shape, c, n_devices, max_memory_bytes, version)
        device_parts = tuple(_device_parts(shape, c, running, split, d) for d in range(n_devices))
        parts = {key: sum(p[key] for p in device_parts) for key in PARTS}
    else:
        weights, quant_state = shape.weight_bytes(c.dtype, c.quant, c.double_quant)
        parts = _parts(c, shape, weights, quant_state, running, kv_share=1.0, blocks=shape.blocks, runs_layers=True,
                       head=True, contexts=n_devices)
    return Forecast(
        total_bytes=sum(parts.values()), parts=parts, batch_size=batch_size, devices=n_devices, parameters=shape.parameters,
        kv_bytes_per_token=shape.kv_bytes_per_token(c.dtype) if task == "text-generation" else 0, notes=tuple(notes),
        device_parts=device_parts,
    )


def _running(shape: ModelShape, c: Candidate, workload: Workload, b: int, task: str, version: tuple[int, int],
             notes: list[str]) -> _Running:
    act = DTYPE_BYTES[c.dtype]
    prompt, new = workload.prompt_tokens, workload.new_tokens
    kv = 0
    if task == "text-generation" and shape.kv_layers:
        # the last generated token is never fed back, so it is never cached; a static cache is
        # allocated up front for the same length (max_cache_len = max_length - 1 on Transformers 5)
        tokens = prompt + max(new, 1) - 1
        for layer in shape.kv_layers:
            cached = prompt if layer.cross else tokens
            if layer.window:
                cached = min(cached, layer.window)
            kv += layer.elements_per_token * cached * b * act

    mlp = (4 if shape.gated_mlp else 2) * shape.mlp_width
    per_token = (mlp + 4 * shape.hidden_size) * act
    activations = b * prompt * per_token
    fallback = shape.sdpa_math_fallback if c.attn == "sdpa" and c.sdpa_kernel is None else None
    if fallback:
        notes.append(fallback)
    if c.attn == "eager" or (c.attn == "sdpa" and c.sdpa_kernel == "math") or fallback:
        activations += b * shape.attention_heads * prompt * prompt * (3 * act + SCORE_EXTRA_BYTES)

    largest = max((e for e, _ in shape.quantizable), default=0)
    outlier_copies = 0
    if c.is_4bit and largest:
        # the largest layer is dequantized to the compute dtype for the prefill matmul
        activations += largest * DTYPE_BYTES[c.effective_compute_dtype]
    elif c.quant == "bnb-8bit" and largest:
        # LLM.int8 multiplies the input columns that hold an outlier in fp16: it copies those
        # columns of the int8 weight and dequantizes them in two fp32 steps, up to the whole layer
        activations += largest * INT8_OUTLIER_BYTES
        if c.on_gpu:
            outlier_copies = largest * INT8_OUTLIER_BYTES

    if task == "text-generation":
        logits = b * shape.vocab_size * (act + 2 * 4)
        if version < (4, 45):
            logits += b * prompt * shape.vocab_size * act
    elif task == "feature-extraction":
        logits = b * prompt * shape.hidden_size * act
    else:
        logits = b * 64 * 4
    return _Running(kv=kv, activations=activations, int8_outlier_copies=outlier_copies, logits=logits)


def _parts(c: Candidate, shape: ModelShape, weights: int, quant_state: int, running: _Running, *, kv_share: float,
           blocks: int, runs_layers: bool, head: bool, contexts: int) -> dict[str, int]:
    """The parts of one device's peak, or of the whole model's on one device.

    ``kv_share`` is the device's share of the KV cache, ``blocks`` how many repeated blocks it
    runs, ``runs_layers`` whether it runs any layer at all, ``head`` whether the logits are there.
    """
    kv = int(running.kv * kv_share)
    activations = running.activations if runs_layers else 0
    logits = running.logits if head else 0
    run = kv + activations + logits
    loading = 0
    if c.on_gpu:
        context = CUDA_CONTEXT_BYTES * contexts
    else:
        context = CPU_BASELINE_BYTES + (BNB_CPU_IMPORT_BYTES if c.quant != "none" else 0)
        checkpoint = shape.parameters * DTYPE_BYTES[shape.checkpoint_dtype]
        loading = max(0, checkpoint - (weights + quant_state + run))
    slack = (SLACK_STATIC if c.static_cache else SLACK_RUNNING) * run + SLACK_WEIGHTS * (weights + quant_state)
    if running.int8_outlier_copies and runs_layers:
        # the outlier count, so the size of those copies, changes from layer to layer: the caching
        # allocator serves each new largest request from a new block and keeps the older ones cached,
        # so over L layers it holds about H(L) = 1 + 1/2 + ... + 1/L generations (the expected
        # number of running maxima of L sizes), one of them the live copies counted above
        slack += (_harmonic(max(blocks, 1)) - 1) * running.int8_outlier_copies
    return {
        "weights": int(weights), "quant_state": int(quant_state), "kv_cache": kv, "activations": int(activations),
        "logits": int(logits), "loading": int(loading), "runtime_context": int(context), "allocator_slack": int(slack),
    }


def _harmonic(n: int) -> float:
    return sum(1 / k for k in range(1, n + 1))


def _device_parts(shape: ModelShape, c: Candidate, running: _Running, split: list[list[int]], device: int) -> dict[str, int]:
    """The parts of one GPU's peak under ``device_map="auto"``: its units, its layers' share of the run."""
    units = [shape.units[i] for i in split[device]]
    weights = quant_state = 0
    for unit in units:
        w, q = _weight_bytes(unit, c.dtype, c.quant, c.double_quant)
        weights += w
        quant_state += q
    blocks = sum(1 for u in units if u.block)
    if shape.blocks:
        share, runs_layers = blocks / shape.blocks, blocks > 0
    else:  # no repeated block to follow: the KV cache goes where the weights are
        total = sum(_weight_bytes(u, c.dtype, c.quant, c.double_quant)[0] for u in shape.units) or 1
        share, runs_layers = weights / total, bool(units)
    if any(u.head for u in shape.units):
        head = any(u.head for u in units)
    else:
        head = device == len(split) - 1
    return _parts(c, shape, weights, quant_state, running, kv_share=share, blocks=blocks, runs_layers=runs_layers,
                  head=head, contexts=1)


def device_split(shape: ModelShape, candidate: Candidate, devices: int, max_memory_bytes: int | None = None,
                 version: tuple[int, int] | None = None) -> list[list[int]]:
    """Which of ``shape.units`` each of ``devices`` GPUs gets under ``device_map="auto"``.

    Transformers balances the GPUs (``get_balanced_memory``): every GPU but the last may take the
    model's size over ``devices`` plus a margin of 1.25x the largest block or leaf module (the
    mean leaf module before Transformers 5.18), capped by ``max_memory``; the last may take its
    whole ``max_memory``. The bitsandbytes quantizers hold 10% of each back. Accelerate then fills
    the GPUs in order (``infer_auto_device_map``), keeping room on the first for the largest unit
    still to place, and puts a tied output head with its embedding. Sizes are what accelerate
    counts: quantized weights at their stored width, the rest in the load dtype, no quantization
    state. What would not fit even the last GPU is left on it (accelerate would offload it).
    """
    version = version or _installed_transformers()
    c = candidate
    sizes = [0 if u.tied_to is not None else _weight_bytes(u, c.dtype, c.quant, False)[0] for u in shape.units]
    total = sum(sizes)
    stored = 1.0 if c.quant == "bnb-8bit" else 0.5 if c.is_4bit else DTYPE_BYTES[c.dtype]
    largest_leaf = max(max((e for e, _ in shape.quantizable), default=0) * stored,
                       shape.largest_plain_leaf * DTYPE_BYTES[c.dtype])
    leaf = largest_leaf if version >= (5, 18) else total / max(shape.leaf_modules, 1)
    block = max((size for size, u in zip(sizes, shape.units) if u.block), default=0)
    per_gpu = total // devices + int(BALANCE_MARGIN * max(block, leaf))
    cap = float(max_memory_bytes) if max_memory_bytes else math.inf
    budgets = [min(per_gpu, cap)] * (devices - 1) + [cap]
    if c.quant != "none":
        budgets = [limit * BNB_MAX_MEMORY_SHARE for limit in budgets]

    placed: list[list[int]] = [[] for _ in range(devices)]
    where: dict[int, int] = {}
    used = [0] * devices
    device = 0
    still_to_place = [0] * len(sizes)  # the largest unit after each one
    for k in range(len(sizes) - 2, -1, -1):
        still_to_place[k] = max(sizes[k + 1], still_to_place[k + 1])
    for k, unit in enumerate(shape.units):
        if unit.tied_to is not None and unit.tied_to in where:
            where[k] = where[unit.tied_to]
            placed[where[k]].append(k)
            continue
        while device < devices - 1 and used[device] + sizes[k] > budgets[device] - (still_to_place[k] if device == 0 else 0):
            device += 1
        where[k] = device
        placed[device].append(k)
        used[device] += sizes[k]
    return placed


def _version_tuple(version: str) -> tuple[int, int]:
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 5, 0


@lru_cache(maxsize=1)
def _installed_transformers() -> tuple[int, int]:
    from importlib import metadata

    try:
        return _version_tuple(metadata.version("transformers"))
    except metadata.PackageNotFoundError:
        return 5, 0


def largest_batch(
    config: dict[str, Any],
    candidate: Candidate,
    workload: Workload,
    limit_bytes: int,
    *,
    task: str | None = None,
    devices: int | None = None,
    cap: int = 1 << 16,
    calibration: Calibration | None = None,
    device_kind: str | None = None,
) -> int:
    """The largest batch whose forecast peak (per device) stays within ``limit_bytes``; 0 if none.

    A ``multi-gpu`` candidate is spread with ``limit_bytes`` as each GPU's ``max_memory``, as the
    trial worker loads it. The search stops at ``cap``. With a ``calibration``, the calibrated peak
    of ``device_kind`` is used.
    """
    task = task or workload.task
    shape = model_shape(config, task)
    max_memory = limit_bytes if candidate.placement == "multi-gpu" else None

    def fits(batch: int) -> bool:
        f = forecast_shape(shape, candidate, workload, batch, task=task, devices=devices, max_memory_bytes=max_memory)
        peak = f.per_device_bytes
        if calibration is not None:
            peak = calibration.apply(peak, device_kind or "")
        return peak <= limit_bytes

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= cap and fits(high):
        low, high = high, high * 2
    if high > cap:
        return cap if fits(cap) else _bisect(fits, low, cap)
    return _bisect(fits, low, high)


def _bisect(fits: Any, low: int, high: int) -> int:
    """Largest n in [low, high) with fits(n), given fits(low) and not fits(high)."""
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


# -- calibration ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationPoint:
    """One measured trial: the device kind it ran on, the raw forecast and the measured peak."""

    device_kind: str
    forecast_bytes: int
    measured_bytes: int
    label: str = ""


@dataclass(frozen=True)
class Fit:
    """``calibrated = overhead + scale x forecast`` for one device kind, from ``points`` trials."""

    overhead: float = 0.0
    scale: float = 1.0
    points: int = 0

    def apply(self, forecast_bytes: float) -> int:
        return int(round(self.overhead + self.scale * forecast_bytes))


@dataclass(frozen=True)
class ForecastError:
    """Relative error ``|forecast − measured| / measured`` over ``n`` trials."""

    n: int
    median: float | None
    worst: float | None

    def describe(self) -> str:
        if not self.n or self.median is None or self.worst is None:
            return "no trials"
        return f"median {self.median:.1%}, worst {self.worst:.1%} over {self.n} trials"

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "median": self.median, "worst": self.worst}


@dataclass(frozen=True)
class Calibration:
    """Per-device-kind corrections of the forecast, and its error before and after them.

    ``after`` is in-sample; ``cross_validated`` refits without each trial in turn (leave-one-out),
    the honest figure for a new trial, when there are at least three.
    """

    fits: dict[str, Fit] = field(default_factory=dict)
    before: ForecastError = ForecastError(0, None, None)
    after: ForecastError = ForecastError(0, None, None)
    cross_validated: ForecastError = ForecastError(0, None, None)

    def apply(self, forecast_bytes: int | Forecast, device_kind: str) -> int:
        raw = forecast_bytes.total_bytes if isinstance(forecast_bytes, Forecast) else forecast_bytes
        fit = self.fits.get(device_kind)
        return int(raw) if fit is None else fit.apply(raw)

    @property
    def points(self) -> int:
        return sum(f.points for f in self.fits.values())

    def describe(self) -> str:
        if not self.fits:
            return "uncalibrated (no measured trials here)"
        kinds = "; ".join(f"{kind}: {fit.overhead / 2**30:+.2f} GiB, x{fit.scale:.3f} ({fit.points} trials)" for kind, fit in self.fits.items())
        text = f"calibrated from {self.points} measured trials ({kinds}); error before {self.before.describe()}, after {self.after.describe()}"
        if self.cross_validated.n:
            text += f", leave-one-out {self.cross_validated.describe()}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": {k: {"overhead_bytes": f.overhead, "scale": f.scale, "points": f.points} for k, f in self.fits.items()},
            "before": self.before.to_dict(), "after": self.after.to_dict(), "cross_validated": self.cross_validated.to_dict(),
        }


#: The scale a fit may take: a forecast off by more than this is a bug, not something to calibrate away.
SCALE_RANGE = (0.5, 2.0)
#: Two forecasts closer than this (relatively) say nothing about the scale: measurement noise
#: between them would set it.
MIN_SPREAD = 0.15


def fit_points(points: Iterable[CalibrationPoint], *, scale: bool = True) -> Fit:
    """A robust linear fit of measured against forecast peaks (Theil–Sen slope, median intercept).

    One point, points whose forecasts barely differ, or ``scale=False`` fit the overhead alone
    (scale 1).
    """
    pts = [(float(p.forecast_bytes), float(p.measured_bytes)) for p in points]
    if not pts:
        return Fit()
    slopes = [
        (m2 - m1) / (f2 - f1)
        for i, (f1, m1) in enumerate(pts) for f2, m2 in pts[i + 1:]
        if scale and abs(f2 - f1) > MIN_SPREAD * max(f1, f2)
    ]
    factor = statistics.median(slopes) if slopes else 1.0
    factor = min(max(factor, SCALE_RANGE[0]), SCALE_RANGE[1])
    overhead = statistics.median(m - factor * f for f, m in pts)
    return Fit(overhead=overhead, scale=factor, points=len(pts))


def fits_scale(device_kind: str) -> bool:
    """Whether a calibration of ``device_kind`` fits a scale as well as an overhead.

    On a GPU the forecast's terms are bytes the allocator hands out, and what it misses is a
    per-process constant (CUDA context, library workspaces, allocator rounding): an overhead. A
    scale fitted there mostly learns how the candidates in the store happen to differ (an int8
    point forecast a little high, a 4-bit one a little low) and extrapolates that to sizes it
    has not seen: on an H200 store, leave-one-out errors rose from 4.5% to 15% worst with it. On
    the CPU the resident set grows with the model (mapped checkpoint pages, allocator arenas), so
    a scale is fitted there.
    """
    return device_kind == "cpu"


def forecast_error(pairs: Iterable[tuple[float, float]]) -> ForecastError:
    """The error of ``(forecast, measured)`` pairs."""
    errors = [abs(f - m) / m for f, m in pairs if m]
    if not errors:
        return ForecastError(0, None, None)
    return ForecastError(len(errors), statistics.median(errors), max(errors))


def calibrate(pairs: Iterable[CalibrationPoint | tuple[str, int, int]]) -> Calibration:
    """Fit a correction per device kind from measured ``ok`` trials of one environment.

    Each pair is a :class:`CalibrationPoint` or a ``(device_kind, forecast_bytes, measured_bytes)``
    tuple; points without a positive measured peak are ignored.
    """
    points = [p if isinstance(p, CalibrationPoint) else CalibrationPoint(*p) for p in pairs]
    points = [p for p in points if p.measured_bytes and p.measured_bytes > 0 and p.forecast_bytes > 0]
    kinds: dict[str, list[CalibrationPoint]] = {}
    for p in points:
        kinds.setdefault(p.device_kind, []).append(p)
    fits = {kind: fit_points(pts, scale=fits_scale(kind)) for kind, pts in kinds.items()}
    before = forecast_error((p.forecast_bytes, p.measured_bytes) for p in points)
    after = forecast_error((fits[p.device_kind].apply(p.forecast_bytes), p.measured_bytes) for p in points)
    loo = []
    if len(points) >= 3:
        loo = [(predicted, p.measured_bytes) for predicted, p in zip(leave_one_out(points), points)]
    return Calibration(fits=fits, before=before, after=after, cross_validated=forecast_error(loo))


def leave_one_out(points: list[CalibrationPoint]) -> list[int]:
    """For each point, its forecast calibrated by a fit of the other points of its device kind."""
    out = []
    for i, p in enumerate(points):
        rest = [q for j, q in enumerate(points) if j != i and q.device_kind == p.device_kind]
        out.append((fit_points(rest, scale=fits_scale(p.device_kind)) if rest else Fit()).apply(p.forecast_bytes))
    return out


def with_calibration(forecast_value: Forecast, calibration: Calibration | None, device_kind: str) -> Forecast:
    """``forecast_value`` with its total replaced by the calibrated one (the difference goes to slack)."""
    if calibration is None or device_kind not in calibration.fits:
        return forecast_value
    total = calibration.apply(forecast_value.total_bytes, device_kind)
    parts = dict(forecast_value.parts)
    parts["allocator_slack"] += total - forecast_value.total_bytes
    return replace(forecast_value, total_bytes=total, parts=parts)


def device_kind(candidate: Candidate, gpu_names: Iterable[str]) -> str:
    """The kind of device a candidate's peak is measured on: ``cpu`` or the GPU's name."""
    if not candidate.on_gpu:
        return "cpu"
    names = sorted(set(gpu_names))
    return " + ".join(names) if names else "gpu"
