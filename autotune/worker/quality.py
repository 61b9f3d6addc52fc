"""Output quality of a candidate against a reference: the highest-precision configuration that fits.

Runs only inside the worker child.

**The input.** When the model has a tokenizer (among its files, or inside its GGUF file), the
reference runs on real text: autotune's built-in prompts (:data:`autotune.prompts.PROMPTS`:
prose, dialogue, code, numbers, instructions, several languages) or the user's own
(``autotune add --quality-prompts``), each cut to ``min(prompt_tokens, MAX_PROMPT)`` tokens.
Without a tokenizer it falls back to :data:`ROWS` rows of seeded token ids, and says so.

**The reference** (:func:`write_reference`), for text generation, first generates its greedy
continuation of each row (:data:`MAX_NEW` tokens, whatever the workload generates: what is judged
is the model, and 32 positions per prompt make several hundred), then runs every row — prompt and
continuation, unpadded — through one forward pass, the very pass every candidate runs, and keeps
at each position its most likely next token, its :data:`TOP` most likely tokens with their
log-probabilities, the log-probability of the token that follows, and its entropy. The scored
positions are those that predict the continuation: what a served model emits. (On the prompt's own
text a model predicts tokens it never emits, often among near-ties: SmolLM2-135M-Instruct in
LLM.int8 agreed with its float32 self on 89% of the built-in prompts' own positions and on 92-94%
of their continuations' — CPU, transformers 5.24, bitsandbytes 0.50.2, 32-token prompts. The
former is kept in the details.)

**A candidate** (:func:`compare`) runs the same forward pass over the same rows:

- ``quality_token_agreement``: the share of scored positions where its most likely next token is
  the reference's. The reference agrees with itself on every position: it is the same computation.
  ``quality_positions`` is how many positions were scored; ``quality_agreement_low`` and
  ``quality_agreement_high`` the Wilson 95% interval.
- ``quality_kl``: KL(reference || candidate) in nats, averaged over every scored position, over the
  reference's :data:`TOP` most likely tokens and the rest as one bucket (a lower bound of the
  full KL, equal to it when the rest carries no probability).
- ``quality_perplexity_change``: the candidate's perplexity of the reference's continuation over
  the reference's own, minus 1 (0.02: 2% more perplexed).
- ``details["quality"]``: the input used, the agreement on the prompts' own positions (text
  only), the free-running agreement (the candidate's own greedy continuation against the
  reference's), and whether more text was scored.

**The floor.** The first half of the rows is scored first; when the agreement's interval holds the
workload's floor (the verdict could go either way), the rest is scored too and every figure is
over all rows: a candidate near the floor is judged on more text, not by one token.

Encoders run the same rows (text or ids): feature-extraction keeps the mean cosine similarity of
the last hidden states in ``quality_token_agreement`` (``quality_kl`` None), text-classification
the share of rows whose top class agrees and the KL of the class distributions.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import transformers

from autotune import prompts as builtin
from autotune.files import has_tokenizer
from autotune.stats import wilson_interval, within_noise
from autotune.worker.measure import input_device, pad_id, synthetic_ids, vocab_size
from autotune.worker.protocol import WorkerRequest

#: Rows of seeded token ids when the model has no tokenizer.
ROWS = 8
#: Longest prompt, in tokens, a quality row keeps; longest continuation it generates.
MAX_PROMPT = 64
MAX_NEW = 32
#: How many of the reference's most likely tokens the KL is taken over (the rest is one bucket).
TOP = 128
FORMAT = 2
#: Seed of the fixed quality input (apart from the timing inputs' seeds).
SEED = 20261126


def quality_shape(request: WorkerRequest) -> tuple[int, int]:
    """(longest prompt, new tokens) of a quality row."""
    workload = request.workload
    return min(workload.prompt_tokens, MAX_PROMPT), (MAX_NEW if workload.generates else 0)


# -- the rows ---------------------------------------------------------------------------------------


def _tokenizer(request: WorkerRequest) -> tuple[Any, str | None]:
    """The model's tokenizer, or ``None`` and why not."""
    if not has_tokenizer(request.model_path, request.gguf_file):
        return None, "the model's files hold no tokenizer"
    try:
        kwargs = {"gguf_file": request.gguf_file} if request.gguf_file else {}
        return transformers.AutoTokenizer.from_pretrained(request.model_path, **kwargs), None
    except Exception as exc:  # a broken or unsupported tokenizer: fall back to seeded ids, and say why
        text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return None, f"its tokenizer does not load ({type(exc).__name__}: {text[:200]})"


