"""``autotune report``: one self-contained HTML page per store, with every trial, the
recommendation and its charts; the daemon's ``--report-dir``; the SVG charts on their own."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO
from search_fakes import FakeMeasure, add_model, cpu_env

from autotune.candidate import Candidate
from autotune.report import default_filename, write_report
from autotune.report.page import _front
from autotune.report.svg import Axis, Chart, Mark, nice_ticks, pow2_ticks
from autotune.search.space import parse_restriction
from autotune.search.study import SearchSettings
from autotune.service.daemon import Daemon, DaemonOptions
from autotune.store import Store

SPACE = "dtype=fp32,bf16 attn=sdpa,eager quant=none static_cache=false"
RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMeasure:
    from autotune.search import study

    measure = FakeMeasure()
    monkeypatch.setattr(study, "_default_measure", lambda: measure)
    monkeypatch.setattr("autotune.environment.probe", lambda: cpu_env())
    return measure


def external_references(html: str) -> list[str]:
    """Every ``src`` of a ``<script>`` and ``href`` of a ``<link>`` that points outside the file."""
    found = re.findall(r"<script\b[^>]*\bsrc\s*=\s*[\"']?([^\"' >]+)", html, re.I)
    found += re.findall(r"<link\b[^>]*\bhref\s*=\s*[\"']?([^\"' >]+)", html, re.I)
    return [url for url in found if re.match(r"^(?:[a-z][a-z0-9+.-]*:|//)", url, re.I)]


def charts(html: str) -> list[ET.Element]:
    """The page's SVG charts, each parsed as XML (so each is well formed)."""
    return [ET.fromstring(svg) for svg in re.findall(r"<svg viewBox=.*?</svg>", html, re.S) if 'class="chart"' in svg]


def test_the_report_of_a_tuned_model_shows_every_trial_and_the_recommendation(cli, fake: FakeMeasure, tmp_path: Path) -> None:
    with Store.open(str(cli.db)) as store:
        add_model(store, "org/tiny")
    assert cli("tune", "org/tiny", "--space", SPACE, "--seed", "5").code == 0
    out = tmp_path / "reports" / "tiny.html"  # its folder is created

    result = cli("report", "org/tiny", "--out", out)
    assert result.code == 0, result.err
    assert result.out == f"wrote {out.resolve()}\n" and result.err == ""
    html = out.read_text(encoding="utf-8")

    with Store.open(str(cli.db)) as store:
        trials = store.trials()
    assert len(trials) == 16
    for t in trials:  # every trial has its row, with its candidate, batch and status
        row = re.search(rf'<tr id="trial-{t.id}"[^>]*>(.*?)</tr>', html, re.S)
        assert row is not None, t
        assert t.candidate.label() in row.group(1) and f">{t.batch_size}<" in row.group(1) and f">{t.status}<" in row.group(1)
    # the recommendation, marked, with its loading code
    assert '<span class="badge win">recommended</span>' in html
    assert "<strong>bf16 sdpa cpu</strong> at batch 8" in html
    assert "recommended: batch 8" in html  # the callout on the charts
    assert "AutoModelForCausalLM.from_pretrained(" in html and "BATCH_SIZE = 8" in html
    # the infeasible trials apart, with their reason
    apart = html.split("Infeasible and failed trials", 1)[1].split("</table>", 1)[0]
    assert apart.count("<tr>") - 1 == sum(1 for t in trials if t.status != "ok") and "out of memory" in apart
    # the plots, the environment and the progress; nothing outside the file
    assert len(charts(html)) == 6
    assert "Throughput against peak memory" in html and "Best so far against minutes" in html
    assert "Quality against peak memory" in html and "Memory forecast against the measured peak" in html
    assert "torch 2.13.0" in html and "space exhausted: all 4 candidates measured" in html
    assert external_references(html) == [] and "<script" not in html and "<link" not in html


