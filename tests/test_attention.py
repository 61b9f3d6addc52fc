"""Reading back which attention ran: a traced forward pass of a real tiny model on the CPU, and
silent fallbacks simulated the ways Transformers 5 can take them.

FlashAttention cannot run on the CPU, so its path is exercised through Transformers' own
``flash_attention_forward`` with a stand-in kernel in the module globals Transformers loads its
kernels into: named as FlashAttention-4's it counts as FlashAttention-4, named as any other
package's (a Hub kernel) it is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autotune.candidate import Candidate
from autotune.worker.loading import OptionNotInEffect

FA4 = Candidate(dtype="bfloat16", attn="flash_attention_4", placement="cuda")


def load(path: Path, attn: str) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn)


def stand_in_kernels(module: str) -> tuple[Any, Any]:
    """``flash_attn_func`` and ``flash_attn_varlen_func`` look-alikes (plain matmuls) that claim ``module``."""
    import torch

    def flash_attn_func(
        q: Any,
        k: Any,
        v: Any,
        softmax_scale: float | None = None,
        causal: bool = False,
        window_size: Any = (None, None),
        softcap: float = 0.0,
        deterministic: bool = False,
    ) -> Any:
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))  # (batch, heads, seq, dim)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        scores = q @ k.transpose(-1, -2) * (softmax_scale or q.shape[-1] ** -0.5)
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2)

    def flash_attn_varlen_func(
        q: Any,
        k: Any,
        v: Any,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
        max_seqlen_q: Any = None,
        max_seqlen_k: Any = None,
        softmax_scale: float | None = None,
        causal: bool = False,
        window_size: Any = (None, None),
        softcap: float = 0.0,
        deterministic: bool = False,
    ) -> Any:
        raise NotImplementedError("the probe sends no padding")

    for function in (flash_attn_func, flash_attn_varlen_func):
        function.__module__ = module
        function.__qualname__ = function.__name__
    return flash_attn_func, flash_attn_varlen_func


@pytest.fixture
def flash_model(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A tiny Llama whose config runs flash_attention_4, with kernels put where Transformers keeps
    the ones it loaded (the test sets their module with ``kernels``)."""
    import transformers.modeling_flash_attention_utils as flash_utils

    model = load(tiny_models["llama"], "sdpa")
    model.config._attn_implementation_internal = "flash_attention_4"

    def kernels(module: str) -> None:
        dense, varlen = stand_in_kernels(module)
        monkeypatch.setattr(flash_utils, "_loaded_implementation", "flash_attention_4")
        monkeypatch.setattr(flash_utils, "_flash_fn", dense)
        monkeypatch.setattr(flash_utils, "_flash_varlen_fn", varlen)
        monkeypatch.setattr(flash_utils, "_process_flash_kwargs_fn", flash_utils._lazy_define_process_function(varlen))
        monkeypatch.setattr(flash_utils, "_process_with_kvcache_kwargs_fn", dict, raising=False)

    model.kernels = kernels
    return model


def test_what_ran_is_read_back_and_everything_is_put_back(tiny_models: dict[str, Path]) -> None:
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    from autotune.worker import attention

    before = (
        torch.nn.functional.scaled_dot_product_attention,
        dict(AttentionInterface._global_mapping),
        dict(ALL_ATTENTION_FUNCTIONS._local_mapping),
    )
    for attn in ("eager", "sdpa"):
        candidate = Candidate(dtype="float32", attn=attn, placement="cpu")
        traced = attention.trace(load(tiny_models["llama"], attn), candidate)
        assert traced["attention_ran"] == [attn] and attention.mismatch(candidate, traced) is None
        assert sum(traced["attention_functions"].values()) == 2  # one call per layer
    assert traced["attention_kernels"] == {attention.SDPA_KERNEL: 2}
    assert (
        torch.nn.functional.scaled_dot_product_attention,
        dict(AttentionInterface._global_mapping),
        dict(ALL_ATTENTION_FUNCTIONS._local_mapping),
    ) == before
    # Falcon picks its attention class itself and calls torch's SDPA directly: seen all the same
    falcon = attention.trace(load(tiny_models["falcon"], "sdpa"), Candidate(dtype="float32", attn="sdpa", placement="cpu"))
    assert falcon["attention_functions"] == {} and falcon["attention_ran"] == ["sdpa"]


def test_another_function_under_the_requested_name_is_caught(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from autotune.worker import attention

    model = load(tiny_models["llama"], "sdpa")
    model.config._attn_implementation_internal = "flash_attention_4"
    # what a silent fallback looks like: the config says flash_attention_4, SDPA's function runs under that name
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "flash_attention_4", sdpa_attention_forward)
    traced = attention.trace(model, FA4)
    assert traced["attention_ran"] == ["sdpa"]
    with pytest.raises(OptionNotInEffect) as caught:
        attention.check(FA4, traced)
    assert caught.value.status == "unsupported"
    assert caught.value.reason == (
        "attention flash_attention_4 did not take effect: in a forward pass it ran sdpa, no kernel of the flash-attn-4 package"
    )


