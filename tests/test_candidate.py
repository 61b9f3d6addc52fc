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
    return Gpu(
        index=index,
        uuid=f"GPU-{index}",
        name="NVIDIA H100 80GB HBM3",
        total_memory=80 * 10**9,
        free_memory=79 * 10**9,
        compute_capability=cc,
    )


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


@pytest.mark.parametrize(
    "candidate, environment, words",
    [
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
    ],
)
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


FA4_CAPS = {
    "architecture": "LlamaForCausalLM",
    "attn_implementations": ["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention"],
}


def h200(index: int = 0, cc: tuple[int, int] = (9, 0)) -> Gpu:
    return Gpu(
        index=index, uuid=f"GPU-{index}", name="NVIDIA H200", total_memory=141 * 10**9, free_memory=140 * 10**9, compute_capability=cc
    )


@pytest.mark.parametrize(
    "candidate, environment, caps, reason",
    [
        # the model class: transformers 4.x has no flash_attention_4 for it
        (
            Candidate(attn="flash_attention_4"),
            env(h200(), transformers="4.57.6"),
            ALL_ATTN,
            "flash_attention_4: LlamaForCausalLM does not support it in transformers 4.57.6 (supported: eager, sdpa, flash_attention_2, "
            "flex_attention)",
        ),
        # the dtype, also under a 4-bit load (the attention runs in the load dtype)
        (
            Candidate(attn="flash_attention_4", dtype="float32"),
            env(h200()),
            FA4_CAPS,
            "flash_attention_4: FlashAttention runs only in float16 or bfloat16, not float32",
        ),
        (
            Candidate(attn="flash_attention_4", dtype="float32", quant="bnb-4bit-nf4", compute_dtype="bfloat16"),
            env(h200()),
            FA4_CAPS,
            "flash_attention_4: FlashAttention runs only in float16 or bfloat16, not float32 (a bnb-4bit-nf4 load runs attention in "
            "the load dtype, whatever the compute dtype)",
        ),
        # no GPU
        (
            Candidate(attn="flash_attention_4", placement="cpu"),
            env(),
            FA4_CAPS,
            "flash_attention_4: FlashAttention runs only on NVIDIA GPUs, not on the CPU",
        ),
        # the GPU: too old, or an architecture FlashAttention-4 has no kernels for
        (
            Candidate(attn="flash_attention_4"),
            env(Gpu(0, "GPU-0", "NVIDIA A100-SXM4-80GB", 80 * 10**9, 79 * 10**9, (8, 0))),
            FA4_CAPS,
            "flash_attention_4: runs on compute capability 9.x (Hopper) or 10.x (Blackwell), and GPU 0 (NVIDIA A100-SXM4-80GB) has "
            "compute capability 8.0",
        ),
        (
            Candidate(attn="flash_attention_4", placement="multi-gpu"),
            env(h200(0), h200(1, (12, 0))),
            FA4_CAPS,
            "flash_attention_4: runs on compute capability 9.x (Hopper) or 10.x (Blackwell), and GPU 1 (NVIDIA H200) has compute "
            "capability 12.0",
        ),
        # the package, with the command that installs it for this driver
        (
            Candidate(attn="flash_attention_4"),
            env(h200()),
            FA4_CAPS,
            "flash_attention_4: package flash-attn-4 is not installed (pip install 'flash-attn-4[cu13]', which brings "
            "nvidia-cutlass-dsl with its CUDA 13 libraries)",
        ),
        (
            Candidate(attn="flash_attention_3"),
            env(h200()),
            FA4_CAPS,
            "flash_attention_3: package flash-attn-3 is not installed (no wheel on PyPI: build it from the hopper/ directory of "
            "github.com/Dao-AILab/flash-attention)",
        ),
        (
            Candidate(attn="flash_attention_2"),
            env(h200(), **{"flash-attn-4": "4.0.0b36"}),
            FA4_CAPS,
            "flash_attention_2: package flash-attn is not installed (pip install flash-attn --no-build-isolation)",
        ),
    ],
)
def test_flash_attention_reasons(candidate: Candidate, environment: Environment, caps: dict, reason: str) -> None:
    assert rejection(candidate, environment, caps) == reason


def test_flash_attention_4_runs_where_it_can() -> None:
    here = env(h200(), **{"flash-attn-4": "4.0.0b36"})
    cuda12 = Environment(gpus=(h200(),), versions={**VERSIONS}, driver_version="570", cuda_driver_version="12.8")
    assert "pip install flash-attn-4, which brings nvidia-cutlass-dsl" in rejection(Candidate(attn="flash_attention_4"), cuda12, FA4_CAPS)
    for candidate in (
        Candidate(attn="flash_attention_4"),
        Candidate(attn="flash_attention_4", dtype="float16"),
        Candidate(attn="flash_attention_4", static_cache=True),  # whether it compiles is for the worker to find
        Candidate(attn="flash_attention_4", quant="bnb-4bit-nf4", compute_dtype="float32"),
        Candidate(attn="flash_attention_4", dtype="float16", quant="bnb-8bit"),
    ):
        assert rejection(candidate, here, FA4_CAPS, Workload(prompt_tokens=32768, new_tokens=1)) is None, candidate.label()
    blackwell = env(h200(cc=(10, 0)), **{"flash-attn-4": "4.0.0b36"})
    two = env(h200(0), h200(1), **{"flash-attn-4": "4.0.0b36"})
    assert rejection(Candidate(attn="flash_attention_4", placement="multi-gpu"), two, FA4_CAPS) is None
    assert rejection(Candidate(attn="flash_attention_4"), blackwell, FA4_CAPS) is None
    # the first GPU is the one a cuda placement uses: a second, older one does not matter to it
    mixed = env(h200(0), Gpu(1, "GPU-1", "NVIDIA A100", 80 * 10**9, 79 * 10**9, (8, 0)), **{"flash-attn-4": "4.0.0b36"})
    assert rejection(Candidate(attn="flash_attention_4"), mixed, FA4_CAPS) is None
