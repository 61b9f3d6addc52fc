"""The daemon and the tuning lock, in process with a fake worker (the real one: test_daemon_e2e.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from search_fakes import FakeMeasure, add_model, cpu_env

from autotune.errors import StoreError
from autotune.search.results import INTERRUPTED
from autotune.search.space import parse_restriction
from autotune.search.study import SearchSettings
from autotune.service.daemon import Daemon, DaemonOptions
from autotune.service.lock import TunerBusyError, TunerLock, holders
from autotune.store import Store
from autotune.store.schema import DaemonRow, utcnow

SMALL = SearchSettings(seed=0, patience=50, restrict=parse_restriction("dtype=fp32,bf16 attn=sdpa,eager quant=none static_cache=false"))


def daemon(url: str, measure: FakeMeasure, *, probe=cpu_env, settings: SearchSettings = SMALL, once: bool = True):
    lines: list[str] = []
    d = Daemon(
        url, DaemonOptions(poll_s=0.01, once=once, settings=settings, heartbeat_s=0.05), probe=probe, measure=measure, log=lines.append
    )
    return d, lines


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_once_tunes_every_model_round_robin_to_the_end(store_url: str) -> None:
    with Store.open(store_url) as store:
        a, b = add_model(store, "org/a"), add_model(store, "org/b")
    measure = FakeMeasure()
    d, lines = daemon(store_url, measure)
    assert d.run() == 0
    with Store.open(store_url) as store:
        studies = store.studies()
        assert [s.model_id for s in studies] == [a.id, b.id]
        assert all(s.state == "finished" and s.stop_reason == "space exhausted: all 4 candidates measured" for s in studies)
        order = [t.study_id for t in sorted(store.trials(), key=lambda t: (t.started_at, t.id)) if t.batch_size == 1]
        assert order == [studies[0].id, studies[1].id] * 4  # one trial each, in turn
        assert store.trials(status="running") == []
        (row,) = holders(store)
        assert row.pid == 0 and row.activity == "daemon: stopped"
    assert any("model org/a:" in line for line in lines) and any("study" in line and "finished" in line for line in lines)
    assert lines[-2] == "no study has work left; exiting (--once)"


def test_once_continues_a_finished_study_for_a_larger_trials(store_url: str) -> None:
    with Store.open(store_url) as store:
        add_model(store, "org/a")
    first = FakeMeasure()
    assert daemon(store_url, first, settings=SearchSettings(seed=4, patience=2))[0].run() == 0
    measured = len(first.calls)
    same = FakeMeasure()
    assert daemon(store_url, same, settings=SearchSettings(seed=4, patience=2))[0].run() == 0 and not same.calls
    more = FakeMeasure()
    assert daemon(store_url, more, settings=SearchSettings(seed=4, patience=2, max_trials=measured + 2))[0].run() == 0
    assert len(more.calls) == 2
    with Store.open(store_url) as store:
        (study,) = store.studies()
        assert study.state == "finished" and study.stop_reason.startswith(f"candidate budget reached: {measured + 2} candidates")


def test_environment_change_starts_new_studies(store_url: str) -> None:
    with Store.open(store_url) as store:
        add_model(store, "org/a")
        add_model(store, "org/b")
    calls = {"n": 0}

    def probe():
        calls["n"] += 1
        return cpu_env() if calls["n"] <= 3 else cpu_env(transformers="5.25.0")

    d, lines = daemon(store_url, FakeMeasure(), probe=probe)
    assert d.run() == 0
    with Store.open(store_url) as store:
        studies = store.studies()
        assert len(studies) == 4 and len({s.environment_id for s in studies}) == 2
        new = [s for s in studies if store.environment(s.environment_id).version("transformers") == "5.25.0"]
        assert len(new) == 2 and all(s.state == "finished" for s in new)
    assert sum("environment changed: fingerprint" in line for line in lines) == 1

    # a restart after an upgrade says so too, and a database error in a pass is not the end
    def upgraded():
        calls["n"] += 1
        if calls["n"] == 100:
            raise StoreError("database error in somewhere: server closed the connection")
        return cpu_env(transformers="5.26.0")

    calls["n"] = 98  # the daemon probes once on start (its GPUs), then the error hits a pass
    d, lines = daemon(store_url, FakeMeasure(), probe=upgraded)
    assert d.run() == 0
    assert any("server closed the connection; trying again" in line for line in lines)
    assert sum("environment changed: fingerprint" in line for line in lines) == 1
    with Store.open(store_url) as store:
        assert len(store.studies()) == 6


def test_on_start_trials_of_a_dead_daemon_are_marked_and_measured_again(store_url: str) -> None:
    with Store.open(store_url) as store:
        model = add_model(store, "org/a")
        env = cpu_env()
        study = store.study_for(model, store.record_environment(env))
        from autotune.candidate import Candidate

        dead = [store.start_trial(study.id, Candidate(dtype="float32", attn="sdpa", placement="cpu"), b) for b in (1, 2, 4, 8)]
    measure = FakeMeasure()
    d, lines = daemon(store_url, measure)
    assert d.run() == 0
    with Store.open(store_url) as store:
        for row in dead:
            trial = store.get_trial(row.id)
            assert trial.status == "crash" and trial.details[INTERRUPTED] and "died" in trial.reason
        assert store.trials(status="running") == []
    assert measure.calls[0][0].label() == "fp32 sdpa cpu"  # the cut-short candidate, measured again
    assert sum("left running by a tuner that died" in line for line in lines) == 4


def test_first_signal_finishes_the_trial_second_stops_at_once(store_url: str) -> None:
    with Store.open(store_url) as store:
        add_model(store, "org/a")

    def signal_during_second_trial(times: int) -> FakeMeasure:
        def during(index: int) -> None:
            if index == 1:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGTERM)

        return FakeMeasure(during=during)

    once = signal_during_second_trial(1)
    d, lines = daemon(store_url, once, once=False)
    assert d.run() == 0
    assert len(once.calls) == 2  # the trial in progress finished; no other started
    with Store.open(store_url) as store:
        # finished rows only: measured, out of memory, screened (far behind), or skipped by the ladder
        assert store.trials(status="running") == [] and {t.status for t in store.trials()} <= {"ok", "oom", "screened", "skipped"}
    assert any("SIGTERM: finishing the current trial" in line for line in lines)

    twice = signal_during_second_trial(2)
    d, lines = daemon(store_url, twice, once=False)
    assert d.run() == 128 + signal.SIGTERM
    with Store.open(store_url) as store:
        cut = [t for t in store.trials() if t.details.get(INTERRUPTED)]
        assert cut and all(t.status == "crash" for t in cut) and store.trials(status="running") == []
        assert holders(store)[0].pid == 0
    assert any("stopping now" in line for line in lines)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_second_tuner_is_refused_and_names_the_holder(store_url: str, sleeper: subprocess.Popen) -> None:
    with Store.open(store_url) as store:
        TunerLock(store, "daemon", pid=sleeper.pid).acquire()
    d, _ = daemon(store_url, FakeMeasure())
    with pytest.raises(TunerBusyError, match=rf"pid {sleeper.pid} on .*since .*heartbeat .*kill -TERM {sleeper.pid}") as err:
        d.run()
    assert err.value.exit_code == 2


def test_stale_locks_are_taken_over(store_url: str, sleeper: subprocess.Popen) -> None:
    with Store.open(store_url) as store:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        TunerLock(store, "daemon", pid=int(gone.stdout)).acquire()  # its process has exited
        lock = TunerLock(store, "daemon")
        assert lock.acquire().pid == int(gone.stdout)
        lock.release()

        TunerLock(store, "daemon", pid=sleeper.pid).acquire()
        with store.session() as s:  # alive, but silent for too long (a reused pid, a hung tuner)
            s.get(DaemonRow, lock.id).heartbeat_at = utcnow() - timedelta(minutes=10)
        taken = TunerLock(store, "tune", stale_after_s=120)
        assert taken.acquire().pid == sleeper.pid
        taken.beat("tune: testing")
        (row,) = holders(store)
        assert row.pid == os.getpid() and row.activity == "tune: testing" and row.alive()
        taken.release()
        assert holders(store)[0].pid == 0


def test_heartbeat_thread_keeps_the_row_fresh(store_url: str) -> None:
    import time

    with Store.open(store_url) as store:
        lock = TunerLock(store, "daemon", heartbeat_s=0.05)
        lock.acquire()
        first = holders(store)[0].heartbeat_at
        lock.activity = "daemon: busy"
        lock.start_heartbeat()
        time.sleep(0.5)
        row = holders(store)[0]
        lock.release()
        assert row.heartbeat_at > first and row.activity == "daemon: busy"


# -- end to end: the real worker on tiny CPU models ------------------------------------------------

E2E_OPTIONS = {"device": "cpu", "prompt_tokens": 16, "new_tokens": 8, "max_batch": 2}


def _environ(tmp_path, space: str) -> dict[str, str]:
    from conftest import REPO

    return {
        **os.environ,
        "AUTOTUNE_DB": str(tmp_path / "e2e.db"),
        "AUTOTUNE_CACHE": str(tmp_path / "cache"),
        "AUTOTUNE_SPACE": space,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }


def _start(environ: dict[str, str], log, *args: str) -> subprocess.Popen:
    handle = open(log, "a")
    return subprocess.Popen(
        [sys.executable, "-m", "autotune", "daemon", "--poll", "0.5", *args],
        env=environ,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _cli(environ: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune", *args], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(predicate, timeout: float, daemon: subprocess.Popen, what: str, log):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if daemon.poll() is not None:
            raise AssertionError(f"the daemon exited ({daemon.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")


def _register(db, path, options=E2E_OPTIONS):
    from autotune.api import add_model as register

    with Store.open(str(db)) as store:
        return register(store, str(path), options).model


@pytest.mark.slow
def test_daemon_tunes_two_models_while_the_cli_answers(tmp_path, tiny_models) -> None:
    environ = _environ(tmp_path, "dtype=fp32,bf16 attn=sdpa quant=none static_cache=false")
    db, log = tmp_path / "e2e.db", tmp_path / "daemon.log"
    models = [_register(db, tiny_models[kind]) for kind in ("llama", "gpt2")]
    daemon = _start(environ, log, "--once", "--exhaustive")
    try:
        with Store.open(str(db)) as store:
            _wait_for(lambda: store.trials(status="running"), 180, daemon, "a trial to start", log)
            # while a trial runs: status and trials answer, and a second daemon is refused
            procs = {
                "status": _cli(environ, "status", "--json"),
                "trials": _cli(environ, "trials", models[0].name, "--json"),
                "second": _cli(environ, "daemon", "--once"),
                "text": _cli(environ, "status"),
            }
            outputs = {name: (p.wait(timeout=120), *p.communicate()) for name, p in procs.items()}
            for name in ("status", "trials", "text"):
                code, out, err = outputs[name]
                assert code == 0 and "locked" not in err, (name, err)
            status = json.loads(outputs["status"][1])
            (live,) = [d for d in status["daemons"] if d["running"]]
            assert live["pid"] == daemon.pid and live["activity"].startswith("daemon: tuning")
            assert json.loads(outputs["trials"][1])[0]["trials"]
            code, _, err = outputs["second"]
            assert code == 2 and f"pid {daemon.pid} on " in err and "kill -TERM" in err
            # later, mid-way, once more
            _wait_for(lambda: len(store.trials()) >= 6, 300, daemon, "the third trial", log)
            again = _cli(environ, "status")
            assert again.wait(timeout=120) == 0 and "locked" not in again.communicate()[1]
        assert daemon.wait(timeout=600) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
    with Store.open(str(db)) as store:
        studies = store.studies()
        assert sorted(s.model_id for s in studies) == sorted(m.id for m in models)
        for study in studies:
            assert study.state == "finished" and study.stop_reason == "space exhausted: all 2 candidates measured"
            # (two tiny models time within each other's noise on a busy machine: the pair may be re-measured)
            trials = [t for t in store.trials(study_id=study.id) if t.origin != "confirm"]
            assert len(trials) == 4 and {t.candidate.label() for t in trials} == {"fp32 sdpa cpu", "bf16 sdpa cpu"}
            assert all(t.status == "ok" and t.metrics["throughput_tokens_per_s"] for t in trials), [t.reason for t in trials]
            assert study.best_trial_id in {t.id for t in trials} and trials[0].origin == "baseline"
    text = log.read_text()
    assert "no study has work left; exiting (--once)" in text and "locked" not in text


@pytest.mark.slow
def test_sigterm_then_kill_9_then_restart_lose_nothing(tmp_path, tiny_models) -> None:
    import time

    environ = _environ(tmp_path, "dtype=fp32,bf16,fp16 attn=sdpa quant=none static_cache=false")
    db, log = tmp_path / "e2e.db", tmp_path / "daemon.log"
    _register(db, tiny_models["llama"])
    store = Store.open(str(db))
    try:
        # 1. SIGTERM in the middle of a trial: that trial finishes, no other starts, exit 0
        daemon = _start(environ, log, "--exhaustive")
        _wait_for(lambda: store.trials(status="running"), 180, daemon, "a trial to start", log)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=300) == 0, log.read_text()
        first = store.trials()
        assert first and all(t.status == "ok" for t in first) and len({t.candidate.key() for t in first}) == 1
        assert "SIGTERM: finishing the current trial" in log.read_text()

        # 2. kill -9 in the middle of the next trial: its rows stay running, the finished ones stay
        daemon = _start(environ, log, "--exhaustive")
        running = _wait_for(
            lambda: [t for t in store.trials(status="running") if t.candidate.key() != first[0].candidate.key()],
            180,
            daemon,
            "the second trial to start",
            log,
        )
        _wait_for(
            lambda: store.get_trial(running[0].id).details or _worker_pid(store, running[0].id), 60, daemon, "the worker to start", log
        )
        daemon.kill()
        daemon.wait()
        orphan = _worker_pid(store, running[0].id)
        assert [t.status for t in store.trials() if t.id in {r.id for r in running}] == ["running"] * len(running)

        # 3. a restart marks them, measures that candidate again, and finishes the study
        time.sleep(0.5)
        daemon = _start(environ, log, "--once", "--exhaustive")
        assert daemon.wait(timeout=600) == 0, log.read_text()
        trials = store.trials()
        by_id = {t.id: t for t in trials}
        for before in first:  # no completed trial lost or changed
            assert by_id[before.id].status == "ok" and by_id[before.id].objective_value == before.objective_value
        for cut in running:
            assert by_id[cut.id].status == "crash" and by_id[cut.id].details[INTERRUPTED]
        (study,) = store.studies()
        assert study.state == "finished" and study.stop_reason == "space exhausted: all 3 candidates measured"
        assert store.trials(status="running") == []
        complete = {t.candidate.label() for t in trials if not t.details.get(INTERRUPTED) and t.status == "ok"}
        assert complete == {"fp32 sdpa cpu", "bf16 sdpa cpu", "fp16 sdpa cpu"}
        text = log.read_text()
        assert "took over the lock of a tuner that is gone" in text and "left running by a tuner that died" in text
        if orphan:
            from autotune.service.lock import pid_alive

            assert not pid_alive(orphan)
    finally:
        store.close()


def _worker_pid(store: Store, trial_id: int) -> int | None:
    from autotune.store.schema import TrialRow

    with store.session() as s:
        row = s.get(TrialRow, trial_id)
        return row.worker_pid if row else None


def test_a_model_added_from_another_terminal_is_picked_up(store_url: str) -> None:
    import threading
    import time

    with Store.open(store_url) as store:
        add_model(store, "org/early")
    d, lines = daemon(store_url, FakeMeasure(), once=False)

    def other_terminal() -> None:
        # another process, as a user's terminal is: a second connection to the same SQLite file in
        # this process would drop the daemon's locks when it closes
        time.sleep(0.5)
        code = "import sys; from search_fakes import add_model; from autotune.store import Store; add_model(Store.open(sys.argv[1]), 'org/late')"
        subprocess.run(
            [sys.executable, "-c", code, store_url],
            check=True,
            cwd=os.path.dirname(__file__),
            env={**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.path.dirname(__file__)])},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("of org/late finished" in line for line in lines):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=other_terminal)
    helper.start()
    assert d.run() == 0
    helper.join()
    with Store.open(store_url) as store:
        assert [s.state for s in store.studies()] == ["finished", "finished"]
    assert any(line.startswith("model org/late:") for line in lines)


def test_a_sqlite_store_has_one_lock_whatever_the_host_name(store_url: str, sleeper: subprocess.Popen) -> None:
    with Store.open(store_url) as store:
        other = TunerLock(store, "daemon", hostname="old-container-id", pid=sleeper.pid)
        other.acquire()
        mine = TunerLock(store, "daemon")
        if store.sqlite_path is None:  # a shared server store: one lock per machine
            assert mine.acquire() is None and len(holders(store)) == 2
            return
        with pytest.raises(TunerBusyError, match="on old-container-id"):
            mine.acquire()
        with store.session() as s:  # the old container is gone: its heartbeat stops
            s.get(DaemonRow, other.id).heartbeat_at = utcnow() - timedelta(minutes=5)
        assert mine.acquire().hostname == "old-container-id"
        assert [h.hostname for h in holders(store)] == [mine.hostname]
