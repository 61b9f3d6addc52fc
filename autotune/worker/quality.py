"""Output quality of a candidate against a reference: the highest-precision configuration that fits.

Runs only inside the worker child. The reference run writes, for a fixed seeded input of
:data:`ROWS` rows (prompt ``min(prompt_tokens, MAX_PROMPT)``, no padding):

- text generation: its greedy continuation (``min(new_tokens, MAX_NEW)`` tokens, dynamic cache)
  and the log-probabilities of the first new token;
- feature-extraction: the last hidden states;
- text-classification: the logits.

A candidate is compared on the same input:

- text generation: ``quality_token_agreement`` is the teacher-forced greedy agreement — the
  share of positions where the candidate's most likely next token, given the reference's prefix,
  is the reference's token (one forward pass over prompt + reference tokens, so one near-tie
  does not derail every later position). ``quality_kl`` is KL(reference || candidate) of the
  first new token's distribution, in nats, averaged over rows. ``details`` also holds the
  free-running agreement (the candidate's own greedy continuation compared position by
  position), the first position where it diverges, and the reference's :func:`flatness`.
- feature-extraction: ``quality_token_agreement`` holds the mean cosine similarity of the
  candidate's last hidden states to the reference's (over every token of every row);
  ``quality_kl`` is not defined (None).
- text-classification: ``quality_token_agreement`` is the share of rows whose top class agrees;
  ``quality_kl`` the mean KL(reference || candidate) of the class distributions.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import transformers

from autotune.worker.measure import input_device, pad_id, synthetic_ids
from autotune.worker.protocol import WorkerRequest

ROWS = 4
MAX_PROMPT = 64
MAX_NEW = 32
FORMAT = 1
#: Seed of the fixed quality input (apart from the timing inputs' seeds).
SEED = 20261126


def quality_shape(request: WorkerRequest) -> tuple[int, int]:
    """(prompt tokens, new tokens) of the quality input."""
    workload = request.workload
    return min(workload.prompt_tokens, MAX_PROMPT), (min(workload.new_tokens, MAX_NEW) if workload.generates else 0)


def _forward(model: Any, ids: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(input_ids=ids.to(input_device(model)), attention_mask=torch.ones_like(ids).to(input_device(model)))


def _greedy(model: Any, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": pad_id(model)}
    if hasattr(transformers.GenerationConfig(), "disable_compile"):
        kwargs["disable_compile"] = True
    device = input_device(model)
    out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), **kwargs)
    return out[:, ids.shape[1]:].cpu()


def _teacher_forced(model: Any, ids: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax at each new position, log-probs of the first new token) given the reference prefix."""
    full = torch.cat([ids, tokens[:, :-1]], dim=1)
    logits = _forward(model, full).logits
    start = ids.shape[1] - 1
    predicted = logits[:, start:, :].argmax(-1).cpu()
    first = torch.log_softmax(logits[:, start, :].float(), dim=-1).cpu()
    return predicted, first


def write_reference(model: Any, request: WorkerRequest) -> dict[str, Any]:
    """Run the fixed input through ``model`` and save what candidates are compared with."""
    prompt, new = quality_shape(request)
    ids = synthetic_ids(model, ROWS, prompt, SEED)
    payload: dict[str, Any] = {"format": FORMAT, "task": request.task, "input_ids": ids,
                               "label": request.candidate.label(), "model": request.model_name}
    info: dict[str, Any] = {"label": request.candidate.label(), "rows": ROWS, "prompt_tokens": prompt}
    if request.task == "text-generation":
        tokens = _greedy(model, ids, new)
        predicted, first = _teacher_forced(model, ids, tokens)
        payload.update(tokens=tokens, first_logprobs=first)
        info["new_tokens"] = new
        # The reference's own teacher-forced agreement: 1.0 but for near-ties between the cached
        # and the uncached computation. It is the noise floor of the measure.
        info["self_agreement"] = float((predicted == tokens).float().mean())
    else:
        output = _forward(model, ids)
        if request.task == "feature-extraction":
            payload["hidden"] = output.last_hidden_state.float().cpu()
        else:
            payload["logits"] = output.logits.float().cpu()
    path = str(request.reference_path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return info


def flatness(logprobs: torch.Tensor) -> float | None:
    """The entropy of next-token distributions as a share of the largest possible (``log V``),
    averaged over rows. Near 1: every token about as likely as any other, as from random or
    untrained weights; then rounding alone reorders near-ties and token agreement says little."""
    vocab = logprobs.shape[-1]
    if vocab < 2:
        return None
    entropy = -(logprobs.exp() * logprobs).nan_to_num().sum(-1).mean().item()
    return None if math.isnan(entropy) else min(1.0, max(0.0, entropy / math.log(vocab)))


def _kl(reference_logprobs: torch.Tensor, candidate_logprobs: torch.Tensor) -> float | None:
    value = (reference_logprobs.exp() * (reference_logprobs - candidate_logprobs)).sum(-1).mean().item()
    return None if math.isnan(value) or math.isinf(value) else max(0.0, value)


def compare(model: Any, request: WorkerRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, details)`` of ``model`` against the reference at ``request.reference_path``."""
    reference = torch.load(str(request.reference_path), map_location="cpu", weights_only=True)
    if reference.get("format") != FORMAT or reference.get("task") != request.task:
        return {}, {"quality_error": f"the reference at {request.reference_path} is for another task or format"}
    ids = reference["input_ids"]
    details: dict[str, Any] = {"quality_reference": reference.get("label")}
    if request.task == "text-generation":
        tokens = reference["tokens"]
        predicted, first = _teacher_forced(model, ids, tokens)
        if first.shape != reference["first_logprobs"].shape:
            return {}, {"quality_error": f"the reference has vocabulary {reference['first_logprobs'].shape[-1]}, the model {first.shape[-1]}"}
        agreement = float((predicted == tokens).float().mean())
        details["quality_reference_flatness"] = flatness(reference["first_logprobs"])
        free = _greedy(model, ids, tokens.shape[1])
        matches = free == tokens
        diverged = [int((~row).nonzero()[0]) if (~row).any() else None for row in matches]
        details.update(free_running_agreement=float(matches.float().mean()), first_divergence=diverged)
        return {"quality_token_agreement": agreement, "quality_kl": _kl(reference["first_logprobs"], first)}, details
    output = _forward(model, ids)
    if request.task == "feature-extraction":
        hidden = output.last_hidden_state.float().cpu()
        cosine = torch.nn.functional.cosine_similarity(hidden, reference["hidden"], dim=-1)
        value = float(cosine.mean())
        details["quality_measure"] = "mean cosine similarity of last hidden states"
        return {"quality_token_agreement": None if math.isnan(value) else value, "quality_kl": None}, details
    logits = output.logits.float().cpu()
    agreement = float((logits.argmax(-1) == reference["logits"].argmax(-1)).float().mean())
    kl = _kl(torch.log_softmax(reference["logits"], -1), torch.log_softmax(logits, -1))
    details["quality_measure"] = "top-class agreement and KL of class distributions"
    return {"quality_token_agreement": agreement, "quality_kl": kl}, details


def corrupt(model: Any, seed: int, scale: float = 1.0) -> None:
    """Test-only fault: add Gaussian noise (``scale`` x each tensor's std) to every float weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dtype.is_floating_point and param.numel() > 1:
                noise = torch.randn(param.shape, generator=generator) * param.float().std().item() * scale
                param.add_(noise.to(device=param.device, dtype=param.dtype))
