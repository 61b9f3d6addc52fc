"""How tokens are generated: plain, prompt lookup or an assistant model, timed on text.

Runs only inside the worker child.

A drafting strategy (:data:`autotune.axes.GENERATION`) proposes several tokens and verifies them
in one forward pass; how many it gets right depends on the text. So a workload that compares
strategies (``autotune add --prompt-lookup`` or ``--assistant``) is timed at batch 1 on text, for
every candidate, plain ones included, so that they are compared on the same text: the workload's
own prompts when the user gave them (``--quality-prompts``), else the built-in ones, and the
trial says which (``details["generation"]["text"]``). Each prompt keeps its last
``prompt_tokens`` tokens (the end of an instruction is what asks for the answer); the first
:data:`TIMED_PROMPTS` prompts are generated one after the other, ``new_tokens`` each, and one
timed call is that whole pass.

Before timing, one untimed pass (which is also the warm-up and the memory pass) generates each
prompt twice: plain greedy, then with the strategy, counting the model's forward passes. The tokens
must be identical: with greedy decoding a drafted token is kept only where the model itself would
have chosen it. A difference is a classified failure (``unsupported``) that names the prompt and
the first differing position. ``tokens_per_forward`` (new tokens over the model's forward passes,
prefill included: 1.0 for plain generation) is the strategy's acceptance, kept in the trial's
``effective`` and ``details``.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from autotune import axes
from autotune import prompts as builtin
from autotune.worker.backends._base import OptionNotInEffect
from autotune.worker.measure import (
    HostLoad,
    Measured,
    StopAfterFirstToken,
    input_device,
    memory_pass,
    model_gpus,
    pad_id,
    percentile,
    repeat,
    settle,
    spread,
    timed,
    vocab_size,
)
from autotune.worker.protocol import WorkerRequest

#: How many prompts one timed call generates, one after the other.
TIMED_PROMPTS = 8


def text_timed(request: WorkerRequest, batch: int) -> bool:
    """Whether this batch size is timed on text: batch 1 of a workload that compares strategies."""
    if request.task != "text-generation" or batch != 1:
        return False
    return axes.drafts(request.candidate.to_dict()) or axes.generations_offered(request.workload) != (axes.PLAIN,)


def text_rows(model: Any, request: WorkerRequest) -> tuple[list[torch.Tensor], str]:
    """The timing prompts as token ids (each its last ``prompt_tokens`` tokens), and what they are.

    Raises :class:`OptionNotInEffect` where the model has no usable tokenizer: drafting is timed on text.
    """
    from autotune.worker.quality import _tokenizer

    tokenizer, why = _tokenizer(request)
    generation = request.candidate.value("generation")
    if tokenizer is None:
        raise OptionNotInEffect("unsupported", f"generation {generation}: strategies are timed on text, and {why}")
    texts = (request.quality_prompts or builtin.PROMPTS)[:TIMED_PROMPTS]
    length, vocab = request.workload.prompt_tokens, vocab_size(model)
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"][-length:]
        if ids and max(ids) < vocab:
            rows.append(torch.tensor(ids, dtype=torch.long))
    if not rows:
        raise OptionNotInEffect("unsupported", f"generation {generation}: none of the prompts tokenizes within the model's vocabulary")
    return rows, f"the first {len(rows)} of the {builtin.describe(request.quality_prompts)}"


def load_assistant(model: Any, request: WorkerRequest) -> Any:
    """The registered draft model, in the candidate's dtype, where the model's inputs go."""
    entry = request.workload.extra.get("assistant") or {}
    path = entry.get("path") if isinstance(entry, dict) else None
    if not path:
        raise OptionNotInEffect("unsupported", "generation assistant: no draft model is registered (autotune add MODEL --assistant DRAFT)")
    try:
        draft = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, request.candidate.dtype), device_map=str(input_device(model))
        )
    except Exception as exc:  # a draft that does not load is this candidate's failure, not the worker's
        from autotune.worker.loading import first_line

        raise OptionNotInEffect(
            "unsupported", f"generation assistant: the draft model {entry.get('name') or path} does not load ({first_line(exc)})"
        ) from None
    draft.eval()
    return draft


def strategy_kwargs(request: WorkerRequest, assistant: Any) -> dict[str, Any]:
    """The ``generate`` arguments of the candidate's strategy (none for plain generation)."""
    kwargs = axes.generate_kwargs(request.candidate.to_dict())
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    return kwargs


