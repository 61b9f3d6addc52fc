"""ONNX Runtime candidates: export once (cached on disk), load with the provider, read back what runs.

Runs inside the trial worker, in a worker environment whose interpreter has optimum-onnx and
onnxruntime (Optimum's ONNX path pins ``transformers<4.58``; see :mod:`autotune.worker_env`).
Only the standard library is imported at module level: the export's cache key and the export
subprocess need nothing else, so the export can run while the worker imports torch.

The export cache
    ``<cache>/onnx/<model>-<key>/`` holds the ONNX file(s) written by
    ``optimum.exporters.onnx.main_export``, the model's config, and :data:`METADATA` (the export's
    settings, versions and seconds). ``<cache>`` is the request's ``onnx_cache``, else
    ``$AUTOTUNE_CACHE/onnx``, else ``~/.cache/autotune/onnx``. The key hashes the model (name,
    path, registered revision, config.json, the names, sizes and times of its files) and the
    export settings (optimum task, float16 or float32, the versions of optimum-onnx, optimum,
    transformers and torch), so a model is exported once per setting. An export is written to a
    private temporary directory and renamed into place when complete: concurrent workers never
    see half an export, and the first rename wins.

The export runs in its own process (``python -m autotune.worker.onnx SPEC.json``): its memory
(the PyTorch model it traces) never counts in the worker's peak, and a crash in the exporter
ends as a recorded reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata as _metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from autotune.candidate import Candidate
from autotune.worker.backends._base import LoadFailed
from autotune.worker.protocol import WorkerRequest

#: The optimum export task of each autotune task (decoders export with their KV cache).
EXPORT_TASKS = {
    "text-generation": "text-generation-with-past",
    "feature-extraction": "feature-extraction",
    "text-classification": "text-classification",
}
#: The ``optimum.onnxruntime`` class that runs each task.
ORT_CLASSES = {
    "text-generation": "ORTModelForCausalLM",
    "feature-extraction": "ORTModelForFeatureExtraction",
    "text-classification": "ORTModelForSequenceClassification",
}
EXPORT_DTYPES = {"float32": "fp32", "float16": "fp16"}
METADATA = "autotune-export.json"
FORMAT = 1
#: Versions that change what an export contains.
EXPORT_PACKAGES = ("optimum-onnx", "optimum", "transformers", "torch")
#: Temporary export directories older than this are left-overs of killed workers.
STALE_TMP_S = 24 * 3600
INSTALL_HINT = 'pip install "optimum-onnx[onnxruntime]" (or [onnxruntime-gpu]) in this environment'


class ExportFailed(LoadFailed):
    """The export did not produce a usable model; ``status`` is how the trial ends."""


def version(dist: str) -> str | None:
    try:
        return _metadata.version(dist)
    except _metadata.PackageNotFoundError:
        return None


def missing_packages() -> str | None:
    """What this interpreter lacks for ONNX Runtime candidates, in words; ``None`` if nothing."""
    missing = []
    for module, dist in (
        ("onnxruntime", "onnxruntime"),
        ("optimum.onnxruntime", "optimum-onnx"),
        ("optimum.exporters.onnx", "optimum-onnx"),
    ):
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found and dist not in missing:
            missing.append(dist)
    if not missing:
        return None
    return f"{sys.executable} cannot import {' and '.join(missing)}: {INSTALL_HINT}"


def cache_root(request: WorkerRequest) -> Path:
    if request.onnx_cache:
        return Path(request.onnx_cache).expanduser()
    explicit = os.environ.get("AUTOTUNE_CACHE")
    if explicit:
        return Path(explicit).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "autotune" / "onnx"


# -- the export and its key -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSpec:
    """What to export and how; :meth:`key` is its identity in the cache."""

    model_path: str
    model_name: str
    revision: str | None
    task: str
    dtype: str
    device: str
    seed: int
    versions: dict[str, str | None] = field(default_factory=dict)
    #: Test-only: the exporter raises (not part of the identity).
    fail: bool = False

    def identity(self) -> dict[str, Any]:
        path = Path(self.model_path)
        config = path / "config.json"
        return {
            "format": FORMAT,
            "model": self.model_name,
            "path": self.model_path,
            "revision": self.revision,
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
            "files": _content_stamp(path),
            "task": self.task,
            "dtype": self.dtype,
            "versions": self.versions,
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:20]

    def directory(self, root: Path) -> Path:
        """Where this export lives under ``root``: a readable model slug, then the key."""
        slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in Path(self.model_name.rstrip("/")).name)[:48] or "model"
        return root / f"{slug}-{EXPORT_DTYPES.get(self.dtype, self.dtype)}-{self.key()}"


def _content_stamp(path: Path) -> list[Any]:
    if not path.is_dir():
        return []
    return [[e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in sorted(os.scandir(path), key=lambda e: e.name) if e.is_file()]


def export_spec(request: WorkerRequest) -> ExportSpec:
    c = request.candidate
    return ExportSpec(
        model_path=request.model_path,
        model_name=request.model_name,
        revision=request.model_revision,
        task=EXPORT_TASKS[request.task],
        dtype=c.dtype,
        device="cuda" if c.dtype == "float16" else "cpu",
        seed=request.seed,
        versions={d: version(d) for d in EXPORT_PACKAGES},
        fail=request.fault == "export",
    )


@dataclass(frozen=True)
class Export:
    """An export in the cache: where, whether this worker found it there, and what it holds."""

    path: str
    cached: bool
    metadata: dict[str, Any]
    wall_seconds: float | None = None

    def files(self) -> dict[str, int]:
        """ONNX files (and external-data files) relative to the export directory, with their sizes."""
        root = Path(self.path)
        out = {}
        for item in sorted(root.rglob("*")):
            if item.is_file() and (item.suffix == ".onnx" or item.name.endswith(".onnx_data") or item.suffix == ".data"):
                out[str(item.relative_to(root))] = item.stat().st_size
        return out

    def describe(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "path": self.path,
            "cached": self.cached,
            "seconds": meta.get("export_seconds"),
            "task": meta.get("task"),
            "dtype": meta.get("dtype"),
            "device": meta.get("device"),
            "key": meta.get("key"),
            "optimum_onnx": (meta.get("versions") or {}).get("optimum-onnx"),
            "exported_at": meta.get("exported_at"),
            "wall_seconds": self.wall_seconds,
        }


def read_metadata(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / METADATA).read_text())
    except (OSError, ValueError):
        return None


class ExportJob:
    """An export that is either in the cache already or running in its own process."""

    def __init__(
        self, spec: ExportSpec, root: Path, target: Path, proc: subprocess.Popen[bytes] | None, workdir: Path | None, started: float
    ) -> None:
        self.spec, self.root, self.target, self.proc, self.workdir, self.started = spec, root, target, proc, workdir, started

    def wait(self) -> Export:
        """The finished export; raises :class:`ExportFailed` with the exporter's own words."""
        if self.proc is None:
            meta = read_metadata(self.target)
            if meta is None:
                raise ExportFailed("error", f"the cached export at {self.target} has no readable {METADATA}; delete that directory")
            return Export(str(self.target), True, meta)
        try:
            returncode = self.proc.wait()
            wall = time.monotonic() - self.started
            log = _tail(self.workdir / "export.log") if self.workdir else ""
            meta = read_metadata(self.target)
            if returncode != 0 or meta is None:
                raise ExportFailed(*_classify_export_failure(returncode, log), {"export_log": log[-3000:], "export_returncode": returncode})
            return Export(str(self.target), False, meta, wall)
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)