def test_without_out_it_writes_beside_you_and_says_where(cli, fake: FakeMeasure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store.open(str(cli.db)) as store:
        add_model(store, "org/tiny")
        add_model(store, "org/other")
    monkeypatch.chdir(tmp_path)
    result = cli("report", "org/tiny")
    assert result.code == 0 and result.out == f"wrote {tmp_path / 'autotune-report-org-tiny.html'}\n"
    assert "No study yet" in (tmp_path / "autotune-report-org-tiny.html").read_text()
    result = cli("report")
    assert result.code == 0 and result.out == f"wrote {tmp_path / 'autotune-report.html'}\n"
    html = (tmp_path / "autotune-report.html").read_text()
    assert "2 models from" in html and 'href="#model-0"' in html and "org/other" in html


def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, words in [
        (("report", "--out", tmp_path), "is a directory"),
        (("report", "--out", afile / "r.html"), "is not a directory"),
    ]:
        result = cli(*args)
        assert result.code == 2 and words in result.err and result.err.count("\n") == 1, (args, result.err)
        assert not cli.db.exists()  # refused before the store was opened
    with Store.open(str(cli.db)) as store:
        add_model(store, "org/tiny")
    result = cli("report", "org/nothing", "--out", tmp_path / "r.html")
    assert result.code == 2 and "model org/nothing is not registered (registered: org/tiny)" in result.err
    assert result.err.count("\n") == 1 and not (tmp_path / "r.html").exists()
    result = cli("daemon", "--once", "--report-dir", afile)
    assert result.code == 2 and "--report-dir" in result.err and result.err.count("\n") == 1


def test_an_unwritable_out_is_refused(cli, tmp_path: Path) -> None:
    import os

    # /proc takes no new files, whoever asks: the write itself fails, after the checks
    result = cli("report", "--out", "/proc/autotune-report.html")
    assert result.code == 2 and result.err.startswith("autotune: cannot write the report to /proc/autotune-report.html: ")
    assert result.err.count("\n") == 1
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user may write into a read-only directory (root)")
        result = cli("report", "--out", locked / "r.html")
        assert result.code == 2 and "permission denied" in result.err and result.err.count("\n") == 1
    finally:
        locked.chmod(0o700)


def test_names_and_reasons_from_the_store_are_escaped(store: Store, tmp_path: Path) -> None:
    model = add_model(store, "org/<script>alert(1)</script>")
    study = store.study_for(model, store.record_environment(cpu_env()))
    store.record_trial(
        study.id, Candidate(dtype="float32", attn="sdpa", placement="cpu"), 1, "error", reason="<img src=x onerror=alert(2)>"
    )
    running = store.start_trial(study.id, Candidate(dtype="bfloat16", attn="sdpa", placement="cpu"), 1)
    html = write_report(store, tmp_path / "r.html").read_text()
    assert "<script>" not in html and "<img" not in html
    # a trial still being measured is listed, but not as failed
    assert f'<tr id="trial-{running.id}">' in html and "Infeasible and failed trials (1)" in html
    assert "org/&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert len(charts(html)) == 6


def test_an_encoder_tuned_for_memory_on_two_gpus(store: Store, tmp_path: Path) -> None:
    """Sequences per second instead of tokens, the smallest peak wins, and a candidate spread over
    both GPUs counts both in the GPU-minutes."""
    from datetime import timedelta

    from search_fakes import gpu_env

    from autotune.workload import Workload

    model = add_model(
        store,
        "org/bert",
        Workload(task="feature-extraction", prompt_tokens=128, objective="memory"),
        config={"model_type": "bert", "architectures": ["BertModel"]},
        caps={"architecture": "BertModel"},
    )
    study = store.study_for(model, store.record_environment(gpu_env(2)))
    one, two = Candidate(dtype="bfloat16", attn="sdpa"), Candidate(dtype="bfloat16", attn="sdpa", placement="multi-gpu")
    for candidate, batch, peak in ((one, 1, 3.0), (one, 8, 3.5), (two, 1, 1.8)):
        trial = store.start_trial(study.id, candidate, batch)
        metrics = {
            "sequences_per_s": 100.0 * batch,
            "latency_p50_ms": 10.0,
            "peak_memory_bytes": int(peak * 2**30),
            "forecast_bytes": int(peak * 1.02 * 2**30),
        }
        store.finish_trial(trial.id, "ok", metrics=metrics, feasible=True, objective_value=metrics["peak_memory_bytes"])
    with store.session() as s:  # each candidate measured for one minute
        from autotune.store.schema import TrialRow

        for row in s.query(TrialRow).all():
            row.finished_at = row.started_at + timedelta(minutes=1)
    html = write_report(store, tmp_path / "r.html").read_text()
    assert "<strong>bf16 sdpa multi-gpu</strong> at batch 1" in html
    assert "objective memory (peak_memory_bytes)" in html and "sequences/s" in html and "tokens/s" not in html
    assert "3.0 GPU-minutes of measuring" in html  # 1 minute on one GPU, 1 minute on two
    assert len(charts(html)) == 6 and "median error 2.0%" in html


@pytest.mark.parametrize("name", ["e2e_falcon7b_h200_20261126.db", "e2e_llama8b_20261126.db"])
def test_the_report_of_a_gpu_study(name: str, tmp_path: Path) -> None:
    """Stores measured on H200s (BENCHMARKS.md), read from a copy."""
    db = tmp_path / name
    shutil.copy(RESULTS / name, db)
    with Store.open(str(db)) as store:
        trials = store.trials()
        html = write_report(store, tmp_path / "r.html").read_text()
    assert all(f'id="trial-{t.id}"' in html for t in trials)
    assert "NVIDIA H200, 140.40 GiB, compute capability 9.0" in html and "580.159.04 (CUDA 13.0)" in html
    assert "Best so far against GPU-minutes" in html and "median error" in html  # the search stored its forecasts
    assert external_references(html) == []
    if "falcon" in name:  # bf16 with a compiled static cache wins at batch 16; 4-bit did not take effect on Falcon
        assert "<strong>bf16 sdpa cuda static</strong> at batch 16" in html
        assert "bnb-4bit-nf4 did not take effect" in html
    else:  # random weights: nothing meets the quality floor, and every study says why
        assert '<span class="badge none">no recommendation</span>' in html
        assert html.count("<h3>Study ") == 4 and "limit 10.00 GiB" in html and "below the floor 90%" in html


def test_the_daemon_refreshes_a_report_when_a_study_finishes(store_url: str, tmp_path: Path) -> None:
    with Store.open(store_url) as store:
        add_model(store, "org/a")
        add_model(store, "org/b")
    lines: list[str] = []
    settings = SearchSettings(seed=0, patience=50, restrict=parse_restriction(SPACE))
    options = DaemonOptions(poll_s=0.01, once=True, settings=settings, heartbeat_s=0.05, report_dir=str(tmp_path / "reports"))
    assert Daemon(store_url, options, probe=cpu_env, measure=FakeMeasure(), log=lines.append).run() == 0
    for name in ("org/a", "org/b"):
        path = tmp_path / "reports" / default_filename(name)
        assert f"report of {name} written to {path}" in lines
        html = path.read_text()
        assert html.count('<tr id="trial-') == 16 and "space exhausted" in html


def test_report_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from autotune.cli import main; "
        "assert main(['--db', sys.argv[1], 'report', '--out', sys.argv[2]]) == 0; "
        "heavy = [m for m in ('torch', 'transformers', 'optuna') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.db"), str(tmp_path / "r.html")], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert "No models are registered" in (tmp_path / "r.html").read_text()


