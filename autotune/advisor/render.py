"""Loading code for the library versions installed where the trials ran.

:func:`render_loader` writes a Python module that needs torch and Transformers (and bitsandbytes
when quantized, accelerate for a device map), never autotune. What it emits follows the versions
of the environment that measured the winner:

- ``dtype=`` on Transformers 5, ``torch_dtype=`` on 4.x;
- ``quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...)`` or ``(load_in_8bit=True)``,
  never the removed ``load_in_4bit=`` / ``load_in_8bit=`` / ``use_flash_attention_2=`` arguments;
- ``quantization_config=TorchAoConfig(quant_type=Int8WeightOnlyConfig())`` and the other torchao
  config objects (``Int4WeightOnlyConfig(group_size=..., int4_packing_format="tile_packed_to_4d")``,
  ``Float8WeightOnlyConfig()``, ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``;
  torchao's string names are gone), or ``FineGrainedFP8Config()``;
- ``attn_implementation=`` (Transformers 4.36 and later);
- ``torch.nn.attention.sdpa_kernel([SDPBackend...])`` around generate for a pinned SDPA kernel
  (``torch.backends.cuda.sdp_kernel`` before torch 2.3);
- ``device_map`` (``"cpu"``, ``"cuda:0"``, or ``"auto"`` with ``max_memory`` over several GPUs);
- ``cache_implementation="static"`` in the generate arguments when a static cache won;
- ``prompt_lookup_num_tokens=N`` in the generate arguments when prompt-lookup decoding won, and
  for an assistant winner the draft model loaded beside the model and passed as ``assistant_model``;
  ``generate()`` then refuses a batch of several rows and sampling, which were not measured;
- for a FlashAttention winner, a check that its package (``flash-attn-4``, ``flash-attn``) is
  installed before anything loads, which fails with one line naming the package and its install
  command (Transformers would otherwise fall back to a Hub kernel where ``kernels`` is installed);
- ``gguf_file=`` for a llama.cpp model, to the model and to its tokenizer (the GGUF file holds both);
- for an ONNX Runtime winner, ``optimum.onnxruntime``'s ``ORTModelFor<Task>.from_pretrained(...,
  export=..., provider=..., use_io_binding=...)`` in the worker environment's versions (Optimum's
  ONNX path runs on Transformers 4.x): see :func:`render_onnx_loader`.

Everything a user or a database supplies (model ids, paths, GPU names, versions) enters the code
as a Python literal (``repr``) or as a comment with line breaks and control characters removed,
so that nothing stored can inject code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from autotune import __version__, axes
from autotune.candidate import Candidate
from autotune.errors import AutotuneError
from autotune.flash import FLASH_ATTENTIONS

_AUTO_CLASSES = {
    "text-generation": "AutoModelForCausalLM",
    "text-classification": "AutoModelForSequenceClassification",
    "feature-extraction": "AutoModel",
}
_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
_LEGACY_FLAGS = {"flash": "enable_flash", "efficient": "enable_mem_efficient", "math": "enable_math"}
_TORCH_DTYPES = {"float32": "torch.float32", "float16": "torch.float16", "bfloat16": "torch.bfloat16"}
_ORT_CLASSES = {
    "text-generation": "ORTModelForCausalLM",
    "text-classification": "ORTModelForSequenceClassification",
    "feature-extraction": "ORTModelForFeatureExtraction",
}
_EXPORT_TASKS = {
    "text-generation": "text-generation-with-past",
    "text-classification": "text-classification",
    "feature-extraction": "feature-extraction",
}
#: What an ONNX Runtime loader needs, in the order it is listed.
ORT_PACKAGES = ("optimum-onnx", "optimum", "onnxruntime", "onnxruntime-gpu", "transformers", "torch")


class RenderError(AutotuneError):
    """The winner is of a kind autotune cannot write loading code for."""


@dataclass(frozen=True)
class LoaderSpec:
    """Everything the loader module says and does.

    ``model_ref`` is what ``from_pretrained`` is given (a Hub id or a directory); ``revision`` a
    Hub commit to pin, if any. ``versions`` are the library versions where the trials ran.
    ``max_memory`` maps GPU index to a size string for a multi-GPU placement. ``measured`` holds
    the winner's metrics; ``measured_on`` the machine in words; ``measured_at`` when.
    """

    model_name: str
    model_ref: str
    task: str
    candidate: Candidate
    batch_size: int
    new_tokens: int = 128
    prompt_tokens: int = 512
    revision: str | None = None
    has_tokenizer: bool = False
    versions: dict[str, str | None] = field(default_factory=dict)
    max_memory: dict[int, str] | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    measured_on: str = ""
    measured_at: datetime | None = None
    objective: str = "throughput"
    summary: str = ""
    written_at: datetime | None = None
    #: ONNX Runtime: the directory of the export that was measured (``None``: export again).
    onnx_export: str | None = None
    #: A llama.cpp model: the GGUF file inside ``model_ref``, and how many layers kept its packed
    #: blocks when measured (0: every weight was dequantized to the load dtype).
    gguf_file: str | None = None
    gguf_packed_layers: int | None = None
    #: Assisted generation: the draft model (a Hub id or a directory) the loader loads beside the
    #: model. ``tokens_per_forward``: the drafting winner's measured acceptance, on ``timing_text``.
    assistant: str | None = None
    tokens_per_forward: float | None = None
    timing_text: str | None = None

    @property
    def generates(self) -> bool:
        return self.task == "text-generation"


def version_tuple(text: str | None, default: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """``"5.17.0"`` → ``(5, 17)``; ``"2.11.0+cu130"`` → ``(2, 11)``; unknown → ``default``."""
    match = re.match(r"^\s*(\d+)\.(\d+)", str(text or ""))
    return (int(match.group(1)), int(match.group(2))) if match else default


def comment(text: Any) -> str:
    """``text`` made safe for one comment line: no line breaks or other control characters."""
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029\x85]+", " ", str(text)).strip()


def generate_kwargs(spec: LoaderSpec) -> dict[str, Any]:
    """The arguments the loader passes to ``generate`` (empty for encoders)."""
    if not spec.generates:
        return {}
    kwargs: dict[str, Any] = {"max_new_tokens": spec.new_tokens, "do_sample": False}
    if spec.candidate.static_cache:
        kwargs["cache_implementation"] = "static"
    # the levers declared beyond the candidate's fields say their own arguments (prompt_lookup_num_tokens)
    kwargs.update(axes.generate_kwargs(spec.candidate.to_dict()))
    return kwargs


def drafting(spec: LoaderSpec) -> str | None:
    """The winner's generation strategy where it drafts tokens (prompt lookup, an assistant), else ``None``."""
    generation = spec.candidate.value("generation")
    return generation if spec.generates and generation != axes.PLAIN else None


