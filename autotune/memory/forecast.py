"""The forecast: a candidate's peak memory, by arithmetic on the model's shape.

Pure arithmetic on a :class:`~autotune.memory.shape.ModelShape` (which :func:`model_shape` reads
once per config, on the meta device); nothing here imports torch. The parts of a peak:

- **weights** and **quantization state**, by dtype or quantized layout (see :mod:`autotune.memory.shape`).
- **KV cache**: after ``generate(P prompt, N new)`` a dynamic cache holds ``P+N-1`` tokens, grown
  step by step; a static cache is allocated whole, for the same ``P+N-1``, before prefill.
- **activations**: the prefill transient of one layer, ``B·P·(MLP width + hidden)``, plus the
  attention scores where they are materialised, which grow with ``B·heads·P²``: eager attention,
  SDPA pinned to its math kernel, and SDPA on a model whose call no fused kernel takes
  (:func:`~autotune.memory.shape.sdpa_math_fallback`). Quantized matmuls add copies of the
  largest quantized layer: 4-bit dequantizes it to the compute dtype; LLM.int8 multiplies the
  input columns that hold an outlier (``|x| >= 6``) in fp16, dequantizing those columns of the
  weight through an int8 copy and two fp32 products (9 bytes per element; forecast for the whole
  layer, its upper bound).
- **logits**: Transformers 5 computes only the last position's logits during generate.
- **loading** (CPU only): the checkpoint's pages, read through a memory map, count towards the
  process's resident peak while it loads; when the file is larger than the loaded model (a bf16
  or quantized load of an fp32 checkpoint) the load, not the run, sets the peak.
- **runtime context**: the CUDA context per GPU, or the baseline of a worker process with torch
  and Transformers (and bitsandbytes) on the CPU.
- **allocator slack**: caching-allocator rounding and fragmentation; a dynamic cache on a GPU adds
  the blocks its growing K/V leave behind (:data:`CACHE_GROWTH`, or, under :data:`CACHE_MODEL`
  ``"replay"``, what :mod:`autotune.memory.replay` keeps). LLM.int8 on a GPU adds more:
  its outlier copies change size from layer to layer with the outlier count, and the caching
  allocator keeps each block it outgrew, about ``H(L) - 1`` more generations of them over ``L``
  layers (``H`` the harmonic number: the expected running maxima of ``L`` random sizes).

Over several GPUs (``device_map="auto"``) each GPU's peak is forecast from what
:func:`device_split` places on it, as Transformers balances the GPUs under each GPU's own
``max_memory``: its weights, the KV cache of its layers, the prefill transient where it runs
layers, the logits where the output head is, its own CUDA context and slack.

:func:`forecast_bytes` gives the one figure a limit is held against, the peak of the fullest
device; :func:`forecast_parts` the parts it is made of (:class:`Forecast`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from autotune.candidate import Candidate
from autotune.errors import InputError
from autotune.memory.limit import DeviceLimits
from autotune.memory.replay import replay_kept
from autotune.memory.shape import DTYPE_BYTES, ModelShape, model_shape, version_tuple, weight_bytes
from autotune.workload import Workload

#: The parts of a forecast, in the order they are shown.
PARTS = ("weights", "quant_state", "kv_cache", "activations", "logits", "cuda_graphs", "loading", "runtime_context", "allocator_slack")

#: What a process holds on each GPU beyond torch's caching allocator: the CUDA context, kernels
#: and library handles (NVML minus torch's reserved memory: about 0.5 GiB on an H100 with torch
#: 2.9; 662-724 MiB on an H200 with torch 2.11 and Transformers 5.17, on five model shapes).
CUDA_CONTEXT_BYTES = 680 * 2**20
#: Resident memory of a worker process that has imported torch and Transformers and built a model.
CPU_BASELINE_BYTES = 430 * 10**6
#: What importing bitsandbytes adds to it on the CPU (its CPU kernels and their dependencies).
BNB_CPU_IMPORT_BYTES = 120 * 10**6
#: The cuBLAS workspace torch allocates on each GPU (on an H200 with torch 2.11, the 33 MiB every
#: allocated peak held above the weights and the per-sequence terms, at every batch size).
CUBLAS_WORKSPACE_BYTES = 32 * 2**20
#: Caching-allocator rounding and fragmentation, as a share of what is allocated while running
#: (KV cache, activations, logits) and of the weights.
SLACK_RUNNING = 0.15
SLACK_STATIC = 0.05
#: (Weights: an H200 reserved 0.2-0.8% above the allocated weights after loading, five shapes.)
SLACK_WEIGHTS = 0.005
#: Blocks of materialised attention scores the caching allocator keeps beyond those in use, as a
#: share of the scores (on an H200: 0.3-0.6 of them for eager attention, prompts of 512 to 8k).
SCORE_SLACK = 0.4
#: A compiled static cache's CUDA graph pool, as a multiple of the decode step's intermediates,
#: and the fixed cost of compiling (on an H200 with torch 2.11: a Llama-3.2-1B shape's pool at
#: batch 32 held 1.4x its step's repeated K/V and logits; compiling added 32 MiB allocated and
#: 60 MiB outside torch's allocator).
GRAPH_POOL_FACTOR = 1.5
COMPILED_BYTES = 96 * 2**20
#: A dynamic cache on a GPU: what the caching allocator keeps of the K/V blocks each decode step
#: outgrows, per 2 MiB size class a layer's K and V move up beyond the first (see
#: :func:`outgrown_classes`), as a share of their final size. On an H200 (torch 2.11, 512 + 128
#: tokens): in fresh processes a 24-layer model with 32 K/V heads kept 0.55-1.5x its cache beyond
#: what was allocated at batch 8-48 (K growing 32-192 KiB a step), about 0.14 per class crossed;
#: in the trial worker, beyond the rest of the slack, 0.27 at batch 32 after batch 1 and 8 (7
#: classes), 0.11 at batch 8; Llama-8B at batch 16 0.12 and 0.20 (two runs), a Llama-3.2-1B
#: shape at batch 32 none (2 classes each). 0.2 lies between the fresh processes and the worker,
#: at the top of what the shapes other than the 32-head one show. The least certain term: the blocks
#: the prompt's pass freed take in part of the outgrown ones, and how much depends on the order
#: of allocations and on the batch sizes the same process ran before.
CACHE_GROWTH = 0.2
#: How the dynamic cache's allocator share on a GPU is forecast: ``"classes"``, the rule above
#: (:data:`CACHE_GROWTH` per outgrown size class, beside :data:`SLACK_RUNNING`); or ``"replay"``,
#: what the allocator model keeps when the worker's sequence is replayed through it
#: (:mod:`autotune.memory.replay`), in place of both. See BENCHMARKS.md section 7 for which is in use and why.
CACHE_MODEL = "classes"  # the replay missed the SmolLM2-like shape's batch 32 by -31% (BENCHMARKS.md 7)
#: PyTorch's caching allocator (``CUDACachingAllocator``) rounds a request of 10 MiB or more up to
#: a multiple of 2 MiB and gives it a segment of its own; a request of 1-10 MiB is carved from a
#: 20 MiB segment shared with others, whose freed blocks merge with their free neighbours.
ALLOCATOR_CLASS = 2 * 2**20
ALLOCATOR_OWN_SEGMENT = 10 * 2**20
#: Bytes per attention score where scores are materialised: the scores in the compute dtype, the
#: softmax in fp32, and the cast back (``3 x dtype + 4``: 10 B in bf16, measured ~10 on an H100;
#: SDPA's math kernel on Falcon-7B's shapes measured 10.0-10.2 on an H200; eager attention's
#: allocated peak on an H200 grew by 10.0-10.6 B per score on three shapes, with a dynamic cache
#: and with a static one, whose scores span the whole cache).
SCORE_EXTRA_BYTES = 4
#: LLM.int8's outlier path per element of the weight columns it dequantizes: the int8 copy of the
#: columns, then ``copy * row scale`` and ``* 1/127`` in fp32 (1 + 4 + 4; on an H200, Llama-8B's
#: batch-1 peak sat 0.39 GiB above bf16's, 9 B x the 47 M elements of the outlier columns seen).
INT8_OUTLIER_BYTES = 9
#: ``get_balanced_memory``'s margin over an even split: 1.25x the largest block or leaf module.
BALANCE_MARGIN = 1.25
#: The share of ``max_memory`` the bitsandbytes quantizers let accelerate fill (``adjust_max_memory``).
BNB_MAX_MEMORY_SHARE = 0.9


@dataclass(frozen=True)
class Forecast:
    """A predicted peak, in bytes, and what it is made of (``parts``, keyed as in :data:`PARTS`).

    ``total_bytes`` covers every device the model is spread over. Under ``device_map="auto"``
    ``device_parts`` holds the parts of each GPU's own peak, in device order. :attr:`device_bytes`
    is each device's peak and :attr:`peak_bytes` the fullest device's: the figure a limit is
    held against, and what the trial worker measures (the largest of its GPUs).
    """

    total_bytes: int
    parts: dict[str, int]
    batch_size: int
    devices: int = 1
    parameters: int = 0
    kv_bytes_per_token: int = 0
    notes: tuple[str, ...] = ()
    device_parts: tuple[dict[str, int], ...] = ()
    #: The KV cache ``generate`` leaves (``P+N-1`` tokens), whatever part of it the peak holds.
    cache_bytes: int = 0

    @property
    def device_bytes(self) -> tuple[int, ...]:
        """Each device's peak, in device order (one figure on one device)."""
        if self.devices <= 1:
            return (self.total_bytes,)
        if self.device_parts:
            return tuple(sum(parts.values()) for parts in self.device_parts)
        context = self.parts.get("runtime_context", 0) // self.devices  # nothing to place: an even split
        return (context + math.ceil((self.total_bytes - context * self.devices) / self.devices),) * self.devices

    @property
    def peak_bytes(self) -> int:
        """The fullest device's peak."""
        return max(self.device_bytes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total_bytes": self.total_bytes,
            "peak_bytes": self.peak_bytes,
            "devices": self.devices,
            "batch_size": self.batch_size,
            "parts": dict(self.parts),
            "parameters": self.parameters,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "cache_bytes": self.cache_bytes,
            "notes": list(self.notes),
        }
        if self.device_parts:
            out["device_parts"] = [dict(parts) for parts in self.device_parts]
        return out


