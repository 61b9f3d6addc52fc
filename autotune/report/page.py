"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no script and no
address outside the file, so that it opens anywhere, offline, and can be mailed or archived.

Everything that comes from the store (model names, reasons, code) is escaped.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any

from autotune import __version__
from autotune.advisor.explain import describe_metrics
from autotune.report.data import CandidateView, ModelReport, Report, StudyView, TrialView
from autotune.report.svg import INK, MUTED, Axis, Callout, Chart, Line, Mark, Rule, marker
from autotune.units import format_gib

GiB = 2**30
#: Memory axes span at least this share of their largest value.
MEMORY_SPAN = 0.25

_METRIC_NAMES = {
    "throughput_tokens_per_s": ("throughput", "tokens/s"),
    "sequences_per_s": ("throughput", "sequences/s"),
    "latency_p50_ms": ("latency p50", "ms"),
    "peak_memory_bytes": ("peak memory", "GiB"),
}

CSS = """
:root { --ink: #1f2933; --muted: #5f6b7a; --line: #dde3ea; --soft: #f5f7fa; --accent: #2f6fb0; --good: #2e7d4f; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #eef1f5; }
main { max-width: 1340px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 22px; margin: 0 0 2px; word-break: break-all; }
h3 { font-size: 17px; margin: 0 0 10px; }
h4 { font-size: 14px; margin: 18px 0 6px; }
.meta, .sub { color: var(--muted); margin: 2px 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px; margin: 18px 0; }
.model > .card:first-of-type { margin-top: 12px; }
.badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 2px 8px; border-radius: 999px;
         background: var(--soft); border: 1px solid var(--line); color: var(--muted); vertical-align: middle; }
.badge.win { background: #e7f4ec; border-color: #b9dfc7; color: var(--good); }
.badge.none { background: #fdecea; border-color: #f3c3be; color: var(--bad); }
.rec { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 22px; }
.rec-title { font-size: 19px; margin: 6px 0 8px; }
.rec ul { margin: 4px 0 8px 18px; padding: 0; }
pre { background: #0f1720; color: #e6edf3; padding: 14px 16px; border-radius: 8px; overflow: auto; max-height: 560px;
      font: 12px/1.5 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; margin: 6px 0 0; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
.facts { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 14px; margin-bottom: 12px; }
.facts > div { background: var(--soft); border-radius: 8px; padding: 10px 12px; }
.facts h4 { margin: 0 0 6px; }
dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 12px; margin: 0; font-size: 13px; }
dt { color: var(--muted); }
dd { margin: 0; word-break: break-word; }
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 14px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px 8px 8px; }
figcaption { color: var(--muted); font-size: 12px; padding: 0 6px; }
svg.chart { width: 100%; height: auto; display: block; font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
svg .chart-title { font-size: 15px; font-weight: 600; fill: var(--ink); }
svg .tick { font-size: 11px; fill: var(--muted); }
svg .axis { font-size: 12px; fill: var(--ink); }
svg .rule { font-size: 11px; font-weight: 600; }
svg .empty { font-size: 13px; fill: var(--muted); }
svg .callout-text { font-size: 12px; font-weight: 600; fill: var(--ink); paint-order: stroke; stroke: #fff; stroke-width: 4px; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; background: var(--soft); white-space: nowrap; }
td.label { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #eef7f1; }
td.why { color: var(--bad); }
.key { display: flex; flex-wrap: wrap; gap: 16px; color: var(--muted); font-size: 12px; margin: 10px 0 8px; align-items: center; }
.key span { display: inline-flex; align-items: center; gap: 5px; }
details > summary { cursor: pointer; font-weight: 600; margin: 14px 0 6px; }
nav ul { margin: 6px 0 0 18px; padding: 0; }
a { color: var(--accent); }
footer { color: var(--muted); font-size: 12px; margin-top: 28px; }
"""