def device_map(candidate: Candidate) -> str:
    return {"cpu": "cpu", "cuda": "cuda:0", "multi-gpu": "auto"}[candidate.placement]


def requirements(spec: LoaderSpec) -> list[str]:
    """The packages the loader imports or needs at load time, pinned to the measured versions."""
    versions = spec.versions
    if spec.candidate.runtime == "onnxruntime":
        runtime = (
            "onnxruntime-gpu"
            if versions.get("onnxruntime-gpu") or (spec.candidate.on_gpu and not versions.get("onnxruntime"))
            else "onnxruntime"
        )
        needed = ["optimum-onnx", "optimum", runtime, "transformers", "torch"]
        return [f"{name}=={versions[name]}" if versions.get(name) else name for name in needed]
    needed = ["torch", "transformers"]
    if spec.gguf_file:
        needed.append("gguf")
    if spec.candidate.is_bnb:
        needed.append("bitsandbytes")
    elif spec.candidate.is_torchao:
        needed.append("torchao")
    elif spec.candidate.quant == axes.FP8_FINE:
        needed.append("kernels")
    needed.append("accelerate")  # the loader passes device_map, which needs accelerate (also device_map="cpu", on 4.x and 5.x)
    if spec.candidate.attn in FLASH_ATTENTIONS:
        needed.append(FLASH_ATTENTIONS[spec.candidate.attn].package)
    return [f"{name}=={versions[name]}" if versions.get(name) else name for name in needed]


def flash_install(spec: LoaderSpec) -> str | None:
    """The command that installs a FlashAttention winner's package at the measured version."""
    fa = FLASH_ATTENTIONS.get(spec.candidate.attn)
    if fa is None:
        return None
    version = spec.versions.get(fa.package)
    pinned = f"{fa.package}=={version}" if version else fa.package
    if fa.attn == "flash_attention_4":
        return f"pip install {pinned} (with a CUDA 13 driver: pip install '{pinned.replace(fa.package, fa.package + '[cu13]', 1)}')"
    return fa.install.replace(fa.package, pinned, 1) if fa.install.startswith("pip install") else fa.install


