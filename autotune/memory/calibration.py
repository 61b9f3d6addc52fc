"""Calibration: how far the forecast is from what trials measured, and the correction that fits it.

:func:`calibrate` fits a per-device-kind correction (an overhead, and on the CPU a scale) from
measured trials and reports the forecast's own error before and after it, and leave-one-out.
Points come from the store through :mod:`autotune.memory.measured`; nothing here reads it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from autotune.candidate import Candidate
from autotune.memory.forecast import Forecast


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured trial: the device kind it ran on, the raw forecast and the measured peak.

    ``group`` is what the forecast's error depends on besides the device (see
    :func:`candidate_group`); ``shape`` names the model's shape (:func:`~autotune.memory.shape.shape_key`).
    """

    device_kind: str
    forecast_bytes: int
    measured_bytes: int
    label: str = ""
    group: tuple[str, ...] = ()
    shape: str = ""

    @property
    def error(self) -> float:
        """The forecast's signed error, ``(forecast - measured) / measured``: below 0 is an under-forecast."""
        return (self.forecast_bytes - self.measured_bytes) / self.measured_bytes


def candidate_group(candidate: Candidate) -> tuple[str, str, str]:
    """``(attention, cache, quantization)`` of a candidate, as the forecast's error is grouped:
    ``("sdpa", "dynamic", "none")``, ``("eager", "static", "none")``, ``("sdpa[math]", "dynamic", "bnb-8bit")``."""
    attention = candidate.attn + (f"[{candidate.sdpa_kernel}]" if candidate.sdpa_kernel else "")
    return attention, "static" if candidate.static_cache else "dynamic", candidate.quant


@dataclass(frozen=True)
class Fit:
    """``calibrated = overhead + scale x forecast`` for one device kind, from ``points`` trials."""

    overhead: float = 0.0
    scale: float = 1.0
    points: int = 0

    def apply(self, forecast_bytes: float) -> int:
        return int(round(self.overhead + self.scale * forecast_bytes))


@dataclass(frozen=True)
class ForecastError:
    """Relative error ``|forecast − measured| / measured`` over ``n`` trials."""

    n: int
    median: float | None
    worst: float | None

    def describe(self) -> str:
        if not self.n or self.median is None or self.worst is None:
            return "no trials"
        return f"median {self.median:.1%}, worst {self.worst:.1%} over {self.n} trials"

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "median": self.median, "worst": self.worst}


@dataclass(frozen=True)
class Calibration:
    """Per-device-kind corrections of the forecast, and its error before and after them.

    ``after`` is in-sample; ``cross_validated`` refits without each trial in turn (leave-one-out),
    the honest figure for a new trial, when there are at least three.
    """

    fits: dict[str, Fit] = field(default_factory=dict)
    before: ForecastError = ForecastError(0, None, None)
    after: ForecastError = ForecastError(0, None, None)
    cross_validated: ForecastError = ForecastError(0, None, None)

    def apply(self, forecast_bytes: int | Forecast, device_kind: str) -> int:
        raw = forecast_bytes.peak_bytes if isinstance(forecast_bytes, Forecast) else forecast_bytes
        fit = self.fits.get(device_kind)
        return int(raw) if fit is None else fit.apply(raw)

    @property
    def points(self) -> int:
        return sum(f.points for f in self.fits.values())

    def describe(self) -> str:
        if not self.fits:
            return "uncalibrated (no measured trials here)"
        kinds = "; ".join(
            f"{kind}: {fit.overhead / 2**30:+.2f} GiB, x{fit.scale:.3f} ({fit.points} trials)" for kind, fit in self.fits.items()
        )
        text = (
            f"calibrated from {self.points} measured trials ({kinds}); error before {self.before.describe()}, after {self.after.describe()}"
        )
        if self.cross_validated.n:
            text += f", leave-one-out {self.cross_validated.describe()}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": {k: {"overhead_bytes": f.overhead, "scale": f.scale, "points": f.points} for k, f in self.fits.items()},
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "cross_validated": self.cross_validated.to_dict(),
        }


#: The scale a fit may take: a forecast off by more than this is a bug, not something to calibrate away.
SCALE_RANGE = (0.5, 2.0)
#: Two forecasts closer than this (relatively) say nothing about the scale: measurement noise
#: between them would set it.
MIN_SPREAD = 0.15


def fit_points(points: Iterable[CalibrationPoint], *, scale: bool = True) -> Fit:
    """A robust linear fit of measured against forecast peaks (Theil–Sen slope, median intercept).

    One point, points whose forecasts barely differ, or ``scale=False`` fit the overhead alone
    (scale 1).
    """
    pts = [(float(p.forecast_bytes), float(p.measured_bytes)) for p in points]
    if not pts:
        return Fit()
    slopes = [
        (m2 - m1) / (f2 - f1)
        for i, (f1, m1) in enumerate(pts)
        for f2, m2 in pts[i + 1 :]
        if scale and abs(f2 - f1) > MIN_SPREAD * max(f1, f2)
    ]
    factor = statistics.median(slopes) if slopes else 1.0
    factor = min(max(factor, SCALE_RANGE[0]), SCALE_RANGE[1])
    overhead = statistics.median(m - factor * f for f, m in pts)
    return Fit(overhead=overhead, scale=factor, points=len(pts))


