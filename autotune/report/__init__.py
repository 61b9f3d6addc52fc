"""The report: a study's trade-offs as one self-contained HTML page with charts.

- :mod:`autotune.report.data` reads what the page shows through the store: per model the
  recommendation and its loading code, per study its trials scored under its constraints, its
  candidates and its progress.
- :mod:`autotune.report.page` renders the page: inline CSS and SVG, no script, no address outside
  the file.
- :mod:`autotune.report.svg` draws the charts in pure Python.

:func:`write_report` is what ``autotune report`` and the daemon's ``--report-dir`` call. Nothing
here imports torch, Transformers or Optuna.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from autotune.environment import Environment
from autotune.errors import AutotuneError, InputError
from autotune.report.data import ModelReport, Report, StudyView, gather
from autotune.report.page import render_html
from autotune.store import Store

__all__ = [
    "ModelReport",
    "Report",
    "StudyView",
    "check_out_path",
    "check_report_dir",
    "default_filename",
    "gather",
    "refresh_report",
    "render_html",
    "write_report",
]


def default_filename(model_name: str | None = None) -> str:
    """``autotune-report.html``, or ``autotune-report-<model>.html`` for one model (the name made
    safe for a file name: ``tiiuae/falcon-7b`` gives ``autotune-report-tiiuae-falcon-7b.html``)."""
    if not model_name:
        return "autotune-report.html"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-.")[:100] or "model"
    return f"autotune-report-{slug}.html"


def check_out_path(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` if a report can be written there (its missing folders are created when written);
    else :class:`InputError` naming the path and what to do."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise InputError(f"{option} {path}: is a directory; give a file such as {out / default_filename()}")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise InputError(f"{option} {path}: cannot write under {parent} (permission denied); choose another path")
    return out


def check_report_dir(directory: str | os.PathLike[str]) -> Path:
    """``directory`` if reports can be written in it (it is created when the first is written)."""
    folder = Path(directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--report-dir {directory}: is a file, not a directory; choose another path")
    check_out_path(folder / default_filename(), "--report-dir")
    return folder


def refresh_report(store: Store, directory: str | os.PathLike[str], model_name: str, *, current: Environment | None = None) -> str:
    """Write ``model_name``'s report into ``directory`` (as :func:`default_filename` names it) and
    return a line for a log: where it wrote, or why it could not. Never raises for a report that
    cannot be written, so that a long-running service goes on."""
    path = Path(directory).expanduser() / default_filename(model_name)
    try:
        return f"report of {model_name} written to {write_report(store, path, model_name, current=current)}"
    except (AutotuneError, OSError) as exc:
        return f"could not write the report of {model_name} to {path}: {exc}"


def write_report(store: Store, out: str | os.PathLike[str], model_name: str | None = None, *, current: Environment | None = None) -> Path:
    """Write the report of ``model_name`` (default: every registered model) to ``out`` and return
    the path written.

    The file is written beside its destination and renamed into place, so a browser or a web
    server never sees half a report. Raises :class:`InputError` when ``out`` cannot be written
    and :class:`autotune.errors.ModelNotFoundError` for a model that is not registered.
    """
    path = check_out_path(out)
    html = render_html(gather(store, model_name, current=current))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(html, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        raise InputError(f"cannot write the report to {out}: {exc.strerror or exc}; choose another path") from None
    return path