def _text_rows(model: Any, request: WorkerRequest, tokenizer: Any, length: int) -> list[torch.Tensor]:
    """One row of token ids per prompt, at most ``length`` tokens (special tokens as the tokenizer adds them)."""
    texts = request.quality_prompts or builtin.PROMPTS
    vocab = vocab_size(model)
    rows = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=length)["input_ids"]
        if len(ids) >= 2 and max(ids) < vocab:
            rows.append(torch.tensor(ids, dtype=torch.long))
    return rows


def _input(model: Any, request: WorkerRequest) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The rows to run, and what they are (``kind`` ``text`` or ``random-ids``)."""
    length, _ = quality_shape(request)
    if request.task == "feature-extraction" or request.task == "text-classification":
        length = min(request.workload.prompt_tokens, 4 * MAX_PROMPT)
    tokenizer, why = _tokenizer(request)
    if tokenizer is not None:
        rows = _text_rows(model, request, tokenizer, length)
        source = builtin.describe(request.quality_prompts)
        if len(rows) >= 2:
            return rows, {"kind": "text", "source": source, "rows": len(rows)}
        why = f"fewer than 2 of the {source} tokenize to 2 or more tokens within the vocabulary"
    ids = synthetic_ids(model, ROWS, length, SEED)
    return list(ids), {"kind": "random-ids", "source": f"{ROWS} rows of seeded token ids ({why})", "rows": ROWS}


def _left_padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


def _greedy(model: Any, rows: list[torch.Tensor], new_tokens: int) -> list[torch.Tensor]:
    """Each row's greedy continuation of ``new_tokens`` tokens (one left-padded batch, cached generate)."""
    pad = pad_id(model)
    ids, mask = _left_padded(rows, pad)
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": pad}
    if hasattr(transformers.GenerationConfig(), "disable_compile"):
        kwargs["disable_compile"] = True
    device = input_device(model)
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    return list(out[:, ids.shape[1] :].cpu())


def _forward(model: Any, ids: torch.Tensor) -> Any:
    """One unpadded row (``ids``: 1-D) through the model's forward pass."""
    batch = ids[None, :].to(input_device(model))
    with torch.no_grad():
        return model(input_ids=batch, attention_mask=torch.ones_like(batch))


