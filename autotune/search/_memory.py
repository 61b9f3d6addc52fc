"""A first memory forecast from the config alone: weights, KV cache, activations, and a margin.

It only has to be good enough to skip what plainly cannot fit; the calibrated memory model is
``autotune.advisor.forecast``, which the search prefers when it is installed.
"""

from __future__ import annotations

from typing import Any

from autotune.candidate import Candidate
from autotune.workload import Workload

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Share added on top of the estimate (allocator slack, CUDA workspace, temporaries).
MARGIN = 0.10
#: bitsandbytes 4-bit stores one absmax per 64 weights: fp32, or 8 bits plus a small second level
#: with double quantization.
_ABSMAX_BYTES_PER_WEIGHT = {False: 4 / 64, True: 1 / 64 + 4 / (64 * 256)}
_GATED_ACTIVATIONS = ("silu", "swiglu", "swish", "gelu_pytorch_tanh", "geglu")


def _first(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        value = config.get(name)
        if value is not None:
            return value
    return default


def parameter_counts(config: dict[str, Any]) -> tuple[int, int]:
    """``(parameters in linear layers of the blocks, all other parameters)``, estimated.

    Linear layers are what bitsandbytes quantizes; embeddings and the LM head stay in the load
    dtype.
    """
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = int(_first(text, "hidden_size", "n_embd", "d_model", default=0) or 0)
    layers = int(_first(text, "num_hidden_layers", "n_layer", "num_layers", default=0) or 0)
    heads = int(_first(text, "num_attention_heads", "n_head", default=1) or 1)
    head_dim = int(_first(text, "head_dim", default=hidden // heads if heads else hidden) or 0)
    kv_heads = kv_head_count(text)
    inter = int(_first(text, "intermediate_size", "n_inner", "ffn_hidden_size", default=4 * hidden) or 4 * hidden)
    vocab = int(_first(text, "vocab_size", default=0) or 0)
    gated = str(_first(text, "hidden_act", "activation_function", default="")).lower() in _GATED_ACTIVATIONS
    experts = int(_first(text, "num_local_experts", "num_experts", default=1) or 1)
    attention = hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim
    mlp = (3 if gated else 2) * hidden * inter * experts
    linear = layers * (attention + mlp)
    positions = int(_first(text, "n_positions", default=0) or 0)
    if text.get("position_embedding_type") == "absolute" or text.get("model_type") == "bert":
        positions = int(_first(text, "max_position_embeddings", default=0) or 0)
    other = vocab * hidden + positions * hidden + layers * 4 * hidden
    if not config.get("tie_word_embeddings", True) and config.get("architectures") and any(
        a.endswith(("LMHeadModel", "ForCausalLM")) for a in config["architectures"]
    ):
        other += vocab * hidden
    return linear, other


def kv_head_count(config: dict[str, Any]) -> int:
    """Key/value heads the cache holds (Falcon's old multi-query layout keeps one)."""
    heads = int(_first(config, "num_attention_heads", "n_head", default=1) or 1)
    if config.get("model_type") == "falcon" and not config.get("new_decoder_architecture", False):
        return 1 if config.get("multi_query", True) else heads
    return int(_first(config, "num_key_value_heads", "num_kv_heads", default=heads) or heads)


def weight_bytes(config: dict[str, Any], candidate: Candidate) -> int:
    """Bytes of the loaded weights."""
    linear, other = parameter_counts(config)
    high = DTYPE_BYTES[candidate.dtype]
    if candidate.quant == "bnb-8bit":
        return int(linear * 1.0 + other * high)
    if candidate.is_4bit:
        return int(linear * (0.5 + _ABSMAX_BYTES_PER_WEIGHT[candidate.double_quant]) + other * high)
    return int((linear + other) * high)


def forecast_bytes(config: dict[str, Any], candidate: Candidate, workload: Workload, batch_size: int) -> int:
    """Peak bytes of ``candidate`` at ``batch_size``: weights, KV cache, activations, margin."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = int(_first(text, "hidden_size", "n_embd", "d_model", default=0) or 0)
    layers = int(_first(text, "num_hidden_layers", "n_layer", "num_layers", default=0) or 0)
    heads = int(_first(text, "num_attention_heads", "n_head", default=1) or 1)
    head_dim = int(_first(text, "head_dim", default=hidden // heads if heads else hidden) or 0)
    vocab = int(_first(text, "vocab_size", default=0) or 0)
    act_dtype = candidate.effective_compute_dtype if candidate.is_4bit else ("float16" if candidate.quant == "bnb-8bit" else candidate.dtype)
    act = DTYPE_BYTES[act_dtype]
    prompt = workload.prompt_tokens
    tokens = prompt + (workload.new_tokens if workload.generates else 0)
    cache = 2 * layers * batch_size * tokens * kv_head_count(text) * head_dim * act if workload.generates else 0
    activations = batch_size * prompt * hidden * act * 8
    if candidate.attn == "eager" or (candidate.attn == "sdpa" and candidate.sdpa_kernel == "math"):
        activations += batch_size * heads * prompt * prompt * act
    logits = batch_size * vocab * 4 * (1 if workload.generates else 0)
    total = weight_bytes(config, candidate) + cache + activations + logits
    return int(total * (1 + MARGIN))