def start_export(request: WorkerRequest) -> ExportJob:
    """Find the candidate's export in the cache, or start making it in a subprocess."""
    spec = export_spec(request)
    root = cache_root(request)
    target = spec.directory(root)
    started = time.monotonic()
    if (target / METADATA).is_file() and not spec.fail:
        return ExportJob(spec, root, target, None, None, started)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    workdir = root / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir()
    (workdir / "spec.json").write_text(json.dumps({**asdict(spec), "target": str(target), "key": spec.key()}))
    with open(workdir / "export.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autotune.worker.onnx", str(workdir / "spec.json")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
    return ExportJob(spec, root, target, proc, workdir, started)


def _remove_stale(root: Path) -> None:
    now = time.time()
    for item in root.glob(".tmp-*"):
        try:
            if now - item.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(item, ignore_errors=True)
        except OSError:
            pass


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


_EXPORT_UNSUPPORTED = (
    "only supports the tasks",
    "is not supported yet",
    "custom or unsupported architecture",
    "not supported",
    "does not support",
    "could not infer the pad token id",
)


def _classify_export_failure(returncode: int, log: str) -> tuple[str, str]:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    error = next(
        (
            line
            for line in reversed(lines)
            if ("Error" in line.split(":")[0] or "Exception" in line.split(":")[0]) and not line.startswith("File ")
        ),
        None,
    ) or (lines[-1] if lines else "no output")
    if len(error) > 400:
        error = error[:397] + "..."
    if returncode < 0:
        return "crash", f"exporting to ONNX: the exporter was killed by signal {-returncode} ({error})"
    if any(hint in error.lower() for hint in _EXPORT_UNSUPPORTED):
        return "unsupported", f"exporting to ONNX: optimum refused this model: {error}"
    return "error", f"exporting to ONNX failed: {error}"


def _export_main(spec_file: str) -> int:
    """The export subprocess: export into a private directory, then rename it into the cache."""
    data = json.loads(Path(spec_file).read_text())
    workdir = Path(spec_file).parent
    target = Path(data["target"])
    out = workdir / "out"

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    from optimum.exporters.onnx import main_export

    config = transformers.AutoConfig.from_pretrained(data["model_path"])
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        eos = getattr(config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, list) and eos else eos if isinstance(eos, int) else 0
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    # A head missing from the checkpoint (a classifier) is initialised as the PyTorch worker does.
    torch.manual_seed(int(data.get("seed", 0)))
    if data.get("fail"):
        raise RuntimeError("the ONNX exporter failed (a fault injected by a test)")
    started = time.perf_counter()
    main_export(
        data["model_path"],
        output=out,
        task=data["task"],
        dtype=EXPORT_DTYPES[data["dtype"]],
        device=data["device"],
        do_validation=False,
        no_post_process=True,
        library_name="transformers",
        pad_token_id=pad,
        local_files_only=offline,
    )
    seconds = time.perf_counter() - started
    try:
        from optimum.utils.save_utils import maybe_save_preprocessors

        maybe_save_preprocessors(data["model_path"], out)
    except Exception:  # a tokenizer is a convenience for apps, not needed to measure
        pass
    meta = {
        "format": FORMAT,
        "key": data["key"],
        "model": data["model_name"],
        "model_path": data["model_path"],
        "revision": data["revision"],
        "task": data["task"],
        "dtype": data["dtype"],
        "device": data["device"],
        "versions": {**data["versions"], "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu")},
        "export_seconds": round(seconds, 3),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / METADATA).write_text(json.dumps(meta, indent=1))
    try:
        os.rename(out, target)
    except OSError:
        if not (target / METADATA).is_file():
            raise
        print(f"autotune-export: another worker finished {target.name} first; keeping its export", flush=True)
    print(f"autotune-export: {target} in {seconds:.2f} s", flush=True)
    return 0


