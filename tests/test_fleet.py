"""Several workers and daemons on one store: claims, heartbeats, recovery of a daemon that died.

The daemons here are processes of their own with the fake worker (tests/fleet_daemon.py), so a
``kill -9`` lands in the middle of a trial for sure and the tests take seconds; the real worker
runs under the daemon in test_daemon.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, run_autotune
from fleet_daemon import CANDIDATES
from search_fakes import add_model, cpu_env

from autotune.candidate import Candidate
from autotune.errors import InputError
from autotune.search.results import INTERRUPTED
from autotune.service.lock import TunerLock
from autotune.service.recovery import recover_dead_workers
from autotune.service.workers import Slot, cpu_shares, parse_gpus, worker_environ
from autotune.store import CONFIRM_ORIGIN, DeviceTaken, Store

HERE = Path(__file__).resolve().parent


# -- the store's side: claims and dead workers ----------------------------------------------------


def test_a_candidate_is_claimed_by_one_worker_and_a_gpu_has_one_worker(store_url: str) -> None:
    with Store.open(store_url) as store:
        study = store.study_for(add_model(store), store.record_environment(cpu_env()))
        one, two = store.add_worker("host-a", "GPU-1", 100), store.add_worker("host-b", "GPU-1", 200)
        with pytest.raises(DeviceTaken, match="GPU-1 of host-a already has a worker"):
            store.add_worker("host-a", "GPU-1", 300)
        assert store.claim(one.id, study.id, "k1", "fp32 sdpa cpu")
        assert not store.claim(two.id, study.id, "k1", "fp32 sdpa cpu")  # the unique key refuses the second
        assert store.claim(two.id, study.id, "k2", "bf16 sdpa cpu")
        assert set(store.claims(study.id)) == {"k1", "k2"}
        store.release_claim(one.id)
        assert store.claim(two.id, study.id, "k1", "fp32 sdpa cpu")  # a worker holds one claim: k2 is free again
        assert set(store.claims(study.id)) == {"k1"} and store.claims(study.id)["k1"].hostname == "host-b"


def test_a_worker_that_stops_heartbeating_is_recovered_by_the_others(store_url: str) -> None:
    candidate = Candidate(dtype="float32", attn="sdpa", placement="cpu")
    with Store.open(store_url) as store:
        study = store.study_for(add_model(store), store.record_environment(cpu_env()))
        gone = store.add_worker("a-host-that-died", "GPU-7", 4242)
        assert store.claim(gone.id, study.id, candidate.key(), candidate.label())
        rows = [store.start_trial(study.id, candidate, b) for b in (1, 2)]
        assert recover_dead_workers(store, stale_after_s=60) == []  # another host, fresh heartbeat: alive
        time.sleep(0.05)
        ((worker, trials),) = recover_dead_workers(store, stale_after_s=0.01)
        assert worker.id == gone.id and sorted(t.id for t in trials) == [r.id for r in rows]
        for row in rows:
            trial = store.get_trial(row.id)
            assert trial.status == "crash" and trial.details[INTERRUPTED] and trial.details["worker"]["gpu"] == "GPU-7"
        assert store.workers() == [] and store.claims(study.id) == {}
        assert recover_dead_workers(store, stale_after_s=0.01) == []


def test_gpus_are_parsed_against_the_machine() -> None:
    from search_fakes import gpu_env

    two = gpu_env(2)
    assert parse_gpus(None, two) == (Slot("GPU-0", 0), Slot("GPU-1", 1))
    assert parse_gpus("1", two) == (Slot("GPU-1", 1),)
    assert parse_gpus("GPU-1,0", two) == (Slot("GPU-1", 1), Slot("GPU-0", 0))
    assert parse_gpus(None, cpu_env()) == (Slot("cpu"),) and parse_gpus("cpu0,cpu1", cpu_env()) == (Slot("cpu0"), Slot("cpu1"))
    for text, message in (
        ("2", "2 names no visible GPU (visible: 0 (GPU-0), 1 (GPU-1))"),
        ("0,0", "a GPU is named twice"),
        ("0,GPU-0", "a GPU is named twice"),
        ("0,", "an empty entry"),
        ("cpu0", "names a CPU worker, but this machine has GPUs"),
    ):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_gpus(text, two)
    with pytest.raises(InputError, match="this machine has no NVIDIA GPU; name CPU workers cpu0,cpu1"):
        parse_gpus("0", cpu_env())
    environ = worker_environ(Slot("GPU-1", 1), [2, 3])
    assert environ["CUDA_VISIBLE_DEVICES"] == "GPU-1" and environ["OMP_NUM_THREADS"] == "2" and environ["AUTOTUNE_WORKER_CPUS"] == "2,3"
    assert "CUDA_VISIBLE_DEVICES" not in worker_environ(Slot("cpu0"), [0])
    shares = cpu_shares(2)
    assert len(shares) == 2 and all(shares) and len(shares[0]) == len(shares[1])


def test_a_second_daemon_on_sqlite_is_refused_naming_postgresql(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with Store.open(str(db)) as store:
            TunerLock(store, "daemon", pid=sleeper.pid).acquire()
        result = run_autotune("daemon", "--once", "--gpus", "cpu0", "--db", str(db), timeout=120)
        assert result.code == 2 and not result.out, result
        (line,) = result.err.strip().splitlines()
        assert f"pid {sleeper.pid}" in line and "a SQLite store takes one tuner" in line and "PostgreSQL" in line
    finally:
        sleeper.kill()
        sleeper.wait()


def test_bad_gpus_are_refused_before_anything_starts(tmp_path: Path) -> None:
    result = run_autotune("daemon", "--once", "--gpus", "cpu0,,cpu1", "--db", str(tmp_path / "x.db"), timeout=120)
    assert result.code == 2 and result.err.count("\n") == 1 and "--gpus 'cpu0,,cpu1': an empty entry" in result.err, result
    with Store.open(str(tmp_path / "x.db")) as store:
        assert store.locks() == [] and store.workers() == []


# -- daemons as processes: kill -9 of one mid-trial ------------------------------------------------


def _daemon(url: str, gpus: str, seconds: float, log: Path) -> subprocess.Popen:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    handle = open(log, "a")
    return subprocess.Popen(
        [sys.executable, str(HERE / "fleet_daemon.py"), url, gpus, str(seconds)],
        env=environ,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(predicate, timeout: float, what: str, logs: list[Path]):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(p.read_text() for p in logs if p.exists()))


def _fleet(url: str, tmp_path: Path, victim_gpus: str, others: list[str]) -> None:
    """Start the victim (slow trials) and the others (fast), kill -9 the victim mid-trial, check the end."""
    with Store.open(url) as store:
        add_model(store, "org/a")
        add_model(store, "org/b")
    logs = [tmp_path / f"daemon{n}.log" for n in range(len(others) + 1)]
    victim = _daemon(url, victim_gpus, 600, logs[0])
    survivors: list[subprocess.Popen] = []
    store = Store.open(url)
    try:
        mine = victim_gpus.split(",")
        _wait(lambda: sum(1 for w in store.workers() if w.pid == victim.pid and w.candidate) == len(mine), 120, "the victim's claims", logs)
        survivors = [_daemon(url, gpus, 0.2, log) for gpus, log in zip(others, logs[1:])]
        everyone = mine + ",".join(others).split(",")
        # while the victim measures, the others have done all else and wait: status lists every worker
        _wait(lambda: sorted(w.gpu for w in store.workers()) == sorted(everyone), 120, "every worker to register", logs)
        status = run_autotune("status", "--json", "--db", url, timeout=120)
        assert status.code == 0, status.err
        workers = json.loads(status.out)["workers"]
        assert sorted(w["gpu"] for w in workers) == sorted(everyone) and all(w["running"] for w in workers)
        measuring = [w for w in workers if w["pid"] == victim.pid]
        assert all(w["measuring"] and w["since"] and w["heartbeat_at"] and w["hostname"] for w in measuring)
        cut = [t for t in store.trials(status="running")]
        assert cut, "the victim is mid-trial"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        for daemon, log in zip(survivors, logs[1:]):
            assert daemon.wait(timeout=240) == 0, log.read_text()
        studies = store.studies()
        assert len(studies) == 2
        for study in studies:
            assert study.state == "finished" and study.stop_reason == f"space exhausted: all {CANDIDATES} candidates measured"
            kept = [t for t in store.trials(study_id=study.id) if not t.details.get(INTERRUPTED) and t.origin != CONFIRM_ORIGIN]
            assert len({t.candidate.key() for t in kept}) == CANDIDATES
            twice = [k for k, n in Counter((t.candidate.key(), t.batch_size) for t in kept).items() if n > 1]
            assert not twice, "a candidate was measured twice"
        assert store.trials(status="running") == []
        by_id = {t.id: t for t in store.trials()}
        assert all(by_id[t.id].status == "crash" and by_id[t.id].details[INTERRUPTED] for t in cut)
        assert store.workers() == []  # the dead one's row recovered, the others' removed as they exited
        text = "\n".join(log.read_text() for log in logs[1:])
        assert f"(daemon pid {victim.pid}) stopped heartbeating: its claim is freed" in text
    finally:
        for daemon in (victim, *survivors):
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        store.close()


def test_three_daemons_one_killed_mid_trial_the_others_finish_every_study(pg_url: str, tmp_path: Path) -> None:
    _fleet(pg_url, tmp_path, "cpu0", ["cpu1", "cpu2"])


def test_two_workers_in_one_daemon_share_the_work_and_survive_a_killed_daemon(pg_url: str, tmp_path: Path) -> None:
    _fleet(pg_url, tmp_path, "cpu0,cpu1", ["cpu2,cpu3"])
    text = (tmp_path / "daemon1.log").read_text()
    assert "2 workers: cpu2, cpu3" in text
    assert "[cpu2] org/" in text and "[cpu3] org/" in text  # both workers measured


# -- one daemon, in process: its workers side by side, or one at a time -----------------------------


def _concurrency(tmp_path: Path, one_at_a_time: bool) -> tuple[int, list[str]]:
    import threading

    from fleet_daemon import SPACE
    from search_fakes import FakeMeasure

    from autotune.search.space import parse_restriction
    from autotune.search.study import SearchSettings
    from autotune.service.daemon import Daemon, DaemonOptions

    url = f"sqlite:///{tmp_path / 'one.db'}"
    with Store.open(url) as store:
        add_model(store, "org/a")
        add_model(store, "org/b")
    lock, now, most = threading.Lock(), [0], [0]

    def during(_index: int) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.3)
        with lock:
            now[0] -= 1

    settings = SearchSettings(seed=0, patience=50, exhaustive=True, restrict=parse_restriction(SPACE))
    options = DaemonOptions(poll_s=0.01, once=True, settings=settings, heartbeat_s=0.05, gpus="cpu0,cpu1", one_at_a_time=one_at_a_time)
    lines: list[str] = []
    assert Daemon(url, options, probe=cpu_env, measure=FakeMeasure(during=during), log=lines.append).run() == 0
    with Store.open(url) as store:
        for study in store.studies():
            assert study.state == "finished" and study.stop_reason == f"space exhausted: all {CANDIDATES} candidates measured"
            rows = [t for t in store.trials(study_id=study.id) if t.origin != CONFIRM_ORIGIN]
            assert not [k for k, n in Counter((t.candidate.key(), t.batch_size) for t in rows).items() if n > 1]
            assert sorted(t.number for t in store.trials(study_id=study.id)) == list(range(1, len(store.trials(study_id=study.id)) + 1))
        assert store.trials(status="running") == [] and store.workers() == []
    return most[0], lines


def test_two_workers_of_one_daemon_measure_side_by_side_on_sqlite(tmp_path: Path) -> None:
    most, lines = _concurrency(tmp_path, one_at_a_time=False)
    assert most == 2 and any("2 workers: cpu0, cpu1" in line for line in lines)
    assert sum(" starts (" in line for line in lines) == 2  # one line per study, whichever worker starts it


def test_one_at_a_time_keeps_one_worker(tmp_path: Path) -> None:
    most, lines = _concurrency(tmp_path, one_at_a_time=True)
    assert most == 1 and any("one worker on cpu0, cpu1" in line for line in lines)
