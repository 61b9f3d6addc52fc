"""The memory forecast on model shapes it was not fitted on: leave one shape out.

Every measured peak in the stores under ``benchmarks/results/`` (``*.db``) and in the files of
worker runs there (``forecast_shapes_*.json``, as ``forecast_gpu_shapes.py`` writes them) is a
point: a model shape, a candidate, a batch size, the peak the worker measured, the forecast from
the config alone. For each shape in turn, the calibration (a per-device-kind overhead) and the
safety margins (per group: device kind, attention, cache, quantization, see
:mod:`autotune.memory.calibration`) are fitted on the points of the *other* shapes and applied to
the held-out one. Reported per group: the held-out error of the calibrated forecast (median,
worst, worst under-forecast) and whether forecast x (1 + margin) covered every measured peak.

    python benchmarks/forecast_holdout.py                 # tables, and results/forecast_holdout.json
    python benchmarks/forecast_holdout.py --json-out FILE --results DIR
    python benchmarks/forecast_holdout.py --runs OUT/forecast_shapes_trace.json   # with memory_trace.py's fresh shapes
    python benchmarks/forecast_holdout.py --cache-model replay                   # the allocator replay for the dynamic cache

The JSON is a list of objects with ``shape``, ``candidate``, ``batch_size``, ``peak_bytes``,
``forecast_bytes`` (calibrated), ``error`` ((forecast - peak) / peak), ``fitted_on_shape``
(false: held out; true: the same point with everything, its own shape included, fitted), ``gpu``
(the GPU that measured the peak; None where the source does not say, or on the CPU), and
``raw_forecast_bytes``, ``margin``, ``admitted_bytes``, ``covered``, ``source``.
Computed on the CPU: only the forecasts are computed; the peaks are what the stores hold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autotune.candidate import Candidate  # noqa: E402
from autotune.errors import InputError  # noqa: E402
from autotune.memory import (  # noqa: E402
    CalibrationPoint,
    Correction,
    candidate_group,
    correction,
    device_kind,
    forecast_parts,
    shape_key,
)
from autotune.units import format_gib  # noqa: E402
from autotune.workload import Workload  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TARGETS = "median <= 5%, worst <= 10%, no under-forecast beyond 5%"


@dataclass(frozen=True)
class Point:
    """One measured peak and its raw forecast."""

    point: CalibrationPoint
    candidate: Candidate
    batch_size: int
    source: str
    prompt_tokens: int
    #: The GPU that measured the peak, where the source names it (None: a CPU peak, or not said).
    gpu: str | None = None


def store_points(path: Path) -> list[Point]:
    from autotune.memory.measured import measured_points
    from autotune.store import Store

    # a copy: opening a store upgrades its schema, and the stores under results/ are kept as measured
    with tempfile.TemporaryDirectory() as tmp:
        copy = shutil.copy(path, Path(tmp) / path.name)
        with Store.open(str(copy)) as store:
            found = measured_points(store)
            return [
                Point(
                    p.point,
                    p.trial.candidate,
                    p.trial.batch_size,
                    path.name,
                    p.workload.prompt_tokens,
                    p.point.device_kind if p.trial.candidate.on_gpu else None,
                )
                for p in found
            ]


def run_points(path: Path) -> list[Point]:
    """Points from a file of worker runs (``forecast_gpu_shapes.py``'s ``runs`` format)."""
    doc = json.loads(path.read_text())
    env = doc.get("environment") or {}
    out = []
    for run in doc.get("runs") or []:
        if run.get("status") != "ok" or not run.get("peak_memory_bytes") or run.get("quality_reference") is False:
            continue
        config = doc["shapes"][run["shape"]]
        candidate = Candidate.from_dict(run["candidate"])
        workload = Workload(prompt_tokens=run["prompt_tokens"], new_tokens=run["new_tokens"])
        before = tuple(b for b in run.get("ladder") or () if b < run["batch_size"])
        try:
            raw = forecast_parts(
                config, candidate, workload, run["batch_size"], transformers_version=env.get("transformers"), before=before
            ).peak_bytes
        except InputError:
            continue
        kind = device_kind(candidate, [env.get("gpu") or "gpu"])
        point = CalibrationPoint(kind, raw, int(run["peak_memory_bytes"]), candidate.label(), candidate_group(candidate), shape_key(config))
        gpu = env.get("gpu") if candidate.on_gpu else None
        out.append(Point(point, candidate, run["batch_size"], path.name, run["prompt_tokens"], gpu))
    return out


def gather(results: Path, runs: Iterable[Path] = ()) -> list[Point]:
    """The points of the stores and run files under ``results``, and of the run files ``runs`` named besides."""
    points: list[Point] = []
    for path in sorted(results.glob("*.db")):
        points += store_points(path)
    files = sorted(results.glob("forecast_shapes_*.json"))
    for path in runs:
        if path.resolve() not in {f.resolve() for f in files}:
            files.append(path)
    for path in files:
        points += run_points(path)
    return points


def row(p: Point, fitted: Correction, held_out: bool) -> dict[str, Any]:
    kind = p.point.device_kind
    figure = fitted.figure(p.point.forecast_bytes, kind)
    margin = fitted.margin(p.candidate, kind)
    admitted = fitted.admitted(p.point.forecast_bytes, p.candidate, kind)
    peak = p.point.measured_bytes
    return {
        "shape": p.point.shape,
        "candidate": p.candidate.label(),
        "batch_size": p.batch_size,
        "prompt_tokens": p.prompt_tokens,
        "peak_bytes": peak,
        "forecast_bytes": figure,
        "error": round((figure - peak) / peak, 5),
        "fitted_on_shape": not held_out,
        "gpu": p.gpu,
        "raw_forecast_bytes": p.point.forecast_bytes,
        "margin": margin.value,
        "margin_group": list(margin.group),
        "admitted_bytes": admitted,
        "covered": admitted >= peak,
        "device": kind,
        "group": list(p.point.group),
        "source": p.source,
    }


def holdout(points: list[Point]) -> list[dict[str, Any]]:
    """Held-out rows (fitted on the other shapes) and in-sample rows (fitted on all), for every point."""
    everything = correction(p.point for p in points)
    rows = []
    for shape in sorted({p.point.shape for p in points}):
        others = correction(p.point for p in points if p.point.shape != shape)
        mine = [p for p in points if p.point.shape == shape]
        rows += [row(p, others, True) for p in mine]
        rows += [row(p, everything, False) for p in mine]
    return rows


def summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    rows = list(rows)
    errors = [r["error"] for r in rows]
    if not errors:
        return {"n": 0}
    under = min(errors)
    return {
        "n": len(errors),
        "median": statistics.median(abs(e) for e in errors),
        "worst": max(abs(e) for e in errors),
        "worst_under": min(under, 0.0),
        "covered": sum(r["covered"] for r in rows) / len(rows),
    }


def table(headers: list[str], body: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in body:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}" if value < 0 else f"{value:.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the stores and run files are (default benchmarks/results)")
    parser.add_argument("--json-out", type=Path, help="where to write the rows (default RESULTS/forecast_holdout.json)")
    parser.add_argument(
        "--runs",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a file of worker runs to include besides RESULTS/forecast_shapes_*.json (memory_trace.py's "
        "forecast_shapes_trace.json); repeatable",
    )
    parser.add_argument(
        "--cache-model",
        choices=("classes", "replay"),
        help="the dynamic cache's allocator share: the outgrown-classes rule, or the allocator replay "
        "(default: the forecast's own, autotune.memory.forecast.CACHE_MODEL)",
    )
    args = parser.parse_args(argv)
    if args.cache_model:
        from autotune.memory import forecast

        forecast.CACHE_MODEL = args.cache_model
    points = gather(args.results, args.runs)
    if len({p.point.shape for p in points}) < 2:
        print(f"need measured peaks of at least two model shapes under {args.results}, found {len(points)} points")
        return 1
    rows = holdout(points)
    out = args.json_out or args.results / "forecast_holdout.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")

    held = [r for r in rows if not r["fitted_on_shape"]]
    print(
        f"{len(points)} measured peaks of {len({p.point.shape for p in points})} shapes; each shape held out in turn "
        f"(calibration and margins fitted on the others); rows written to {out}"
    )
    print("\nper shape, held out:")
    body = []
    for shape in sorted({r["shape"] for r in held}):
        s = summary(r for r in held if r["shape"] == shape)
        body.append([shape, s["n"], pct(s["median"]), pct(s["worst"]), pct(s["worst_under"]), f"{s['covered']:.0%}"])
    table(["shape", "points", "median |err|", "worst |err|", "worst under", "covered by margin"], body)
    gpus = sorted({str(r["gpu"]) for r in held})
    if len(gpus) > 1:
        print("\nper GPU that measured the peak, held out:")
        body = []
        for gpu in gpus:
            s = summary(r for r in held if str(r["gpu"]) == gpu)
            body.append([gpu, s["n"], pct(s["median"]), pct(s["worst"]), pct(s["worst_under"]), f"{s['covered']:.0%}"])
        table(["gpu", "points", "median |err|", "worst |err|", "worst under", "covered by margin"], body)
    print("\nper group (device, attention, cache, quantization), held out:")
    body = []
    for group in sorted({(r["device"], *r["group"]) for r in held}):
        members = [r for r in held if (r["device"], *r["group"]) == group]
        s = summary(members)
        margins = sorted({r["margin"] for r in members})
        body.append(
            [
                " / ".join(group),
                s["n"],
                pct(s["median"]),
                pct(s["worst"]),
                pct(s["worst_under"]),
                ", ".join(f"{m:+.0%}" for m in margins),
                f"{s['covered']:.0%}",
            ]
        )
    table(["group", "points", "median |err|", "worst |err|", "worst under", "margin", "covered"], body)
    print("\nworst held-out points:")
    worst = sorted(held, key=lambda r: abs(r["error"]), reverse=True)[:8]
    table(
        ["shape", "candidate", "batch", "prompt", "peak", "forecast", "error", "admitted", "covered"],
        [
            [
                r["shape"],
                r["candidate"],
                r["batch_size"],
                r["prompt_tokens"],
                format_gib(r["peak_bytes"]),
                format_gib(r["forecast_bytes"]),
                pct(r["error"]),
                format_gib(r["admitted_bytes"]),
                "yes" if r["covered"] else "NO",
            ]
            for r in worst
        ],
    )
    s = summary(held)
    fitted = summary(r for r in rows if r["fitted_on_shape"])
    print(
        f"\nheld out, all points: median {pct(s['median'])}, worst {pct(s['worst'])}, worst under-forecast {pct(s['worst_under'])}, "
        f"{s['covered']:.0%} covered by forecast x (1 + margin)"
    )
    print(f"fitted on every shape (in-sample): median {pct(fitted['median'])}, worst {pct(fitted['worst'])}")
    met = s["median"] <= 0.05 and s["worst"] <= 0.10 and s["worst_under"] >= -0.05
    print(f"targets for held-out shapes ({TARGETS}): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
