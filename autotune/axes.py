"""Every lever of a :class:`~autotune.candidate.Candidate`, declared once.

An :class:`Axis` is one field of a candidate: its values, its default, the runtime that owns it,
when it applies (and why not), its label, the user's words for it, its ``autotune measure`` flag,
how the sampler sees it and how ``--space`` restricts it, the one-option changes the
recommendation asks about, and the keyword arguments it gives the loader. The search space
(:mod:`autotune.search.space`), the candidate's canonical form and label
(:mod:`autotune.candidate`), the ``autotune measure`` flags (:mod:`autotune.cli.measure`), the
what-ifs of the recommendation and its report (:mod:`autotune.advisor`), and the trial worker's
loader (:mod:`autotune.worker.loading`) all read :data:`AXES`, at call time.

Each runtime owns its options, as optimum-benchmark's backend configs own theirs: PyTorch's
loading options (attention, SDPA kernel, static cache) and those of its quantization backend,
bitsandbytes (quantization, double quantization, compute dtype), are ``owner="pytorch"``; ONNX
Runtime's (execution provider, IO binding) ``owner="onnxruntime"``; the dtype, the placement and
the runtime itself belong to every runtime. On a candidate of another runtime an option is held
at its default (:func:`canonical`).

A lever added later is one more :class:`Axis` in :data:`AXES` (and, in the worker, what its loader
arguments do): a candidate keeps it in :attr:`Candidate.extra` and leaves it out of its key while
it is at its default, so the keys of everything measured before stay as they were. The built-in
axes are the candidate's dataclass fields, in their order; the orders in which labels, flags,
enumeration and explanations list them are the tuples below, where an axis they do not name
comes last.

This module is at the bottom of the package: it imports nothing from autotune but the errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import InputError

DTYPES = ("float32", "float16", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: Attention implementations autotune knows how to reason about. What a given model accepts is
#: read from the installed Transformers at ``autotune add`` time (the model's capabilities).
ATTENTIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")
#: bitsandbytes' values first, then torchao's (``TorchAoConfig`` with a torchao config object:
#: int8 and int4 weight-only, float8 weight-only, float8 weights and per-row dynamic float8
#: activations), then Transformers' fine-grained FP8 (``FineGrainedFP8Config``).
TORCHAO_QUANTS = ("torchao-int8wo", "torchao-int4wo", "torchao-float8wo", "torchao-float8dq")
FP8_FINE = "fp8-fine"
QUANTS = ("none", "bnb-8bit", "bnb-4bit-nf4", "bnb-4bit-fp4", *TORCHAO_QUANTS, FP8_FINE)
#: The quantizations that store float8 weights: they need float8 support (compute capability 8.9).
FLOAT8_QUANTS = ("torchao-float8wo", "torchao-float8dq", FP8_FINE)
#: int4 weight-only group sizes (weights per scale and zero point); torchao's default is 128.
GROUP_SIZES = (128, 64, 32)
PLACEMENTS = ("cpu", "cuda", "multi-gpu")
#: The runtimes a candidate can run on; each owns the options of :data:`AXES` it names as ``owner``.
RUNTIMES = ("pytorch", "onnxruntime")
PYTORCH = "pytorch"

#: ONNX Runtime execution providers autotune can place, and the placement each one runs on.
PROVIDER_PLACEMENT = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
PROVIDER_SHORT = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}
#: The dtypes an ONNX export is made in (bfloat16 graphs do not run on ONNX Runtime's CPU and CUDA providers).
ORT_DTYPES = ("float32", "float16")
#: The sampler's value of ``compute_dtype`` for "the same as ``dtype``".
SAME = "same"

QUANT_SHORT = {
    "bnb-8bit": "int8",
    "bnb-4bit-nf4": "nf4",
    "bnb-4bit-fp4": "fp4",
    "torchao-int8wo": "ao-int8wo",
    "torchao-int4wo": "ao-int4wo",
    "torchao-float8wo": "ao-fp8wo",
    "torchao-float8dq": "ao-fp8dq",
    FP8_FINE: "fp8-fine",
}
QUANT_WORDS = {
    "none": "no quantization",
    "bnb-8bit": "bnb 8-bit",
    "bnb-4bit-nf4": "bnb 4-bit nf4",
    "bnb-4bit-fp4": "bnb 4-bit fp4",
    "torchao-int8wo": "torchao int8 weight-only",
    "torchao-int4wo": "torchao int4 weight-only",
    "torchao-float8wo": "torchao float8 weight-only",
    "torchao-float8dq": "torchao float8 weights and per-row dynamic float8 activations",
    FP8_FINE: "Transformers' fine-grained FP8",
}
QUANT_ALIASES = {"int8": "bnb-8bit", "8bit": "bnb-8bit", "nf4": "bnb-4bit-nf4", "fp4": "bnb-4bit-fp4"}

Point = Mapping[str, Any]


def normalize_dtype(name: str) -> str:
    value = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if value not in DTYPES:
        raise InputError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)} (or fp32, fp16, bf16)")
    return value


def is_4bit(point: Point) -> bool:
    return str(point.get("quant", "none")).startswith("bnb-4bit")


def is_torchao(point: Point) -> bool:
    return point.get("quant", "none") in TORCHAO_QUANTS


def is_bnb(point: Point) -> bool:
    return str(point.get("quant", "none")).startswith("bnb-")


def parse_bool(axis: str, value: str) -> bool:
    """``true``/``false`` (or 1/0, yes/no, on/off) of a ``--space`` restriction."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise InputError(f"space restriction {axis}={value}: write true or false")


