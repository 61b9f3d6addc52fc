"""Which attention implementation actually ran: one traced forward pass of the loaded model.

``model.config._attn_implementation`` says what Transformers means to run; what runs can differ,
without an error (seen in the transformers 5.17 and 5.24 sources):

- ``flash_attention_N`` requested without its package but with ``kernels`` installed: Transformers
  loads a Hub kernel instead (``kernels-community/flash-attn4`` for FlashAttention-4; the config
  then names that kernel);
- a class that lists ``_compatible_flash_implementations`` swaps a requested flash implementation
  for the first one it lists, with a warning logged once;
- whatever is registered under a name (``AttentionInterface.register("flash_attention_4", f)``,
  or a Hub kernel registering itself) runs under that name;
- model code that chooses by itself: Falcon builds one attention class for any flash request
  and calls ``torch.nn.functional.scaled_dot_product_attention`` directly on its SDPA path.

:func:`trace` runs a short forward pass while counting the attention functions Transformers
dispatches to and the kernels they reach: PyTorch's ``scaled_dot_product_attention`` and the
flash kernels, each named by its Python module (``flash_attn.cute.interface`` is
FlashAttention-4's). :func:`mismatch` says whether what ran is the candidate's attention.
Runs only inside the worker child.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch

from autotune.candidate import Candidate
from autotune.flash import FLASH_ATTENTIONS, flash_kernel_of
from autotune.worker.loading import OptionNotInEffect, first_line, is_out_of_memory, raised_in
from autotune.worker.measure import input_device, synthetic_ids

#: The kernel name PyTorch's fused attention is counted under.
SDPA_KERNEL = "torch.nn.functional.scaled_dot_product_attention"
#: Transformers' attention functions by name, and the implementation each stands for (``None``:
#: the flash kernel it calls tells which FlashAttention ran).
FUNCTIONS = {
    "eager_attention_forward": "eager",
    "sdpa_attention_forward": "sdpa",
    "flex_attention_forward": "flex_attention",
    "flash_attention_forward": None,
}
#: The module globals of ``transformers.modeling_flash_attention_utils`` that hold the loaded flash kernels.
FLASH_GLOBALS = ("_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn")
#: Tokens of the traced forward pass.
PROBE_TOKENS = 16


def name_of(function: Any) -> str:
    """``module.qualname`` of a function (of the function a ``functools.partial`` wraps)."""
    target = getattr(function, "func", function)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', None) or type(target).__name__}"


class Tracer:
    """Wraps attention functions and kernels with counters, and puts the originals back."""

    def __init__(self) -> None:
        self.functions: Counter[str] = Counter()
        self.kernels: Counter[str] = Counter()
        self._undo: list[Callable[[], None]] = []

    def counted(self, function: Any, counter: Counter[str], label: str | None = None) -> Any:
        if function is None or getattr(function, "_autotune_traced", False) or not callable(function):
            return function
        name = label or name_of(function)

        @functools.wraps(function)
        def traced(*args: Any, **kwargs: Any) -> Any:
            counter[name] += 1
            return function(*args, **kwargs)

        traced._autotune_traced = True  # type: ignore[attr-defined]
        return traced

    def patch(self, owner: Any, attribute: str, counter: Counter[str], label: str | None = None) -> None:
        original = getattr(owner, attribute, None)
        wrapped = self.counted(original, counter, label)
        if wrapped is not original:
            setattr(owner, attribute, wrapped)
            self._undo.append(lambda: setattr(owner, attribute, original))

    def patch_mapping(self, mapping: dict[str, Any], counter: Counter[str]) -> None:
        for key, original in list(mapping.items()):
            wrapped = self.counted(original, counter)
            if wrapped is not original:
                mapping[key] = wrapped
                self._undo.append(functools.partial(mapping.__setitem__, key, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


@contextlib.contextmanager
def tracing(model: Any) -> Iterator[Tracer]:
    """Count, while the body runs, the attention functions and kernels ``model`` reaches."""
    tracer = Tracer()
    modules = {sys.modules.get(type(m).__module__) for m in model.modules()} - {None}
    try:
        tracer.patch(torch.nn.functional, "scaled_dot_product_attention", tracer.kernels, SDPA_KERNEL)
        for module in modules:
            tracer.patch(module, "eager_attention_forward", tracer.functions)
        try:
            from transformers.modeling_utils import AttentionInterface
        except ImportError:  # transformers < 4.48: no attention registry
            AttentionInterface = None  # noqa: N806
        if AttentionInterface is not None:
            tracer.patch_mapping(AttentionInterface._global_mapping, tracer.functions)
            import transformers.modeling_utils as modeling_utils

            for module in {*modules, modeling_utils}:
                for value in list(vars(module).values()):
                    if isinstance(value, AttentionInterface):
                        tracer.patch_mapping(value._local_mapping, tracer.functions)
        with _flash_kernels(tracer):
            yield tracer
    finally:
        tracer.restore()


@contextlib.contextmanager
def _flash_kernels(tracer: Tracer) -> Iterator[None]:
    """Count calls of the flash kernels Transformers loaded, also when it loads them during the body."""
    try:
        import transformers.modeling_flash_attention_utils as flash_utils
    except ImportError:
        yield
        return

    def wrap_loaded() -> None:
        for name in FLASH_GLOBALS:
            value = getattr(flash_utils, name, None)
            if value is not None:
                setattr(flash_utils, name, tracer.counted(value, tracer.kernels))

    original = getattr(flash_utils, "lazy_import_flash_attention", None)

    def lazy_import(*args: Any, **kwargs: Any) -> Any:
        assert original is not None
        original(*args, **kwargs)  # may load other kernels into the module globals
        wrap_loaded()
        return original(*args, **kwargs)  # the same implementation again: returns the (now counted) globals

    wrap_loaded()
    if original is not None:
        flash_utils.lazy_import_flash_attention = lazy_import
    try:
        yield
    finally:
        if original is not None:
            flash_utils.lazy_import_flash_attention = original
        for name in FLASH_GLOBALS:
            value = getattr(flash_utils, name, None)
            while getattr(value, "_autotune_traced", False):
                value = value.__wrapped__
            if hasattr(flash_utils, name):
                setattr(flash_utils, name, value)


def register_fallback(model: Any) -> None:
    """Test-only fault: register, under the name the model's config runs, another attention
    function (SDPA's; the model's eager one for an SDPA model), as a silent fallback would."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = model.config._attn_implementation
    replacement: Any = sdpa_attention_forward
    if name == "sdpa":
        modules = (sys.modules.get(type(m).__module__) for m in model.modules())
        replacement = next(m.eager_attention_forward for m in modules if hasattr(m, "eager_attention_forward"))
    ALL_ATTENTION_FUNCTIONS[name] = replacement