# -- loading and reading back ---------------------------------------------------------------------


@dataclass
class Loaded:
    model: Any
    load_seconds: float
    kwargs: dict[str, str]


def load(request: WorkerRequest, export: Export) -> Loaded:
    """``ORTModelFor<Task>.from_pretrained(export dir, provider=..., use_io_binding=...)``."""
    import optimum.onnxruntime as ort_models

    c = request.candidate
    cls = getattr(ort_models, ORT_CLASSES[request.task])
    kwargs: dict[str, Any] = {"provider": c.provider, "use_io_binding": bool(c.io_binding)}
    started = time.perf_counter()
    model = cls.from_pretrained(export.path, local_files_only=True, **kwargs)
    seconds = time.perf_counter() - started
    return Loaded(model, seconds, {"class": ORT_CLASSES[request.task], "export": "False", **{k: repr(v) for k, v in kwargs.items()}})


def _short(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def read_effective(model: Any, candidate: Candidate, export: Export) -> dict[str, Any]:
    """What runs, read from the ONNX Runtime session (not from what was asked)."""
    files = export.files()
    versions = {d: version(d) for d in ("onnxruntime", "onnxruntime-gpu", "optimum-onnx", "optimum", "transformers", "torch")}
    return {
        "runtime": "onnxruntime",
        "provider": model.provider,
        "providers": list(model.providers),
        "io_binding": bool(model.use_io_binding),
        "device": str(model.device),
        "dtype": _short(model.dtype),
        "onnx_dtype": _short(model.dtype),
        "onnx_files": files,
        "weights_bytes": sum(files.values()) or None,
        "export": export.describe(),
        "attn_implementation": None,
        "versions": {k: v for k, v in versions.items() if v},
    }


def check_effective(candidate: Candidate, effective: dict[str, Any]) -> None:
    """Raise ``OptionNotInEffect`` if the session does not run what the candidate asked for."""
    from autotune.worker.loading import OptionNotInEffect

    if effective["provider"] != candidate.provider:
        raise OptionNotInEffect(
            "unsupported",
            f"execution provider {candidate.provider} did not take effect: the session runs {', '.join(effective['providers'])}",
        )
    if effective["io_binding"] != bool(candidate.io_binding):
        raise OptionNotInEffect("unsupported", f"IO binding {'on' if candidate.io_binding else 'off'} did not take effect")
    if effective["dtype"] != candidate.dtype:
        raise OptionNotInEffect(
            "unsupported", f"dtype {candidate.dtype} did not take effect: the exported graph computes in {effective['dtype']}"
        )


def classify_load_error(exc: BaseException, candidate: Candidate) -> tuple[str, str]:
    """``(status, reason)`` for an exception raised while creating the ONNX Runtime session."""
    from autotune.worker.loading import first_line, is_out_of_memory

    message = first_line(exc)
    if is_out_of_memory(exc):
        return "oom", f"out of memory while loading: {message}"
    text = str(exc)
    if isinstance(exc, ImportError):
        return "unsupported", f"loading {candidate.label()} needs a package that is not usable here: {message}"
    if "available execution providers" in text or "execution provider" in text.lower():
        return (
            "unsupported",
            f"ONNX Runtime {version('onnxruntime') or version('onnxruntime-gpu')} cannot use {candidate.provider}: {message}",
        )
    if type(exc).__module__.startswith("onnxruntime"):
        return (
            "unsupported",
            f"ONNX Runtime {version('onnxruntime') or version('onnxruntime-gpu')} refused the exported graph with {candidate.provider}: {message}",
        )
    return "error", f"loading the ONNX export failed: {message}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m autotune.worker.onnx SPEC.json", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_export_main(sys.argv[1]))
