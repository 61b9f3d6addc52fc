"""What is known about a candidate before it runs, and what its measured neighbours say.

The search orders candidates by what they are expected to achieve, so that the best one of a
space is measured early and the rest only while they could still beat it. The expectation is a
product of *effects*, one per axis on which a candidate differs from the plain load (bf16 or the
checkpoint's dtype, SDPA, no quantization, one GPU, a dynamic cache, PyTorch): static cache x3.5
on a GPU at batch 1, eager over SDPA x1.15 where the forecast knows SDPA falls back to its math
kernel, nf4 x0.72, and so on. Each effect has an uncertainty (a standard deviation of its log)
and a source: a rule (written here, from measurements named beside it), a fact the memory
forecast knows about this model, or a *warm start* — the same effect measured in earlier studies
of the same store on the same kind of GPU.

Inside a study, a candidate's figure is predicted from its measured neighbours: the neighbour's
measured figure times the effects of the axes on which the two differ, with the uncertainty of
those effects. A candidate is worth measuring while its optimistic prediction (one standard
deviation up) beats the best measured figure by more than the study's tolerance; the search
measures the most promising one first and stops when none is left (``knowledge exhausted``).

Figures are handled as *speed* (higher is better): a throughput as it is, a latency or a peak
memory as its inverse. For the memory objective the expectation is the memory forecast itself.
Nothing here imports torch, Transformers or Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.workload import Workload

#: The value of each axis that effects are relative to (a candidate with all of them is "plain").
PLAIN = {
    "dtype": "bfloat16",
    "attn": "sdpa",
    "quant": "none",
    "double_quant": False,
    "compute_dtype": "same",
    "placement": "cuda",
    "static_cache": False,
    "runtime": "pytorch",
}
#: Noise of one measured log-ratio when it is used as evidence for an effect in another study:
#: the same model family, and another one.
WARM_SAME_FAMILY = 0.08
WARM_OTHER_FAMILY = 0.2
#: Prompts of this many tokens and more are long: attention's share of the work grows with the
#: prompt, and the fastest implementation changes (FlashAttention-4 against SDPA: -28% at 512 + 128
#: tokens, +2% prefilling 32,768 on one H100, Llama-3-8B shape; BENCHMARKS.md §9).
LONG_PROMPT = 4096


def workload_class(workload: Workload) -> tuple[bool, bool]:
    """What an effect measured on one workload must share with another to say anything about it:
    whether the prompt is long (:data:`LONG_PROMPT`), and whether a call decodes more than the
    first token. An attention implementation or a compiled static cache that loses on a short
    prompt and many new tokens can win prefilling a long one, so earlier studies warm-start only
    studies of their own class (as well as their own objective and kind of GPU)."""
    return workload.prompt_tokens >= LONG_PROMPT, workload.new_tokens > 1


@dataclass(frozen=True)
class Effect:
    """The expected multiplicative change of a candidate's speed when one axis takes ``value``.

    ``factor`` multiplies the speed (above 1: faster, or smaller for the memory objective);
    ``sigma`` is the standard deviation of ``log(factor)``; ``source`` is ``rule``, ``forecast``
    or ``warm start``; ``reason`` says where the number comes from.
    """

    axis: str
    value: Any
    factor: float
    sigma: float
    source: str
    reason: str

    def describe(self) -> str:
        return f"{self.label()} x{self.factor:.2f} ({self.source}: {self.reason})"

    def label(self) -> str:
        if self.axis == "static_cache":
            return "static cache" if self.value else "dynamic cache"
        if self.axis == "double_quant":
            return "double quantization"
        return f"{self.axis} {self.value}"


@dataclass(frozen=True)
class Expectation:
    """What is known about a candidate before it runs: its speed relative to the plain load."""

    factor: float
    sigma: float
    effects: tuple[Effect, ...]

    @property
    def sources(self) -> set[str]:
        return {e.source for e in self.effects}

    def describe(self) -> str:
        if not self.effects:
            return "the plain load"
        return f"x{self.factor:.2f} the plain load: " + "; ".join(e.describe() for e in self.effects)

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": round(self.factor, 4),
            "sigma": round(self.sigma, 4),
            "effects": [
                {
                    "axis": e.axis,
                    "value": e.value,
                    "factor": round(e.factor, 4),
                    "sigma": round(e.sigma, 4),
                    "source": e.source,
                    "reason": e.reason,
                }
                for e in self.effects
            ],
        }


@dataclass(frozen=True)
class Prediction:
    """A candidate's predicted speed in this study, from a measured neighbour (or the prior alone)."""

    speed: float | None
    sigma: float
    neighbour: Candidate | None
    expectation: Expectation

    def optimistic(self, z: float = 1.0) -> float | None:
        return None if self.speed is None else self.speed * math.exp(z * self.sigma)