def render_html(report: Report) -> str:
    """The whole page."""
    title = f"autotune report: {report.model_name}" if report.model_name else "autotune report"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
        _header(report),
    ]
    if not report.models:
        parts.append(
            '<div class="card">No models are registered: add one with <code>autotune add MODEL</code>, '
            "tune it with <code>autotune tune MODEL</code> (or the daemon), then write the report again.</div>"
        )
    ids = _Ids()
    for i, model in enumerate(report.models):
        parts.append(_model_section(model, i, ids))
    parts.append(
        f"<footer>Written by autotune {escape(__version__)} from {escape(report.location)}. "
        "Every figure is a measurement stored in that database; hover over a point for its trial.</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


class _Ids:
    """Page-unique ids for the charts' clip paths."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"c{self.n}"


# -- header ---------------------------------------------------------------------------------------


def _header(report: Report) -> str:
    when = report.generated_at.strftime("%Y-%m-%d %H:%M UTC")
    count = len(report.models)
    lines = [
        f"<header><h1>{escape('autotune report' + (': ' + report.model_name if report.model_name else ''))}</h1>",
        f'<p class="meta">{count} model{"s" * (count != 1)} from {escape(report.location)}; written {when} '
        f"by autotune {escape(__version__)}</p>",
    ]
    if report.current is not None:
        lines.append(
            f'<p class="meta">this machine: {escape(report.current.summary())}, environment fingerprint '
            f"<code>{escape(report.current.fingerprint)}</code></p>"
        )
    if count > 1:
        items = "".join(
            f'<li><a href="#model-{i}">{escape(m.model.name)}</a>: {escape(_headline(m))}</li>' for i, m in enumerate(report.models)
        )
        lines.append(f"<nav><ul>{items}</ul></nav>")
    lines.append("</header>")
    return "\n".join(lines)


def _headline(m: ModelReport) -> str:
    rec = m.recommendation
    if rec.best is None:
        return "no recommendation yet"
    return f"{rec.best.candidate.label()} at batch {rec.best.batch_size}"


# -- a model --------------------------------------------------------------------------------------


def _model_section(m: ModelReport, index: int, ids: _Ids) -> str:
    model = m.model
    what = ", ".join(x for x in (model.architecture, model.model_type, f"from {model.source}") if x)
    out = [
        f'<section class="model" id="model-{index}">',
        f"<h2>{escape(model.name)}</h2>",
        f'<p class="sub">{escape(what)}; workload: {escape(model.workload.describe())}</p>',
        _recommendation(m),
    ]
    if not m.studies:
        out.append(
            f'<div class="card">No study yet: run <code>autotune tune {escape(model.name)}</code> '
            "or start <code>autotune daemon</code>.</div>"
        )
    for view in m.studies:
        out.append(_study_section(view, ids))
    out.append("</section>")
    return "\n".join(out)


def _recommendation(m: ModelReport) -> str:
    rec = m.recommendation
    left: list[str] = []
    if rec.best is None:
        left.append('<span class="badge none">no recommendation</span>')
        left.append(f"<p>{escape(rec.message or 'nothing measured yet')}</p>")
    else:
        best = rec.best
        limit = format_gib(rec.limit_bytes) if rec.limit_bytes else "none"
        left.append('<span class="badge win">recommended</span>')
        left.append(f'<div class="rec-title"><strong>{escape(best.candidate.label())}</strong> at batch {best.batch_size}</div>')
        left.append(f"<p>{escape(describe_metrics(best.metrics))}</p>")
        if (line := rec.roofline()) is not None:
            left.append(f"<p>{escape(line.describe())}</p>")
        left.append(
            f'<p class="meta">objective {escape(rec.workload.objective)} ({escape(rec.metric)}); memory limit '
            f"{escape(limit)}; quality floor {rec.workload.min_quality:.0%} token agreement; "
            f"{rec.trials_considered} trials in study {rec.study.id if rec.study else '-'}; "
            f"trial #{best.number}</p>"
        )
        if rec.runners_up:
            items = "".join(
                f"<li>{escape(u.trial.candidate.label())} at batch {u.trial.batch_size}: "
                f"{escape(describe_metrics(u.trial.metrics))} ({u.behind_pct:.1f}% behind)</li>"
                for u in rec.runners_up
            )
            left.append(f"<h4>Runners-up</h4><ul>{items}</ul>")
        if rec.packages:
            left.append(f'<p class="meta">the application needs: <code>{escape(" ".join(rec.packages))}</code></p>')
    if rec.environment is not None:
        left.append(f'<p class="meta">trials ran on {escape(rec.where())}</p>')
    if rec.notes:
        left.append("<h4>Notes</h4><ul>" + "".join(f"<li>{escape(n)}</li>" for n in rec.notes) + "</ul>")
    below = ""
    if rec.verdicts:
        rows = "".join(f"<tr><td>{escape(v.option)}</td><td>{escape(v.reason)}</td></tr>" for v in rec.verdicts)
        below = f"<h4>Why not the others</h4><table><tr><th>option</th><th>why it lost</th></tr>{rows}</table>"
    right = ""
    if m.code:
        versions = rec.environment.versions if rec.environment else {}
        right = (
            f'<div><h4>Loading code</h4><p class="meta">for torch {escape(str(versions.get("torch") or "?"))}, '
            f"transformers {escape(str(versions.get('transformers') or '?'))}, as installed where the trials ran "
            f"(<code>autotune recommend {escape(m.model.name)} --write loader.py</code> writes it)</p>"
            f"<pre><code>{escape(m.code.rstrip())}</code></pre></div>"
        )
    body = f'<div class="rec"><div>{"".join(left)}</div>{right}</div>' if right else f"<div>{''.join(left)}</div>"
    return f'<div class="card">{body}{below}</div>'


# -- a study --------------------------------------------------------------------------------------


def _study_section(view: StudyView, ids: _Ids) -> str:
    study = view.study
    badges = f'<span class="badge">{escape(study.state)}</span>'
    if view.recommended:
        badges += ' <span class="badge win">the recommendation comes from this study</span>'
    out = [
        '<div class="card">',
        f"<h3>Study {study.id}: {escape(view.workload.describe())} {badges}</h3>",
        '<div class="facts">',
        _environment(view),
        _workload(view),
        _progress(view),
        "</div>",
    ]
    if view.candidates:
        out.append(_candidates_table(view))
        out.append(_key())
        out.append('<div class="charts">')
        for chart, caption in (
            _pareto(view),
            _quality(view),
            _by_batch(view, view.throughput_metric),
            _by_batch(view, "latency_p50_ms"),
            _forecast(view),
            _progress_chart(view),
        ):
            chart.ident = ids()
            out.append(f"<figure>{chart.render()}<figcaption>{escape(caption)}</figcaption></figure>")
        out.append("</div>")
    else:
        out.append("<p>No trial measured yet.</p>")
    out.append(_apart(view))
    out.append(_rejected(view))
    out.append(_all_trials(view))
    out.append("</div>")
    return "\n".join(out)


def _facts(title: str, rows: Iterable[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in rows if v not in (None, ""))
    return f"<div><h4>{escape(title)}</h4><dl>{items}</dl></div>"


def _environment(view: StudyView) -> str:
    env = view.environment
    rows: list[tuple[str, Any]] = []
    if env.gpus:
        for gpu in env.gpus:
            rows.append((f"GPU {gpu.index}", f"{gpu.name}, {format_gib(gpu.total_memory)}, compute capability {gpu.cc}"))
        rows.append(("driver", f"{env.driver_version or '?'} (CUDA {env.cuda_driver_version or '?'})"))
    else:
        rows.append(("GPUs", "none: CPU only"))
    rows.append(("host", env.hostname))
    rows.append(("python", env.python))
    installed = [f"{k} {v}" for k, v in env.versions.items() if v]
    missing = [k for k, v in env.versions.items() if not v]
    rows.append(("libraries", ", ".join(installed) or "-"))
    if missing:
        rows.append(("not installed", ", ".join(missing)))
    rows.append(("fingerprint", view.fingerprint))
    return _facts("Environment", rows)


def _workload(view: StudyView) -> str:
    w = view.workload
    name, unit = _METRIC_NAMES.get(view.metric, (view.metric, ""))
    tokens = f"{w.prompt_tokens} prompt + {w.new_tokens} new" if w.generates else f"{w.prompt_tokens}"
    limit = "none"
    if w.max_memory is not None:
        limit = w.max_memory.text + (f" ({format_gib(view.limit_bytes)} per GPU)" if view.limit_bytes and view.environment.gpus else "")
    return _facts(
        "Workload",
        [
            ("task", w.task),
            ("tokens", tokens),
            ("padding share", f"{w.padding_share:.0%}"),
            ("objective", f"{w.objective}: {'maximise' if view.direction == 'maximize' else 'minimise'} {name} ({unit})"),
            ("memory limit", limit),
            ("quality floor", f"{w.min_quality:.0%} token agreement"),
            ("device", w.device),
            ("largest batch", w.max_batch),
        ],
    )


def _progress(view: StudyView) -> str:
    study = view.study
    best = view.best
    best_text = "none feasible yet"
    if best is not None:
        t = best.trial
        best_text = f"{_value(view.metric, t.metrics.get(view.metric))} ({t.candidate.label()} at batch {t.batch_size})"
    measured = sum(1 for c in view.candidates if not c.running)
    return _facts(
        "Progress",
        [
            ("state", study.state + (f": {study.stop_reason}" if study.stop_reason else "")),
            ("measured", f"{measured} candidates, {len(view.trials)} trial rows"),
            ("best", best_text),
            ("time", f"{view.minutes:.1f} {view.time_unit} of measuring"),
            ("rejected", f"{sum(int(r.get('count', 1)) for r in study.rejected)} candidates before measuring"),
            ("sampler seed", study.sampler_seed),
            ("started", _when(study.created_at)),
            ("finished", _when(study.finished_at) if study.finished_at else None),
        ],
    )


def _key() -> str:
    def swatch(filled: bool) -> str:
        return f'<svg width="14" height="14" viewBox="0 0 14 14">{marker("circle", 7, 7, 5, MUTED, filled)}</svg>'

    cross = f'<svg width="14" height="14" viewBox="0 0 14 14"><path d="M2,2 L12,12 M2,12 L12,2" stroke="{MUTED}" stroke-width="2"/></svg>'
    ring = (
        f'<svg width="18" height="18" viewBox="0 0 18 18"><circle cx="9" cy="9" r="7" fill="none" stroke="{INK}" stroke-width="2"/></svg>'
    )
    front = (
        f'<svg width="26" height="10" viewBox="0 0 26 10"><path d="M1,5 L25,5" stroke="{INK}" stroke-dasharray="5 3" '
        'stroke-width="1.6"/></svg>'
    )
    return (
        f'<div class="key"><span>{swatch(True)} feasible</span><span>{swatch(False)} measured, infeasible</span>'
        f"<span>{cross} failed, no figures</span><span>{ring} recommended (or the study's best)</span>"
        f"<span>{front} Pareto front of the feasible points</span><span>colour and shape: the candidate (table above)</span></div>"
    )


# -- charts ---------------------------------------------------------------------------------------


def _num(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == int(v):
        return f"{v:.0f}"
    return f"{v:.3g}"


def _gib_tick(v: float) -> str:
    return f"{v:g}"


def _axis(metric: str, **kw: Any) -> Axis:
    name, unit = _METRIC_NAMES.get(metric, (metric, ""))
    if metric == "peak_memory_bytes":
        return Axis(f"{name} ({unit})", fmt=_gib_tick, min_span=MEMORY_SPAN, **kw)
    return Axis(f"{name} ({unit})" if unit else name, fmt=_num, **kw)


def _y(metric: str, trial: Any) -> float | None:
    value = trial.metrics.get(metric)
    if value is None:
        return None
    return value / GiB if metric == "peak_memory_bytes" else float(value)


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "peak_memory_bytes":
        return format_gib(value)
    name, unit = _METRIC_NAMES.get(metric, (metric, ""))
    return f"{_num(value)} {unit}".strip()


def _tip(c: CandidateView, v: TrialView, *metrics: str) -> str:
    t = v.trial
    lines = [f"#{t.number} {c.label} at batch {t.batch_size}"]
    for metric in metrics:
        if t.metrics.get(metric) is not None:
            lines.append(f"{_METRIC_NAMES.get(metric, (metric, ''))[0]}: {_value(metric, t.metrics[metric])}")
    if t.metrics.get("quality_token_agreement") is not None:
        lines.append(f"token agreement {t.metrics['quality_token_agreement']:.1%}")
    lines.append("feasible" if v.feasible else f"infeasible: {v.why}")
    return "\n".join(lines)


def _front(points: Sequence[tuple[float, float]], maximize: bool) -> list[tuple[float, float]]:
    """The Pareto front of ``(memory, value)`` points: less memory, and more (or less) value."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1] if maximize else p[1])):
        if not front or (y > front[-1][1] if maximize else y < front[-1][1]):
            front.append((x, y))
    return front


def _callout(view: StudyView, x_of: Callable[[Any], float | None], y_of: Callable[[Any], float | None], chart: Chart) -> None:
    best = view.best
    if best is None:
        return
    x, y = x_of(best.trial), y_of(best.trial)
    if x is not None and y is not None:
        word = "recommended" if view.recommended else "best"
        chart.callouts.append(Callout(x, y, f"{word}: batch {best.trial.batch_size}"))


def _pareto(view: StudyView) -> tuple[Chart, str]:
    metric = "latency_p50_ms" if view.workload.objective == "latency" else view.throughput_metric
    maximize = metric != "latency_p50_ms"
    name = _METRIC_NAMES[metric][0]
    chart = Chart(
        f"{name.capitalize()} against peak memory",
        _axis("peak_memory_bytes"),
        _axis(metric, zero=True),
        empty="no trial measured both figures",
    )
    feasible = []
    for c in view.candidates:
        for v in c.trials:
            x, y = _y("peak_memory_bytes", v.trial), _y(metric, v.trial)
            if not v.measured or x is None or y is None:
                continue
            chart.marks.append(Mark(x, y, c.color, c.shape, v.feasible, _tip(c, v, metric, "peak_memory_bytes")))
            if v.feasible:
                feasible.append((x, y))
    front = _front(feasible, maximize)
    if len(front) > 1:
        chart.lines.append(Line(tuple(front), INK, 1.4, "5 3", step=True, title="Pareto front"))
    if view.limit_bytes:
        chart.rules.append(Rule("x", view.limit_bytes / GiB, f"limit {format_gib(view.limit_bytes)}"))
    _callout(view, lambda t: _y("peak_memory_bytes", t), lambda t: _y(metric, t), chart)
    failed = sum(1 for v in view.trials if not v.measured and v.trial.status != "running")
    better = "higher" if maximize else "lower"
    caption = (
        f"Every measured candidate x batch size; {better} and further left is better. "
        f"{len(feasible)} feasible, {len(chart.marks) - len(feasible)} infeasible"
        + (f"; {failed} trials without figures are listed below." if failed else ".")
    )
    return chart, caption


def _progress_chart(view: StudyView) -> tuple[Chart, str]:
    metric = view.metric
    chart = Chart(
        f"Best so far against {view.time_unit}",
        Axis(f"{view.time_unit} of measuring", fmt=_num, zero=True),
        _axis(metric, zero=metric != "peak_memory_bytes"),
        empty="nothing measured yet",
    )
    steps: list[tuple[float, float]] = []
    scale = 1 / GiB if metric == "peak_memory_bytes" else 1
    for p in view.progress:
        c = p.candidate
        y = p.measured * scale if p.measured is not None else None
        if p.value is not None:
            what = _value(metric, p.value)
        elif p.measured is not None:
            what = f"{_value(metric, p.measured)}, infeasible ({c.reason or c.status})"
        else:
            what = f"no figure: {c.status}" + (f": {c.reason}" if c.reason else "")
        chart.marks.append(
            Mark(p.minutes, y, c.color, c.shape, p.value is not None, f"after {p.minutes:.1f} {view.time_unit}: {c.label}: {what}")
        )
        if p.best is not None:
            steps.append((p.minutes, p.best * scale))
    if steps:
        steps.append((view.minutes, steps[-1][1]))
        chart.lines.append(Line(tuple(steps), INK, 2.0, step=True, title="best so far"))
    if all(m.y is None for m in chart.marks):
        chart.marks.clear()
        chart.empty = "no candidate produced a figure yet"
    name = _METRIC_NAMES.get(metric, (metric,))[0]
    caption = (
        f"One point per candidate (its best batch size), at the {view.time_unit} spent when it finished (a candidate "
        f"spread over n GPUs counts n); the line is the best feasible {name} so far" + ("." if steps else ": none is feasible yet.")
    )
    return chart, caption


def _by_batch(view: StudyView, metric: str) -> tuple[Chart, str]:
    name = _METRIC_NAMES[metric][0]
    maximize = metric != "latency_p50_ms"
    chart = Chart(
        f"{name.capitalize()} against batch size",
        Axis("batch size", fmt=_num, log2=True),
        _axis(metric, zero=True),
        empty=f"no {name} measured",
    )
    for c in view.candidates:
        points = []
        for v in sorted(c.trials, key=lambda v: v.trial.batch_size):
            y = _y(metric, v.trial)
            if not v.measured or y is None:
                continue
            points.append((float(v.trial.batch_size), y))
            chart.marks.append(Mark(v.trial.batch_size, y, c.color, c.shape, v.feasible, _tip(c, v, metric, "peak_memory_bytes")))
        if len(points) > 1:
            chart.lines.append(Line(tuple(points), c.color, 1.8))
    _callout(view, lambda t: float(t.batch_size), lambda t: _y(metric, t), chart)
    caption = f"Each line one candidate over its batch sizes; {'higher' if maximize else 'lower'} is better."
    return chart, caption


def _forecast(view: StudyView) -> tuple[Chart, str]:
    axis = Axis("forecast peak (GiB)", fmt=_gib_tick, min_span=MEMORY_SPAN)
    chart = Chart(
        "Memory forecast against the measured peak",
        axis,
        Axis("measured peak (GiB)", fmt=_gib_tick),
        diagonal=True,
        empty="no forecast stored with these trials",
    )
    errors = []
    for c in view.candidates:
        for v in c.trials:
            forecast, peak = v.trial.metrics.get("forecast_bytes"), v.trial.metrics.get("peak_memory_bytes")
            if not v.measured or not forecast or not peak:
                continue
            error = (forecast - peak) / peak
            errors.append(abs(error))
            chart.marks.append(
                Mark(
                    forecast / GiB,
                    peak / GiB,
                    c.color,
                    c.shape,
                    v.feasible,
                    f"#{v.trial.number} {c.label} at batch {v.trial.batch_size}\nforecast {format_gib(forecast)}, "
                    f"measured {format_gib(peak)} ({error:+.1%})",
                )
            )
    if not errors:
        return chart, (
            "The search stores its forecast beside each trial it measures; trials of autotune measure, "
            "ONNX Runtime trials and older stores have none."
        )
    caption = (
        f"{len(errors)} trials: median error {statistics.median(errors):.1%}, largest {max(errors):.1%} of the "
        "measured peak; on the dashed diagonal the forecast is exact."
    )
    return chart, caption


def _quality(view: StudyView) -> tuple[Chart, str]:
    floor = view.workload.min_quality
    chart = Chart(
        "Quality against peak memory",
        _axis("peak_memory_bytes"),
        Axis("token agreement with the reference", fmt=lambda v: f"{v:.0%}", bounds=(0.0, 1.0)),
        empty="no quality measured",
    )
    quantized = set()
    for c in view.candidates:
        for v in c.trials:
            quality, peak = v.trial.metrics.get("quality_token_agreement"), _y("peak_memory_bytes", v.trial)
            if not v.measured or quality is None or peak is None:
                continue
            chart.marks.append(Mark(peak, quality, c.color, c.shape, v.feasible, _tip(c, v, "peak_memory_bytes")))
            if c.candidate.quant != "none":
                quantized.add(c.label)
    if chart.marks:
        chart.rules.append(Rule("y", floor, f"floor {floor:.0%}"))
    if quantized:
        caption = (
            f"Quantized: {', '.join(sorted(quantized))}; the others, unquantized, for comparison. "
            "Below the floor a trial is infeasible, however fast."
        )
    else:
        caption = "No quantized candidate was measured in this study; the unquantized ones are shown for comparison."
    return chart, caption


# -- tables ---------------------------------------------------------------------------------------


def _swatch(c: CandidateView) -> str:
    return f'<svg width="16" height="16" viewBox="0 0 16 16">{marker(c.shape, 8, 8, 5, c.color, True)}</svg>'


def _candidates_table(view: StudyView) -> str:
    rows = []
    for c in view.candidates:
        best = c.best.trial if c.best else None
        batches = ",".join(str(v.trial.batch_size) for v in c.trials)
        if best is not None:
            outcome = f"best at batch {best.batch_size}"
        else:
            outcome = c.status + (f": {c.reason}" if c.reason else "")
        cls = ' class="best"' if view.best is not None and view.best.trial.candidate.key() == c.candidate.key() else ""
        rows.append(
            f"<tr{cls}><td>{_swatch(c)}</td><td class=label>{escape(c.label)}</td><td>{escape(c.origin)}</td><td>{escape(batches)}</td>"
            f'<td class="num">{escape(_value(view.metric, best.metrics.get(view.metric)) if best else "-")}</td>'
            f'<td class="num">{escape(format_gib(best.metrics.get("peak_memory_bytes")) if best else "-")}</td>'
            f'<td class="num">{escape(_quality_text(best))}</td>'
            f'<td class="num">{c.seconds * (c.gpus if view.environment.gpus else 1) / 60:.1f}</td>'
            f"<td{'' if best else ' class=why'}>{escape(outcome)}</td></tr>"
        )
    name = _METRIC_NAMES.get(view.metric, (view.metric,))[0]
    return (
        f"<h4>Candidates</h4><table><tr><th></th><th>candidate</th><th>origin</th><th>batches</th><th>best {escape(name)}</th>"
        f"<th>its peak</th><th>its quality</th><th>{escape(view.time_unit)}</th><th>outcome</th></tr>{''.join(rows)}</table>"
    )


def _quality_text(trial: Any) -> str:
    if trial is None or trial.metrics.get("quality_token_agreement") is None:
        return "-"
    return f"{trial.metrics['quality_token_agreement']:.1%}"


def _apart(view: StudyView) -> str:
    rows = []
    for v in view.trials:
        if v.feasible or v.trial.status == "running":
            continue
        t = v.trial
        why = v.why or ""
        rows.append(
            f"<tr><td class=num>{t.number}</td><td class=label>{escape(t.candidate.label())}</td><td class=num>{t.batch_size}</td>"
            f"<td>{escape(t.status)}</td><td class=why>{escape(why)}</td></tr>"
        )
    if not rows:
        return "<h4>Infeasible and failed trials</h4><p class=meta>None: every trial met the constraints.</p>"
    return (
        f"<h4>Infeasible and failed trials ({len(rows)})</h4><table><tr><th>#</th><th>candidate</th><th>batch</th>"
        f"<th>status</th><th>why</th></tr>{''.join(rows)}</table>"
    )


def _rejected(view: StudyView) -> str:
    rejected = view.study.rejected
    if not rejected:
        return ""
    rows = "".join(
        f"<tr><td>{escape(str(r.get('label') or '-'))}</td><td>{escape(str(r.get('kind') or 'rule'))}</td>"
        f"<td class=num>{int(r.get('count', 1))}</td><td>{escape(str(r.get('reason') or ''))}</td></tr>"
        for r in rejected
    )
    return (
        f"<h4>Rejected before measuring ({sum(int(r.get('count', 1)) for r in rejected)} candidates)</h4>"
        f"<table><tr><th>candidates</th><th>kind</th><th>count</th><th>reason</th></tr>{rows}</table>"
    )


def _all_trials(view: StudyView) -> str:
    heads = [
        "#",
        "origin",
        "candidate",
        "batch",
        "status",
        "feasible",
        "throughput",
        "latency p50",
        "first token",
        "peak",
        "forecast",
        "quality",
        "load s",
        "compile s",
        "reason",
    ]
    throughput = view.throughput_metric
    rows = []
    for v in view.trials:
        t, m = v.trial, v.trial.metrics
        cls = ' class="best"' if view.best is not None and view.best.trial.id == t.id else ""
        cells = [
            f"<td class=num>{t.number}</td>",
            f"<td>{escape(t.origin)}</td>",
            f"<td class=label>{escape(t.candidate.label())}</td>",
            f"<td class=num>{t.batch_size}</td>",
            f"<td>{escape(t.status)}</td>",
            f"<td>{'yes' if v.feasible else 'no'}</td>",
            _cell(_value(throughput, m.get(throughput))),
            _cell(_value("latency_p50_ms", m.get("latency_p50_ms"))),
            _cell(f"{m['ttft_ms']:.1f} ms" if m.get("ttft_ms") is not None else "-"),
            _cell(format_gib(m.get("peak_memory_bytes"))),
            _cell(format_gib(m.get("forecast_bytes"))),
            _cell(_quality_text(t)),
            _cell(_seconds(m.get("load_seconds"))),
            _cell(_seconds(m.get("compile_seconds"))),
            f"<td>{escape(t.reason or v.why or '')}</td>",
        ]
        rows.append(f'<tr id="trial-{t.id}"{cls}>{"".join(cells)}</tr>')
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f"<details><summary>All {len(rows)} trials</summary><table><tr>{head}</tr>{''.join(rows)}</table></details>"


def _cell(text: str) -> str:
    return f"<td class=num>{escape(text)}</td>"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"
