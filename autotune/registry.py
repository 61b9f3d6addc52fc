"""Resolving a model's config and reading what its class supports.

A model is named by a local directory, a Hub id, or a llama.cpp GGUF file. Its ``config.json``
is found in that order: the local directory, the Hugging Face cache, the Hub. A GGUF file (or a
directory holding exactly one GGUF file and no ``config.json``) carries its config in its own
metadata, which Transformers reads (with the ``gguf`` package). Nothing here downloads weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import InputError, ModelNotFoundError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

#: Attention implementations and the class flag that says a model supports them.
_ATTENTION_FLAGS = {
    "sdpa": ("_supports_sdpa",),
    "flash_attention_2": ("_supports_flash_attn", "_supports_flash_attn_2"),
    "flash_attention_3": ("_supports_flash_attn", "_supports_flash_attn_3"),
    "flash_attention_4": ("_supports_flash_attn",),
    "flex_attention": ("_supports_flex_attn",),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's config came from, and what it says."""

    name: str
    source: str  # "local", "hf-cache" or "hub"
    path: str | None  # the directory holding config.json (a cache snapshot for hf-cache/hub) or the GGUF file
    revision: str | None
    config: dict[str, Any]
    #: The GGUF file's name inside ``path`` (``from_pretrained(path, gguf_file=...)``), for a llama.cpp file.
    gguf_file: str | None = None

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and not _HUB_ID.match(name) or Path(name).exists()


def resolve(name: str) -> ResolvedModel:
    """Find ``name``'s config: local directory, then the HF cache, then the Hub."""
    if not name or not name.strip():
        raise InputError("a model name is needed: a local directory or a Hub id such as tiiuae/falcon-7b")
    if looks_like_path(name):
        return _resolve_local(name)
    if not _HUB_ID.match(name):
        raise InputError(f"{name!r} is neither an existing directory nor a Hub id such as tiiuae/falcon-7b")
    return _resolve_hub(name)


def _resolve_local(name: str) -> ResolvedModel:
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model directory {name} does not exist")
    if not path.is_dir():
        if path.suffix.lower() == GGUF_SUFFIX:
            return _resolve_gguf(path)
        raise InputError(f"model path {name} is a file; give the directory that holds config.json, or a .gguf file")
    config_file = path / "config.json"
    if not config_file.is_file():
        gguf = gguf_in(path)
        if gguf is not None:
            return _resolve_gguf(gguf)
        files = sorted(path.glob(f"*{GGUF_SUFFIX}"))
        if files:
            raise InputError(
                f"model directory {name} holds {len(files)} GGUF files ({', '.join(f.name for f in files[:4])}"
                f"{', ...' if len(files) > 4 else ''}) and no config.json: name one, e.g. autotune add {files[0]}"
            )
        raise InputError(f"model directory {name} has no config.json (save the model with save_pretrained, or give its Hub id)")
    return ResolvedModel(name=str(path.resolve()), source="local", path=str(path.resolve()), revision=None, config=read_config(config_file))


# -- llama.cpp's GGUF files -----------------------------------------------------------------------

GGUF_SUFFIX = ".gguf"


def gguf_in(directory: Path) -> Path | None:
    """The one GGUF file of a directory without ``config.json`` (``None``: none, or several)."""
    if not directory.is_dir() or (directory / "config.json").is_file():
        return None
    files = sorted(directory.glob(f"*{GGUF_SUFFIX}"))
    return files[0] if len(files) == 1 else None


def _resolve_gguf(file: Path) -> ResolvedModel:
    """A GGUF file: registered under its absolute path, loaded as ``from_pretrained(its directory, gguf_file=its name)``."""
    file = file.resolve()
    config = read_gguf_config(file)
    return ResolvedModel(name=str(file), source="local", path=str(file.parent), revision=None, config=config, gguf_file=file.name)


