"""The trial worker: load one candidate configuration of a model and measure it, in its own process.

The worker is its own small world: it loads models and measures them, and never touches the
database or the search. The caller builds a :class:`WorkerRequest` and calls :func:`run`, which
starts ``python -m autotune.worker.child`` in a new process session, waits for it with a time
limit, and returns one :class:`BatchResult` per batch size. Whatever happens in the child —
CUDA out of memory, a segfault, a hang, an ImportError — comes back as a classified result with
its reason; the caller never imports torch for it and always goes on.

What a result holds:

- ``status``: one of :data:`STATUSES`.
- ``metrics`` (names of :data:`autotune.store.records.METRICS`): ``load_seconds``;
  ``compile_seconds`` (the first call at a batch size minus the median timed call: static-cache
  compile, flex_attention compile); for text generation ``ttft_ms`` (median time of a call that
  stops after the first new token), ``latency_p50_ms``/``latency_p90_ms`` (end-to-end
  ``generate`` of the workload's new tokens), ``throughput_tokens_per_s`` (batch x new tokens /
  median end-to-end), ``decode_tokens_per_s`` (batch x (new tokens - 1) / (median end-to-end -
  median TTFT)); for encoders ``latency_p50_ms``/``latency_p90_ms`` of one forward pass and
  ``sequences_per_s`` (batch / median); ``latency_spread`` = (p90 - p10) / p50 of the timed
  end-to-end repeats, and ``repeats``; memory: on GPU ``peak_memory_bytes`` is the process's
  memory as NVML sees it (the largest of its GPUs; CUDA context included), else torch's peak
  reserved, ``torch_allocated_bytes``/``torch_reserved_bytes`` are torch's peaks and
  ``nvml_used_bytes`` NVML's; on the CPU ``peak_memory_bytes`` is the process's peak RSS since it
  started (loading included) and ``rss_bytes`` the largest RSS sampled while this batch ran;
  quality: ``quality_token_agreement`` and ``quality_kl`` (see :mod:`autotune.worker.quality`).
- ``effective``: what the loaded model really is — attention implementation in force, linear
  layers quantized out of all, parameter dtypes, device placement, whether the static-cache
  ``generate`` compiled. An option that did not take effect makes the result ``unsupported``
  with a reason that says what did not happen; it is never measured as if it had.
"""

from __future__ import annotations

from autotune.worker.launcher import launch, run
from autotune.worker.protocol import FAULTS, STATUSES, BatchResult, WorkerOutcome, WorkerRequest

__all__ = ["FAULTS", "STATUSES", "BatchResult", "WorkerOutcome", "WorkerRequest", "launch", "run"]
