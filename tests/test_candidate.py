"""The validity rules: what cannot work is refused before anything loads, with a reason."""

from __future__ import annotations

import pytest

from autotune.candidate import Candidate, rejection
from autotune.environment import Environment, Gpu
from autotune.errors import InputError
from autotune.workload import Workload

ALL_ATTN = {"architecture": "LlamaForCausalLM", "attn_implementations": ["eager", "sdpa", "flash_attention_2", "flex_attention"]}
VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "bitsandbytes": "0.50.2", "flash-attn": None}


def gpu(cc: tuple[int, int] = (9, 0), index: int = 0) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index}", name="NVIDIA H100 80GB HBM3", total_memory=80 * 10**9,
               free_memory=79 * 10**9, compute_capability=cc)


def env(*gpus: Gpu, **versions: str | None) -> Environment:
    return Environment(gpus=tuple(gpus), versions={**VERSIONS, **versions}, driver_version="580", cuda_driver_version="13.0")


def test_normalises_and_labels() -> None:
    c = Candidate(dtype="bf16", attn="sdpa", sdpa_kernel="flash", quant="bnb-4bit-nf4", double_quant=True, compute_dtype="fp16")
    assert c.dtype == "bfloat16" and c.compute_dtype == "float16"
    assert c.label() == "bf16 sdpa[flash] nf4+dq(fp16) cuda"
    assert Candidate.from_dict(c.to_dict()) == c and Candidate.from_dict(c.to_dict()).key() == c.key()
    with pytest.raises(InputError, match="unknown dtype"):
        Candidate(dtype="int3")
    with pytest.raises(InputError, match="unknown quantization"):
        Candidate(quant="gptq")


@pytest.mark.parametrize("candidate, environment, words", [
    (Candidate(attn="flash_attention_2", dtype="float32"), env(gpu()), "only in float16 or bfloat16"),
    (Candidate(attn="flash_attention_2"), env(gpu()), "package flash-attn is not installed (pip install flash-attn"),
    (Candidate(attn="flash_attention_2", placement="cpu"), env(), "only on NVIDIA GPUs"),
    (Candidate(attn="flash_attention_2", dtype="float16"), env(gpu((7, 5)), **{"flash-attn": "2.8.3"}), "compute capability 8.0"),
    (Candidate(dtype="bfloat16"), env(gpu((7, 5))), "bfloat16: needs compute capability 8.0"),
    (Candidate(quant="bnb-8bit", dtype="bfloat16"), env(gpu()), "load it with dtype float16"),
    (Candidate(quant="bnb-4bit-nf4"), env(gpu(), bitsandbytes=None), "bitsandbytes is not installed"),
    (Candidate(quant="bnb-4bit-nf4", static_cache=True), env(gpu()), "cannot be compiled"),
    (Candidate(quant="bnb-8bit", dtype="float16", double_quant=True), env(gpu()), "only to 4-bit"),
    (Candidate(sdpa_kernel="flash", attn="eager"), env(gpu()), "only with attention sdpa"),
    (Candidate(sdpa_kernel="efficient", placement="cpu"), env(), "only on CUDA"),
    (Candidate(placement="cuda"), env(), "no NVIDIA GPU"),
    (Candidate(placement="multi-gpu"), env(gpu()), "two or more GPUs"),
    (Candidate(attn="flex_attention"), env(gpu()), None),
])
def test_rules(candidate: Candidate, environment: Environment, words: str | None) -> None:
    reason = rejection(candidate, environment, ALL_ATTN)
    if words is None:
        assert reason is None
    else:
        assert reason is not None and words in reason, reason


def test_model_support_and_workload_rules() -> None:
    falcon = {"architecture": "FalconForCausalLM", "attn_implementations": ["eager", "sdpa", "flash_attention_2"]}
    reason = rejection(Candidate(attn="flex_attention"), env(gpu()), falcon)
    assert reason and "FalconForCausalLM does not support it" in reason
    padded = Workload(padding_share=0.2)
    assert "refuses attention masks" in rejection(Candidate(sdpa_kernel="flash"), env(gpu()), ALL_ATTN, padded)
    encoder = Workload(task="feature-extraction")
    assert "only to text generation" in rejection(Candidate(static_cache=True), env(gpu()), ALL_ATTN, encoder)
    assert "pinned to the CPU" in rejection(Candidate(), env(gpu()), ALL_ATTN, Workload(device="cpu"))
    assert rejection(Candidate(placement="cpu", dtype="float32", attn="eager"), env(), ALL_ATTN, Workload(device="cpu")) is None
