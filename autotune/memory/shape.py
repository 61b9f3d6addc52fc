"""The model's shape: what the memory model needs to know of a model, read from its config.

Nothing is downloaded and no weight is allocated: the model is built on the meta device
(``with torch.device("meta")``, which keeps tied weights tied — ``accelerate.init_empty_weights``
does not on Transformers 5) to count its parameters, find which layers bitsandbytes would
quantize (:mod:`autotune.memory.bnb`), and list the modules ``device_map="auto"`` places whole.
The rest is read from the config:

- **weights** by dtype, or by quantized layout: bitsandbytes replaces only plain ``nn.Linear``
  (and GPT-2's ``Conv1D``) layers and keeps embeddings, the output head, norms, biases and any
  other layer class in the load dtype. 4-bit stores half a byte per weight plus its
  **quantization state** (an fp32 absmax per 64-weight block; with double quantization a byte per
  block plus an fp32 absmax per 256 blocks); 8-bit stores int8 plus one fp32 scale per output row.
- **KV cache** by architecture: K and V for ``num_key_value_heads`` heads of ``head_dim`` (from the
  config where set) per layer and cached token. Falcon-7B (``multi_query``, old decoder) caches one
  head although its config reports 71; Falcon-40B (``new_decoder_architecture``) broadcasts K/V to
  every head before caching; DeepSeek's MLA caches its compressed latent. Sliding-window layers
  cap at the window.

:func:`model_shape` imports torch and Transformers (inside the call); :func:`sdpa_math_fallback`
reads a config alone and imports neither.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from autotune.errors import InputError
from autotune.memory.bnb import converts_class, should_convert

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

#: Transformers' fine-grained FP8 weight block (``weight_block_size=(128, 128)``, its default).
FP8_BLOCK = 128
#: bitsandbytes 4-bit block size, and the block size of the double-quantized absmax.
BNB_BLOCK = 64
BNB_NESTED_BLOCK = 256

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
    #: Dimensions of one attention head, and the K/V elements one layer adds per token and query
    #: head once K/V are repeated to every query head (``2 x head_dim`` where Transformers'
    #: ``repeat_kv`` materialises that for grouped-query attention; 0 where nothing is repeated).
    head_dim: int = 0
    repeated_kv_per_head: int = 0

    @property
    def quantizable_elements(self) -> int:
        return sum(e for e, _ in self.quantizable)

    def kv_bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """KV cache bytes per cached token of one sequence (all layers, no window cap)."""
        return sum(layer.elements_per_token for layer in self.kv_layers if not layer.cross) * DTYPE_BYTES[dtype]

    def weight_bytes(self, dtype: str, quant: str = "none", double_quant: bool = False, group_size: int = 128) -> tuple[int, int]:
        """``(weights, quantization state)`` in bytes for a load in ``dtype`` with ``quant``."""
        return weight_bytes(self, dtype, quant, double_quant, group_size)

    @property
    def blocks(self) -> int:
        """How many repeated blocks (decoder layers) the model has, as ``device_map`` sees them."""
        return sum(1 for unit in self.units if unit.block)


def weight_bytes(counts: ModelShape | Unit, dtype: str, quant: str, double_quant: bool, group_size: int = 128) -> tuple[int, int]:
    """``(weights, quantization state)`` of a model or of one of its units (same fields).

    torchao and fine-grained FP8 are counted on the layers bitsandbytes would convert (plain
    ``nn.Linear``, not the output head or tied weights): what Transformers' ``TorchAoConfig``
    converts by default on Llama-style models (the embeddings and ``lm_head`` stay, as read back
    from SmolLM2 and tiny Llamas on transformers 5.24 and torchao 0.18). The layouts, read from
    torchao 0.18's tensors: int8 and float8 weight-only and float8 per-row keep a byte per weight
    and an fp32 scale per output row (``Int8Tensor``/``Float8Tensor``: ``qdata``, ``scale``);
    int4 weight-only (``Int4TilePackedTo4dTensor``) half a byte per weight and a bf16 scale and
    zero point per ``group_size`` weights; Transformers' fine-grained FP8 a byte per weight and an
    fp32 scale per 128 x 128 block.
    """
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
    if quant in ("torchao-int8wo", "torchao-float8wo", "torchao-float8dq"):
        return base + quantizable, sum(rows * 4 for _, rows in counts.quantizable)
    if quant == "torchao-int4wo":
        weights = base + sum((e + 1) // 2 for e, _ in counts.quantizable)
        return weights, sum(math.ceil(e / group_size) * 2 * 2 for e, _ in counts.quantizable)
    if quant == "fp8-fine":
        blocks = sum(math.ceil(rows / FP8_BLOCK) * math.ceil(e / max(rows, 1) / FP8_BLOCK) for e, rows in counts.quantizable)
        return base + quantizable, blocks * 4
    raise InputError(f"cannot forecast quantization {quant!r}")


def _quant_state_4bit(elements: int, double_quant: bool) -> int:
    blocks = math.ceil(elements / BNB_BLOCK)
    code = 16 * 4  # the 4-bit code book (nf4/fp4 values) in fp32
    if not double_quant:
        return blocks * 4 + code
    nested = math.ceil(blocks / BNB_NESTED_BLOCK)
    return blocks + nested * 4 + 256 * 4 + 4 + code  # uint8 absmax, fp32 nested absmax, nested code, offset


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


def shape_key(config: Mapping[str, Any]) -> str:
    """A short name for a model's shape, from its config: ``llama h4096 L32 a32/8 v128256``
    (hidden size, layers, attention and KV heads, vocabulary). Models of one shape share it."""
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config

    def first(*names: str, default: Any = "?") -> Any:
        return next((text[n] for n in names if text.get(n) is not None), default)

    heads = first("num_attention_heads", "n_head", "num_heads")
    kv_heads = first("num_key_value_heads", "num_kv_heads", default=heads)
    return (
        f"{config.get('model_type', '?')} h{first('hidden_size', 'n_embd', 'd_model')} "
        f"L{first('num_hidden_layers', 'n_layer', 'num_layers')} a{heads}/{kv_heads} v{first('vocab_size')}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _shape_of(model: Any, cfg: Any, task: str, checkpoint_dtype: str) -> ModelShape:
    import transformers
    from torch import nn

    major = _major(transformers.__version__)
    skip = set(_keys_not_converted(model))
    strict = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    fp16_only = set(getattr(model, "_keep_in_fp32_modules", None) or ()) - strict
    skip |= strict | fp16_only
    linear = (nn.Linear,)

    quantizable: list[tuple[int, int]] = []
    quantized_names: dict[str, tuple[int, int]] = {}
    unquantized_classes: set[str] = set()
    for name, module in model.named_modules():
        if not converts_class(module, major):
            if isinstance(module, linear) and should_convert(name, skip):
                unquantized_classes.add(type(module).__name__)
            continue
        if not should_convert(name, skip):
            continue
        weight = module.weight
        rows = weight.shape[0] if isinstance(module, linear) else weight.shape[1]  # GPT-2's Conv1D is transposed
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
    head_dim = int(_first_attr(text, "head_dim", "d_kv", default=0) or 0) or (hidden // heads if heads else 0)
    # Llama-style attention repeats grouped K/V heads to every query head (``repeat_kv``) for eager
    # attention, and for SDPA wherever a mask is materialised; Falcon's broadcasts instead
    full = [layer for layer in kv_layers if not layer.cross and not layer.window]
    kv_heads = full[0].elements_per_token // (2 * head_dim) if full and head_dim else heads
    falcon = str(getattr(text, "model_type", "")) in _FALCON_TYPES
    repeated = 2 * head_dim if kv_heads < heads and not falcon and not getattr(text, "kv_lora_rank", None) else 0
    units, leaf_modules, largest_plain_leaf = _placement_units(model, quantized_names, strict, fp16_only)
    return ModelShape(
        model_type=str(cfg.model_type),
        architecture=type(model).__name__,
        parameters=parameters,
        quantizable=tuple(quantizable),
        other_elements=other,
        fp32_elements_fp16=fp32_fp16,
        fp32_elements_strict=fp32_strict,
        buffer_bytes=buffers,
        checkpoint_dtype=checkpoint_dtype,
        kv_layers=kv_layers,
        hidden_size=hidden,
        mlp_width=width,
        gated_mlp=gated,
        attention_heads=heads,
        vocab_size=vocab,
        is_encoder_decoder=bool(getattr(cfg, "is_encoder_decoder", False)),
        unquantized_linear_classes=tuple(sorted(unquantized_classes)),
        kv_description=kv_text,
        notes=notes,
        units=units,
        leaf_modules=leaf_modules,
        largest_plain_leaf=largest_plain_leaf,
        sdpa_math_fallback=sdpa_math_fallback(text),
        head_dim=head_dim,
        repeated_kv_per_head=repeated,
    )


#: Model types whose decoder is Falcon's (the config classes Transformers maps them to).
_FALCON_TYPES = ("falcon", "RefinedWeb", "RefinedWebModel")


def sdpa_math_fallback(config: Mapping[str, Any] | Any) -> str | None:
    """Why a model's default SDPA call cannot use a fused kernel and runs PyTorch's math kernel
    (which materialises the attention scores, as eager attention does), or ``None`` if it can.

    ``config`` is a ``config.json`` as a dict (or a Transformers config object); neither torch
    nor Transformers is imported. Falcon's old decoder with ``multi_query`` (Falcon-7B) hands
    ``scaled_dot_product_attention`` one K/V head for all its query heads, without ``enable_gqa``;
    the flash, memory-efficient and cuDNN kernels all require as many K/V heads as query heads,
    so PyTorch falls back to its math kernel (checked on an H200 with torch 2.11: only the math
    kernel accepts the call, with or without a mask). Falcon-40B's new decoder broadcasts K/V to
    every head first. Defaults are ``FalconConfig``'s (71 heads, multi-query, old decoder).
    """

    def get(name: str, default: Any = None) -> Any:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        return default if value is None else value

    if str(get("model_type", "")) not in _FALCON_TYPES:
        text = get("text_config")  # a multimodal model: its language model's attention
        return sdpa_math_fallback(text) if isinstance(text, Mapping) or hasattr(text, "model_type") else None
    heads = int(get("num_attention_heads", get("n_head", 71)) or 1)
    if heads > 1 and get("multi_query", True) and not get("new_decoder_architecture", False):
        return (
            f"SDPA gets 1 K/V head for {heads} query heads (Falcon's multi-query attention, no enable_gqa): "
            "no fused kernel takes that, so it runs its math kernel and materialises the scores"
        )
    return None


def _placement_units(
    model: Any,
    quantized: dict[str, tuple[int, int]],
    strict: set[str],
    fp16_only: set[str],
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
        Unit(
            quantizable=tuple(quantizable[i]),
            other_elements=plain[i]["other"],
            fp32_elements_fp16=plain[i]["fp16"],
            fp32_elements_strict=plain[i]["strict"],
            buffer_bytes=buffers[i],
            block=name in blocks,
            head=i == head,
            tied_to=tied.get(i),
        )
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
            said = f"; the config's num_kv_heads={reported} is not what is cached" if reported and reported != 1 else ""
            why = f"1 KV head (multi-query{said})"
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


def version_tuple(version: str | None) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``5.17.0`` or ``5.18.0.dev0`` (5.0 if unreadable)."""
    parts = str(version).split(".")
    try:
        return int(parts[0]), (int("".join(ch for ch in parts[1] if ch.isdigit()) or 0) if len(parts) > 1 else 0)
    except ValueError:
        return 5, 0


def _major(version: str | None) -> int:
    return version_tuple(version)[0]