def forecast_parts(
    config: dict[str, Any],
    candidate: Candidate,
    workload: Workload,
    batch_size: int,
    *,
    task: str | None = None,
    gpus: int | None = None,
    max_memory: Sequence[int | None] | None = None,
    transformers_version: str | None = None,
    before: Sequence[int] = (),
) -> Forecast:
    """The predicted peak memory of ``candidate`` running ``workload`` at ``batch_size``, in parts.

    ``config`` is the model's ``config.json`` as a dict; ``task`` defaults to the workload's. A
    ``multi-gpu`` candidate is spread over ``gpus`` GPUs (default: as many as ``max_memory`` names,
    else 2) under ``max_memory``, each GPU's cap in bytes as ``device_map="auto"`` gets it (None,
    or a None entry: no cap). ``transformers_version`` is the version the candidate runs with
    (default: the installed one): it decides how ``device_map="auto"`` balances the GPUs and
    whether every logit is computed. ``before`` are the batch sizes the same worker measured
    before this one (its ladder): on a GPU the caching allocator keeps their static caches'
    blocks. Raises :class:`InputError` for a config the installed Transformers cannot build, or a
    runtime other than PyTorch.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    task = task or workload.task
    shape = model_shape(config, task)
    return forecast_shape(
        shape,
        candidate,
        workload,
        batch_size,
        task=task,
        gpus=gpus,
        max_memory=max_memory,
        transformers_version=transformers_version,
        before=before,
    )


def forecast_bytes(
    config: dict[str, Any],
    candidate: Candidate,
    workload: Workload,
    batch_size: int,
    *,
    task: str | None = None,
    gpus: int | None = None,
    max_memory: Sequence[int | None] | None = None,
    transformers_version: str | None = None,
    before: Sequence[int] = (),
) -> int:
    """The forecast peak of the fullest device, in bytes: the one figure a limit is held against
    (arguments as :func:`forecast_parts`)."""
    return forecast_parts(
        config,
        candidate,
        workload,
        batch_size,
        task=task,
        gpus=gpus,
        max_memory=max_memory,
        transformers_version=transformers_version,
        before=before,
    ).peak_bytes


def forecast_shape(
    shape: ModelShape,
    candidate: Candidate,
    workload: Workload,
    batch_size: int,
    *,
    task: str,
    gpus: int | None = None,
    max_memory: Sequence[int | None] | None = None,
    transformers_version: str | None = None,
    before: Sequence[int] = (),
) -> Forecast:
    """:func:`forecast_parts` for a :class:`ModelShape` already read (no torch needed)."""
    c = candidate
    if c.runtime != "pytorch":
        raise InputError(f"no memory forecast for runtime {c.runtime}: only PyTorch loads are forecast")
    version = version_tuple(transformers_version) if transformers_version else installed_transformers()
    notes = list(shape.notes) if c.is_bnb else [n for n in shape.notes if "bitsandbytes" not in n]
    running = _running(shape, c, workload, batch_size, task, version, notes, before)
    if c.on_gpu and c.static_cache and task == "text-generation":
        # each earlier batch size's static cache (a new one per size) and CUDA graph pool stay
        # cached: blocks of other sizes the caching allocator does not hand to this one (on an
        # H200, batch 32 after 1 and 8 peaked 0.36 GiB above batch 32 in a fresh process)
        earlier = [_running(shape, c, workload, b, task, version, []) for b in sorted(set(before)) if 0 < b < batch_size]
        running = replace(running, retained=sum(r.kv + r.graphs - COMPILED_BYTES for r in earlier))

    n_devices = (gpus or (len(max_memory) if max_memory else 2)) if c.placement == "multi-gpu" else 1
    device_parts: tuple[dict[str, int], ...] = ()
    if n_devices > 1 and shape.units:
        split = device_split(shape, c, n_devices, max_memory, version)
        device_parts = tuple(_device_parts(shape, c, running, split, d) for d in range(n_devices))
        parts = {key: sum(p[key] for p in device_parts) for key in PARTS}
    else:
        weights, quant_state = shape.weight_bytes(c.dtype, c.quant, c.double_quant, c.value("group_size"))
        parts = _parts(
            c, shape, weights, quant_state, running, kv_share=1.0, blocks=shape.blocks, runs_layers=True, head=True, contexts=n_devices
        )
    return Forecast(
        total_bytes=sum(parts.values()),
        parts=parts,
        batch_size=batch_size,
        devices=n_devices,
        parameters=shape.parameters,
        kv_bytes_per_token=shape.kv_bytes_per_token(c.dtype) if task == "text-generation" else 0,
        notes=tuple(notes),
        device_parts=device_parts,
        cache_bytes=running.cache,
    )


def forecast_on(
    config: dict[str, Any],
    candidate: Candidate,
    workload: Workload,
    batch_size: int,
    limits: DeviceLimits,
    *,
    transformers_version: str | None = None,
    before: Sequence[int] = (),
) -> Forecast:
    """:func:`forecast_parts` on the devices ``limits`` names: a ``multi-gpu`` candidate spread over
    those GPUs (at least two) with their limits as ``max_memory``, as the trial worker loads it."""
    if candidate.placement != "multi-gpu":
        return forecast_parts(config, candidate, workload, batch_size, transformers_version=transformers_version, before=before)
    caps = limits.caps() + [None] * (2 - len(limits.devices))
    return forecast_parts(
        config, candidate, workload, batch_size, gpus=len(caps), max_memory=caps, transformers_version=transformers_version, before=before
    )


@lru_cache(maxsize=1)
def installed_transformers() -> tuple[int, int]:
    """``(major, minor)`` of the installed Transformers, from its package metadata (no import)."""
    from importlib import metadata

    try:
        return version_tuple(metadata.version("transformers"))
    except metadata.PackageNotFoundError:
        return 5, 0


@dataclass(frozen=True)
class _Running:
    """What running allocates besides the weights, at the peak, before it is placed on devices."""

    #: The KV cache held at the peak: the prompt's under a dynamic cache while the prompt is
    #: processed; the whole static cache, allocated before it; the whole cache when decoding peaks.
    kv: int
    #: The transient of the phase that peaks: one layer's prefill transient (its MLP, or its
    #: attention where the scores are materialised) and the copies a quantized matmul makes.
    activations: int
    #: The attention scores (and their softmax) held at the peak, part of ``activations``.
    scores: int
    #: The logits held at the peak (the prompt's, before Transformers 4.45; the last position's
    #: while decoding peaks; an encoder's outputs).
    logits: int
    #: LLM.int8 on a GPU: the bytes of one generation of its outlier copies that the caching
    #: allocator keeps cached per new running maximum (0 otherwise).
    int8_outlier_copies: int = 0
    #: A compiled static cache on a GPU: the CUDA graph pool that keeps the decode step's
    #: intermediates, and what compiling adds (graph bookkeeping, kernels).
    graphs: int = 0
    #: A dynamic cache on a GPU: the blocks the caching allocator keeps while every layer's K and V
    #: grow by a token a step.
    cache_growth: int = 0
    #: Blocks the caching allocator keeps from the batch sizes the same worker ran before.
    retained: int = 0
    #: The whole cache ``generate`` leaves.
    cache: int = 0
    #: A dynamic cache on a GPU under ``CACHE_MODEL = "replay"``: what the allocator model holds
    #: beyond what is allocated at the peaks of the worker's sequence (None: not replayed).
    replayed_slack: int | None = None


def _kv_bytes(shape: ModelShape, tokens: int, prompt: int, batch: int, act: int) -> int:
    """K/V bytes of every layer for ``tokens`` cached tokens (cross-attention caches hold the prompt)."""
    total = 0
    for layer in shape.kv_layers:
        cached = prompt if layer.cross else tokens
        if layer.window:
            cached = min(cached, layer.window)
        total += layer.elements_per_token * cached * batch * act
    return total


def outgrown_classes(first_bytes: int, last_bytes: int) -> int:
    """How many times a tensor re-allocated at every step as it grows from ``first_bytes`` to
    ``last_bytes`` moves to a new segment of the caching allocator's, leaving the old one behind.

    From 10 MiB up each size gets a segment of its own, rounded up to 2 MiB: the tensor outgrows
    its block each time it crosses a 2 MiB boundary, and the freed block, alone in its segment,
    fits no later (larger) size. Below 10 MiB blocks are carved from shared 20 MiB segments and
    an outgrown block merges with its free neighbours into room for the next size: nothing is
    left behind. (Replaying those rules — best fit, a block split when more than 1 MiB is left
    over, merged with its free neighbours when freed — over the decode steps alone, as the tests
    do: from 10 MiB up every size class outgrown is left, with one spare block per class; below,
    less than one 20 MiB segment. In a whole ``generate`` the blocks the prompt's pass freed take
    in part of what is left: :data:`CACHE_GROWTH`.)
    """
    if last_bytes < ALLOCATOR_OWN_SEGMENT:
        return 0
    start = max(first_bytes, ALLOCATOR_OWN_SEGMENT)
    return max(0, math.ceil(last_bytes / ALLOCATOR_CLASS) - math.ceil(start / ALLOCATOR_CLASS))


def _running(
    shape: ModelShape,
    c: Candidate,
    workload: Workload,
    b: int,
    task: str,
    version: tuple[int, int],
    notes: list[str],
    before: Sequence[int] = (),
) -> _Running:
    """The peak of running ``generate`` (or an encoder's forward), phase by phase.

    Prefill holds the KV cache of the prompt (a static cache: the whole cache, allocated before)
    and one layer's transient at a time: its MLP (gated: the gate's activation, the up projection
    and their product, ``3 x B·P·I``; plain: ``2 x B·P·I``) or its attention where the scores are
    materialised, plus the hidden-sized tensors around them (``4 x B·P·H``). Decoding holds the
    whole cache and the last position's logits. The larger phase is the peak. Measured on an
    H200 (torch 2.11, Transformers 5.17; allocated bytes, three shapes, batch 1-32, 512 prompt
    tokens and up to 32k): this accounts for every byte of the per-sequence growth to within 1%.
    """
    act = DTYPE_BYTES[c.dtype]
    prompt, new = workload.prompt_tokens, workload.new_tokens
    generating = task == "text-generation" and bool(shape.kv_layers)
    static = c.static_cache and generating
    # generate(P prompt, N new) caches P+N-1 tokens (the last one is never fed back); a static
    # cache is allocated for the same length (max_cache_len = max_length - 1 on Transformers 5)
    length = prompt + max(new, 1) - 1
    kv_full = _kv_bytes(shape, length, prompt, b, act) if generating else 0
    kv_prompt = kv_full if static else (_kv_bytes(shape, prompt, prompt, b, act) if generating else 0)
    # the keys the prompt's attention spans: a static cache hands attention every slot of the cache
    span = length if static else prompt

    hidden = 4 * b * prompt * shape.hidden_size * act
    mlp = (3 if shape.gated_mlp else 2) * b * prompt * shape.mlp_width * act
    fallback = shape.sdpa_math_fallback if c.attn == "sdpa" and c.sdpa_kernel is None else None
    if fallback:
        notes.append(fallback)
    repeated = b * shape.attention_heads * span * shape.repeated_kv_per_head * act
    attention = scores = 0
    if c.attn == "eager" or (c.attn == "sdpa" and c.sdpa_kernel == "math") or fallback:
        # the scores in the compute dtype, the softmax in fp32 and the cast back; a static cache's
        # eager mask spans the whole cache; grouped K/V are repeated to every head
        scores = b * shape.attention_heads * prompt * span * (3 * act + SCORE_EXTRA_BYTES)
        attention = scores + repeated + (b * prompt * span * act if static else 0)
    elif c.attn == "sdpa" and workload.padding_share > 0:
        attention = repeated  # a padding mask: no flash kernel, grouped K/V repeated for the masked kernel
    activations = hidden + max(mlp, attention)

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
        prefill_logits = b * prompt * shape.vocab_size * act if version < (4, 45) else 0
        last_logits = b * shape.vocab_size * (act + 2 * 4)  # the logits, in fp32, and the processed scores
        kv, logits = kv_prompt, prefill_logits
        if kv_full + last_logits > kv_prompt + activations + prefill_logits:
            kv, activations, scores, logits = kv_full, 0, 0, last_logits
    elif task == "feature-extraction":
        kv, logits = 0, b * prompt * shape.hidden_size * act
    else:
        kv, logits = 0, b * 64 * 4

    graphs = growth = 0
    replayed: int | None = None
    if c.on_gpu and static:
        # torch.compile's "reduce-overhead" records the decode step in a CUDA graph whose private
        # pool keeps its intermediates: K/V repeated to every head (a static cache's decode mask
        # is materialised, so SDPA gets no enable_gqa) and the logits
        step = b * shape.attention_heads * length * shape.repeated_kv_per_head * act if c.attn in ("sdpa", "eager") else 0
        step += b * shape.vocab_size * (act + 4)
        graphs = int(GRAPH_POOL_FACTOR * step) + COMPILED_BYTES
    elif c.on_gpu and generating and not scores:
        # every step concatenates a token to every layer's K and V (torch.cat: a new block of the
        # grown size, then the old one freed); the caching allocator keeps outgrown blocks cached
        # (see CACHE_GROWTH). Materialised scores leave large blocks cached after the prompt,
        # which the growing K/V are carved from (on an H200, eager kept 1.0 GiB beyond what was
        # allocated where SDPA kept 7.9 on the same model and batch): no growth is counted there.
        if CACHE_MODEL == "replay":
            replayed = replay_kept(shape, b, prompt, new, act, before)
        else:
            for layer in shape.kv_layers:
                if layer.cross:
                    continue
                per_token = layer.elements_per_token // 2 * b * act  # K, or V, of one layer
                first, last = (min(t, layer.window or t) * per_token for t in (prompt, length))
                growth += int(CACHE_GROWTH * max(0, outgrown_classes(first, last) - 1) * 2 * last)
    return _Running(
        kv=kv,
        activations=activations,
        scores=scores,
        logits=logits,
        int8_outlier_copies=outlier_copies,
        graphs=graphs,
        cache_growth=growth,
        cache=kv_full,
        replayed_slack=replayed,
    )


def _parts(
    c: Candidate,
    shape: ModelShape,
    weights: int,
    quant_state: int,
    running: _Running,
    *,
    kv_share: float,
    blocks: int,
    runs_layers: bool,
    head: bool,
    contexts: int,
) -> dict[str, int]:
    """The parts of one device's peak, or of the whole model's on one device.

    ``kv_share`` is the device's share of the KV cache, ``blocks`` how many repeated blocks it
    runs, ``runs_layers`` whether it runs any layer at all, ``head`` whether the logits are there.
    """
    kv = int(running.kv * kv_share)
    activations = running.activations if runs_layers else 0
    logits = running.logits if head else 0
    graphs = int(running.graphs * kv_share) if runs_layers else 0
    run = kv + activations + logits
    loading = 0
    if c.on_gpu:
        context = (CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES) * contexts
    else:
        context = CPU_BASELINE_BYTES + (BNB_CPU_IMPORT_BYTES if c.quant != "none" else 0)
        checkpoint = shape.parameters * DTYPE_BYTES[shape.checkpoint_dtype]
        loading = max(0, checkpoint - (weights + quant_state + run))
    if running.replayed_slack is not None:
        # the replay holds what the allocator keeps of the running part: it replaces the share of it
        slack = running.replayed_slack * kv_share + SLACK_WEIGHTS * (weights + quant_state)
    else:
        slack = (SLACK_STATIC if c.static_cache else SLACK_RUNNING) * run + SLACK_WEIGHTS * (weights + quant_state)
    if c.on_gpu and runs_layers:
        # the scores' blocks change size between the softmax and the casts around it: the caching
        # allocator keeps a few more of them than are live at once
        slack += SCORE_SLACK * running.scores + (running.cache_growth + running.retained) * kv_share
    if running.int8_outlier_copies and runs_layers:
        # the outlier count, so the size of those copies, changes from layer to layer: the caching
        # allocator serves each new largest request from a new block and keeps the older ones cached,
        # so over L layers it holds about H(L) = 1 + 1/2 + ... + 1/L generations (the expected
        # number of running maxima of L sizes), one of them the live copies counted above
        slack += (_harmonic(max(blocks, 1)) - 1) * running.int8_outlier_copies
    return {
        "weights": int(weights),
        "quant_state": int(quant_state),
        "kv_cache": kv,
        "activations": int(activations),
        "logits": int(logits),
        "cuda_graphs": graphs,
        "loading": int(loading),
        "runtime_context": int(context),
        "allocator_slack": int(slack),
    }


def _harmonic(n: int) -> float:
    return sum(1 / k for k in range(1, n + 1))


def _device_parts(shape: ModelShape, c: Candidate, running: _Running, split: list[list[int]], device: int) -> dict[str, int]:
    """The parts of one GPU's peak under ``device_map="auto"``: its units, its layers' share of the run."""
    units = [shape.units[i] for i in split[device]]
    weights = quant_state = 0
    for unit in units:
        w, q = weight_bytes(unit, c.dtype, c.quant, c.double_quant, c.value("group_size"))
        weights += w
        quant_state += q
    blocks = sum(1 for u in units if u.block)
    if shape.blocks:
        share, runs_layers = blocks / shape.blocks, blocks > 0
    else:  # no repeated block to follow: the KV cache goes where the weights are
        total = sum(weight_bytes(u, c.dtype, c.quant, c.double_quant, c.value("group_size"))[0] for u in shape.units) or 1
        share, runs_layers = weights / total, bool(units)
    if any(u.head for u in shape.units):
        head = any(u.head for u in units)
    else:
        head = device == len(split) - 1
    return _parts(c, shape, weights, quant_state, running, kv_share=share, blocks=blocks, runs_layers=runs_layers, head=head, contexts=1)


def device_split(
    shape: ModelShape,
    candidate: Candidate,
    devices: int,
    max_memory: Sequence[int | None] | None = None,
    version: tuple[int, int] | None = None,
) -> list[list[int]]:
    """Which of ``shape.units`` each of ``devices`` GPUs gets under ``device_map="auto"``.

    ``max_memory`` is each GPU's cap (``None``, or a ``None`` entry: no cap). Transformers balances
    the GPUs (``get_balanced_memory``): every GPU but the last may take the model's size over
    ``devices`` plus a margin of 1.25x the largest block or leaf module (the mean leaf module
    before Transformers 5.18), capped by its own ``max_memory``; the last may take its whole
    ``max_memory``. The bitsandbytes quantizers hold 10% of each back. Accelerate then fills
    the GPUs in order (``infer_auto_device_map``), keeping room on the first for the largest unit
    still to place, and puts a tied output head with its embedding. Sizes are what accelerate
    counts: quantized weights at their stored width, the rest in the load dtype, no quantization
    state. What would not fit even the last GPU is left on it (accelerate would offload it).
    """
    version = version or installed_transformers()
    c = candidate
    sizes = [0 if u.tied_to is not None else weight_bytes(u, c.dtype, c.quant, False, c.value("group_size"))[0] for u in shape.units]
    total = sum(sizes)
    stored = 0.5 if c.is_4bit or c.quant == "torchao-int4wo" else 1.0 if c.quant != "none" else DTYPE_BYTES[c.dtype]
    largest_leaf = max(max((e for e, _ in shape.quantizable), default=0) * stored, shape.largest_plain_leaf * DTYPE_BYTES[c.dtype])
    leaf = largest_leaf if version >= (5, 18) else total / max(shape.leaf_modules, 1)
    block = max((size for size, u in zip(sizes, shape.units) if u.block), default=0)
    per_gpu = total // devices + int(BALANCE_MARGIN * max(block, leaf))
    caps = [float(m) if m else math.inf for m in (list(max_memory or ()) + [None] * devices)[:devices]]
    budgets = [min(per_gpu, cap) for cap in caps[:-1]] + [caps[-1]]
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


def largest_batch(
    config: dict[str, Any],
    candidate: Candidate,
    workload: Workload,
    limits: Sequence[int],
    *,
    task: str | None = None,
    cap: int = 1 << 16,
    adjust: Callable[[int], int] | None = None,
) -> int:
    """The largest batch whose forecast peak stays within the limit on every device; 0 if none.

    ``limits`` are the bytes each device may use: one entry for a candidate on one device; for a
    ``multi-gpu`` candidate one per GPU, which it is spread over with those as ``max_memory``, as
    the trial worker loads it. ``adjust`` turns a forecast figure into the one held against a
    limit (a calibration, a safety margin). The search stops at ``cap``.
    """
    task = task or workload.task
    shape = model_shape(config, task)
    spread = candidate.placement == "multi-gpu"
    held = list(limits) if spread else list(limits[:1])

    def fits(batch: int) -> bool:
        f = forecast_shape(
            shape, candidate, workload, batch, task=task, gpus=len(held) if spread else None, max_memory=held if spread else None
        )
        return all((adjust(peak) if adjust else peak) <= limit for peak, limit in zip(f.device_bytes, held))

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