def ran(functions: dict[str, int], kernels: dict[str, int]) -> list[str]:
    """The attention implementations the counted calls stand for, in the candidates' words.

    A flash kernel is named by its package (``flash_attention_4``, or ``kernel <module>`` for one
    no FlashAttention package holds, such as a Hub kernel); an attention function Transformers
    does not ship under that name is ``function <module.qualname>``.
    """
    out: set[str] = set()
    for name in kernels:
        if name == SDPA_KERNEL:
            out.add("sdpa")
        else:
            out.add(flash_kernel_of(name.rsplit(".", 1)[0]) or f"kernel {name}")
    for name in functions:
        module, _, short = name.rpartition(".")
        if short in FUNCTIONS and module.startswith("transformers."):
            if FUNCTIONS[short] is not None:
                out.add(FUNCTIONS[short])
        else:
            out.add(f"function {name}")
    return sorted(out)


def trace(model: Any, candidate: Candidate, seed: int = 0) -> dict[str, Any]:
    """Run one forward pass of ``PROBE_TOKENS`` tokens and report what attention ran.

    Returns ``attention_functions`` and ``attention_kernels`` (call counts by name) and
    ``attention_ran`` (see :func:`ran`). A failure of that pass ends the candidate: out of memory,
    or ``unsupported`` for a FlashAttention kernel that refuses this model (a head size it has
    no kernel for, ...).
    """
    ids = synthetic_ids(model, 1, PROBE_TOKENS, seed).to(input_device(model))
    try:
        with tracing(model) as tracer, torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as exc:
        if is_out_of_memory(exc):
            raise OptionNotInEffect("oom", f"out of memory in a first forward pass of {PROBE_TOKENS} tokens: {first_line(exc)}") from None
        if candidate.is_torchao and raised_in(exc, "torchao"):
            # e.g. Falcon's FalconLinear multiplies by weight.T: torchao 0.18's Int8Tensor has no aten.permute
            reason = f"{candidate.quant}: torchao's tensors refused an operation of this model in a first forward pass: {first_line(exc)}"
            raise OptionNotInEffect("unsupported", reason) from None
        status = "unsupported" if candidate.attn in FLASH_ATTENTIONS else "error"
        reason = f"{candidate.attn}: a first forward pass of {PROBE_TOKENS} tokens failed: {first_line(exc)}"
        raise OptionNotInEffect(status, reason) from None
    functions, kernels = dict(tracer.functions), dict(tracer.kernels)
    return {"attention_functions": functions, "attention_kernels": kernels, "attention_ran": ran(functions, kernels)}


def check(candidate: Candidate, effective: dict[str, Any]) -> None:
    """Raise :class:`OptionNotInEffect` (``unsupported``) when the traced pass ran another attention."""
    reason = mismatch(candidate, effective)
    if reason is not None:
        raise OptionNotInEffect("unsupported", reason)


def mismatch(candidate: Candidate, effective: dict[str, Any]) -> str | None:
    """Why the traced forward pass shows that ``candidate``'s attention did not run; ``None`` if it did.

    A FlashAttention candidate must have called its own package's kernels and nothing else. For
    the others, what ran (when anything was seen: a model that computes attention by hand leaves
    no trace) must be the candidate's attention alone.
    """
    attn = candidate.attn
    seen = list(effective.get("attention_ran") or [])
    if attn in FLASH_ATTENTIONS and attn not in seen:
        package = FLASH_ATTENTIONS[attn].package
        found = f"it ran {', '.join(seen)}" if seen else "no attention kernel was seen"
        return f"attention {attn} did not take effect: in a forward pass {found}, no kernel of the {package} package"
    if seen and seen != [attn]:
        others = [s for s in seen if s != attn]
        return f"attention {attn} did not take effect: a forward pass ran {', '.join(others)}" + (f" beside {attn}" if attn in seen else "")
    return None