#: torchao's config class for each torchao quantization, with its arguments as written in a loader.
_TORCHAO_CONFIGS = {
    "torchao-int8wo": ("Int8WeightOnlyConfig", ""),
    "torchao-int4wo": ("Int4WeightOnlyConfig", "group_size={group_size}, int4_packing_format='tile_packed_to_4d'"),
    "torchao-float8wo": ("Float8WeightOnlyConfig", ""),
    "torchao-float8dq": ("Float8DynamicActivationFloat8WeightConfig", "granularity=PerRow()"),
}


def quantization_code(c: Candidate) -> tuple[list[str], list[str], list[str]]:
    """``(transformers names, other import lines, body lines)`` that build ``quantization_config``."""
    if c.is_torchao:
        cls, args = _TORCHAO_CONFIGS[c.quant]
        imported = [cls] + (["PerRow"] if "PerRow" in args else [])
        body = [f"    quantization_config = TorchAoConfig(quant_type={cls}({args.format(group_size=int(c.value('group_size')))}))"]
        return ["TorchAoConfig"], [f"from torchao.quantization import {', '.join(sorted(imported))}"], body
    if c.quant == axes.FP8_FINE:
        return ["FineGrainedFP8Config"], [], ["    quantization_config = FineGrainedFP8Config()"]
    body = ["    quantization_config = BitsAndBytesConfig("]
    if c.quant == "bnb-8bit":
        body.append("        load_in_8bit=True,")
    else:
        body.append("        load_in_4bit=True,")
        body.append(f"        bnb_4bit_quant_type={c.quant.rsplit('-', 1)[1]!r},")
        body.append(f"        bnb_4bit_use_double_quant={bool(c.double_quant)!r},")
        body.append(f"        bnb_4bit_compute_dtype={_TORCH_DTYPES[c.effective_compute_dtype]},")
    body.append("    )")
    return ["BitsAndBytesConfig"], [], body


