"""Worker environments: other Python interpreters that trials can run in.

Optimum's ONNX Runtime path pins ``transformers<4.58`` while the rest of the stack is on
Transformers 5, so measuring both needs two Python environments. A worker environment is a
registered interpreter; autotune asks it (in a subprocess) for its library versions and for the
runtimes and execution providers it offers, and runs the trials that need them there. The
interpreter autotune runs in is always available as the environment ``default``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import InputError

DEFAULT = "default"
PROBE_TIMEOUT_S = 120

#: Run inside the other interpreter; prints one JSON document. It must not need autotune.
_PROBE = r"""
import json, platform, sys
from importlib import metadata
out = {"python": platform.python_version(), "executable": sys.executable, "versions": {}, "runtimes": {}, "problems": []}
for dist in ("torch", "transformers", "accelerate", "bitsandbytes", "optimum", "optimum-onnx", "onnxruntime", "onnxruntime-gpu"):
    try:
        out["versions"][dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        out["versions"][dist] = None
try:
    import torch, transformers  # noqa: F401
    out["runtimes"]["pytorch"] = ["cuda" if torch.cuda.is_available() else "cpu"]
except Exception as exc:
    out["problems"].append(f"pytorch: {type(exc).__name__}: {exc}")
try:
    import onnxruntime
    import optimum.onnxruntime  # noqa: F401
    listed = [p for p in onnxruntime.get_available_providers() if p != "AzureExecutionProvider"]
    out["runtimes"]["onnxruntime"] = listed
except Exception as exc:
    listed = []
    out["problems"].append(f"onnxruntime: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
# A GPU provider can be listed and still fail to load (a missing libcudnn or libcublas, a CUDA
# version the build was not made for): ONNX Runtime then falls back to the CPU with a log line on
# the C stderr. Open a one-node graph on each and keep only those the session reports back.
import base64, os, tempfile
graph = base64.b64decode("CAgSADo3ChAKAXgSAXkiCElkZW50aXR5EgFnWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQDQ==")
for provider in [p for p in listed if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]:
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush(); saved = os.dup(2); os.dup2(log.fileno(), 2)
        try:
            got, why = onnxruntime.InferenceSession(graph, providers=[provider, "CPUExecutionProvider"]).get_providers(), ""
        except Exception as exc:
            got, why = [], f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            sys.stderr.flush(); os.dup2(saved, 2); os.close(saved)
        log.seek(0)
        lines = [l.strip() for l in log.read().decode(errors="replace").splitlines() if l.strip()]
    if provider not in got:
        listed.remove(provider)
        why = why or next((l for l in lines if "rror" in l), lines[-1] if lines else "the session fell back to " + ", ".join(got))
        out["problems"].append(f"onnxruntime {provider}: listed but a session could not use it: {why[-300:]}")
if "onnxruntime" in out["runtimes"] and "CUDAExecutionProvider" not in listed and out["versions"]["onnxruntime-gpu"] is None:
    try:
        import torch
        if torch.cuda.is_available():
            out["problems"].append("onnxruntime CUDAExecutionProvider: onnxruntime is the CPU build; install onnxruntime-gpu there")
    except Exception:
        pass
print(json.dumps(out))
"""


@dataclass(frozen=True)
class WorkerEnvironment:
    """A Python interpreter trials can run in, and what it offers."""

    name: str
    python: str
    python_version: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    runtimes: dict[str, list[str]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None and bool(self.runtimes)

    def offers(self, runtime: str, provider: str | None = None) -> bool:
        providers = self.runtimes.get(runtime)
        if providers is None:
            return False
        return provider is None or provider in providers

    def packages(self) -> list[str]:
        """``name==version`` of what an application needs to reproduce a trial run here."""
        return [f"{k}=={v}" for k, v in self.versions.items() if v]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "python": self.python,
            "python_version": self.python_version,
            "versions": self.versions,
            "runtimes": self.runtimes,
            "problems": list(self.problems),
            "error": self.error,
            "usable": self.usable,
        }


def probe(name: str, python: str) -> WorkerEnvironment:
    """Ask the interpreter ``python`` what it has. Never raises for a broken interpreter:
    the problem is in ``error``."""
    if not Path(python).exists():
        return WorkerEnvironment(name, python, error=f"interpreter {python} does not exist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return WorkerEnvironment(name, python, error=f"interpreter {python} did not answer within {PROBE_TIMEOUT_S} s")
    except OSError as exc:
        return WorkerEnvironment(name, python, error=f"cannot run {python}: {exc.strerror}")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return WorkerEnvironment(name, python, error=f"interpreter {python} failed: {last}")
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return WorkerEnvironment(name, python, error=f"interpreter {python} gave no readable answer")
    return WorkerEnvironment(
        name=name,
        python=python,
        python_version=data["python"],
        versions=data["versions"],
        runtimes=data["runtimes"],
        problems=tuple(data["problems"]),
    )


def default_environment() -> WorkerEnvironment:
    """The interpreter autotune runs in. Its runtimes are read from metadata and NVML, not imported."""
    from autotune.environment import installed_versions, probe_gpus

    versions = installed_versions()
    runtimes: dict[str, list[str]] = {}
    if versions.get("torch") and versions.get("transformers"):
        runtimes["pytorch"] = ["cpu"] + (["cuda"] if probe_gpus()[0] else [])
    return WorkerEnvironment(
        DEFAULT, sys.executable, python_version=".".join(map(str, sys.version_info[:3])), versions=versions, runtimes=runtimes
    )


def check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise InputError(f"worker environment name {name!r} must be letters, digits, '-', '_' or '.'")
    if name == DEFAULT:
        raise InputError(f"{DEFAULT!r} is the interpreter autotune runs in; choose another name")
    return name