# -- the charts -----------------------------------------------------------------------------------


def test_ticks_are_round_and_cover_the_data() -> None:
    assert nice_ticks(13.2, 19.4) == [12.0, 14.0, 16.0, 18.0, 20.0]
    assert nice_ticks(0, 739) == [0, 200, 400, 600, 800]
    assert pow2_ticks(0.7, 24) == [1, 2, 4, 8, 16]
    assert len(pow2_ticks(1, 2**20)) <= 8


def test_the_pareto_front_keeps_what_nothing_beats() -> None:
    points = [(16.0, 78), (15.8, 48), (17.0, 400), (16.5, 60), (18.1, 739), (18.5, 700)]
    assert _front(points, maximize=True) == [(15.8, 48), (16.0, 78), (17.0, 400), (18.1, 739)]
    assert _front([(1, 30), (2, 10), (3, 20), (4, 5)], maximize=False) == [(1, 30), (2, 10), (4, 5)]


def test_a_chart_renders_well_formed_svg_with_tooltips() -> None:
    chart = Chart("t <&>", Axis("batch", log2=True), Axis("tok/s", zero=True), ident="x1")
    chart.marks += [Mark(1, 10.0, "#000", title="a & b"), Mark(8, 70.0, "#000", "square", filled=False), Mark(4, None, "#000")]
    svg = ET.fromstring(chart.render())
    assert [t.text for t in svg.iter("title")] == ["a & b"]
    assert {t.text for t in svg.iter("text")} >= {"t <&>", "1", "2", "4", "8", "batch", "tok/s"}
    empty = ET.fromstring(Chart("e", Axis("x"), Axis("y"), empty="nothing yet").render())
    assert "nothing yet" in [t.text for t in empty.iter("text")]