def render_loader(spec: LoaderSpec) -> str:
    """The source of an importable loader module for ``spec``.

    The module defines ``MODEL_ID``, ``BATCH_SIZE``, ``GENERATE_KWARGS``, ``load_model()`` (returns
    ``(model, tokenizer)``, the tokenizer ``None`` when the model has none) and, for text
    generation, ``generate(model, **inputs)`` (``forward(model, **inputs)`` for encoders), which
    applies the pinned SDPA kernel, if any.
    """
    c = spec.candidate
    if c.runtime == "onnxruntime":
        return render_onnx_loader(spec)
    if c.runtime != "pytorch":
        raise RenderError(f"no loading code for runtime {c.runtime}")
    transformers_version = version_tuple(spec.versions.get("transformers"), (5, 0))
    torch_version = version_tuple(spec.versions.get("torch"), (2, 6))
    v5 = transformers_version >= (5, 0)
    auto = _AUTO_CLASSES.get(spec.task, "AutoModel")
    quantized = c.quant != "none"
    tokenizer = spec.has_tokenizer

    flash = FLASH_ATTENTIONS.get(c.attn)
    assisted = drafting(spec) == axes.ASSISTANT
    if assisted and not spec.assistant:
        raise RenderError(
            "the winner generates with an assistant model, and the workload names none (autotune add MODEL --assistant DRAFT)"
        )
    stdlib = (["import importlib.metadata"] if flash else []) + (["import weakref"] if assisted else [])
    imports = ([*stdlib, ""] if stdlib else []) + ["import torch"]
    quant_names, quant_imports, quant_body = quantization_code(c) if quantized else ([], [], [])
    names = [auto] + (["AutoTokenizer"] if tokenizer else []) + quant_names
    imports += quant_imports
    imports.append(f"from transformers import {', '.join(sorted(names))}")
    legacy_kernel = c.sdpa_kernel is not None and torch_version < (2, 3)
    if c.sdpa_kernel is not None and not legacy_kernel:
        imports.append("from torch.nn.attention import SDPBackend, sdpa_kernel")

    lines = _preamble(spec, imports)
    lines.append(f"BATCH_SIZE = {int(spec.batch_size)!r}")
    lines.append(f"GENERATE_KWARGS = {generate_kwargs(spec)!r}")
    if c.placement == "multi-gpu" and spec.max_memory:
        lines.append(f"MAX_MEMORY = {dict(spec.max_memory)!r}")
    if assisted:
        lines.append(f"ASSISTANT_ID = {spec.assistant!r}  # the draft model: same tokenizer and vocabulary")
        lines.append("ASSISTANTS = weakref.WeakKeyDictionary()  # model -> its draft model, loaded by load_model()")
    lines += ["", ""]

    # load_model -----------------------------------------------------------------------------
    lines.append("def load_model():")
    lines.append(
        f'    """Load the model as it was measured; returns (model, tokenizer){", tokenizer None: the model has none" if not tokenizer else ""}."""'
    )
    if flash is not None:
        what = f"this loader runs attn_implementation={c.attn!r}, which needs the package {flash.package} (not installed here): "
        lines.append("    try:")
        lines.append(f"        importlib.metadata.version({flash.package!r})")
        lines.append("    except importlib.metadata.PackageNotFoundError:")
        lines.append(f"        raise ImportError({what!r}")
        lines.append(f"                          {flash_install(spec)!r}) from None")
    lines += quant_body
    lines.append(f"    model = {auto}.from_pretrained(")
    lines.append("        MODEL_ID,")
    if spec.gguf_file:
        lines.append("        gguf_file=GGUF_FILE,")
    if spec.revision:
        lines.append("        revision=REVISION,")
    lines.append(f"        {'dtype' if v5 else 'torch_dtype'}={_TORCH_DTYPES[c.dtype]},")
    if transformers_version >= (4, 36):
        lines.append(f"        attn_implementation={c.attn!r},")
    if quantized:
        lines.append("        quantization_config=quantization_config,")
    lines.append(f"        device_map={device_map(c)!r},")
    if c.placement == "multi-gpu" and spec.max_memory:
        lines.append("        max_memory=MAX_MEMORY,")
    # the levers declared beyond the candidate's fields say their own arguments (autotune.axes)
    lines += [f"        {name}={value!r}," for name, value in axes.loader_kwargs(c.to_dict(), extra_only=True).items()]
    lines.append("    )")
    lines.append("    model.eval()")
    if assisted:
        lines.append(f"    assistant = {auto}.from_pretrained(")
        lines.append(f"        ASSISTANT_ID, {'dtype' if v5 else 'torch_dtype'}={_TORCH_DTYPES[c.dtype]}, device_map={device_map(c)!r}")
        lines.append("    )")
        lines.append("    ASSISTANTS[model] = assistant.eval()")
    lines += _tokenizer_lines(spec, tokenizer)
    lines += ["", ""]

    # generate / forward ---------------------------------------------------------------------
    if spec.generates:
        lines.append("def generate(model, **inputs):")
        lines.append('    """model.generate with the measured arguments (GENERATE_KWARGS, overridable here)."""')
        lines.append("    kwargs = {**GENERATE_KWARGS, **inputs}")
        strategy = drafting(spec)
        if strategy is not None:
            lines += _drafting_checks(strategy)
        if assisted:
            lines.append("    kwargs.setdefault('assistant_model', ASSISTANTS[model])")
        call = "model.generate(**kwargs)"
    else:
        lines.append("def forward(model, **inputs):")
        lines.append('    """A forward pass as it was measured."""')
        call = "model(**inputs)"
    if c.sdpa_kernel is not None:
        if legacy_kernel:
            flags = ", ".join(f"{flag}={name == c.sdpa_kernel}" for name, flag in _LEGACY_FLAGS.items())
            kernel = f"torch.backends.cuda.sdp_kernel({flags})"
        else:
            kernel = f"sdpa_kernel([SDPBackend.{_BACKENDS[c.sdpa_kernel]}])"
        lines.append(f"    with torch.inference_mode(), {kernel}:  # the SDPA kernel that was measured")
    else:
        lines.append("    with torch.inference_mode():")
    lines.append(f"        return {call}")
    return "\n".join(lines) + "\n"


def _drafting_checks(strategy: str) -> list[str]:
    """Lines of ``generate()`` that refuse what a drafting winner was not measured with: a batch of
    several rows (Transformers drafts at batch size 1 only) and sampling (the drafted tokens are
    plain greedy generation's only with greedy decoding)."""
    what = f"generation {strategy} was measured at batch size 1 with greedy decoding"
    return [
        "    rows = kwargs['input_ids'].shape[0] if 'input_ids' in kwargs else 1",
        "    if rows != 1:",
        f"        raise ValueError(f'{what}: Transformers drafts tokens for one row at a time, got {{rows}}; send one prompt per call')",
        "    if kwargs.get('do_sample'):",
        f"        raise ValueError('{what}: with sampling the tokens are no longer those of plain greedy generation; "
        "pass do_sample=False, or load a plain winner for sampling')",
    ]


