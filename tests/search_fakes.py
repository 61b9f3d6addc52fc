"""A fake trial worker for the search and daemon tests: instant, deterministic, no subprocess.

It follows :func:`autotune.trials.measure_candidate`'s contract: one ``running`` row per batch
size recorded before "measuring", then each finished with metrics, ``feasible`` and
``objective_value`` from :func:`autotune.objective.score`; the ladder stops at the first OOM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autotune.candidate import Candidate
from autotune.environment import Environment, Gpu
from autotune.objective import score
from autotune.registry import ResolvedModel
from autotune.store import ModelRecord, Store, TrialRecord
from autotune.worker.ladder import Ladder
from autotune.worker.protocol import Screen
from autotune.workload import Workload

LLAMA_CAPS = {"architecture": "LlamaForCausalLM", "attn_implementations": ["eager", "sdpa", "flash_attention_2", "flex_attention"]}
TINY_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "dtype": "float32",
}
CPU_WORKLOAD = Workload(device="cpu", prompt_tokens=16, new_tokens=8, max_batch=8)


def cpu_env(**versions: str | None) -> Environment:
    return Environment(gpus=(), versions={"torch": "2.13.0", "transformers": "5.24.0", "bitsandbytes": "0.50.2", **versions})


def gpu_env(count: int = 1, memory: int = 80 * 2**30, **versions: str | None) -> Environment:
    gpus = tuple(
        Gpu(index=i, uuid=f"GPU-{i}", name="NVIDIA H100 80GB HBM3", total_memory=memory, free_memory=memory, compute_capability=(9, 0))
        for i in range(count)
    )
    return Environment(
        gpus=gpus,
        versions={"torch": "2.13.0", "transformers": "5.24.0", "bitsandbytes": "0.50.2", **versions},
        driver_version="580.65",
        cuda_driver_version="13.0",
    )


def add_model(
    store: Store,
    name: str = "org/tiny",
    workload: Workload = CPU_WORKLOAD,
    config: dict[str, Any] | None = None,
    caps: dict[str, Any] | None = None,
) -> ModelRecord:
    resolved = ResolvedModel(name=name, source="local", path=f"/models/{name}", revision=None, config=config or TINY_LLAMA)
    record, _, _ = store.upsert_model(resolved, caps or LLAMA_CAPS, workload)
    return record


def speed(c: Candidate, batch: int) -> float:
    """A made-up but structured throughput landscape (bf16 + sdpa[flash] + static is best)."""
    base = {"float32": 100.0, "float16": 150.0, "bfloat16": 160.0}[c.dtype]
    base *= {"eager": 0.8, "sdpa": 1.0, "flex_attention": 0.9}.get(c.attn, 1.0)
    base *= {None: 1.0, "flash": 1.1, "math": 0.7}.get(c.sdpa_kernel, 1.0)
    base *= {"none": 1.0, "bnb-8bit": 0.4, "bnb-4bit-nf4": 0.6, "bnb-4bit-fp4": 0.55}[c.quant]
    if c.static_cache:
        base *= 1.3
    return base * batch**0.7


class FakeMeasure:
    """Callable like ``measure_candidate``; remembers what it measured.

    fp32 runs out of memory from batch 8; fp4 fails the quality floor. ``fail`` raises for
    candidates whose label contains it. The batch sizes are visited as the real worker visits
    them (:class:`autotune.worker.ladder.Ladder`, with the ``ladder`` and ``screen`` asked for),
    and a size whose figure is far behind the screen's figure to beat ends ``screened``.
    """

    def __init__(self, fail: str | None = None, during: Any = None, landscape: Any = None, latency: Any = None) -> None:
        self.speed = landscape or speed
        self.calls: list[tuple[Candidate, tuple[int, ...], str]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.fail = fail
        self.during = during  # called with the call's index once its rows are running
        self.latency = latency  # (candidate, workload) -> milliseconds of one request, instead of speed()

    def __call__(
        self,
        store: Store,
        model: ModelRecord,
        candidate: Candidate,
        batch_sizes: Sequence[int],
        *,
        environment: Environment,
        environment_id: int,
        study: Any,
        origin: str = "search",
        timeout_s: float | None = None,
        fault: str | None = None,
        on_spawn: Any = None,
        ladder: str = "rising",
        screen: Screen | None = None,
        details: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[TrialRecord]:
        self.calls.append((candidate, tuple(batch_sizes), origin))
        self.kwargs.append({"ladder": ladder, "screen": screen, "details": details, **kwargs})
        rows = {b: store.start_trial(study.id, candidate, b, origin=origin) for b in batch_sizes}
        if self.fail and self.fail in candidate.label():
            raise RuntimeError("the worker launcher broke")
        if on_spawn is not None:
            on_spawn(999999)
        if self.during is not None:
            self.during(len(self.calls) - 1)
        out: dict[int, TrialRecord] = {}
        steps = Ladder(tuple(batch_sizes), ladder, screen)
        metric = screen.metric if screen else None
        while (b := steps.next()) is not None:
            row = rows[b]
            if b >= 8 and candidate.dtype == "float32":
                out[b] = store.finish_trial(row.id, "oom", reason="out of memory", feasible=False, details=dict(details or {}))
                steps.record(b, "oom")
                continue
            latency = self.latency(candidate, study.workload) if self.latency else 1000 / self.speed(candidate, 1)
            metrics = {
                "throughput_tokens_per_s": self.speed(candidate, b),
                "latency_p50_ms": latency,
                "peak_memory_bytes": 10**6 * b * (4 if candidate.dtype == "float32" else 2),
                "quality_token_agreement": 0.5 if candidate.quant == "bnb-4bit-fp4" else 1.0,
            }
            if screen is not None and screen.hopeless(metrics[screen.metric]):
                value = metrics[screen.metric]
                out[b] = store.finish_trial(
                    row.id,
                    "screened",
                    metrics={**metrics, "repeats": 1},
                    feasible=False,
                    objective_value=value,
                    reason="screened out after one timed run",
                    details=dict(details or {}),
                )
                steps.record(b, "screened", value)
                continue
            s = score(study.workload, "ok", metrics, None)
            out[b] = store.finish_trial(
                row.id,
                "ok",
                metrics=metrics,
                feasible=s.feasible,
                objective_value=s.value,
                reason="; ".join(s.reasons) or None,
                details=dict(details or {}),
            )
            steps.record(b, "ok", metrics.get(metric) if metric else None)
        for left in steps.leftover():
            out[left.batch_size] = store.finish_trial(
                rows[left.batch_size].id, left.status, reason=left.reason, feasible=False, details=dict(details or {})
            )
        return [out[b] for b in sorted(out)]

    @property
    def keys(self) -> list[str]:
        return [c.key() for c, _, _ in self.calls]