def read_gguf_config(file: Path) -> dict[str, Any]:
    """The Transformers config that a GGUF file's metadata describes (Transformers reads it)."""
    with open(file, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise InputError(f"{file} is not a GGUF file (it does not start with the GGUF magic bytes); give a llama.cpp .gguf file")
    import transformers
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise InputError(f"reading {file.name} needs the package gguf, which is not installed here (pip install gguf)")
    try:
        config = transformers.AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as exc:  # unsupported architecture, truncated file: Transformers says which
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InputError(f"transformers {transformers.__version__} cannot read the GGUF file {file}: {reason}") from None
    data = config.to_dict()
    data.pop("quantization_config", None)
    data.pop("_name_or_path", None)
    if not data.get("architectures"):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(data.get("model_type", ""))
        if isinstance(causal, str):
            data["architectures"] = [causal]
    if not data.get("model_type"):
        raise InputError(f"the GGUF file {file} describes no model type Transformers knows")
    return data


def _resolve_hub(repo_id: str) -> ResolvedModel:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        return ResolvedModel(name=repo_id, source="hf-cache", path=str(snapshot), revision=snapshot.name, config=read_config(Path(cached)))
    if _offline():
        raise ModelNotFoundError(
            f"cannot resolve {repo_id} offline: it is not a local directory and not in the HF cache ({HF_HUB_CACHE}); "
            "download it once with `hf download` or give a local directory"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import ENDPOINT
    from huggingface_hub.utils import logging as hub_logging

    unreachable = hub_unreachable(ENDPOINT)
    if unreachable is not None:
        raise ModelNotFoundError(
            f"cannot resolve {repo_id}: not a local directory, not in the HF cache ({HF_HUB_CACHE}), and the Hub at {ENDPOINT} "
            f"cannot be reached ({unreachable}); download it once where there is network (`hf download {repo_id} config.json`), "
            "or give a local directory"
        )
    hub_logger = hub_logging.get_logger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings; what failed is said once, below
    try:
        downloaded = hf_hub_download(repo_id, "config.json", etag_timeout=10)
    except Exception as exc:  # network errors, gated or missing repos all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(
            f"cannot resolve {repo_id}: not a local directory, not in the HF cache ({HF_HUB_CACHE}), and the Hub said: {reason}"
        ) from None
    finally:
        hub_logger.setLevel(level)
    snapshot = Path(downloaded).parent
    return ResolvedModel(name=repo_id, source="hub", path=str(snapshot), revision=snapshot.name, config=read_config(Path(downloaded)))


#: Seconds to wait for a TCP connection to the Hub (or its proxy) before calling it unreachable.
HUB_CONNECT_TIMEOUT_S = 3.0


def hub_unreachable(endpoint: str, timeout_s: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """Why the Hub at ``endpoint`` cannot be reached, or ``None`` when a TCP connection to it succeeds.

    One connection attempt to the endpoint (or to the proxy the environment names for it), bounded
    by ``timeout_s`` including the name lookup. huggingface_hub itself retries a refused
    connection with backoff before it gives up (26 s and six warnings with huggingface_hub 2.4.0,
    measured on the development machine).
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(endpoint)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return f"{endpoint!r} is not a URL (check HF_ENDPOINT)"
    proxy = None if proxy_bypass(host) else getproxies().get(parts.scheme)
    if proxy:
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if via.hostname:
            host, port = via.hostname, via.port or 80
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")
        else:
            outcome.append(None)

    attempt = threading.Thread(target=connect, name="autotune-hub-probe", daemon=True)
    attempt.start()
    attempt.join(timeout_s + 0.5)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout_s:g} s"


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path} does not hold a JSON object")
    if not config.get("model_type"):
        raise InputError(f"{path} has no model_type; it is not a Transformers model config")
    return config


def infer_task(config: dict[str, Any]) -> str:
    """text-generation for causal LMs, text-classification for classifiers, else feature-extraction."""
    from transformers.models.auto import modeling_auto

    model_type = config["model_type"]
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "text-classification"
    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    causal_classes = {v for value in causal.values() for v in ((value,) if isinstance(value, str) else value)}
    if any(a in causal_classes for a in architectures) or (not architectures and model_type in causal):
        return "text-generation"
    return "feature-extraction"


_TASK_MAPPINGS = {
    "text-generation": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "feature-extraction": "MODEL_MAPPING_NAMES",
    "text-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
}


def check_model_type(config: dict[str, Any], where: str) -> None:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config["model_type"] not in CONFIG_MAPPING_NAMES:
        raise InputError(
            f"model_type {config['model_type']!r} in {where} is not known to the installed transformers "
            f"{transformers.__version__} (upgrade transformers, or check the config)"
        )


#: Where a config states the longest sequence its model takes, as Transformers names it per
#: architecture (Llama, BERT, Falcon...: max_position_embeddings; GPT-2: n_positions, older files
#: n_ctx; ChatGLM, Qwen 1: seq_length; MPT: max_seq_len).
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len", "max_sequence_length")


def context_length(config: dict[str, Any]) -> tuple[int, str] | None:
    """``(positions, field)``: the longest sequence the model takes and the config field that says so.

    Read through the installed Transformers' config class, so that an architecture's own names
    and defaults count (Falcon's config.json may leave out ``max_position_embeddings``; its class
    says 2048), and from the text model of a multimodal config. ``None`` when no field says.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    sources: list[Any] = []
    try:
        built = CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))
        sources.append(built.get_text_config() if hasattr(built, "get_text_config") else built)
    except Exception:  # a config the class cannot build: read the file's own fields
        pass
    sources += [config.get("text_config") or {}, config]
    for name in CONTEXT_FIELDS:
        for source in sources:
            value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                aliases = {} if isinstance(source, dict) else getattr(type(source), "attribute_map", {}) or {}
                return value, aliases.get(name, name)
    return None


