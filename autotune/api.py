"""The library's operations on registered models, shared by the CLI and the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune import prompts as quality_text
from autotune import registry
from autotune.errors import InputError, ModelNotFoundError
from autotune.files import has_tokenizer
from autotune.store import ModelRecord, Store
from autotune.store.store import GENERATION_KEYS
from autotune.workload import Workload

#: Workload fields ``autotune add`` can set, and their defaults for a new model.
ENCODER_PROMPT_TOKENS = 128


@dataclass(frozen=True)
class AddResult:
    model: ModelRecord
    created: bool
    changes: dict[str, tuple[Any, Any]]


def add_model(store: Store | None, name: str, options: dict[str, Any], *, open_store: Any = None) -> AddResult:
    """Resolve ``name``, check it against the installed Transformers, and register its workload.

    ``options`` holds the workload fields the user gave (absent ones keep the model's current
    value, or the default for a new model; ``max_memory="none"`` clears the limit). ``quality_prompts``
    names a file of the user's quality prompts (``"builtin"``: back to the built-in ones).
    Everything is validated before the store is opened or written, so bad input leaves the
    database as it was.
    """
    resolved = registry.resolve(name)
    where = (f"{resolved.path}/{resolved.gguf_file}" if resolved.gguf_file else f"{resolved.path}/config.json") if resolved.path else name
    registry.check_model_type(resolved.config, where)
    task = options.get("task") or registry.infer_task(resolved.config)
    fields = {k: v for k, v in options.items() if v is not None and k not in ("quality_prompts", *GENERATION_OPTIONS)}
    prompts_file = options.get("quality_prompts")
    new_prompts: tuple[str, ...] | None = None
    if prompts_file is not None and str(prompts_file) != quality_text.BUILTIN:
        new_prompts = quality_text.load_file(prompts_file)
        if not has_tokenizer(resolved.path, resolved.gguf_file):
            raise InputError(
                f"--quality-prompts: {resolved.name} has no tokenizer among its files, so its quality is "
                f"measured on seeded token ids; add the tokenizer's files to the model directory first"
            )
    if str(fields.get("max_memory", "")).strip().lower() == "none":
        fields["max_memory"] = None  # `--max-memory none` clears the limit
    fields["task"] = task
    defaults: dict[str, Any] = {"prompt_tokens": ENCODER_PROMPT_TOKENS} if task != "text-generation" else {}
    Workload.from_dict({**defaults, **fields})  # validate before the store is touched
    capabilities = registry.model_capabilities(resolved.config, task)
    if resolved.gguf_file:
        capabilities["gguf_file"] = resolved.gguf_file
    generation = _generation_options(resolved, task, options)

    if store is None:
        store = open_store()
    try:
        known = store.get_model(resolved.name)
        previous: Workload | None = known.workload
        old_prompts = known.quality_prompts
    except ModelNotFoundError:
        previous, old_prompts = None, None
    prompts = new_prompts if prompts_file is not None else old_prompts
    base = previous.to_dict() if previous is not None and previous.task == task else defaults
    extra = dict(base.get("extra") or {})
    for name, value in generation.items():
        if value is None:
            extra.pop(name, None)
        else:
            extra[name] = value
    workload = quality_text.keyed(Workload.from_dict({**base, **fields, "extra": extra}), prompts)
    check_context(workload, resolved.config, capabilities.get("architecture") or resolved.model_type)
    record, created, changes = store.upsert_model(resolved, capabilities, workload, prompts)
    if "extra" in changes:  # the prompts' digest, the generation strategies: say what changed in words
        old_extra, new_extra = changes.pop("extra")
        if prompts != old_prompts:
            changes["quality_prompts"] = (quality_text.describe(old_prompts), quality_text.describe(prompts))
        for name in GENERATION_OPTIONS:
            before, after = (old_extra or {}).get(name), (new_extra or {}).get(name)
            if before != after:
                changes[name] = (_generation_text(before), _generation_text(after))
    return AddResult(record, created, changes)


#: ``autotune add``'s options that choose the generation strategies compared (kept in the workload's ``extra``).
GENERATION_OPTIONS = GENERATION_KEYS


def _generation_options(resolved: registry.ResolvedModel, task: str, options: dict[str, Any]) -> dict[str, Any]:
    """The workload's generation options that ``options`` set (``None``: cleared), checked.

    ``prompt_lookup`` (True/False) compares prompt-lookup decoding with plain generation;
    ``assistant`` names a draft model of the same tokenizer (``"none"`` clears it). Both are timed
    on text, so the model needs a tokenizer.
    """
    out: dict[str, Any] = {}
    lookup, assistant = options.get("prompt_lookup"), options.get("assistant")
    if lookup is not None:
        out["prompt_lookup"] = True if lookup else None
    if assistant is not None:
        out["assistant"] = None if str(assistant).strip().lower() == "none" else registry.check_assistant(resolved, task, str(assistant))
    if lookup:
        if task != "text-generation":
            raise InputError(
                f"--prompt-lookup: prompt-lookup decoding drafts tokens for text generation, and {resolved.name} is registered for {task}"
            )
        if not has_tokenizer(resolved.path, resolved.gguf_file):
            raise InputError(
                f"--prompt-lookup: {resolved.name} has no tokenizer among its files, and generation strategies are timed on text; "
                f"add the tokenizer's files to the model directory first"
            )
    return out


def _generation_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("name"))
    return None if value is None else "on" if value is True else str(value)


def check_context(workload: Workload, config: dict[str, Any], architecture: str) -> None:
    """Refuse a workload longer than the model's context (its positions), naming both numbers."""
    context = registry.context_length(config)
    if context is None:
        return
    positions, field = context
    need = workload.prompt_tokens + (workload.new_tokens if workload.generates else 0)
    if need <= positions:
        return
    asked = (
        f"{workload.prompt_tokens} prompt + {workload.new_tokens} new tokens" if workload.generates else f"{workload.prompt_tokens} tokens"
    )
    raise InputError(
        f"the workload needs {need} positions ({asked}) but {architecture} has {positions} ({field} in its config); "
        f"lower --prompt-tokens{' or --new-tokens' if workload.generates else ''} to fit"
    )
