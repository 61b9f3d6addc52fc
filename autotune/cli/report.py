"""``autotune report``: the trade-offs of a model's studies as one self-contained HTML page.

It reads the store only and never imports torch, Transformers or Optuna.
"""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "report",
        help="write an HTML report with plots: the Pareto front, batch sizes, forecasts, quality, progress",
        description="Write one self-contained HTML file (no network needed to open it) that shows, per model and study, "
        "throughput or latency against peak memory for every measured candidate and batch size (infeasible "
        "ones apart, with their reason), throughput and latency against batch size, the memory forecast "
        "against the measured peak, quality against memory, the environment, the workload, the study's "
        "progress, and the recommendation with its loading code. Without MODEL: every registered model. "
        "Example: autotune report tiiuae/falcon-7b --out falcon.html",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="a registered model (default: every registered model)")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="the HTML file to write (default: autotune-report.html, or autotune-report-MODEL.html, in the current directory)",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from autotune.cli import open_store
    from autotune.environment import probe
    from autotune.report import check_out_path, default_filename, write_report

    out = check_out_path(args.out or default_filename(args.model))  # before the store is opened
    with open_store(args) as store:
        path = write_report(store, out, args.model, current=probe())
    print(f"wrote {path.resolve()}")
    return 0