def model_capabilities(config: dict[str, Any], task: str) -> dict[str, Any]:
    """What the installed Transformers supports for this model's class and task.

    Returns the class name, the attention implementations the class accepts, whether it can be
    compiled whole, and the transformers version that said so.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    mapping = getattr(modeling_auto, _TASK_MAPPINGS[task])
    class_name = mapping.get(config["model_type"])
    if isinstance(class_name, (list, tuple)):
        class_name = class_name[0]
    if class_name is None:
        raise InputError(
            f"transformers {transformers.__version__} has no {task} class for model_type {config['model_type']!r}; choose another --task"
        )
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise InputError(f"transformers {transformers.__version__} does not export {class_name}; upgrade transformers")
    attentions = ["eager"] + [
        name for name in _installed_attention_names() if any(getattr(cls, flag, False) for flag in _ATTENTION_FLAGS.get(name, ()))
    ]
    return {
        "architecture": class_name,
        "attn_implementations": attentions,
        "can_compile_fullgraph": bool(getattr(cls, "_can_compile_fullgraph", False)),
        "is_encoder_decoder": bool(config.get("is_encoder_decoder", False)),
        "transformers": transformers.__version__,
    }


def _installed_attention_names() -> list[str]:
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # transformers < 4.48
        return ["sdpa", "flash_attention_2"]
    keys = ALL_ATTENTION_FUNCTIONS.valid_keys() if hasattr(ALL_ATTENTION_FUNCTIONS, "valid_keys") else list(ALL_ATTENTION_FUNCTIONS)
    return sorted((k for k in keys if "|" not in k and k in _ATTENTION_FLAGS), key=list(_ATTENTION_FLAGS).index)


# -- a draft model for assisted generation ----------------------------------------------------------


def _vocab_size(config: dict[str, Any]) -> int | None:
    for source in (config, config.get("text_config") or {}):
        value = source.get("vocab_size") if isinstance(source, dict) else None
        if isinstance(value, int):
            return value
    return None


def _load_tokenizer(resolved: ResolvedModel) -> Any:
    import transformers

    kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    return transformers.AutoTokenizer.from_pretrained(resolved.path, **kwargs)


def check_assistant(model: ResolvedModel, task: str, draft_name: str) -> dict[str, str]:
    """The draft model ``draft_name`` for assisted generation of ``model``, as the workload keeps it
    (``{"name", "path"}``), once it is known to share the model's tokenizer and vocabulary.

    Transformers' assisted generate takes a draft of the same tokenizer as is; with another one it
    asks for both tokenizers and re-tokenizes every draft (universal assisted decoding), which is
    not what is measured here. Raises :class:`InputError` with one line that says what differs.
    """
    from autotune.files import has_tokenizer

    where = f"--assistant {draft_name}"
    if task != "text-generation":
        raise InputError(f"{where}: a draft model drafts tokens for text generation, and {model.name} is registered for {task}")
    try:
        draft = resolve(draft_name)
    except (InputError, ModelNotFoundError) as exc:
        raise InputError(f"{where}: {exc}") from None
    if draft.gguf_file:
        raise InputError(f"{where}: a GGUF file; give the draft as a directory with config.json (load it and save_pretrained it)")
    if infer_task(draft.config) != "text-generation":
        raise InputError(
            f"{where}: {draft.config.get('model_type')} ({', '.join(draft.config.get('architectures') or [])}) is not a causal language model"
        )
    for name, resolved in ((model.name, model), (draft.name, draft)):
        if not has_tokenizer(resolved.path, resolved.gguf_file):
            raise InputError(f"{where}: {name} has no tokenizer among its files, so autotune cannot check that the two share one")
    ours, theirs = _vocab_size(model.config), _vocab_size(draft.config)
    if ours != theirs:
        raise InputError(
            f"{where}: its vocabulary has {theirs} entries and {model.name}'s {ours}; a draft must share the model's "
            f"tokenizer and vocabulary (choose a smaller model of the same family)"
        )
    try:
        mine, other = _load_tokenizer(model).get_vocab(), _load_tokenizer(draft).get_vocab()
    except Exception as exc:  # a tokenizer that does not load cannot be compared
        raise InputError(
            f"{where}: a tokenizer does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    if mine != other:
        differs = next((t for t, i in sorted(mine.items(), key=lambda item: item[1]) if other.get(t) != i), None)
        if differs is not None:
            token = f"{differs!r} is id {mine[differs]} in the model's and " + (
                f"id {other[differs]} in the draft's" if differs in other else "not in the draft's"
            )
        else:  # the draft's tokenizer holds the model's and more
            extra = min((t for t in other if t not in mine), key=lambda t: other[t])
            token = f"{extra!r} is id {other[extra]} in the draft's and not in the model's"
        raise InputError(
            f"{where}: its tokenizer differs from {model.name}'s (the draft's has {len(other)} tokens, the model's {len(mine)}; "
            f"token {token}); a draft must share the model's tokenizer (choose a smaller model of the same family)"
        )
    return {"name": draft.name, "path": str(draft.path)}
