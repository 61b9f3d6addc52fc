"""The contract between the trial worker and a runtime (PyTorch, ONNX Runtime).

A :class:`Backend` turns a :class:`~autotune.worker.protocol.WorkerRequest` into a loaded model
the worker can measure, and says what really loaded. The worker (:mod:`autotune.worker.child`)
drives every backend the same way, in one process, in this order:

1. :meth:`Backend.refusal` — before anything heavy is imported: a reason this interpreter can
   never run the candidate (a package it lacks, a task it has no class for), or ``None``;
2. :meth:`Backend.prepare` — start slow work that needs no torch (an ONNX export runs in its
   own process while the worker imports torch); :meth:`Backend.prepared` waits for it;
3. :meth:`Backend.load` — load the model; returns :class:`Loaded`;
4. :meth:`Backend.read_effective`, :meth:`Backend.verify` and :meth:`Backend.check_effective` —
   the configuration read back from the loaded model (and from one short run of it), and
   :class:`OptionNotInEffect` when a requested option did not take effect;
5. on any exception from 2–4, :meth:`Backend.classify_load_error` turns it into a status and a
   one-line reason.

The model a backend loads must be measurable by :mod:`autotune.worker.measure` (a
``generate``/``__call__`` with Transformers' signature) and comparable by
:mod:`autotune.worker.quality`. Backends run only inside the worker child; they are not thread
safe and load one model per process. Implementations import their runtime lazily, so that this
package imports with the standard library alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from autotune.worker.protocol import WorkerRequest


class OptionNotInEffect(Exception):
    """A requested option did not take effect; ``status`` is how the trial ends."""

    def __init__(self, status: str, reason: str, effective: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.effective = effective or {}


class LoadFailed(Exception):
    """:meth:`Backend.prepare` or :meth:`Backend.load` failed in a way the backend already classified."""

    def __init__(self, status: str, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.details = details or {}


@dataclass
class Loaded:
    """A loaded model, how long loading took, and the loading call's arguments as short text."""

    model: Any
    load_seconds: float
    kwargs: dict[str, str]


class Backend(ABC):
    """One runtime's way of loading a candidate (see the module docstring for the order of calls)."""

    #: The ``Candidate.runtime`` this backend loads.
    runtime: str = ""

    def __init__(self, request: WorkerRequest) -> None:
        self.request = request
        self.candidate = request.candidate

    def refusal(self) -> str | None:
        """Why this interpreter can never run the candidate, or ``None``; nothing heavy is imported."""
        return None

    def prepare(self) -> None:
        """Start slow work that needs no torch (runs before the worker imports torch)."""

    @property
    def preparing(self) -> str | None:
        """The phase name of what :meth:`prepare` starts (``None``: it starts nothing)."""
        return None

    def prepared(self) -> dict[str, Any] | None:
        """Wait for what :meth:`prepare` started; what it made, to report (``None``: nothing was started)."""
        return None

    @abstractmethod
    def load(self) -> Loaded:
        """Load the candidate; raises whatever the runtime raises (or :class:`LoadFailed`)."""

    @abstractmethod
    def read_effective(self, model: Any) -> dict[str, Any]:
        """The configuration in force, read from the loaded model (not from what was asked)."""

    @property
    def verifies(self) -> str | None:
        """The phase name of :meth:`verify` (``None``: this backend has nothing to verify by running)."""
        return None

    def verify(self, model: Any) -> dict[str, Any]:
        """Run the loaded model once to read back what only running shows (e.g. which attention
        kernels were called); what it returns joins the effective configuration before
        :meth:`check_effective` judges it."""
        return {}

    @abstractmethod
    def check_effective(self, effective: dict[str, Any]) -> None:
        """Raise :class:`OptionNotInEffect` if a requested option did not take effect."""

    @abstractmethod
    def classify_load_error(self, exc: BaseException) -> tuple[str, str]:
        """``(status, reason)`` for an exception raised while preparing or loading."""

    def after_load(self, model: Any) -> None:
        """Test-only faults and other changes to the loaded model before it is measured."""

    @property
    def writes_reference(self) -> bool:
        """Whether this backend can write the quality reference (the highest-precision PyTorch load)."""
        return False
