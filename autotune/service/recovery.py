"""Recovery: trials a dead tuner left ``running``, and the claims of workers that stopped beating.

Two cases, both through the store:

- :func:`recover_interrupted` — on start (holding the tuning lock), a tuner marks the trials a
  dead tuner *of this host* left running (and kills a worker process it left behind).
- :func:`recover_dead_workers` — every pass, a daemon looks at every worker row of the database:
  a worker whose heartbeat is older than ``stale_after_s`` (or, on this host, whose daemon process
  is gone) is dead; the running trials of the candidate it claimed are marked interrupted, its row
  is deleted, and so its claim is free: the candidate is measured again by whoever takes it next.

A recovered trial keeps its row, with status ``crash``, the reason, and
``details["interrupted"]``; its candidate counts as not measured.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from autotune.search.results import INTERRUPTED, INTERRUPTED_REASON
from autotune.service.interrupt import kill_worker
from autotune.service.lock import holders, pid_alive
from autotune.store import Store, TrialRecord, WorkerRecord, utcnow

#: A trial still ``running`` after this long is abandoned, wherever it ran (no worker takes so long).
STALE_TRIAL_S = 6 * 3600
DEAD_WORKER_REASON = "the worker measuring it stopped heartbeating (its daemon or host died); the candidate is measured again"


def recover_interrupted(store: Store, hostname: str | None = None, worker_pids: tuple[int, ...] = ()) -> list[TrialRecord]:
    """Mark trials left ``running`` by a dead tuner of this host as cut short, and return them.

    Call it holding the tuning lock (so no live tuner of this host is measuring). In a SQLite
    store every running trial is this machine's; in a shared (server) store, a trial is this
    host's when its study's environment was recorded here and no live worker of another daemon
    claims its candidate, and any trial running for longer than ``STALE_TRIAL_S`` is taken as
    abandoned wherever it ran. A worker process it left behind (the rows' ``worker_pid``, or
    ``worker_pids`` the dead tuner reported) is killed.
    """
    hostname = hostname or socket.gethostname()
    for pid in worker_pids:
        if pid_alive(pid) and _is_worker(pid):
            kill_worker(pid)
    running = store.trials(status="running")
    if not running:
        return []
    hosts: dict[int, str] = {}
    for study in store.studies():
        if study.id in {t.study_id for t in running}:
            hosts[study.id] = store.environment(study.environment_id).hostname
    pids = store.running_worker_pids()
    local = store.sqlite_path is not None
    mine = os.getpid()  # this process's own workers are stopping: their trials are cut short too
    workers = [w for w in store.workers() if w.candidate_key]
    claimed = {(w.study_id, w.candidate_key) for w in workers if w.pid != mine and worker_alive(w, hostname)}
    own = {(w.study_id, w.candidate_key) for w in workers if w.pid == mine}
    # Another live tuner of this host (a daemon given other --gpus, a `tune`) may be measuring the
    # running trials no worker claims: leave those to it.
    shared_host = not local and any(
        h.hostname == hostname and h.pid not in (0, mine) and h.alive(hostname=hostname) for h in holders(store)
    )
    abandoned = utcnow() - timedelta(seconds=STALE_TRIAL_S)
    recovered = []
    for trial in running:
        if trial.started_at > abandoned:
            if not local and hosts.get(trial.study_id) != hostname:
                continue
            if (trial.study_id, trial.candidate.key()) in claimed:  # a live worker of another daemon measures it
                continue
            if shared_host and (trial.study_id, trial.candidate.key()) not in own:
                continue
        pid = pids.get(trial.id)
        if isinstance(pid, int) and pid_alive(pid) and _is_worker(pid):
            kill_worker(pid)
        recovered.append(_mark(store, trial, INTERRUPTED_REASON))
    return recovered


def recover_dead_workers(store: Store, stale_after_s: float, hostname: str | None = None) -> list[tuple[WorkerRecord, list[TrialRecord]]]:
    """Free the claims of dead workers, anywhere, and mark their running trials; return what was recovered.

    A worker is dead when its heartbeat is older than ``stale_after_s``, or when it belongs to
    this host and its daemon's process is gone. Two daemons recovering the same worker at once
    is harmless: only the one that deletes its row marks the trials.
    """
    hostname = hostname or socket.gethostname()
    out = []
    for worker in store.workers():
        if worker_alive(worker, hostname, stale_after_s):
            continue
        if not store.remove_worker(worker.id, worker.pid):
            continue
        trials = []
        if worker.study_id is not None and worker.candidate_key:
            trials = [t for t in store.trials(study_id=worker.study_id, status="running") if t.candidate.key() == worker.candidate_key]
        if worker.hostname == hostname:  # a trial worker it left behind on this host goes too
            pids = store.running_worker_pids()
            for pid in {worker.worker_pid, *(pids.get(t.id) for t in trials)}:
                if isinstance(pid, int) and pid_alive(pid) and _is_worker(pid):
                    kill_worker(pid)
        trials = [_mark(store, trial, DEAD_WORKER_REASON, worker) for trial in trials]
        out.append((worker, trials))
    return out


def worker_alive(worker: WorkerRecord, hostname: str | None = None, stale_after_s: float | None = None) -> bool:
    """Whether ``worker`` runs: its heartbeat is fresh and, on this host, its daemon's process exists."""
    from autotune.service.lock import STALE_AFTER_S

    hostname = hostname or socket.gethostname()
    age = (utcnow() - worker.heartbeat_at).total_seconds()
    if age > (STALE_AFTER_S if stale_after_s is None else stale_after_s):
        return False
    if worker.hostname == hostname:
        return pid_alive(worker.pid)
    return True


def _mark(store: Store, trial: TrialRecord, reason: str, worker: WorkerRecord | None = None) -> TrialRecord:
    details = {**trial.details, INTERRUPTED: True, "interrupted_at": utcnow().isoformat(timespec="seconds") + "Z"}
    if worker is not None:
        details["worker"] = {"hostname": worker.hostname, "gpu": worker.gpu, "pid": worker.pid}
    return store.finish_trial(trial.id, "crash", reason=reason, details=details, feasible=False)


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"autotune.worker" in handle.read()
    except OSError:
        return False