def fits_scale(device_kind: str) -> bool:
    """Whether a calibration of ``device_kind`` fits a scale as well as an overhead.

    On a GPU the forecast's terms are bytes the allocator hands out, and what it misses is a
    per-process constant (CUDA context, library workspaces, allocator rounding): an overhead. A
    scale fitted there mostly learns how the candidates in the store happen to differ (an int8
    point forecast a little high, a 4-bit one a little low) and extrapolates that to sizes it
    has not seen: on an H200 store, leave-one-out errors rose from 4.5% to 15% worst with it. On
    the CPU the resident set grows with the model (mapped checkpoint pages, allocator arenas), so
    a scale is fitted there.
    """
    return device_kind == "cpu"


def forecast_error(pairs: Iterable[tuple[float, float]]) -> ForecastError:
    """The error of ``(forecast, measured)`` pairs."""
    errors = [abs(f - m) / m for f, m in pairs if m]
    if not errors:
        return ForecastError(0, None, None)
    return ForecastError(len(errors), statistics.median(errors), max(errors))


def calibrate(pairs: Iterable[CalibrationPoint | tuple[str, int, int]]) -> Calibration:
    """Fit a correction per device kind from measured ``ok`` trials of one environment.

    Each pair is a :class:`CalibrationPoint` or a ``(device_kind, forecast_bytes, measured_bytes)``
    tuple; points without a positive measured peak are ignored.
    """
    points = [p if isinstance(p, CalibrationPoint) else CalibrationPoint(*p) for p in pairs]
    points = [p for p in points if p.measured_bytes and p.measured_bytes > 0 and p.forecast_bytes > 0]
    kinds: dict[str, list[CalibrationPoint]] = {}
    for p in points:
        kinds.setdefault(p.device_kind, []).append(p)
    fits = {kind: fit_points(pts, scale=fits_scale(kind)) for kind, pts in kinds.items()}
    before = forecast_error((p.forecast_bytes, p.measured_bytes) for p in points)
    after = forecast_error((fits[p.device_kind].apply(p.forecast_bytes), p.measured_bytes) for p in points)
    loo = []
    if len(points) >= 3:
        loo = [(predicted, p.measured_bytes) for predicted, p in zip(leave_one_out(points), points)]
    return Calibration(fits=fits, before=before, after=after, cross_validated=forecast_error(loo))


def leave_one_out(points: list[CalibrationPoint]) -> list[int]:
    """For each point, its forecast calibrated by a fit of the other points of its device kind."""
    out = []
    for i, p in enumerate(points):
        rest = [q for j, q in enumerate(points) if j != i and q.device_kind == p.device_kind]
        out.append((fit_points(rest, scale=fits_scale(p.device_kind)) if rest else Fit()).apply(p.forecast_bytes))
    return out


def leave_one_shape_out(points: list[CalibrationPoint]) -> list[int]:
    """For each point, its forecast calibrated by a fit of the points of its device kind measured
    on other model shapes (a kind measured on one shape only: on the other points, as
    :func:`leave_one_out`). The honest figure for a model the store has not seen."""
    shapes: dict[str, set[str]] = {}
    for p in points:
        shapes.setdefault(p.device_kind, set()).add(p.shape)
    out = []
    for i, p in enumerate(points):
        others = len(shapes[p.device_kind]) > 1
        rest = [q for j, q in enumerate(points) if q.device_kind == p.device_kind and (q.shape != p.shape if others else j != i)]
        out.append((fit_points(rest, scale=fits_scale(p.device_kind)) if rest else Fit()).apply(p.forecast_bytes))
    return out


# -- the safety margin ---------------------------------------------------------------------------

#: The margin admission adds where no measured trial of the group says better. On shapes the
#: calibration was not fitted on (benchmarks/forecast_holdout.py, BENCHMARKS.md §7), 10% covers
#: every measured peak but one, which needed 13.9% (SDPA with a dynamic cache of 32 K/V heads at
#: batch 32); a larger default would keep out loads measured to fit (Llama-8B in bf16 over two
#: 10 GiB GPUs peaked at 9.13 GiB).
DEFAULT_MARGIN = 0.10
#: Added to the worst under-forecast a group has seen: the next trial may be a little worse.
MARGIN_PAD = 0.02
#: The fewest points a group needs for its own margin; with fewer, a coarser group decides.
MIN_GROUP_POINTS = 3
#: The margins a group may learn: never more than this much below the forecast (a group the
#: forecast over-estimates admits a little more), never above the upper bound.
MARGIN_RANGE = (-0.10, 0.50)


