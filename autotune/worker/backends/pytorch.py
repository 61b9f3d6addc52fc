"""PyTorch: ``AutoModelFor<Task>.from_pretrained`` with the candidate's options (see :mod:`autotune.worker.loading`)."""

from __future__ import annotations

from typing import Any

from autotune.worker.backends._base import Backend, Loaded


class PyTorchBackend(Backend):
    runtime = "pytorch"

    def load(self) -> Loaded:
        from autotune.worker import loading

        loading.check_importable(self.candidate)
        return loading.load(self.request)

    @property
    def verifies(self) -> str | None:
        return "attention"

    def verify(self, model: Any) -> dict[str, Any]:
        """Which attention functions and kernels one short forward pass really called."""
        from autotune.worker import attention

        if self.request.fault == "fallback":
            attention.register_fallback(model)
        return attention.trace(model, self.candidate, self.request.seed)

    def read_effective(self, model: Any) -> dict[str, Any]:
        from autotune.worker import loading

        return loading.read_effective(model, self.candidate, self.request.gguf_file)

    def check_effective(self, effective: dict[str, Any]) -> None:
        from autotune.worker import attention, loading

        loading.check_effective(self.candidate, effective, self.request.max_memory)
        attention.check(self.candidate, effective)

    def classify_load_error(self, exc: BaseException) -> tuple[str, str]:
        from autotune.worker import loading

        return loading.classify_load_error(exc, self.candidate)

    def after_load(self, model: Any) -> None:
        if self.request.fault == "corrupt":
            from autotune.worker import quality

            quality.corrupt(model, self.request.seed)
        if self.request.fault == "compile":
            import torch

            compiled = torch.compile(lambda x: torch.sin(x) * 2 + x.cos(), dynamic=False)
            compiled(torch.ones(7))

    @property
    def writes_reference(self) -> bool:
        return True
