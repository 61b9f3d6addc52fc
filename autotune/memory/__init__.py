"""The memory model: what a candidate needs, what it may use, and how far the forecast is off.

One home for memory, below the search and the advisor (both use it; it uses neither):

- :mod:`autotune.memory.shape` — the model's shape, read once from ``config.json`` on the meta
  device (torch and Transformers imported inside the call), and :func:`sdpa_math_fallback`.
- :mod:`autotune.memory.forecast` — the forecast, pure arithmetic on a shape: :func:`forecast_bytes`
  gives the one figure a limit is held against (the fullest device's peak), :func:`forecast_parts`
  what it is made of (:class:`Forecast`).
- :mod:`autotune.memory.calibration` — the forecast against measured peaks: a per-device-kind
  correction, the forecast's own error, and the safety margin admission adds, learned from that
  error per group of candidates (:class:`Correction`).
- :mod:`autotune.memory.limit` — the workload's limit on each device of a placement
  (:class:`DeviceLimits`), and the one reader of the host's memory.
- :mod:`autotune.memory.allocator` — a model of PyTorch's CUDA caching allocator, and
  :mod:`autotune.memory.replay`, a worker's dynamic-cache ``generate`` replayed through it (what
  the allocator keeps beyond what is allocated; ``forecast.CACHE_MODEL`` chooses whether the
  forecast uses it).
- :mod:`autotune.memory.bnb` — which layers bitsandbytes converts, shared with the trial worker.
- :mod:`autotune.memory.measured` — the measured points, read from the store (import it
  directly: it is the only part that needs the store, and the worker never imports it).

Importing this package imports neither torch, Transformers nor SQLAlchemy.
"""

from __future__ import annotations

from autotune.memory.calibration import (
    Calibration,
    CalibrationPoint,
    Correction,
    ForecastError,
    Margin,
    Margins,
    calibrate,
    candidate_group,
    correction,
    device_kind,
    learn_margins,
    with_calibration,
)
from autotune.memory.forecast import PARTS, Forecast, forecast_bytes, forecast_on, forecast_parts, forecast_shape, largest_batch
from autotune.memory.limit import DeviceLimit, DeviceLimits, host_memory_bytes
from autotune.memory.shape import ModelShape, model_shape, sdpa_math_fallback, shape_key

__all__ = [
    "PARTS",
    "Calibration",
    "CalibrationPoint",
    "Correction",
    "DeviceLimit",
    "DeviceLimits",
    "Forecast",
    "ForecastError",
    "Margin",
    "Margins",
    "ModelShape",
    "calibrate",
    "candidate_group",
    "correction",
    "device_kind",
    "forecast_bytes",
    "forecast_on",
    "forecast_parts",
    "forecast_shape",
    "host_memory_bytes",
    "learn_margins",
    "largest_batch",
    "model_shape",
    "sdpa_math_fallback",
    "shape_key",
    "with_calibration",
]
