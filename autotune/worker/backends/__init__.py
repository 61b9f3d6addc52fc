"""Runtimes behind one contract: :class:`Backend` (see :mod:`autotune.worker.backends._base`).

``for_request(request)`` picks the backend of the candidate's runtime. Each backend module
imports its runtime lazily, so importing this package costs nothing.
"""

from __future__ import annotations

from autotune.axes import RUNTIMES
from autotune.worker.backends._base import Backend, Loaded, LoadFailed, OptionNotInEffect
from autotune.worker.protocol import WorkerRequest

__all__ = ["RUNTIMES", "Backend", "LoadFailed", "Loaded", "OptionNotInEffect", "for_request"]


def for_request(request: WorkerRequest) -> Backend | None:
    """The backend of the request's runtime, or ``None`` when this worker has none for it."""
    runtime = request.candidate.runtime
    if runtime == "pytorch":
        from autotune.worker.backends.pytorch import PyTorchBackend

        return PyTorchBackend(request)
    if runtime == "onnxruntime":
        from autotune.worker.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(request)
    return None