@dataclass(frozen=True)
class Flag:
    """An ``autotune measure`` option: its name and ``argparse`` keywords (``dest`` is the axis)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _none(point: Point) -> None:
    return None


def _applies(point: Point) -> str | None:
    return None


def _nothing(point: Point) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Axis:
    """One lever of a candidate (see the module docstring); every callable takes a *point*: a
    mapping of field names to values, such as :meth:`Candidate.to_dict` gives.

    - ``values``: what the space enumerates, in the sampler's order; ``offered(workload)``
      narrows them for a workload (``None``: all of them).
    - ``owner``: the runtime whose option this is (``None``: every runtime's); ``what`` its
      name in words (``static cache``), where a rule names it.
    - ``why_not(point)``: why the axis does not apply to the rest of ``point`` (``None``: it
      does); where it does not, the canonical form holds it at its default.
    - ``label(point)``: its piece of :meth:`Candidate.label` (``None``: nothing to show).
    - ``option(point)``: the user's words for its choice, as the recommendation explains it
      (``None``: not explained on its own, or not applicable); ``covers`` the fields a
      one-option change on this axis takes along; ``what_ifs`` the changes asked about when no
      trial tried them.
    - ``flag``: its ``autotune measure`` option; ``measure_flag(point)`` the text that asks for
      the point's value (``None``: the default, nothing to say).
    - ``sampled``: whether the sampler sees it as an axis of its own; ``param(point)`` its value
      there and ``unparam(value)`` the fields it stands for; ``parse(text)`` reads a ``--space``
      restriction's value; ``order(values)`` puts a set of values in the sampler's order.
    - ``loader(point)``: keyword arguments of ``from_pretrained`` (plain data), for an axis the
      worker has no code of its own for; ``generate(point)`` those of ``generate``.
    """

    name: str
    default: Any
    values: tuple[Any, ...]
    owner: str | None = None
    what: str = ""
    why_not: Callable[[Point], str | None] = _applies
    label: Callable[[Point], str | None] = _none
    option: Callable[[Point], str | None] = _none
    covers: tuple[str, ...] = ()
    what_ifs: tuple[dict[str, Any], ...] = ()
    flag: Flag | None = None
    measure_flag: Callable[[Point], str | None] = _none
    sampled: bool = True
    param: Callable[[Point], Any] | None = None
    unparam: Callable[[Any], dict[str, Any]] | None = None
    parse: Callable[[str], Any] | None = None
    order: Callable[[set[Any]], tuple[Any, ...]] | None = None
    offered: Callable[[Any], tuple[Any, ...]] | None = None
    loader: Callable[[Point], dict[str, Any]] = _nothing
    generate: Callable[[Point], dict[str, Any]] = _nothing

    def applies(self, point: Point) -> bool:
        """Whether the axis means something for ``point`` (its runtime, and :attr:`why_not`)."""
        if self.owner is not None and point.get("runtime", PYTORCH) != self.owner:
            return False
        return self.why_not(point) is None

    def sampler_value(self, point: Point) -> Any:
        return self.param(point) if self.param is not None else point.get(self.name, self.default)

    def fields_of(self, value: Any) -> dict[str, Any]:
        return self.unparam(value) if self.unparam is not None else {self.name: value}

    def read(self, text: str) -> Any:
        """A ``--space`` restriction's value on this axis."""
        if self.parse is not None:
            return self.parse(text)
        if isinstance(self.default, bool):
            return parse_bool(self.name, text)
        if self.values and text not in {str(v) for v in self.values}:
            raise InputError(f"space restriction {self.name}={text}: choose among {', '.join(map(str, self.values))}")
        return next((v for v in self.values if str(v) == text), text)

    def ordered(self, values: set[Any]) -> tuple[Any, ...]:
        if self.order is not None:
            return self.order(values)
        known = [v for v in self.values if v in values]
        return tuple(known + sorted((v for v in values if v not in known), key=str))


# -- every runtime ----------------------------------------------------------------------------------


def _measure_dtype(point: Point) -> str:
    return f"--dtype {DTYPE_SHORT[point['dtype']]}"


DTYPE = Axis(
    "dtype",
    "bfloat16",
    DTYPES,
    label=lambda p: DTYPE_SHORT[p["dtype"]],
    option=lambda p: DTYPE_SHORT[p["dtype"]],
    what_ifs=({"dtype": "float32"}, {"dtype": "bfloat16"}),
    flag=Flag("--dtype", {"help": "float32, float16 or bfloat16 (fp32, fp16, bf16); default bfloat16 on GPU, float32 on the CPU"}),
    measure_flag=_measure_dtype,
    parse=normalize_dtype,
    loader=lambda p: {"dtype": p["dtype"]},
)


def _parse_placement(value: str) -> str:
    if value not in PLACEMENTS:
        raise InputError(f"space restriction placement={value}: choose among {', '.join(PLACEMENTS)}")
    return value


PLACEMENT = Axis(
    "placement",
    "cuda",
    PLACEMENTS,
    label=lambda p: p["placement"],
    option=lambda p: {"cpu": "CPU", "cuda": "one GPU", "multi-gpu": "several GPUs (device_map=auto)"}[p["placement"]],
    flag=Flag(
        "--placement",
        {
            "choices": PLACEMENTS,
            "help": "cpu, cuda (one GPU) or multi-gpu (device_map=auto with the workload's "
            "limit per GPU); default cuda where there are GPUs, else cpu",
        },
    ),
    measure_flag=lambda p: f"--placement {p['placement']}",
    parse=_parse_placement,
    loader=lambda p: {"device_map": {"cpu": "cpu", "cuda": "cuda:0"}.get(p["placement"], "auto")},
)


def runtime_param(point: Point) -> str:
    """``pytorch``, or ``onnxruntime:<provider>`` (``+io-binding`` when bound): the sampler's runtime axis."""
    if point.get("runtime", PYTORCH) == PYTORCH:
        return PYTORCH
    return f"onnxruntime:{point.get('provider')}" + ("+io-binding" if point.get("io_binding") else "")


def _runtime_fields(value: Any) -> dict[str, Any]:
    runtime = str(value)
    if runtime == PYTORCH:
        return {"runtime": PYTORCH}
    provider, _, binding = runtime.partition(":")[2].partition("+")
    return {"runtime": "onnxruntime", "provider": provider, "io_binding": binding == "io-binding"}


def _parse_runtime(value: str) -> str:
    value = {"ort": "onnxruntime", "torch": PYTORCH}.get(value, value)
    if value.split(":")[0] not in RUNTIMES:
        raise InputError(f"space restriction runtime={value}: choose pytorch or onnxruntime (or onnxruntime:PROVIDER)")
    return value


def _runtime_label(point: Point) -> str | None:
    if point.get("runtime", PYTORCH) == PYTORCH:
        return None
    provider = point.get("provider")
    return f"{point['runtime']}[{PROVIDER_SHORT.get(provider or '', provider or 'no provider')}]"


RUNTIME = Axis(
    "runtime",
    PYTORCH,
    RUNTIMES,
    label=_runtime_label,
    option=lambda p: "PyTorch" if p["runtime"] == PYTORCH else f"ONNX Runtime ({p.get('provider') or 'default provider'})",
    covers=("runtime", "provider", "io_binding"),
    flag=Flag(
        "--runtime",
        {
            "choices": RUNTIMES,
            "default": PYTORCH,
            "help": "pytorch (default), or onnxruntime: an ONNX export through Optimum (cached), run in a registered "
            "worker environment that offers the provider (see autotune env)",
        },
    ),
    measure_flag=lambda p: None if p["runtime"] == PYTORCH else f"--runtime {p['runtime']}",
    param=runtime_param,
    unparam=_runtime_fields,
    parse=_parse_runtime,
    order=lambda values: tuple(sorted(values, key=lambda v: (v != PYTORCH, str(v)))),
)

# -- PyTorch's loading options ----------------------------------------------------------------------


def _attn_param(point: Point) -> str:
    return point["attn"] + (f"[{point['sdpa_kernel']}]" if point.get("sdpa_kernel") else "")


def _attn_fields(value: Any) -> dict[str, Any]:
    attn, _, kernel = str(value).partition("[")
    return {"attn": attn, "sdpa_kernel": kernel.rstrip("]") or None}


ATTN = Axis(
    "attn",
    "sdpa",
    ATTENTIONS,
    owner=PYTORCH,
    what="attention",
    label=_attn_param,
    option=lambda p: p["attn"],
    covers=("attn", "sdpa_kernel"),
    what_ifs=(
        {"attn": "flash_attention_2", "sdpa_kernel": None},
        {"attn": "flash_attention_4", "sdpa_kernel": None},
        {"attn": "sdpa"},
        {"attn": "eager", "sdpa_kernel": None},
    ),
    flag=Flag(
        "--attn",
        {
            "default": "sdpa",
            "help": "attention implementation: eager, sdpa, flash_attention_4, flash_attention_2, flex_attention, ... (default sdpa)",
        },
    ),
    measure_flag=lambda p: f"--attn {p['attn']}",
    param=_attn_param,
    unparam=_attn_fields,
    parse=lambda value: value,
    order=lambda values: tuple(sorted(values, key=str)),
    loader=lambda p: {"attn_implementation": p["attn"]},
)

SDPA_KERNEL = Axis(
    "sdpa_kernel",
    None,
    (None, *SDPA_KERNELS),
    owner=PYTORCH,
    what="SDPA kernel",
    why_not=lambda p: None
    if p.get("attn") == "sdpa"
    else f"SDPA kernel {p.get('sdpa_kernel')}: applies only with attention sdpa, not {p.get('attn')}",
    option=lambda p: None
    if p.get("attn") != "sdpa"
    else f"SDPA kernel {p['sdpa_kernel']} (pinned)"
    if p.get("sdpa_kernel")
    else "SDPA kernel left to PyTorch",
    covers=("sdpa_kernel",),
    flag=Flag("--sdpa-kernel", {"choices": SDPA_KERNELS, "help": "pin SDPA to one kernel (with --attn sdpa)"}),
    measure_flag=lambda p: f"--sdpa-kernel {p['sdpa_kernel']}" if p.get("sdpa_kernel") else None,
    sampled=False,  # folded into attn: sdpa[flash]
)

STATIC_CACHE = Axis(
    "static_cache",
    False,
    (False, True),
    owner=PYTORCH,
    what="static cache",
    label=lambda p: "static" if p.get("static_cache") else None,
    option=lambda p: "static cache (torch.compile)" if p.get("static_cache") else "dynamic cache",
    what_ifs=({"static_cache": True},),
    flag=Flag("--static-cache", {"action": "store_true", "help": "generate with a static KV cache (compiled with torch.compile on GPU)"}),
    measure_flag=lambda p: "--static-cache" if p.get("static_cache") else None,
    offered=lambda workload: (False, True) if workload.generates else (False,),
)

# -- bitsandbytes, PyTorch's quantization backend ---------------------------------------------------


def _quant_label(point: Point) -> str | None:
    if point.get("quant", "none") == "none":
        return None
    text = QUANT_SHORT[point["quant"]]
    if point["quant"] == "torchao-int4wo":
        text += f"-g{point.get('group_size') or GROUP_SIZE.default}"
    if point.get("double_quant"):
        text += "+dq"
    compute = point.get("compute_dtype")
    if is_4bit(point) and compute and compute != point.get("dtype"):
        text += f"({DTYPE_SHORT[compute]})"
    return text


def _quant_param(point: Point) -> str:
    """The sampler's quantization: the group size folds into int4 weight-only (``torchao-int4wo[g64]``)."""
    quant = point.get("quant", "none")
    if quant == "torchao-int4wo":
        return f"{quant}[g{point.get('group_size') or GROUP_SIZE.default}]"
    return quant


def _quant_fields(value: Any) -> dict[str, Any]:
    quant, _, group = str(value).partition("[g")
    return {"quant": quant, "group_size": int(group.rstrip("]")) if group else GROUP_SIZE.default}


def _parse_quant(value: str) -> str:
    """A ``--space`` quantization: ``torchao-int4wo`` (every group size) or ``torchao-int4wo[g64]`` (one)."""
    value = QUANT_ALIASES.get(value, value)
    base, _, group = value.partition("[g")
    if base not in QUANTS or (group and (base != "torchao-int4wo" or group.rstrip("]") not in {str(g) for g in GROUP_SIZES})):
        raise InputError(
            f"space restriction quant={value}: choose among {', '.join(QUANTS)} (or int8, nf4, fp4; torchao-int4wo[gN] "
            f"with N one of {', '.join(map(str, GROUP_SIZES))})"
        )
    return value


def quant_allowed(value: Any, allowed: tuple[Any, ...]) -> bool:
    """Whether the sampler's quantization ``value`` passes a ``--space`` restriction (``torchao-int4wo``
    allows every group size)."""
    return value in allowed or str(value).partition("[")[0] in allowed


QUANT = Axis(
    "quant",
    "none",
    QUANTS,
    owner=PYTORCH,
    what="quantization",
    label=_quant_label,
    option=lambda p: QUANT_WORDS[p["quant"]] + (f" (group size {p.get('group_size') or 128})" if p["quant"] == "torchao-int4wo" else ""),
    covers=("quant", "double_quant", "compute_dtype", "group_size"),
    what_ifs=({"quant": "bnb-4bit-nf4", "double_quant": True}, {"quant": "bnb-8bit"}),
    flag=Flag(
        "--quant",
        {
            "choices": QUANTS,
            "default": "none",
            "help": "quantization: bitsandbytes (bnb-*), torchao (torchao-int8wo, torchao-int4wo, torchao-float8wo, "
            "torchao-float8dq) or Transformers' fine-grained FP8 (fp8-fine); default none",
        },
    ),
    measure_flag=lambda p: None if p.get("quant", "none") == "none" else f"--quant {p['quant']}",
    param=_quant_param,
    unparam=_quant_fields,
    parse=_parse_quant,
    order=lambda values: tuple(sorted(values, key=lambda v: (QUANTS.index(str(v).partition("[")[0]), str(v)))),
)

DOUBLE_QUANT = Axis(
    "double_quant",
    False,
    (False, True),
    owner=PYTORCH,
    what="double quantization",
    why_not=lambda p: None if is_4bit(p) else "double quantization applies only to 4-bit (bnb-4bit-nf4 or bnb-4bit-fp4)",
    option=lambda p: None
    if not is_4bit(p)
    else "4-bit double quantization"
    if p.get("double_quant")
    else "4-bit without double quantization",
    covers=("double_quant",),
    flag=Flag("--double-quant", {"action": "store_true", "help": "4-bit double quantization"}),
    measure_flag=lambda p: "--double-quant" if p.get("double_quant") else None,
    param=lambda p: bool(p.get("double_quant")),
)


def _compute_why_not(point: Point) -> str | None:
    if not is_4bit(point):
        return "a compute dtype applies only to 4-bit quantization"
    if point.get("compute_dtype") == point.get("dtype"):
        return "a compute dtype equal to the dtype is the default"
    return None


def _compute_flag(point: Point) -> str | None:
    compute = point.get("compute_dtype")
    return f"--compute-dtype {DTYPE_SHORT[compute]}" if compute and compute != point.get("dtype") else None


COMPUTE_DTYPE = Axis(
    "compute_dtype",
    None,
    (None, *DTYPES),
    owner=PYTORCH,
    what="compute dtype",
    why_not=_compute_why_not,
    flag=Flag("--compute-dtype", {"help": "4-bit compute dtype (default: the same as --dtype)"}),
    measure_flag=_compute_flag,
    param=lambda p: p.get("compute_dtype") or SAME,
    unparam=lambda value: {"compute_dtype": None if value in (SAME, None) else value},
    parse=lambda value: value if value == SAME else normalize_dtype(value),
    order=lambda values: tuple(v for v in (SAME, *DTYPES) if v in values),
)

# -- ONNX Runtime's options -------------------------------------------------------------------------

PROVIDER = Axis(
    "provider",
    None,
    (None, *PROVIDER_PLACEMENT),
    owner="onnxruntime",
    what="execution provider",
    flag=Flag(
        "--provider",
        {
            "metavar": "NAME",
            "help": "ONNX Runtime execution provider: CPUExecutionProvider, CUDAExecutionProvider "
            "or TensorrtExecutionProvider (default: CPU on the CPU, CUDA on a GPU)",
        },
    ),
    measure_flag=lambda p: f"--provider {p['provider']}" if p.get("provider") else None,
    sampled=False,  # folded into runtime: onnxruntime:<provider>
)

IO_BINDING = Axis(
    "io_binding",
    False,
    (False, True),
    owner="onnxruntime",
    what="IO binding",
    label=lambda p: "io-binding" if p.get("io_binding") else None,
    flag=Flag("--io-binding", {"action": "store_true", "help": "ONNX Runtime IO binding (inputs and outputs stay on the device)"}),
    measure_flag=lambda p: "--io-binding" if p.get("io_binding") else None,
    sampled=False,  # folded into runtime: onnxruntime:<provider>+io-binding
)

# -- torchao's int4 weight-only group size (PyTorch's quantization backend) ------------------------

GROUP_SIZE = Axis(
    "group_size",
    128,
    GROUP_SIZES,
    owner=PYTORCH,
    what="int4 group size",
    why_not=lambda p: None if p.get("quant") == "torchao-int4wo" else "a group size applies only to torchao-int4wo",
    flag=Flag(
        "--group-size",
        {"type": int, "choices": GROUP_SIZES, "default": 128, "help": "torchao-int4wo: weights per scale (32, 64 or 128; default 128)"},
    ),
    measure_flag=lambda p: f"--group-size {p['group_size']}" if p.get("quant") == "torchao-int4wo" and p.get("group_size") != 128 else None,
    sampled=False,  # folded into quant: torchao-int4wo[g64]
    parse=lambda value: int(value),
)

# -- how tokens are generated (PyTorch's generate) --------------------------------------------------

#: How ``generate`` makes its tokens: one per forward pass (``plain``), or drafted several at a
#: time and verified in one pass: ``prompt-lookup:N`` drafts N tokens from n-grams of the prompt
#: (``prompt_lookup_num_tokens=N``, no second model), ``assistant`` drafts with a small model of
#: the same tokenizer (``assistant_model=``, registered with ``autotune add MODEL --assistant DRAFT``).
#: With greedy decoding both give exactly the tokens plain generation gives; the worker checks it.
PLAIN = "plain"
ASSISTANT = "assistant"
PROMPT_LOOKUP = "prompt-lookup"
PROMPT_LOOKUP_TOKENS = (3, 5, 10)
GENERATIONS = (PLAIN, *(f"{PROMPT_LOOKUP}:{n}" for n in PROMPT_LOOKUP_TOKENS), ASSISTANT)


def lookup_tokens(value: Any) -> int | None:
    """The tokens ``prompt-lookup:N`` drafts per step (``None`` for another strategy)."""
    name, _, tokens = str(value).partition(":")
    return int(tokens) if name == PROMPT_LOOKUP and tokens.isdigit() else None


def drafts(point: Point) -> bool:
    """Whether ``point`` generates with a drafting strategy (prompt lookup or an assistant)."""
    return point.get("generation", PLAIN) != PLAIN


def _generation_why_not(point: Point) -> str | None:
    if drafts(point) and point.get("static_cache"):
        return (
            f"generation {point['generation']}: drafting is measured with the dynamic cache; it competes with the compiled "
            f"static cache, which is measured as a candidate of its own, rather than stacking on it"
        )
    return None


def generations_offered(workload: Any) -> tuple[str, ...]:
    """The strategies a workload asks to compare: plain always; prompt lookup with ``add
    --prompt-lookup``, an assistant with ``add --assistant``; only for text generation."""
    extra = getattr(workload, "extra", None) or {}
    if not getattr(workload, "generates", False):
        return (PLAIN,)
    offered = [PLAIN]
    if extra.get("prompt_lookup"):
        offered += [g for g in GENERATIONS if lookup_tokens(g) is not None]
    if extra.get("assistant"):
        offered.append(ASSISTANT)
    return tuple(offered)


def _parse_generation(value: str) -> str:
    value = {"lookup": f"{PROMPT_LOOKUP}:5", PROMPT_LOOKUP: f"{PROMPT_LOOKUP}:5"}.get(value, value)
    if value not in GENERATIONS:
        raise InputError(f"generation {value}: choose among {', '.join(GENERATIONS)}")
    return value


def _generation_label(point: Point) -> str | None:
    value = point.get("generation", PLAIN)
    if value == PLAIN:
        return None
    tokens = lookup_tokens(value)
    return f"lookup{tokens}" if tokens is not None else "assisted"


def _generation_option(point: Point) -> str:
    value = point.get("generation", PLAIN)
    tokens = lookup_tokens(value)
    if tokens is not None:
        return f"prompt-lookup decoding ({tokens} tokens drafted)"
    return "assisted generation (a draft model)" if value == ASSISTANT else "plain generation (one token per forward pass)"


GENERATION = Axis(
    "generation",
    PLAIN,
    GENERATIONS,
    owner=PYTORCH,
    what="generation",
    why_not=_generation_why_not,
    label=_generation_label,
    option=_generation_option,
    flag=Flag(
        "--generation",
        {
            "choices": GENERATIONS,
            "default": PLAIN,
            "help": "how generate makes its tokens: plain (default), prompt-lookup:N (N tokens drafted from the prompt), or "
            "assistant (the draft model registered with add --assistant); batch 1, greedy, timed on the workload's text",
        },
    ),
    measure_flag=lambda p: f"--generation {p['generation']}" if drafts(p) else None,
    parse=_parse_generation,
    offered=generations_offered,
    generate=lambda p: {"prompt_lookup_num_tokens": lookup_tokens(p["generation"])} if lookup_tokens(p.get("generation")) else {},
)

#: Every axis, the built-in ones in :class:`~autotune.candidate.Candidate`'s field order (which is
#: the sampler's order of its axes and the order of ``autotune measure``'s options).
AXES: tuple[Axis, ...] = (
    DTYPE,
    ATTN,
    SDPA_KERNEL,
    QUANT,
    DOUBLE_QUANT,
    COMPUTE_DTYPE,
    PLACEMENT,
    STATIC_CACHE,
    RUNTIME,
    PROVIDER,
    IO_BINDING,
    GROUP_SIZE,
    GENERATION,
)
#: The built-in axes: the candidate's dataclass fields (the axes after them live in
#: :attr:`Candidate.extra`).
BUILT_IN = tuple(a.name for a in AXES[: AXES.index(IO_BINDING) + 1])

#: Where each axis appears in a label (``bf16 sdpa[flash] nf4+dq(bf16) cuda static``).
LABEL_ORDER = ("dtype", "attn", "quant", "runtime", "io_binding", "placement", "static_cache")
#: The order of ``autotune measure``'s options in :meth:`Candidate.measure_args`.
FLAG_ORDER = (
    "dtype",
    "placement",
    "runtime",
    "provider",
    "io_binding",
    "attn",
    "sdpa_kernel",
    "quant",
    "double_quant",
    "compute_dtype",
    "group_size",
    "static_cache",
)
#: The order in which the space enumerates the PyTorch candidates (outermost first).
ENUMERATION_ORDER = ("placement", "attn", "sdpa_kernel", "dtype", "quant", "double_quant", "compute_dtype", "static_cache")
#: The options the recommendation explains, in the order it explains them.
EXPLAIN_ORDER = ("quant", "attn", "sdpa_kernel", "dtype", "static_cache", "double_quant", "placement", "runtime")


def axis(name: str) -> Axis:
    """The axis ``name`` (:class:`KeyError` where there is none)."""
    for a in AXES:
        if a.name == name:
            return a
    raise KeyError(name)


def names() -> tuple[str, ...]:
    return tuple(a.name for a in AXES)


def owned_by(runtime: str) -> tuple[Axis, ...]:
    """The options ``runtime`` owns (its backend's configuration), in the table's order."""
    return tuple(a for a in AXES if a.owner == runtime)


def generate_kwargs(point: Point) -> dict[str, Any]:
    """The ``generate`` keyword arguments (plain data) the axes that apply to ``point`` ask for."""
    out: dict[str, Any] = {}
    for a in AXES:
        if a.applies(point):
            out.update(a.generate(point))
    return out


def extra_axes() -> tuple[Axis, ...]:
    """The axes added beyond the candidate's dataclass fields."""
    return tuple(a for a in AXES if a.name not in BUILT_IN)


def in_order(order: tuple[str, ...]) -> Iterator[Axis]:
    """The axes named by ``order``, in it, then every axis it does not name (the table's order)."""
    yield from (axis(n) for n in order)
    yield from (a for a in AXES if a.name not in order)


def sampler_axes() -> tuple[str, ...]:
    """The axes the sampler sees, one categorical parameter each (the table's order)."""
    return tuple(a.name for a in AXES if a.sampled)


def explained_axes() -> tuple[str, ...]:
    """The options the recommendation explains, in the order it explains them."""
    return tuple(a.name for a in in_order(EXPLAIN_ORDER) if a.name in EXPLAIN_ORDER or a.option is not _none)


def canonical(point: Point) -> dict[str, Any]:
    """The canonical form of ``point``: every field of :data:`AXES`, and each axis that does not
    apply (another runtime's option, a double quantization or a compute dtype without 4-bit, a
    compute dtype equal to the dtype, an SDPA kernel without SDPA) at its default.

    The sampler's points (:func:`autotune.search.space.candidate_from`) and the recommendation's
    what-ifs go through it, so several ways of writing one candidate are one candidate.
    """
    out = {a.name: point.get(a.name, a.default) for a in AXES}
    for a in AXES:
        if not a.applies(out):
            out[a.name] = a.default
    return out


def label(point: Point) -> str:
    """Short human text of a point, e.g. ``bf16 sdpa[flash] nf4+dq(bf16) cuda static`` or ``fp32 onnxruntime[CPU] cpu``."""
    runtime = point.get("runtime", PYTORCH)
    parts = [a.label(point) for a in in_order(LABEL_ORDER) if a.owner in (None, runtime)]
    return " ".join(p for p in parts if p)


def measure_args(point: Point) -> str:
    """The ``autotune measure`` options that ask for ``point`` (batch sizes aside)."""
    runtime = point.get("runtime", PYTORCH)
    parts = [a.measure_flag(point) for a in in_order(FLAG_ORDER) if a.owner in (None, runtime)]
    return " ".join(p for p in parts if p)


def loader_kwargs(point: Point, *, extra_only: bool = False) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments the axes that apply to ``point`` ask for, as plain
    data; ``extra_only``: only those of axes added beyond the candidate's fields (the worker and
    the renderer write the built-in ones themselves)."""
    out: dict[str, Any] = {}
    for a in extra_axes() if extra_only else AXES:
        if a.applies(point):
            out.update(a.loader(point))
    return out