def _logprobs(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities at each position but the last (``len(ids) - 1`` x V, float32, on the model's device)."""
    logits = _forward(model, ids).logits[0, :-1]
    if not isinstance(logits, torch.Tensor):
        logits = torch.as_tensor(logits)
    return torch.log_softmax(logits.float(), dim=-1)


# -- the reference ----------------------------------------------------------------------------------


def write_reference(model: Any, request: WorkerRequest) -> dict[str, Any]:
    """Run the quality rows through ``model`` and save what candidates are compared with."""
    rows, source = _input(model, request)
    _, new = quality_shape(request)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "task": request.task,
        "label": request.candidate.label(),
        "model": request.model_name,
        "input": source,
    }
    info: dict[str, Any] = {"label": request.candidate.label(), **{f"input_{k}": v for k, v in source.items()}}
    if request.task == "text-generation":
        continuations = _greedy(model, rows, new)
        stored = []
        vocab = 0
        for prompt, continuation in zip(rows, continuations):
            ids = torch.cat([prompt, continuation])
            logprobs = _logprobs(model, ids)
            vocab = logprobs.shape[-1]
            top = logprobs.topk(min(TOP, vocab), dim=-1)
            entropy = -(logprobs.exp() * logprobs).nan_to_num().sum(-1)
            stored.append(
                {
                    "ids": ids,
                    "prompt": len(prompt),
                    "text": source["kind"] == "text",
                    "predicted": logprobs.argmax(-1).cpu(),
                    "top_ids": top.indices.to(torch.int32).cpu(),
                    "top_logprobs": top.values.cpu(),
                    "nll": (-logprobs.gather(-1, ids[1:, None].to(logprobs.device))[:, 0]).cpu(),
                    "entropy": entropy.cpu(),
                }
            )
        payload.update(rows=stored, vocab=vocab, first=(len(stored) + 1) // 2, new_tokens=new)
        info.update(new_tokens=new, positions=sum(len(r["ids"]) - r["prompt"] for r in stored))
    else:
        stored = []
        for ids in rows:
            output = _forward(model, ids)
            if request.task == "feature-extraction":
                stored.append({"ids": ids, "hidden": output.last_hidden_state[0].float().cpu()})
            else:
                stored.append({"ids": ids, "logits": output.logits[0].float().cpu()})
        payload.update(rows=stored, first=len(stored))
        info["positions"] = sum(len(r["ids"]) for r in stored) if request.task == "feature-extraction" else len(stored)
    path = str(request.reference_path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return info


def flatness(entropy: torch.Tensor, vocab: int) -> float | None:
    """Mean next-token entropy as a share of the largest possible (``log V``). Near 1: every token
    about as likely as any other, as from random or untrained weights; then rounding alone reorders
    near-ties and token agreement says little."""
    if vocab < 2 or entropy.numel() == 0:
        return None
    value = float(entropy.float().mean()) / math.log(vocab)
    return None if math.isnan(value) else min(1.0, max(0.0, value))


# -- a candidate ------------------------------------------------------------------------------------


class _Tally:
    """Sums over scored positions (text generation)."""

    def __init__(self) -> None:
        self.matches = self.positions = 0
        self.prompt_matches = self.prompt_positions = 0
        self.kl_sum = 0.0
        self.kl_positions = 0
        self.nonfinite = 0
        self.nll_reference: list[torch.Tensor] = []
        self.nll_candidate: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []

    def add(self, model: Any, row: dict[str, Any]) -> None:
        ids, prompt = row["ids"], row["prompt"]
        start = prompt - 1  # the positions that predict the continuation
        logprobs = _logprobs(model, ids)
        if logprobs.shape[-1] < int(row["top_ids"].max()) + 1:
            raise ValueError(f"the model's vocabulary ({logprobs.shape[-1]}) is smaller than the reference's")
        predicted = logprobs.argmax(-1).cpu()
        agrees = predicted == row["predicted"]
        matches = agrees[start:]
        self.matches += int(matches.sum())
        self.positions += int(matches.numel())
        if row.get("text"):
            self.prompt_matches += int(agrees[:start].sum())
            self.prompt_positions += start
        reference_top = row["top_logprobs"][start:]
        candidate_top = logprobs[start:].gather(-1, row["top_ids"][start:].long().to(logprobs.device)).cpu()
        p_top = reference_top.exp()
        p_rest = (1 - p_top.sum(-1)).clamp(min=0.0)
        q_rest = (1 - candidate_top.exp().sum(-1)).clamp(min=1e-12)
        rest = torch.where(p_rest > 1e-9, p_rest * (p_rest.clamp(min=1e-12).log() - q_rest.log()), torch.zeros_like(p_rest))
        kl = ((p_top * (reference_top - candidate_top)).sum(-1) + rest).clamp(min=0.0)
        finite = torch.isfinite(kl)
        self.kl_sum += float(kl[finite].sum())
        self.kl_positions += int(finite.sum())
        self.nonfinite += int((~finite).sum())
        continuation = slice(prompt - 1, len(ids) - 1)
        nll = -logprobs.gather(-1, ids[1:, None].to(logprobs.device))[:, 0].cpu()
        self.nll_candidate.append(nll[continuation])
        self.nll_reference.append(row["nll"][continuation])
        self.entropy.append(row["entropy"][continuation])

    @property
    def agreement(self) -> float:
        return self.matches / self.positions if self.positions else float("nan")

    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.matches, self.positions)

    def perplexities(self) -> tuple[float | None, float | None]:
        """(the reference's, the candidate's) perplexity of the reference's continuations."""
        if not self.nll_reference:
            return None, None
        reference = torch.cat(self.nll_reference)
        candidate = torch.cat(self.nll_candidate)
        if reference.numel() == 0:
            return None, None
        values = [math.exp(float(x.float().mean())) for x in (reference, candidate)]
        return tuple(v if math.isfinite(v) else None for v in values)  # type: ignore[return-value]


def compare(model: Any, request: WorkerRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, details)`` of ``model`` against the reference at ``request.reference_path``."""
    reference = torch.load(str(request.reference_path), map_location="cpu", weights_only=True)
    if reference.get("format") != FORMAT or reference.get("task") != request.task:
        return {}, {"quality_error": f"the reference at {request.reference_path} is for another task or format"}
    rows = reference["rows"]
    source = reference.get("input") or {}
    details: dict[str, Any] = {"quality_reference": reference.get("label")}
    quality: dict[str, Any] = {"input": source.get("kind"), "source": source.get("source")}
    if request.task == "text-generation":
        tally = _Tally()
        first = int(reference.get("first") or len(rows))
        for row in rows[:first]:
            tally.add(model, row)
        low, high = tally.interval()
        quality["first_pass"] = {"rows": first, "positions": tally.positions, "agreement": tally.agreement, "low": low, "high": high}
        floor = request.workload.min_quality
        extended = within_noise(low, high, floor) and first < len(rows)
        if extended:
            for row in rows[first:]:
                tally.add(model, row)
            low, high = tally.interval()
        ppl_reference, ppl = tally.perplexities()
        quality.update(
            rows=len(rows) if extended else first,
            positions=tally.positions,
            extended=extended,
            within_noise_of_floor=within_noise(low, high, floor),
            floor=floor,
            prompt_agreement=tally.prompt_matches / tally.prompt_positions if tally.prompt_positions else None,
            prompt_positions=tally.prompt_positions,
            perplexity_reference=ppl_reference,
            perplexity=ppl,
        )
        if tally.nonfinite:
            quality["nonfinite_positions"] = tally.nonfinite
        quality.update(_free_running(model, rows[:first]))
        details["quality"] = quality
        details["quality_reference_flatness"] = flatness(torch.cat(tally.entropy), int(reference.get("vocab") or 0))
        change = ppl / ppl_reference - 1 if ppl is not None and ppl_reference else None
        return {
            "quality_token_agreement": tally.agreement,
            "quality_kl": tally.kl_sum / tally.kl_positions if tally.kl_positions else None,
            "quality_positions": tally.positions,
            "quality_agreement_low": low,
            "quality_agreement_high": high,
            "quality_perplexity_change": change,
        }, details
    if request.task == "feature-extraction":
        cosines = []
        for row in rows:
            hidden = _forward(model, row["ids"]).last_hidden_state[0].float().cpu()
            cosines.append(torch.nn.functional.cosine_similarity(hidden, row["hidden"], dim=-1))
        values = torch.cat(cosines)
        value = float(values.mean())
        quality.update(measure="mean cosine similarity of last hidden states", rows=len(rows), positions=int(values.numel()))
        details["quality"] = quality
        details["quality_measure"] = quality["measure"]
        return {
            "quality_token_agreement": None if math.isnan(value) else value,
            "quality_kl": None,
            "quality_positions": int(values.numel()),
        }, details
    agree = 0
    kls = []
    for row in rows:
        logits = _forward(model, row["ids"]).logits[0].float().cpu()
        agree += int(logits.argmax(-1) == row["logits"].argmax(-1))
        p = torch.log_softmax(row["logits"], -1)
        q = torch.log_softmax(logits, -1)
        kls.append(float((p.exp() * (p - q)).sum()))
    low, high = wilson_interval(agree, len(rows))
    finite = [k for k in kls if math.isfinite(k)]
    quality.update(measure="top-class agreement and KL of class distributions", rows=len(rows), positions=len(rows))
    details["quality"] = quality
    details["quality_measure"] = quality["measure"]
    return {
        "quality_token_agreement": agree / len(rows),
        "quality_kl": max(0.0, sum(finite) / len(finite)) if finite else None,
        "quality_positions": len(rows),
        "quality_agreement_low": low,
        "quality_agreement_high": high,
    }, details


def _free_running(model: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate's own greedy continuation of each row against the reference's, position by position."""
    prompts = [r["ids"][: r["prompt"]] for r in rows]
    expected = [r["ids"][r["prompt"] :] for r in rows]
    new = min(len(e) for e in expected)
    if new == 0:
        return {}
    generated = _greedy(model, prompts, new)
    matches = [g[:new] == e[:new] for g, e in zip(generated, expected)]
    diverged = [int((~m).nonzero()[0]) if (~m).any() else None for m in matches]
    return {"free_running_agreement": float(torch.cat(matches).float().mean()), "first_divergence": diverged}


def corrupt(model: Any, seed: int, scale: float = 1.0) -> None:
    """Test-only fault: add Gaussian noise (``scale`` x each tensor's std) to every float weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dtype.is_floating_point and param.numel() > 1:
                noise = torch.randn(param.shape, generator=generator) * param.float().std().item() * scale
                param.add_(noise.to(device=param.device, dtype=param.dtype))