def test_flash_kernels_are_named_by_their_package(flash_model: Any) -> None:
    from autotune.worker import attention

    flash_model.kernels("flash_attn.cute.interface")
    traced = attention.trace(flash_model, FA4)
    assert traced["attention_functions"] == {"transformers.integrations.flash_attention.flash_attention_forward": 2}
    assert traced["attention_kernels"] == {"flash_attn.cute.interface.flash_attn_func": 2}
    assert traced["attention_ran"] == ["flash_attention_4"] and attention.mismatch(FA4, traced) is None
    fa2 = Candidate(dtype="bfloat16", attn="flash_attention_2")
    assert "no kernel of the flash-attn package" in attention.mismatch(fa2, traced)  # type: ignore[operator]
    import transformers.modeling_flash_attention_utils as flash_utils

    assert not hasattr(flash_utils._flash_fn, "_autotune_traced")  # the kernels are put back unwrapped


def test_a_kernel_from_elsewhere_is_not_flash_attention_4(flash_model: Any) -> None:
    from autotune.worker import attention

    flash_model.kernels("kernels_community.flash_attn4")  # e.g. the Hub kernel Transformers falls back to
    traced = attention.trace(flash_model, FA4)
    assert traced["attention_ran"] == ["kernel kernels_community.flash_attn4.flash_attn_func"]
    assert attention.mismatch(FA4, traced) == (
        "attention flash_attention_4 did not take effect: in a forward pass it ran kernel "
        "kernels_community.flash_attn4.flash_attn_func, no kernel of the flash-attn-4 package"
    )


def test_a_hub_kernel_in_the_config_is_named(tiny_models: dict[str, Path]) -> None:
    from autotune.worker import loading

    model = load(tiny_models["llama"], "sdpa")
    effective = loading.read_effective(model, FA4)
    effective["attn_implementation"] = "kernels-community/flash-attn4"  # what the config holds after the Hub fallback
    with pytest.raises(
        OptionNotInEffect,
        match=r"runs kernels-community/flash-attn4, a kernel from the Hugging Face Hub .* "
        r"the package flash-attn-4 is missing",
    ):
        loading.check_effective(FA4, effective)


def test_a_failing_first_pass_is_classified(flash_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.modeling_flash_attention_utils as flash_utils

    from autotune.worker import attention

    flash_model.kernels("flash_attn.cute.interface")

    def refuses(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("(head_dim, head_dim_v)=(16, 16) is not supported on SM100")

    refuses.__module__ = "flash_attn.cute.interface"
    monkeypatch.setattr(flash_utils, "_flash_fn", refuses)
    with pytest.raises(OptionNotInEffect) as caught:
        attention.trace(flash_model, FA4)
    assert caught.value.status == "unsupported"
    assert caught.value.reason == (
        "flash_attention_4: a first forward pass of 16 tokens failed: "
        "AssertionError: (head_dim, head_dim_v)=(16, 16) is not supported on SM100"
    )


def test_flash_module_that_does_not_import_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.worker import loading

    loading.check_importable(Candidate(attn="sdpa"))  # nothing to import
    with pytest.raises(OptionNotInEffect) as caught:
        loading.check_importable(FA4)  # flash-attn-4 is not installed here
    assert caught.value.status == "unsupported"
    assert caught.value.reason.startswith("flash_attention_4: flash_attn.cute does not import here (ModuleNotFoundError: ")
    assert caught.value.reason.endswith(
        "; pip install flash-attn-4, which brings nvidia-cutlass-dsl (with a CUDA 13 driver: 'flash-attn-4[cu13]')"
    )


def test_errors_while_measuring_are_classified() -> None:
    import torch

    from autotune.worker.loading import classify_run_error

    static = Candidate(dtype="bfloat16", attn="flash_attention_4", static_cache=True)
    compile_error = type("BackendCompilerFailed", (RuntimeError,), {"__module__": "torch._dynamo.exc"})("backend='inductor' raised: ...")
    assert classify_run_error(compile_error, static, 4) == (
        "unsupported",
        "torch.compile failed on a static cache with attention flash_attention_4 at batch size 4: "
        "BackendCompilerFailed: backend='inductor' raised: ...",
    )
    namespace: dict[str, Any] = {"__name__": "flash_attn.cute.interface"}
    exec("def kernel():\n    raise AssertionError('seqlen_q must be at least 1')", namespace)  # noqa: S102 - a function of that module
    with pytest.raises(AssertionError) as raised:
        namespace["kernel"]()
    assert classify_run_error(raised.value, FA4, 16) == (
        "unsupported",
        "flash_attention_4: its kernel refused batch size 16: AssertionError: seqlen_q must be at least 1",
    )
    assert classify_run_error(raised.value, Candidate(attn="sdpa"), 16)[0] == "error"  # not FlashAttention's own kernel
    assert classify_run_error(torch.cuda.OutOfMemoryError("CUDA out of memory"), FA4, 16)[0] == "oom"
    assert classify_run_error(ValueError("bad"), FA4, 1) == ("error", "measuring batch size 1 failed: ValueError: bad")
