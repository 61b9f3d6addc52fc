"""The search commands: tune, trials, status (the fake worker; the real one is in test_daemon_e2e.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from conftest import REPO
from search_fakes import FakeMeasure, add_model

from autotune.store import Store

SPACE = "dtype=fp32,bf16 attn=sdpa,eager quant=none static_cache=false"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMeasure:
    from autotune.search import study

    measure = FakeMeasure()
    monkeypatch.setattr(study, "_default_measure", lambda: measure)
    monkeypatch.setattr("autotune.environment.probe", lambda: __import__("search_fakes").cpu_env())
    return measure


def test_tune_runs_the_study_and_prints_the_best(cli, fake: FakeMeasure) -> None:
    with Store.open(str(cli.db)) as store:
        add_model(store, "org/tiny")
    result = cli("tune", "org/tiny", "--space", SPACE, "--seed", "5")
    assert result.code == 0, result.err
    assert "space: 4 candidates" in result.err and "transformers defaults" in result.err
    assert result.err.count("] ") >= 4 and "4/4 candidates" in result.err  # one progress line per candidate
    assert "study finished: space exhausted: all 4 candidates measured" in result.err
    assert result.out.startswith("best after 4 candidates: bf16 sdpa cpu at batch 8:")
    # again: nothing left, nothing measured
    again = cli("tune", "org/tiny", "--space", SPACE)
    assert again.code == 0 and "is finished: space exhausted" in again.err and len(fake.calls) == 4
    assert "a wider --space" in again.err

    trials = cli("trials", "org/tiny")
    assert trials.code == 0 and "fp32 sdpa cpu" in trials.out and "oom" in trials.out and "* the best trial" in trials.out
    data = json.loads(cli("trials", "org/tiny", "--json").out)
    assert len(data) == 1 and data[0]["state"] == "finished" and len(data[0]["trials"]) == 16
    assert {t["origin"] for t in data[0]["trials"]} == {"baseline", "prior"}  # the defaults, then knowledge first

    status = json.loads(cli("status", "--json").out)
    (entry,) = status["models"]
    assert entry["study"]["state"] == "finished" and entry["study"]["candidates"] == 4 and entry["study"]["trial_rows"] == 16
    assert entry["study"]["best"]["label"] == "bf16 sdpa cpu" and entry["study"]["best"]["batch_size"] == 8
    assert entry["study"]["rejected"] > 0 and entry["study"]["rejected_reasons"][0]["reason"]
    assert status["daemons"][0]["running"] is False and status["daemons"][0]["activity"] == "tune: stopped"
    text = cli("status").out
    assert "finished" in text and "rejected before measuring" in text and "daemon: not running" in text


def test_tune_respects_budgets_and_unknown_models(cli, fake: FakeMeasure) -> None:
    with Store.open(str(cli.db)) as store:
        add_model(store, "org/tiny")
    result = cli("tune", "org/tiny", "--trials", "2", "--seed", "1")
    assert result.code == 0 and "candidate budget reached: 2 candidates measured (--trials 2)" in result.err and len(fake.calls) == 2
    result = cli("tune", "org/nothing")
    assert result.code == 2 and "is not registered" in result.err
    result = cli("tune", "org/tiny", "--patience", "0")
    assert result.code == 2 and "--patience" in result.err
    result = cli("tune", "org/tiny", "--space", "colour=red")
    assert result.code == 2 and "AXIS=V1,V2" in result.err


def test_a_larger_trials_continues_a_finished_study(cli, fake: FakeMeasure) -> None:
    with Store.open(str(cli.db)) as store:
        add_model(store, "org/tiny")
    first = cli("tune", "org/tiny", "--patience", "2", "--seed", "4")
    measured = len(fake.calls)
    assert first.code == 0 and "study finished: no improvement in the last 2 candidates" in first.err
    again = cli("tune", "org/tiny", "--patience", "2")
    assert again.code == 0 and len(fake.calls) == measured
    assert f"--trials above {measured} or --budget-minutes above" in again.err and "--patience above 2" in again.err
    more = cli("tune", "org/tiny", "--patience", "2", "--trials", str(measured + 2))
    assert more.code == 0 and len(fake.calls) == measured + 2, more.err
    assert f"candidate budget reached: {measured + 2} candidates measured" in more.err
    assert more.out.startswith(f"best after {measured + 2} candidates:")


def test_trials_and_status_with_nothing_yet(cli) -> None:
    with Store.open(str(cli.db)) as store:
        add_model(store, "org/tiny")
    assert "has no study in this environment yet" in cli("trials", "org/tiny").out
    assert json.loads(cli("trials", "org/tiny", "--json").out) == []
    out = cli("status").out
    assert "no study" in out and "daemon: not running" in out


def test_trials_and_status_do_not_import_torch(tmp_path) -> None:
    code = (
        "import sys; from autotune.cli import main; "
        "assert main(['--db', sys.argv[1], 'status']) == 0; "
        "main(['--db', sys.argv[1], 'trials', 'nothing']); "
        "heavy = [m for m in ('torch', 'transformers', 'optuna') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.db")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_tune_refuses_while_another_tuner_holds_the_lock(cli, fake: FakeMeasure) -> None:
    from autotune.service.lock import TunerLock

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Store.open(str(cli.db)) as store:
            add_model(store, "org/tiny")
            TunerLock(store, "daemon", pid=sleeper.pid).acquire()
        result = cli("tune", "org/tiny")
        assert result.code == 2 and f"pid {sleeper.pid}" in result.err and not fake.calls
        assert f"daemon: pid {sleeper.pid} on" in cli("status").out
    finally:
        sleeper.kill()
        sleeper.wait()


def test_status_check_daemon_is_a_health_check(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from autotune.service.lock import TunerLock
    from autotune.store.schema import DaemonRow, utcnow

    def check(*more: str):  # type: ignore[no-untyped-def]
        result = cli("status", "--check-daemon", *more)
        assert len((result.out + result.err).strip().splitlines()) == 1, result
        return result

    with Store.open(str(cli.db)):
        pass
    nobody = check()
    assert nobody.code == 1 and nobody.err.startswith("autotune: no daemon has run on") and not nobody.out
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Store.open(str(cli.db)) as store:
            lock = TunerLock(store, "daemon", pid=sleeper.pid)
            lock.acquire()
            lock.beat("daemon: idle, 1 models, every study finished")
        live = check()
        assert live.code == 0 and live.out.startswith(f"daemon: pid {sleeper.pid} on ") and "idle" in live.out
        with Store.open(str(cli.db)) as store, store.session() as s:
            s.execute(update(DaemonRow).values(heartbeat_at=utcnow() - timedelta(seconds=300)))
        stale = check()
        assert stale.code == 1 and "is 5 min old (--max-age 120 s)" in stale.err
        assert check("--max-age", "600").code == 0
        assert check("--max-age", "0").code == 2
        with Store.open(str(cli.db)) as store, store.session() as s:
            s.execute(update(DaemonRow).values(heartbeat_at=utcnow()))
    finally:
        sleeper.kill()
        sleeper.wait()
    gone = check()
    assert gone.code == 1 and f"pid {sleeper.pid} on" in gone.err and "is gone" in gone.err
    with Store.open(str(cli.db)) as store:
        own = TunerLock(store, "daemon")
        own.acquire()
        own.release("stopped by SIGTERM")
    stopped = check()
    assert stopped.code == 1 and "the last one stopped" in stopped.err and "daemon: stopped by SIGTERM" in stopped.err
    # it starts without torch, transformers, Optuna or NVML, and takes --db after its name like every command
    code = (
        "import sys; from autotune.cli import main; "
        "assert main(['status', '--check-daemon', '--db', sys.argv[1]]) == 1; "
        "heavy = [m for m in ('torch', 'transformers', 'optuna', 'pynvml') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(cli.db)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