def render_onnx_loader(spec: LoaderSpec) -> str:
    """The loader module of an ONNX Runtime winner: ``optimum.onnxruntime`` and Transformers 4.x.

    ``load_model()`` loads the ONNX export in ``EXPORT_DIR`` when it is there (the one autotune
    measured, by default), and otherwise exports ``MODEL_ID`` once and saves it there:
    ``ORTModelFor<Task>.from_pretrained(MODEL_ID, export=True, provider=...)`` for float32, and
    ``optimum.exporters.onnx.main_export(..., dtype="fp16", device="cuda")`` for float16 (an export
    with ``export=True`` is always float32).
    """
    c = spec.candidate
    cls = _ORT_CLASSES.get(spec.task, "ORTModelForFeatureExtraction")
    fp16 = c.dtype == "float16"
    tokenizer = spec.has_tokenizer
    imports = ["import os", "", "import torch", f"from optimum.onnxruntime import {cls}"]
    if fp16:
        imports.append("from optimum.exporters.onnx import main_export")
    if tokenizer:
        imports.append("from transformers import AutoTokenizer")
    lines = _preamble(spec, imports)
    lines.append(f"EXPORT_DIR = {spec.onnx_export!r}  # the ONNX export autotune measured; exported there again if missing")
    lines.append(f"PROVIDER = {c.provider!r}")
    lines.append(f"USE_IO_BINDING = {bool(c.io_binding)!r}")
    lines.append(f"BATCH_SIZE = {int(spec.batch_size)!r}")
    lines.append(f"GENERATE_KWARGS = {generate_kwargs(spec)!r}")
    lines += ["", ""]
    lines.append("def load_model(export_dir=EXPORT_DIR):")
    lines.append(
        f'    """Load the ONNX model as it was measured; returns (model, tokenizer){", tokenizer None: the model has none" if not tokenizer else ""}.'
    )
    lines.append("")
    lines.append("    The first call without an export in export_dir exports MODEL_ID to ONNX and saves it there.")
    lines.append('    """')
    revision = ", revision=REVISION" if spec.revision else ""
    lines.append(
        "    exported = export_dir is not None and os.path.isdir(export_dir) and any(name.endswith('.onnx') for name in os.listdir(export_dir))"
    )
    load = f"{cls}.from_pretrained(export_dir, export=False, provider=PROVIDER, use_io_binding=USE_IO_BINDING)"
    if fp16:  # export=True always exports float32: a float16 export is made with main_export, on a GPU
        lines.append("    if not exported:")
        lines.append("        if export_dir is None:")
        lines.append("            raise ValueError('a float16 export needs a directory to write it to (export_dir)')")
        lines.append(
            f"        main_export(MODEL_ID, output=export_dir, task={_EXPORT_TASKS.get(spec.task, 'feature-extraction')!r}, "
            f"dtype='fp16', device='cuda'{revision})"
        )
        lines.append(f"    model = {load}")
    else:
        lines.append("    if exported:")
        lines.append(f"        model = {load}")
        lines.append("    else:")
        lines.append(
            f"        model = {cls}.from_pretrained(MODEL_ID{revision}, export=True, provider=PROVIDER, use_io_binding=USE_IO_BINDING)"
        )
        lines.append("        if export_dir is not None:")
        lines.append("            model.save_pretrained(export_dir)")
    lines += _tokenizer_lines(spec, tokenizer)
    lines += ["", ""]
    if spec.generates:
        lines.append("def generate(model, **inputs):")
        lines.append('    """model.generate with the measured arguments (GENERATE_KWARGS, overridable here)."""')
        lines.append("    with torch.inference_mode():")
        lines.append("        return model.generate(**{**GENERATE_KWARGS, **inputs})")
    else:
        lines.append("def forward(model, **inputs):")
        lines.append('    """A forward pass as it was measured."""')
        lines.append("    with torch.inference_mode():")
        lines.append("        return model(**inputs)")
    return "\n".join(lines) + "\n"


