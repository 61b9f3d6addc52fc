"""The FlashAttention implementations Transformers dispatches to, and what each needs.

Plain data and two small functions, imported by the validity rules (:mod:`autotune.candidate`),
the GPU probe (:mod:`autotune.environment`) and the trial worker, so that none of them imports
another for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlashAttention:
    """What one FlashAttention implementation needs: its distribution, the module Transformers
    imports its kernels from, the GPU architectures it runs on, and how to install it."""

    attn: str
    package: str
    module: str
    min_cc: tuple[int, int]
    #: The compute capability majors it runs on; ``None``: every major from ``min_cc`` on.
    majors: tuple[int, ...] | None
    gpus: str
    install: str
    #: The install command where the NVIDIA driver runs CUDA 13, if it differs.
    install_cu13: str | None = None

    def runs_on(self, cc: tuple[int, int]) -> bool:
        return cc >= self.min_cc and (self.majors is None or cc[0] in self.majors)

    def install_hint(self, cuda_driver_version: str | None = None) -> str:
        if self.install_cu13 and str(cuda_driver_version or "").split(".")[0] == "13":
            return self.install_cu13
        return self.install


#: The FlashAttention implementations Transformers dispatches to, and what each needs. The
#: ``flash_attn`` module is shared: FlashAttention-2 is the ``flash-attn`` distribution, and
#: FlashAttention-4 (the ``flash-attn-4`` distribution) installs ``flash_attn.cute`` alone.
FLASH_ATTENTIONS = {
    "flash_attention_2": FlashAttention(
        "flash_attention_2",
        "flash-attn",
        "flash_attn",
        (8, 0),
        None,
        "compute capability 8.0 or newer",
        "pip install flash-attn --no-build-isolation",
    ),
    "flash_attention_3": FlashAttention(
        "flash_attention_3",
        "flash-attn-3",
        "flash_attn_interface",
        (9, 0),
        None,
        "compute capability 9.0 or newer",
        "no wheel on PyPI: build it from the hopper/ directory of github.com/Dao-AILab/flash-attention",
    ),
    "flash_attention_4": FlashAttention(
        "flash_attention_4",
        "flash-attn-4",
        "flash_attn.cute",
        (9, 0),
        (9, 10),
        "compute capability 9.x (Hopper) or 10.x (Blackwell)",
        "pip install flash-attn-4, which brings nvidia-cutlass-dsl (with a CUDA 13 driver: 'flash-attn-4[cu13]')",
        "pip install 'flash-attn-4[cu13]', which brings nvidia-cutlass-dsl with its CUDA 13 libraries",
    ),
}


def flash_kernel_of(module: str) -> str | None:
    """The FlashAttention implementation whose package holds the Python module ``module``
    (``flash_attn.cute.interface`` is FlashAttention-4's, ``flash_attn.flash_attn_interface``
    FlashAttention-2's); ``None`` for any other module, a Hub kernel's included."""
    owners = [fa for fa in FLASH_ATTENTIONS.values() if module == fa.module or module.startswith(fa.module + ".")]
    return max(owners, key=lambda fa: len(fa.module)).attn if owners else None