class ForwardCounter:
    """Counts a module's forward calls while the ``with`` block runs."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.calls = 0

    def _count(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1

    def __enter__(self) -> ForwardCounter:
        self._handle = self.module.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def first_difference(plain: list[list[int]], drafted: list[list[int]]) -> dict[str, Any] | None:
    """Where the drafted tokens first differ from the plain ones: ``{"prompt", "position", "plain",
    "drafted"}`` (a token id, or ``None`` past the end of a shorter output); ``None`` when identical."""
    for prompt, (a, b) in enumerate(zip(plain, drafted)):
        if a == b:
            continue
        position = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return {
            "prompt": prompt,
            "position": position,
            "plain": a[position] if position < len(a) else None,
            "drafted": b[position] if position < len(b) else None,
        }
    return None


def mismatch_reason(generation: str, difference: dict[str, Any]) -> str:
    return (
        f"generation {generation}: its tokens differ from plain greedy generation at prompt {difference['prompt'] + 1}, "
        f"new token {difference['position'] + 1} (plain {difference['plain']}, drafted {difference['drafted']}); "
        f"with greedy decoding they must be identical, so this strategy is not used"
    )


def measure_on_text(model: Any, request: WorkerRequest, probe: Any) -> Measured:
    """Time batch 1 on text (see the module docstring) and check the strategy's tokens against plain greedy."""
    candidate, workload = request.candidate, request.workload
    generation = candidate.value("generation")
    rows, source = text_rows(model, request)
    device = input_device(model)
    new = workload.new_tokens
    base: dict[str, Any] = {"do_sample": False, "max_new_tokens": new, "min_new_tokens": new, "pad_token_id": pad_id(model)}
    assistant = load_assistant(model, request) if generation == axes.ASSISTANT else None
    kwargs = strategy_kwargs(request, assistant)
    inputs = [
        {"input_ids": row[None, :].to(device), "attention_mask": torch.ones(1, len(row), dtype=torch.long, device=device)} for row in rows
    ]

    def generate(one: dict[str, torch.Tensor], **more: Any) -> list[int]:
        with torch.no_grad():
            out = model.generate(**one, **base, **more)
        return out[0, one["input_ids"].shape[1] :].tolist()

    def full() -> None:
        for one in inputs:
            generate(one, **kwargs)

    stops = [StopAfterFirstToken(one["input_ids"].shape[1]) for one in inputs]

    def first() -> None:
        for one, stop in zip(inputs, stops):
            generate(one, **kwargs, stopping_criteria=transformers.StoppingCriteriaList([stop]))

    # The check pass: plain greedy, then the strategy with its forward passes counted. It is the
    # warm-up and the memory pass too (the sampler thread never runs during a timed call).
    plain: list[list[int]] = []
    drafted: list[list[int]] = []
    forwards: list[int] = []
    first_call = 0.0
    with memory_pass(model, probe) as memory:
        for one in inputs:
            more = dict(kwargs)
            if axes.drafts(candidate.to_dict()):
                plain.append(generate(one))
                if request.fault == "mismatch":  # test-only: a strategy that changes the tokens
                    more["suppress_tokens"] = [plain[-1][0]]
            with ForwardCounter(model) as counter:
                seconds, tokens = timed(lambda one=one, more=more: generate(one, **more))
            first_call += seconds
            drafted.append(tokens)
            forwards.append(counter.calls)
        # the pass above was the first warm-up; more until two agree (see measure.settle)
        settle(lambda: timed(full)[0], request.warmup, request.target_spread, done=(first_call,))
    generated = [len(tokens) for tokens in drafted]
    per_prompt = [round(n / f, 4) if f else None for n, f in zip(generated, forwards)]
    tokens_per_forward = sum(generated) / sum(forwards) if sum(forwards) else None
    effective: dict[str, Any] = {"generation": generation, "tokens_per_forward": tokens_per_forward}
    if plain:
        difference = first_difference(plain, drafted)
        effective["identical_tokens"] = difference is None
        if difference is not None:
            effective["first_difference"] = difference
            raise OptionNotInEffect("unsupported", mismatch_reason(generation, difference), effective)
    with HostLoad(probe, model_gpus(model) if probe is not None else None) as host:
        ttft, ttft_capped = repeat(first, request)
        e2e, e2e_capped = (ttft, ttft_capped) if new == 1 else repeat(full, request)
    count = len(inputs)
    total = sum(generated)
    p50, ttft50 = percentile(e2e, 50), percentile(ttft, 50)
    metrics: dict[str, Any] = {
        "ttft_ms": ttft50 / count * 1e3,
        "latency_p50_ms": p50 / count * 1e3,
        "latency_p90_ms": percentile(e2e, 90) / count * 1e3,
        "latency_spread": spread(e2e),
        "repeats": len(e2e),
        "throughput_tokens_per_s": total / p50,
        "decode_tokens_per_s": (total - count) / (p50 - ttft50) if total > count and p50 > ttft50 else None,
        "compile_seconds": None,
        **memory["metrics"],
    }
    details = {
        "generation": {
            "strategy": generation,
            "text": source,
            "prompts": count,
            "tokens_per_forward": tokens_per_forward,
            "tokens_per_forward_per_prompt": per_prompt,
            "forward_passes": forwards,
            "identical_to_plain": effective.get("identical_tokens"),
            "timed_call": f"{count} prompts generated one after the other, {new} new tokens each; latency figures are per prompt",
        },
        "e2e_ms": [round(t * 1e3, 3) for t in e2e],
        "ttft_ms_repeats": [round(t * 1e3, 3) for t in ttft],
        "first_call_seconds": first_call,
        "capped": e2e_capped or ttft_capped,
        "generated_tokens": round(total / count, 3),
        "prompt_lengths": [len(row) for row in rows],
        "padding_share": 0.0,
        "machine": host.result,
        **memory["details"],
    }
    if any(n != new for n in generated):
        details["warning"] = f"generate produced {min(generated)} to {max(generated)} new tokens instead of {new}"
    return Measured(metrics, effective, details)