@dataclass(frozen=True)
class PastResult:
    """One measured candidate of an earlier study, for the warm start: its speed and its model family."""

    study_id: int
    model_type: str
    candidate: Candidate
    speed: float


@dataclass
class Knowledge:
    """The effects that apply to one model, workload and environment.

    ``sdpa_fallback`` is the memory forecast's reason why this model's SDPA call cannot use a
    fused kernel (``None``: it can); ``past`` are measured results of earlier studies on the same
    kind of GPU and objective (the warm start); ``forecast`` gives a candidate's forecast peak in
    bytes at batch 1 (the memory objective's expectation).
    """

    workload: Workload
    environment: Environment
    model_type: str = ""
    sdpa_fallback: str | None = None
    past: list[PastResult] = field(default_factory=list)
    forecast: Callable[[Candidate], int | None] | None = None
    _cache: dict[str, Expectation] = field(default_factory=dict, repr=False)

    @property
    def on_gpu(self) -> bool:
        return bool(self.environment.gpus) and self.workload.device != "cpu"

    # -- effects ------------------------------------------------------------------------------

    def effects(self, candidate: Candidate) -> list[Effect]:
        """The rule and forecast effects of each axis on which ``candidate`` is not plain, warm-started where measured."""
        out = []
        for axis, value in axes(candidate).items():
            if value == PLAIN[axis]:
                continue
            effect = self._rule(axis, value, candidate)
            if effect is None:
                continue
            out.append(self._warm(effect))
        return out

    def expect(self, candidate: Candidate) -> Expectation:
        key = candidate.key()
        if key not in self._cache:
            if self.workload.objective == "memory":
                self._cache[key] = self._memory_expectation(candidate)
            else:
                effects = tuple(e for e in self.effects(candidate) if e.factor != 1.0 or e.sigma > 0)
                factor = math.prod(e.factor for e in effects) if effects else 1.0
                sigma = math.sqrt(sum(e.sigma**2 for e in effects))
                self._cache[key] = Expectation(factor, sigma, effects)
        return self._cache[key]

    def _memory_expectation(self, candidate: Candidate) -> Expectation:
        peak = self.forecast(candidate) if self.forecast is not None else None
        plain = self.forecast(Candidate(dtype=candidate.dtype, placement=candidate.placement)) if self.forecast is not None else None
        if not peak or not plain:
            return Expectation(1.0, 0.5, ())
        factor = plain / peak
        effect = Effect(
            "memory",
            candidate.label(),
            factor,
            0.1,
            "forecast",
            f"forecast peak {peak / 2**30:.2f} GiB against {plain / 2**30:.2f} GiB for the plain load",
        )
        return Expectation(factor, 0.1, (effect,))

    def _rule(self, axis: str, value: Any, candidate: Candidate) -> Effect | None:
        gpu = self.on_gpu
        latency = self.workload.objective == "latency" or self.workload.max_batch == 1
        if axis == "static_cache" and value:
            if not gpu:
                return Effect(axis, value, 1.0, 0.5, "rule", "a static cache compiles only on GPUs; unknown here")
            if latency:
                return Effect(
                    axis,
                    value,
                    3.5,
                    0.35,
                    "rule",
                    "compiled decode without generate's per-token Python work: 3.3-4.3x at batch 1 on H200 (1B, 7B, 8B; BENCHMARKS.md)",
                )
            return Effect(axis, value, 1.6, 0.3, "rule", "1.7-2.2x at batch 16 and 2.8x at batch 32 on H200 (BENCHMARKS.md)")
        if axis == "attn":
            return self._attention(str(value), candidate)
        if axis == "dtype":
            if value == "float16":
                return Effect(
                    axis,
                    value,
                    1.0,
                    0.02 if gpu else 0.3,
                    "rule",
                    "same tensor-core rate as bf16 on GPUs of compute capability 8.0 and later" if gpu else "unknown on CPUs",
                )
            if value == "float32":
                return Effect(
                    axis,
                    value,
                    0.45 if gpu else 1.0,
                    0.3 if gpu else 0.4,
                    "rule",
                    "no bf16 tensor cores: several times fewer FLOP/s" if gpu else "CPUs differ: bf16 is faster with AMX only",
                )
            return None
        if axis == "quant" and str(value).startswith(("torchao-", "fp8-fine")):
            quant = str(value).partition("[")[0]
            if not gpu:
                # measured here: a tiny Llama on 2 busy cores, 32 + 8 tokens (benchmarks/quantized_decode.py --tiny)
                return Effect(axis, value, 0.7, 0.3, "rule", "torchao weight-only on the CPU: 0.6-0.8x bf16 (tiny Llama, 2 cores)")
            # torchao's own Llama-3.1-8B benchmark on an H100 (compiled, batch 1) against bf16: int8 weight-only 1.57x,
            # int4 1.90x, float8 weight-only 1.41x, float8 per-row 1.22x; inside Transformers' generate far less
            # has been seen, and fine-grained FP8 synchronises after every linear layer: modest priors, wide sigmas
            factors = {
                "torchao-int8wo": (1.1, 0.4, "int8 weight-only: 1.57x bf16 in torchao's benchmark, less inside Transformers"),
                "torchao-int4wo": (1.15, 0.45, "int4 weight-only: 1.90x bf16 in torchao's benchmark, less inside Transformers"),
                "torchao-float8wo": (1.0, 0.4, "float8 weight-only: 1.41x bf16 in torchao's benchmark, less inside Transformers"),
                "torchao-float8dq": (0.9, 0.4, "float8 per-row: 1.22x bf16 in torchao's benchmark, less inside Transformers"),
                "fp8-fine": (0.6, 0.4, "fine-grained FP8 synchronises after every linear layer"),
            }
            factor, sigma, reason = factors[quant]
            return Effect(axis, value, factor, sigma, "rule", reason)
        if axis == "quant":
            if not gpu:
                return Effect(axis, value, 0.2, 0.6, "rule", "bitsandbytes' CPU kernels: 5-15x slower to measure than unquantized")
            factors = {
                "bnb-4bit-nf4": (0.72, 0.2, "nf4 -28% at batch 32 on H200 (Llama-1B)"),
                "bnb-4bit-fp4": (0.55, 0.25, "fp4 -20% at batch 1, -54% at batch 32 on H200 (Llama-1B)"),
                "bnb-8bit": (0.3, 0.3, "LLM.int8 -70% at batch 32 on H200 (Llama-1B)"),
            }
            factor, sigma, reason = factors.get(str(value), (0.5, 0.4, "unmeasured quantization"))
            return Effect(axis, value, factor, sigma, "rule", reason)
        if axis == "double_quant" and value:
            return Effect(axis, value, 0.7, 0.2, "rule", "nf4 with double quantization -34% to -46% on H200 (Llama-1B)")
        if axis == "compute_dtype" and value != "same":
            if value == "float32":
                return Effect(axis, value, 0.6, 0.3, "rule", "4-bit matmuls computed in fp32")
            return Effect(axis, value, 1.0, 0.1, "rule", "another 16-bit compute dtype")
        if axis == "placement":
            if value == "multi-gpu":
                return Effect(axis, value, 0.7, 0.2, "rule", "a layer split over two GPUs: -17% at batch 1, -38% at batch 8 on H200")
            return None
        if axis == "runtime" and value != "pytorch":
            return Effect(axis, value, 0.9, 0.5, "rule", "ONNX Runtime: no measurement to go by")
        return None

    def _attention(self, value: str, candidate: Candidate) -> Effect | None:
        attn, _, kernel = value.partition("[")
        kernel = kernel.rstrip("]")
        gpu = self.on_gpu
        if not gpu:
            return (
                None
                if attn == "sdpa" and not kernel
                else Effect("attn", value, 1.0, 0.2, "rule", "attention kernels differ little on CPUs")
            )
        fallback = self.sdpa_fallback
        if attn == "eager":
            if fallback:
                return Effect("attn", value, 1.15, 0.15, "forecast", f"{fallback}; eager was 10-27% faster on H200 (Falcon-7B)")
            return Effect("attn", value, 0.9, 0.15, "rule", "eager -3% to -25% against SDPA on H200 (Llama-1B, batch 1-32)")
        if attn == "sdpa" and kernel:
            if fallback and kernel != "math":
                return Effect("attn", value, 0.5, 0.1, "forecast", f"{fallback}: a pinned {kernel} kernel finds no kernel for the call")
            factors = {
                "flash": (1.03, 0.05, "+3% to +10% on H200 (Llama-1B)"),
                "efficient": (1.0, 0.1, "often no kernel for the call"),
                "cudnn": (0.97, 0.1, "-10% to +2% on H200 (Llama-1B)"),
                "math": (0.7, 0.2, "materialises the scores"),
            }
            factor, sigma, reason = factors.get(kernel, (1.0, 0.2, "unmeasured kernel"))
            return Effect("attn", value, factor, sigma, "rule", reason)
        if attn == "flex_attention":
            return Effect("attn", value, 0.7, 0.2, "rule", "flex_attention -35% to -40% on H200 (small Llama)")
        if attn.startswith("flash_attention"):
            if self.workload.prompt_tokens >= LONG_PROMPT:
                reason = "FlashAttention-4 +8% on 8k-32k prompts on H200 (Llama-1B), -1% to +2% on H100 (Llama-3-8B shape)"
                return Effect("attn", value, 1.04, 0.1, "rule", reason)
            reason = "FlashAttention-4 -36% at 512+128 tokens on H200 (Llama-1B), -28% at batch 1 and -20% at 16 on H100 (8B)"
            return Effect("attn", value, 0.75, 0.25, "rule", reason)
        return None if attn == "sdpa" else Effect("attn", value, 0.8, 0.3, "rule", "unmeasured attention implementation")

    def _warm(self, effect: Effect) -> Effect:
        """The effect updated with what earlier studies measured of it (precision-weighted in log space)."""
        observations = list(self._observed(effect.axis, effect.value))
        if not observations:
            return effect
        precision = 1 / effect.sigma**2 if effect.sigma > 0 else 1e6
        total = precision * math.log(effect.factor)
        for log_ratio, noise in observations:
            precision += 1 / noise**2
            total += log_ratio / noise**2
        factor = math.exp(total / precision)
        studies = len({s for s, _, _ in self._pairs(effect.axis, effect.value)})
        reason = (
            f"{len(observations)} measured pair{'s' * (len(observations) != 1)} in {studies} earlier "
            f"stud{'ies' if studies != 1 else 'y'} on {self.device_kind} (rule alone: x{effect.factor:.2f})"
        )
        return Effect(effect.axis, effect.value, factor, math.sqrt(1 / precision), "warm start", reason)

    @property
    def device_kind(self) -> str:
        return self.environment.gpus[0].name if self.environment.gpus else "this CPU"

    def _pairs(self, axis: str, value: Any) -> Iterable[tuple[int, float, float]]:
        """``(study, log speed ratio, noise)`` for pairs of past candidates that differ only in ``axis``:
        one with ``value``, one plain on that axis."""
        by_study: dict[int, list[PastResult]] = {}
        for result in self.past:
            by_study.setdefault(result.study_id, []).append(result)
        plain_value = PLAIN.get(axis)
        for study, results in by_study.items():
            index = {_signature(axes(r.candidate), axis): r for r in results if axes(r.candidate).get(axis) == plain_value}
            for result in results:
                values = axes(result.candidate)
                if values.get(axis) != value:
                    continue
                base = index.get(_signature(values, axis))
                if base is None or base.speed <= 0 or result.speed <= 0:
                    continue
                noise = WARM_SAME_FAMILY if result.model_type == self.model_type else WARM_OTHER_FAMILY
                yield study, math.log(result.speed / base.speed), noise

    def _observed(self, axis: str, value: Any) -> Iterable[tuple[float, float]]:
        for _, log_ratio, noise in self._pairs(axis, value):
            yield log_ratio, noise

    # -- predictions --------------------------------------------------------------------------

    def predict(self, candidate: Candidate, measured: Mapping[str, tuple[Candidate, float]]) -> Prediction:
        """The speed of ``candidate`` predicted from the measured candidate it is best known from.

        ``measured`` maps candidate keys to (candidate, measured speed). Between a neighbour and
        the candidate, only the axes on which they differ count: the neighbour's speed times the
        ratio of their expectations, with the uncertainty of the differing effects.
        """
        mine = self.expect(candidate)
        best: Prediction | None = None
        for other, speed in measured.values():
            if speed is None or speed <= 0:
                continue
            theirs = self.expect(other)
            sigma = _difference_sigma(self, candidate, other)
            guess = Prediction(speed * mine.factor / theirs.factor, sigma, other, mine)
            if best is None or sigma < best.sigma or (sigma == best.sigma and (guess.speed or 0) > (best.speed or 0)):
                best = guess
        return best or Prediction(None, mine.sigma, None, mine)


def axes(candidate: Candidate) -> dict[str, Any]:
    """The candidate's value on each axis of :data:`PLAIN` (the search's own view, without batch)."""
    from autotune.search.space import params_of

    values = params_of(candidate)
    return {axis: values.get(axis) for axis in PLAIN}


def _signature(values: Mapping[str, Any], skip: str) -> tuple[Any, ...]:
    return tuple((a, values.get(a)) for a in PLAIN if a != skip)


def _difference_sigma(knowledge: Knowledge, a: Candidate, b: Candidate) -> float:
    """The uncertainty of the expectation ratio of two candidates: their effects on the axes where they differ."""
    if knowledge.workload.objective == "memory":
        return 0.1 if a.key() != b.key() else 0.0
    va, vb = axes(a), axes(b)
    total = 0.0
    for axis in PLAIN:
        if va[axis] == vb[axis]:
            continue
        for candidate, values in ((a, va), (b, vb)):
            if values[axis] == PLAIN[axis]:
                continue
            effect = knowledge._rule(axis, values[axis], candidate)
            if effect is not None:
                total += knowledge._warm(effect).sigma ** 2
    return math.sqrt(total)
