"""Static SVG charts in pure Python: scatter points, lines, reference rules and callouts on linear
or base-2 logarithmic axes.

The report must open without a network and without autotune, and the command that writes it
must start fast, so its charts are plain SVG text: no plotting library, no script. Each mark
carries a ``<title>``, which browsers show as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

#: Tableau 10: distinct hues that stay apart for the common forms of colour blindness.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
#: Shapes cycle after the palette, so that the eleventh series still looks different from the first.
SHAPES = ("circle", "square", "triangle", "diamond")
INK = "#1f2933"
MUTED = "#6b7785"
GRID = "#e4e8ee"


def style_for(index: int) -> tuple[str, str]:
    """``(colour, shape)`` of the ``index``-th series."""
    return PALETTE[index % len(PALETTE)], SHAPES[(index // len(PALETTE)) % len(SHAPES)]


@dataclass(frozen=True)
class Axis:
    """An axis: its label, how values are printed, and its scale.

    ``log2``: a base-2 logarithmic scale with ticks at powers of two (batch sizes). ``zero``:
    the domain includes 0. ``bounds``: a fixed domain instead of one fitted to the data.
    ``min_span``: the domain spans at least this share of its largest value, so that a spread of
    0.3% (two peaks 40 MiB apart at 14 GiB) does not fill the chart as if it mattered.
    """

    label: str
    fmt: Callable[[float], str] = lambda v: f"{v:g}"
    log2: bool = False
    zero: bool = False
    bounds: tuple[float, float] | None = None
    min_span: float = 0.0


@dataclass(frozen=True)
class Mark:
    """One point. ``filled=False`` draws it hollow (an infeasible measurement). ``y=None`` puts it
    on the bottom edge, crossed (a measurement that produced no figure)."""

    x: float
    y: float | None
    color: str
    shape: str = "circle"
    filled: bool = True
    title: str = ""
    size: float = 5.0


@dataclass(frozen=True)
class Line:
    points: tuple[tuple[float, float], ...]
    color: str
    width: float = 1.6
    dash: str | None = None
    step: bool = False
    title: str = ""


@dataclass(frozen=True)
class Rule:
    """A reference line across the plot at ``value`` on the ``axis`` (``"x"`` or ``"y"``)."""

    axis: str
    value: float
    label: str
    color: str = "#c0392b"


@dataclass(frozen=True)
class Callout:
    """A ring around a point with a short text beside it (the recommendation)."""

    x: float
    y: float
    text: str


@dataclass
class Chart:
    """One chart. Fill its lists, then :meth:`render` it; a chart with no points or lines renders
    ``empty`` instead of axes."""

    title: str
    x: Axis
    y: Axis
    marks: list[Mark] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    callouts: list[Callout] = field(default_factory=list)
    diagonal: bool = False
    empty: str = "nothing to plot"
    #: Unique within a page: names the chart's clip path.
    ident: str = "chart"
    width: int = 620
    height: int = 360

    def render(self) -> str:
        return _render(self)


# -- scales ---------------------------------------------------------------------------------------


def nice_step(span: float, count: int = 5) -> float:
    """A step of 1, 2, 2.5 or 5 times a power of ten that cuts ``span`` into about ``count`` parts."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power * 1.0000001:
            return factor * power
    return 10 * power


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values from at most ``lo`` to at least ``hi``."""
    step = nice_step(hi - lo, count)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    value = start
    while value < hi + step * 0.999 and len(ticks) < 50:
        ticks.append(round(value, 12))
        value += step
    return ticks


def pow2_ticks(lo: float, hi: float) -> list[float]:
    """Powers of two in ``[lo, hi]``, thinned to at most eight."""
    first, last = math.ceil(math.log2(lo) - 1e-9), math.floor(math.log2(hi) + 1e-9)
    exponents = list(range(first, last + 1))
    stride = max(1, math.ceil(len(exponents) / 8))
    return [2.0**e for e in exponents[::stride]]


@dataclass(frozen=True)
class _Scale:
    lo: float
    hi: float
    start: float
    end: float
    log2: bool
    ticks: tuple[float, ...]

    def __call__(self, value: float) -> float:
        if self.log2:
            value, lo, hi = math.log2(max(value, 1e-12)), math.log2(self.lo), math.log2(self.hi)
        else:
            lo, hi = self.lo, self.hi
        share = 0.5 if hi == lo else (value - lo) / (hi - lo)
        return self.start + share * (self.end - self.start)


def _scale(axis: Axis, values: Sequence[float], start: float, end: float) -> _Scale:
    values = [v for v in values if v is not None and math.isfinite(v) and (not axis.log2 or v > 0)]
    if axis.bounds is not None:
        lo, hi = axis.bounds
        ticks = pow2_ticks(lo, hi) if axis.log2 else [t for t in nice_ticks(lo, hi) if lo - 1e-9 <= t <= hi + 1e-9]
        return _Scale(lo, hi, start, end, axis.log2, tuple(ticks))
    if axis.log2:
        lo, hi = (min(values), max(values)) if values else (1.0, 1.0)
        lo, hi = lo / 1.5, hi * 1.5
        return _Scale(lo, hi, start, end, True, tuple(pow2_ticks(lo, hi)))
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if axis.zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    widest = axis.min_span * max(abs(lo), abs(hi))
    if hi - lo < widest:
        middle = (lo + hi) / 2
        lo, hi = middle - widest / 2, middle + widest / 2
        if lo < 0 <= min(values, default=0):
            lo, hi = 0.0, widest
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.06
        lo, hi = (lo if axis.zero and lo == 0 else lo - pad), hi + pad
    ticks = nice_ticks(lo, hi)
    return _Scale(ticks[0], ticks[-1], start, end, False, tuple(ticks))


# -- drawing --------------------------------------------------------------------------------------

_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 22, 40, 52


def _render(chart: Chart) -> str:
    w, h = chart.width, chart.height
    head = f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{escape(chart.title)}" class="chart">'
    title = f'<text x="{_LEFT}" y="22" class="chart-title">{escape(chart.title)}</text>'
    if not chart.marks and not chart.lines:
        return (
            f'{head}{title}<rect x="{_LEFT}" y="{_TOP}" width="{w - _LEFT - _RIGHT}" height="{h - _TOP - _BOTTOM}" '
            f'fill="#f7f9fb" stroke="{GRID}"/><text x="{(w + _LEFT - _RIGHT) / 2}" y="{(h + _TOP - _BOTTOM) / 2}" '
            f'text-anchor="middle" class="empty">{escape(chart.empty)}</text></svg>'
        )
    xs = (
        [m.x for m in chart.marks]
        + [p[0] for line in chart.lines for p in line.points]
        + [r.value for r in chart.rules if r.axis == "x"]
        + [c.x for c in chart.callouts]
    )
    ys = (
        [m.y for m in chart.marks if m.y is not None]
        + [p[1] for line in chart.lines for p in line.points]
        + [r.value for r in chart.rules if r.axis == "y"]
        + [c.y for c in chart.callouts]
    )
    if chart.diagonal:
        both = xs + ys
        xs = ys = both
    sx = _scale(chart.x, xs, _LEFT, w - _RIGHT)
    sy = _scale(chart.y, ys, h - _BOTTOM, _TOP)
    if chart.diagonal and not chart.x.bounds and not chart.y.bounds:
        sy = _Scale(sx.lo, sx.hi, h - _BOTTOM, _TOP, False, sx.ticks)
    out = [head, title]
    clip = f"{chart.ident}-clip"
    out.append(
        f'<defs><clipPath id="{clip}"><rect x="{_LEFT}" y="{_TOP}" width="{w - _LEFT - _RIGHT}" '
        f'height="{h - _TOP - _BOTTOM}"/></clipPath></defs>'
    )
    out.extend(_grid(chart, sx, sy))
    body = []
    if chart.diagonal:
        lo, hi = max(sx.lo, sy.lo), min(sx.hi, sy.hi)
        body.append(
            f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" stroke="{MUTED}" '
            f'stroke-dasharray="4 4"><title>forecast = measured</title></line>'
        )
    for rule in chart.rules:
        body.append(_rule(rule, sx, sy))
    for line in chart.lines:
        body.append(_line(line, sx, sy))
    out.append(f'<g clip-path="url(#{clip})">{"".join(body)}</g>')
    for mark in sorted(chart.marks, key=lambda m: m.filled):  # hollow first: filled points stay visible
        out.append(_mark(mark, sx, sy))
    for callout in chart.callouts:
        out.append(_callout(callout, sx, sy, w))
    out.append("</svg>")
    return "".join(out)


def _grid(chart: Chart, sx: _Scale, sy: _Scale) -> list[str]:
    w, h = chart.width, chart.height
    out = []
    for t in sy.ticks:
        y = sy(t)
        out.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{w - _RIGHT}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">{escape(chart.y.fmt(t))}</text>')
    for t in sx.ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{h - _BOTTOM}" stroke="{GRID}"/>')
        out.append(f'<text x="{x:.1f}" y="{h - _BOTTOM + 18}" text-anchor="middle" class="tick">{escape(chart.x.fmt(t))}</text>')
    out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{w - _LEFT - _RIGHT}" height="{h - _TOP - _BOTTOM}" fill="none" stroke="#c9d1da"/>')
    out.append(f'<text x="{(w + _LEFT - _RIGHT) / 2}" y="{h - 10}" text-anchor="middle" class="axis">{escape(chart.x.label)}</text>')
    cy = (h + _TOP - _BOTTOM) / 2
    out.append(f'<text x="16" y="{cy}" text-anchor="middle" transform="rotate(-90 16 {cy})" class="axis">{escape(chart.y.label)}</text>')
    return out


def _rule(rule: Rule, sx: _Scale, sy: _Scale) -> str:
    if rule.axis == "x":
        x = sx(rule.value)
        return (
            f'<line x1="{x:.1f}" y1="{sy.end}" x2="{x:.1f}" y2="{sy.start}" stroke="{rule.color}" stroke-dasharray="6 4" '
            f'stroke-width="1.4"/><text x="{x - 5:.1f}" y="{sy.end + 14}" text-anchor="end" class="rule" '
            f'fill="{rule.color}">{escape(rule.label)}</text>'
        )
    y = sy(rule.value)
    return (
        f'<line x1="{sx.start}" y1="{y:.1f}" x2="{sx.end}" y2="{y:.1f}" stroke="{rule.color}" stroke-dasharray="6 4" '
        f'stroke-width="1.4"/><text x="{sx.start + 6}" y="{y + 15:.1f}" text-anchor="start" class="rule" '
        f'fill="{rule.color}">{escape(rule.label)}</text>'
    )


def _line(line: Line, sx: _Scale, sy: _Scale) -> str:
    points = [(sx(x), sy(y)) for x, y in line.points]
    if line.step:
        stepped = []
        for i, (x, y) in enumerate(points):
            if i:
                stepped.append((x, points[i - 1][1]))
            stepped.append((x, y))
        points = stepped
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
    title = f"<title>{escape(line.title)}</title>" if line.title else ""
    return (
        f'<polyline points="{path}" fill="none" stroke="{line.color}" stroke-width="{line.width}"{dash} '
        f'stroke-linejoin="round">{title}</polyline>'
    )


def marker(shape: str, x: float, y: float, size: float, color: str, filled: bool) -> str:
    """The SVG element of one point (also used for legend swatches)."""
    fill = color if filled else "#ffffff"
    paint = f'fill="{fill}" stroke="{color}" stroke-width="{1.2 if filled else 2}"'
    if shape == "square":
        s = size * 0.9
        return f'<rect x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s:.1f}" height="{2 * s:.1f}" {paint}/>'
    if shape == "triangle":
        s = size * 1.2
        return f'<polygon points="{x:.1f},{y - s:.1f} {x + s:.1f},{y + s * 0.8:.1f} {x - s:.1f},{y + s * 0.8:.1f}" {paint}/>'
    if shape == "diamond":
        s = size * 1.2
        return f'<polygon points="{x:.1f},{y - s:.1f} {x + s:.1f},{y:.1f} {x:.1f},{y + s:.1f} {x - s:.1f},{y:.1f}" {paint}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size:.1f}" {paint}/>'


def _mark(mark: Mark, sx: _Scale, sy: _Scale) -> str:
    x = sx(mark.x)
    title = f"<title>{escape(mark.title)}</title>" if mark.title else ""
    if mark.y is None:  # no figure: a cross on the bottom edge
        y, s = sy.start - 8, mark.size
        return (
            f'<g class="mark">{title}<path d="M{x - s:.1f},{y - s:.1f} L{x + s:.1f},{y + s:.1f} M{x - s:.1f},{y + s:.1f} '
            f'L{x + s:.1f},{y - s:.1f}" stroke="{mark.color}" stroke-width="2.2"/></g>'
        )
    return f'<g class="mark">{title}{marker(mark.shape, x, sy(mark.y), mark.size, mark.color, mark.filled)}</g>'


def _callout(callout: Callout, sx: _Scale, sy: _Scale, width: int) -> str:
    x, y = sx(callout.x), sy(callout.y)
    right = x < width - _RIGHT - 130
    tx = x + 14 if right else x - 14
    ty = y - 12 if y > _TOP + 24 else y + 22
    anchor = "start" if right else "end"
    return (
        f'<g class="callout"><circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="none" stroke="{INK}" stroke-width="2"/>'
        f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" class="callout-text">{escape(callout.text)}</text></g>'
    )