@dataclass(frozen=True)
class Margin:
    """A safety margin: the share added to a forecast for admission, and what it was learned from.

    ``group`` is the group of points it comes from (empty: the default, no points).
    """

    value: float
    group: tuple[str, ...] = ()
    points: int = 0

    def describe(self) -> str:
        if not self.points:
            return f"{self.value:+.1%} (default: no measured trials like it)"
        return f"{self.value:+.1%} (learned from {self.points} trials: {' / '.join(self.group)})"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "group": list(self.group), "points": self.points}


def margin_keys(device_kind: str, group: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The groups a point belongs to, finest first: device kind, attention, cache, quantization;
    then without the quantization, without the cache, the device kind alone, GPU or CPU."""
    attention, cache, quant = (tuple(group) + ("", "", ""))[:3]
    family = "cpu" if device_kind == "cpu" else "gpu"
    return [(device_kind, attention, cache, quant), (device_kind, attention, cache), (device_kind, attention), (device_kind,), (family,)]


@dataclass(frozen=True)
class Margins:
    """Safety margins learned per group of measured trials (see :func:`learn_margins`)."""

    groups: dict[tuple[str, ...], Margin] = field(default_factory=dict)
    default: float = DEFAULT_MARGIN

    def for_candidate(self, candidate: Candidate, device_kind: str) -> Margin:
        """The margin of the finest group of ``candidate`` on ``device_kind`` that has enough points."""
        for key in margin_keys(device_kind, candidate_group(candidate)):
            if key in self.groups:
                return self.groups[key]
        return Margin(self.default)

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "groups": [m.to_dict() for m in self.groups.values()]}


def learn_margins(points: list[CalibrationPoint], predicted: list[int], *, default: float = DEFAULT_MARGIN) -> Margins:
    """Margins from each group's worst under-forecast: ``max(measured / predicted - 1) + MARGIN_PAD``.

    ``predicted`` are the points' forecasts as admission would see them (calibrated on other
    points, see :func:`leave_one_shape_out`). A margin covers every point of its group; a group
    the forecast over-estimates gets a negative one (down to ``MARGIN_RANGE[0]``), so that an
    over-forecast does not keep the winner out.
    """
    ratios: dict[tuple[str, ...], list[float]] = {}
    for p, figure in zip(points, predicted):
        if figure > 0 and p.measured_bytes > 0:
            for key in margin_keys(p.device_kind, p.group):
                ratios.setdefault(key, []).append(p.measured_bytes / figure - 1)
    groups = {}
    for key, values in ratios.items():
        if len(values) >= MIN_GROUP_POINTS:
            value = min(max(max(values) + MARGIN_PAD, MARGIN_RANGE[0]), MARGIN_RANGE[1])
            groups[key] = Margin(round(value, 4), key, len(values))
    return Margins(groups, default)


@dataclass(frozen=True)
class Correction:
    """What admission does with a raw forecast: calibrate it, then add the group's safety margin.

    Without measured trials: no calibration, and the default margin.
    """

    calibration: Calibration = field(default_factory=Calibration)
    margins: Margins = field(default_factory=Margins)

    def figure(self, raw_bytes: int, device_kind: str) -> int:
        """The calibrated forecast."""
        return self.calibration.apply(raw_bytes, device_kind)

    def margin(self, candidate: Candidate, device_kind: str) -> Margin:
        return self.margins.for_candidate(candidate, device_kind)

    def admitted(self, raw_bytes: int, candidate: Candidate, device_kind: str) -> int:
        """The figure admission holds against a limit: the calibrated forecast plus the margin."""
        return int(math.ceil(self.figure(raw_bytes, device_kind) * (1 + self.margin(candidate, device_kind).value)))

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_dict(), "margins": self.margins.to_dict()}


def correction(points: Iterable[CalibrationPoint]) -> Correction:
    """The calibration of ``points`` and the margins their out-of-shape errors call for."""
    pts = [p for p in points if p.measured_bytes and p.measured_bytes > 0 and p.forecast_bytes > 0]
    return Correction(calibrate(pts), learn_margins(pts, leave_one_shape_out(pts)))


def with_calibration(forecast_value: Forecast, calibration: Calibration | None, device_kind: str) -> Forecast:
    """``forecast_value`` with its total replaced by the calibrated one (the difference goes to slack)."""
    if calibration is None or device_kind not in calibration.fits:
        return forecast_value
    total = calibration.apply(forecast_value.total_bytes, device_kind)
    parts = dict(forecast_value.parts)
    parts["allocator_slack"] += total - forecast_value.total_bytes
    return replace(forecast_value, total_bytes=total, parts=parts)


def device_kind(candidate: Candidate, gpu_names: Iterable[str]) -> str:
    """The kind of device a candidate's peak is measured on: ``cpu`` or the GPU's name."""
    if not candidate.on_gpu:
        return "cpu"
    names = sorted(set(gpu_names))
    return " + ".join(names) if names else "gpu"
