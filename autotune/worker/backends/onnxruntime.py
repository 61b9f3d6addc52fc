"""ONNX Runtime: export once (cached, in its own process), then ``ORTModelFor<Task>`` with the provider.

See :mod:`autotune.worker.onnx` for the export cache and the session.
"""

from __future__ import annotations

from typing import Any

from autotune.worker import onnx
from autotune.worker.backends._base import Backend, Loaded, LoadFailed


class OnnxRuntimeBackend(Backend):
    runtime = "onnxruntime"

    def __init__(self, request: Any) -> None:
        super().__init__(request)
        self._job: onnx.ExportJob | None = None
        self._export: onnx.Export | None = None

    def refusal(self) -> str | None:
        missing = onnx.missing_packages()
        if missing is not None:
            return f"runtime onnxruntime: {missing}"
        if self.request.task not in onnx.EXPORT_TASKS:
            return f"runtime onnxruntime: no ONNX Runtime model class for task {self.request.task}"
        return None

    def prepare(self) -> None:
        try:
            # The export (a subprocess) runs while this process imports torch and transformers.
            self._job = onnx.start_export(self.request)
        except OSError as exc:
            raise LoadFailed("error", f"cannot write the ONNX export cache {onnx.cache_root(self.request)}: {exc.strerror or exc}") from exc

    @property
    def preparing(self) -> str | None:
        return "exporting"

    def prepared(self) -> dict[str, Any]:
        """Wait for the export; what it made (raises :class:`LoadFailed` when it failed)."""
        assert self._job is not None, "prepare() first"
        self._export = self._job.wait()  # raises onnx.ExportFailed, a LoadFailed
        return self._export.describe()

    def load(self) -> Loaded:
        if self._export is None:
            self.prepared()
        assert self._export is not None
        loaded = onnx.load(self.request, self._export)
        return Loaded(loaded.model, loaded.load_seconds, loaded.kwargs)

    def read_effective(self, model: Any) -> dict[str, Any]:
        assert self._export is not None
        return onnx.read_effective(model, self.candidate, self._export)

    def check_effective(self, effective: dict[str, Any]) -> None:
        onnx.check_effective(self.candidate, effective)

    def classify_load_error(self, exc: BaseException) -> tuple[str, str]:
        return onnx.classify_load_error(exc, self.candidate)