def _header(spec: LoaderSpec) -> list[str]:
    c = spec.candidate
    written = (spec.written_at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    when = spec.measured_at.strftime("%Y-%m-%d %H:%M UTC") if spec.measured_at else "unknown"
    shown = (
        ORT_PACKAGES
        if c.runtime == "onnxruntime"
        else (
            "torch",
            "transformers",
            "bitsandbytes",
            "accelerate",
            "flash-attn",
            "flash-attn-3",
            "flash-attn-4",
            "nvidia-cutlass-dsl",
            "gguf",
        )
    )
    versions = ", ".join(f"{k} {v}" for k, v in spec.versions.items() if v and k in shown)
    use = "generate(model, **batch)" if spec.generates else "forward(model, **batch)"
    workload = f"{spec.prompt_tokens} prompt + {spec.new_tokens} new tokens" if spec.generates else f"{spec.prompt_tokens} tokens"
    out = [
        f"# Loader for {comment(spec.model_name)}, written by autotune {__version__} on {written}.",
        f"# Configuration: {comment(c.label())}, batch size {int(spec.batch_size)} ({comment(spec.task)}, {workload}, objective {comment(spec.objective)}).",
    ]
    if spec.summary:
        out.append(f"# Measured: {comment(spec.summary)}.")
    out += [
        f"# On: {comment(spec.measured_on or 'unknown machine')}; measured {when}.",
        f"# Versions there: {comment(versions or 'unknown')}.",
        f"# Needs: {comment(', '.join(requirements(spec)))} (never autotune).",
        "# Use:",
        "#     model, tokenizer = load_model()",
        (
            '#     batch = tokenizer(texts[:BATCH_SIZE], return_tensors="pt", padding=True).to(model.device)'
            if spec.has_tokenizer
            else '#     batch = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}  # from your tokenizer'
            + (", left-padded" if spec.generates else "")
        ),
        f"#     out = {use}",
    ]
    if c.attn in FLASH_ATTENTIONS:
        fa = FLASH_ATTENTIONS[c.attn]
        out.append(f"# {comment(c.attn)} needs the {fa.package} package: {comment(flash_install(spec))}; it runs on {fa.gpus}.")
    if spec.gguf_file:
        kept = spec.gguf_packed_layers
        how = (
            f"{kept} layers kept llama.cpp's packed blocks when measured"
            if kept
            else f"Transformers dequantizes every weight to {comment(c.dtype)} on load: "
            f"memory is that of {comment(c.dtype)}, not the file's"
        )
        out.append(f"# Weights: the GGUF file {comment(spec.gguf_file)}; {how}.")
    if c.static_cache:
        out.append("# The static cache compiles the model on the first generate call on CUDA (seconds); later calls are fast.")
    strategy = drafting(spec)
    if strategy is not None:
        how = (
            f"prompt lookup, {axes.lookup_tokens(strategy)} tokens drafted from the prompt"
            if axes.lookup_tokens(strategy)
            else f"assisted by the draft model {comment(spec.assistant)}"
        )
        accepted = f", {spec.tokens_per_forward:.2f} tokens per forward pass" if spec.tokens_per_forward else ""
        text = f" on {comment(spec.timing_text)}" if spec.timing_text else ""
        out.append(f"# Generation: {how}{accepted}{text}; one prompt per call, greedy (the tokens of plain generation).")
    if c.sdpa_kernel == "flash":
        out.append("# The flash SDPA kernel refuses attention masks: send unpadded batches of equal length.")
    return out


def _preamble(spec: LoaderSpec, imports: list[str]) -> list[str]:
    """The start of a loader module: its header comment, imports, and the model's id and revision."""
    lines = [*_header(spec), "", "from __future__ import annotations", "", *imports, "", f"MODEL_ID = {spec.model_ref!r}"]
    if spec.gguf_file:
        lines.append(f"GGUF_FILE = {spec.gguf_file!r}")
    if spec.revision:
        lines.append(f"REVISION = {spec.revision!r}")
    return lines


def _tokenizer_lines(spec: LoaderSpec, tokenizer: bool) -> list[str]:
    """The end of ``load_model()``: the tokenizer (left-padded for generation) or None, and the return."""
    if not tokenizer:
        return ["    tokenizer = None  # the model directory has no tokenizer: tokenize with your own", "    return model, tokenizer"]
    revision = ", revision=REVISION" if spec.revision else ""
    revision += ", gguf_file=GGUF_FILE" if spec.gguf_file else ""
    if spec.generates:
        lines = [
            f'    tokenizer = AutoTokenizer.from_pretrained(MODEL_ID{revision}, padding_side="left")',
            "    if tokenizer.pad_token is None and tokenizer.eos_token is not None:",
            "        tokenizer.pad_token = tokenizer.eos_token  # batched generation pads on the left",
        ]
    else:
        lines = [f"    tokenizer = AutoTokenizer.from_pretrained(MODEL_ID{revision})"]
    return [*lines, "    return model, tokenizer"]
