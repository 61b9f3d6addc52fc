"""``autotune daemon``: tune every registered model until stopped, one worker per GPU.

Each pass of a worker probes the environment (a new fingerprint — a GPU added or removed, a
driver or library upgraded — starts new studies for every model, and is logged), reads the
registered models (a model added from another terminal is picked up within ``poll_s``), frees
the claims of workers that stopped heartbeating (their daemon or host died:
:func:`autotune.service.recovery.recover_dead_workers`), and measures one candidate of the next
model that has work, round-robin. Every store access is its own short transaction, so
``autotune status`` and ``trials`` answer while trials run.

Workers (:mod:`autotune.service.workers`): one per GPU given with ``--gpus`` (default: every
visible GPU; one on a machine without a GPU), each a thread that claims its candidate in the
store before measuring it, so the workers of this daemon and of other daemons sharing a
PostgreSQL store never measure one candidate of a study twice. ``--one-at-a-time`` keeps one
worker, which measures one candidate at a time on all the daemon's GPUs.

One daemon per SQLite store; on a server store, one per host, or per host and ``--gpus`` set
(and one worker per GPU in the whole fleet) (:class:`autotune.service.lock.TunerLock`). On
start, trials a dead tuner of this host left ``running`` are marked and measured again. The
first SIGTERM or SIGINT finishes the current trials and exits 0; a second kills the trial
workers and exits at once (128 + signal). Logs: one timestamped line per event on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from autotune import environment as environments
from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.errors import StoreError
from autotune.search.results import summary
from autotune.search.study import Measure, SearchSettings, Step, StudySearch, format_value
from autotune.service.interrupt import GracefulStop, StopNow
from autotune.service.lock import HEARTBEAT_S, STALE_AFTER_S, TunerBusyError, TunerLock
from autotune.service.recovery import recover_dead_workers, recover_interrupted
from autotune.service.workers import DeviceGate, Slot, StoreClaims, cpu_shares, parse_gpus, worker_environ
from autotune.store import DeviceTaken, ModelRecord, Store, TrialRecord, WorkerRecord


def log_line(message: str) -> None:
    """One timestamped line on stderr, written at once (safe from a signal handler)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{stamp} autotune-daemon[{os.getpid()}] {message}\n"
    try:
        os.write(sys.stderr.fileno(), line.encode())
    except (AttributeError, OSError, ValueError):  # no real file behind stderr (tests capture it)
        sys.stderr.write(line)
        sys.stderr.flush()


@dataclass(frozen=True)
class DaemonOptions:
    """``poll_s``: how often an idle daemon looks for work. ``once``: exit when no study has work."""

    poll_s: float = 5.0
    once: bool = False
    settings: SearchSettings = field(default_factory=SearchSettings)
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S
    #: Where to write a model's HTML report each time one of its studies finishes (``None``: nowhere).
    report_dir: str | None = None
    #: ``--gpus``: the GPUs to run a worker on (``None``: every visible one; see :func:`parse_gpus`).
    gpus: str | None = None
    #: ``--one-at-a-time``: one worker, one candidate at a time, on all the daemon's GPUs.
    one_at_a_time: bool = False


class _Worker:
    """One worker of the daemon: its slot, its row and claims in the store, its searches."""

    def __init__(self, slot: Slot, store: Store, row_id: int, environ: dict[str, str] | None) -> None:
        self.slot = slot
        self.store = store
        self.claims = StoreClaims(store, row_id)
        self.environ = environ
        self.searches: dict[tuple[int, str, int], StudySearch] = {}
        self.activity = "starting"
        self.child_pid: int | None = None
        self.environment_id: int | None = None

    @property
    def row_id(self) -> int:
        return self.claims.worker_id

    @property
    def name(self) -> str:
        return self.slot.name


class Daemon:
    """The tuning service over the store at ``url``. :meth:`run` returns the exit status."""

    def __init__(
        self,
        url: str | None,
        options: DaemonOptions | None = None,
        *,
        probe: Callable[[], Environment] = environments.probe,
        measure: Measure | None = None,
        log: Callable[[str], None] = log_line,
    ) -> None:
        self.url = url
        self.options = options or DaemonOptions()
        self.probe = probe
        self.measure = measure
        self.log = log
        self.fingerprint: str | None = None
        self._models: dict[int, str] = {}
        self._last_model: int | None = None
        self._idle_logged = False
        self._passes = 0
        self._mutex = threading.RLock()
        self._building = threading.Lock()
        self._gate = DeviceGate()
        self._slots: tuple[Slot, ...] = ()
        self._owns_host = True
        self._failure: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._probed: Environment | None = None
        self._started: set[int] = set()
        self._exiting = False

    def run(self) -> int:
        store = Store.open(self.url)
        try:
            return self._run(store)
        finally:
            store.close()

    def _run(self, store: Store) -> int:
        environment = self._probed = self.probe()  # the first pass uses it
        slots = parse_gpus(self.options.gpus, environment)  # InputError (exit 2) before anything is taken
        self._slots = slots
        self._owns_host = all(any(s.index == g.index for s in slots) for g in environment.gpus)
        scope = ",".join(s.name for s in slots) if self.options.gpus else ""
        lock = TunerLock(store, "daemon", stale_after_s=self.options.stale_after_s, heartbeat_s=self.options.heartbeat_s, scope=scope)
        previous = lock.acquire()  # TunerBusyError (exit 2) names the holder
        try:
            workers = self._register(store, lock, slots)
        except BaseException:
            lock.release("could not start its workers")
            raise
        stop = GracefulStop(self.log).install()
        one = self.options.one_at_a_time or len(workers) == 1
        self.log(
            f"started on {lock.hostname} (pid {lock.pid}), database {store.location}, poll every {self.options.poll_s:g} s, "
            + (
                f"one worker on {', '.join(s.name for s in slots)}"
                if one
                else f"{len(workers)} workers: {', '.join(w.name for w in workers)}"
            )
            + (", until no study has work (--once)" if self.options.once else "")
        )
        if previous is not None:
            self.log(f"took over the lock of a tuner that is gone: {previous.describe()}")
        if not one:
            lock.activity = f"daemon: {len(workers)} workers ({', '.join(w.name for w in workers)})"
        lock.on_beat = lambda beat_store: self._beat(beat_store, lock, workers)
        lock.start_heartbeat()
        self.fingerprint = store.last_fingerprint(lock.hostname)
        ending = "stopped"
        try:
            for trial in recover_interrupted(store, lock.hostname, previous.worker_pids if previous else ()):
                self._log_left_running(trial)
            if one:
                self._loop(workers[0], lock, stop)
            else:
                self._run_threads(workers, lock, stop)
            if self._failure is not None:
                raise self._failure
        except StopNow as now:
            for thread in self._threads:  # each marks its own cut-short trial (its worker process is killed)
                thread.join(30)
            for trial in recover_interrupted(store, lock.hostname):
                self.log(f"trial {trial.number} of study {trial.study_id} cut short; it will be measured again")
            ending = f"stopped at once by {now}"
            self.log(f"stopped at once ({now})")
            return 128 + now.signum
        except BaseException as exc:
            ending = f"failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            stop.restore()
            try:
                lock.release(ending)
                for worker in workers:
                    store.remove_worker(worker.row_id, lock.pid)
            except StoreError as exc:
                self.log(f"could not release the lock ({exc}); the next daemon takes it over")
        self.log("stopped" + (f" after {signal.Signals(stop.signum).name}" if stop.signum else ""))
        return 0

    def _register(self, store: Store, lock: TunerLock, slots: tuple[Slot, ...]) -> list[_Worker]:
        """A row per worker (dead workers' rows, anywhere, are recovered first); TunerBusyError if a GPU has a live one."""
        for dead, trials in recover_dead_workers(store, self.options.stale_after_s, lock.hostname):
            self._log_recovered(dead, trials)
        one = self.options.one_at_a_time or len(slots) == 1
        shares = cpu_shares(1 if one else len(slots))
        workers: list[_Worker] = []
        try:
            for n, slot in enumerate(slots):
                try:
                    row = store.add_worker(lock.hostname, slot.name, lock.pid)
                except DeviceTaken:
                    holder = next((w for w in store.workers() if w.hostname == lock.hostname and w.gpu == slot.name), None)
                    who = (
                        f"pid {holder.pid}, heartbeat at {holder.heartbeat_at.isoformat(timespec='seconds')}Z"
                        if holder
                        else "another daemon"
                    )
                    raise TunerBusyError(
                        f"{slot.name} of {lock.hostname} already has a worker in {store.location} ({who}); give this daemon other --gpus"
                    ) from None
                if one and n > 0:  # --one-at-a-time: the first worker measures; the other rows keep its GPUs its own
                    worker = _Worker(slot, store, row.id, None)
                    worker.activity = f"one at a time: the worker on {slots[0].name} measures on all this daemon's GPUs"
                    workers.append(worker)
                    continue
                if one:
                    environ = worker_environ(None, shares[0], slots) if self.options.gpus else None
                else:
                    environ = worker_environ(slot, shares[n])
                workers.append(_Worker(slot, store, row.id, environ))
        except BaseException:
            for worker in workers:
                store.remove_worker(worker.row_id, lock.pid)
            raise
        return workers

    def _beat(self, store: Store, lock: TunerLock, workers: list[_Worker]) -> None:
        """From the heartbeat thread: every worker's row, with what it does."""
        for worker in workers:
            if not store.beat_worker(worker.row_id, worker.activity, worker.child_pid):
                self.log(f"worker {worker.name}: its row was recovered by another daemon (no heartbeat for too long); registering again")
                try:
                    worker.claims.worker_id = store.add_worker(lock.hostname, worker.slot.name, lock.pid).id
                except StoreError as exc:
                    self.log(f"worker {worker.name}: cannot register again ({exc})")

    # -- the workers' loops -----------------------------------------------------------------------

    def _loop(self, worker: _Worker, lock: TunerLock, stop: GracefulStop) -> None:
        """Passes of one worker until a stop is asked (or, with ``once``, until every study is finished)."""
        store = worker.store
        while not stop.requested:
            try:
                done = self._pass(worker, store, lock, stop)
            except StoreError as exc:  # the database went away for a moment (a PostgreSQL restart): wait, retry
                self.log(f"{exc}; trying again in {self.options.poll_s:g} s")
                stop.wait(self.options.poll_s)
                continue
            if done == "measured":
                continue
            if done == "idle" and self.options.once:
                with self._mutex:
                    if not self._exiting:  # one line, whichever worker sees it first
                        self.log("no study has work left; exiting (--once)")
                    self._exiting = True
                break
            stop.wait(self.options.poll_s)

    def _run_threads(self, workers: list[_Worker], lock: TunerLock, stop: GracefulStop) -> None:
        threads = []
        for worker in workers:
            worker.store = Store(lock.store.engine, lock.store.url)  # its own sessions, the same engine
            worker.claims.store = worker.store
            thread = threading.Thread(target=self._thread, args=(worker, lock, stop), name=f"autotune-worker-{worker.name}", daemon=True)
            threads.append(thread)
            thread.start()
        self._threads = threads
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # wakes for signals: the second one raises StopNow here

    def _thread(self, worker: _Worker, lock: TunerLock, stop: GracefulStop) -> None:
        try:
            self._loop(worker, lock, stop)
        except StopNow:  # the second signal: this worker's cut-short trial is marked; the main thread stops
            return
        except BaseException as exc:
            self.log(f"worker {worker.name} failed: {type(exc).__name__}: {exc}; stopping after the current trials")
            with self._mutex:
                self._failure = self._failure or exc
            stop.request()

    # -- one pass of one worker: at most one candidate ---------------------------------------------

    def _pass(self, worker: _Worker, store: Store, lock: TunerLock, stop: GracefulStop) -> str:
        """Measure one candidate of the next model with work: ``measured``; ``waiting`` when every
        candidate left is claimed by other workers; ``idle`` when every study is finished."""
        with self._mutex:
            environment, self._probed = self._probed or self.probe(), None
            if self.fingerprint is not None and environment.fingerprint != self.fingerprint:
                self.log(
                    f"environment changed: fingerprint {self.fingerprint} -> {environment.fingerprint} ({environment.summary()}); "
                    "new studies start for every model"
                )
            if not self._passes:
                self.log(f"environment {environment.fingerprint}: {environment.summary()}")
            self._passes += 1
            self.fingerprint = environment.fingerprint
        environment_id = store.record_environment(environment)
        if environment_id != worker.environment_id:
            worker.searches.clear()
            worker.environment_id = environment_id
        for dead, trials in recover_dead_workers(store, self.options.stale_after_s, lock.hostname):
            self._log_recovered(dead, trials)
        models = store.models()
        with self._mutex:
            self._note_models(models)
        work = []
        for model in models:
            search = self._search(worker, model, environment, environment_id)
            if search.study.state != "finished":
                work.append((model, search))
        if not work:
            with self._mutex:
                if not self._idle_logged:
                    self.log(f"idle: {len(models)} model{'s' * (len(models) != 1)}, every study finished; waiting for models")
                    self._idle_logged = True
            worker.activity = f"idle, {len(models)} models, every study finished"
            lock.beat(f"daemon: idle, {len(models)} models, every study finished")
            return "idle"
        with self._mutex:
            self._idle_logged = False
            order = self._order(work)
        for model, search in order:
            step = self._step(worker, model, search, environment, lock, stop)
            if step is not None:
                return "measured"
        worker.activity = "waiting: every candidate left is being measured by other workers"
        return "waiting"

    def _step(
        self, worker: _Worker, model: ModelRecord, search: StudySearch, environment: Environment, lock: TunerLock, stop: GracefulStop
    ) -> Step | None:
        """One step of ``search`` by ``worker``: ``None`` if it had nothing for this worker to take."""
        one = len(self._slots) == 1 or self.options.one_at_a_time
        state = search.study.state
        measured = search.progress().measured
        label = f"daemon: tuning {model.name} (study {search.study.id}), candidate {measured + 1}"
        prefix = "" if one else f"[{worker.name}] "
        entered: list[bool] = []
        cut: list[tuple[Candidate, int]] = []

        def started(candidate: Candidate, origin: str, baseline: str | None, ladder: tuple[int, ...]) -> None:
            nonlocal label
            with self._mutex:
                first = state == "pending" and search.study.id not in self._started
                self._started.add(search.study.id)
            if first:
                self.log(f"study {search.study.id} of {model.name} starts ({model.workload.describe()}); space: {search.space.describe()}")
            sizes = ",".join(map(str, ladder))
            label = f"{label}: {candidate.label()}{f' [{baseline}]' if baseline else ''}, batch {sizes}"
            cut.append((candidate, max((t.number for t in worker.store.trials(study_id=search.study.id)), default=0)))
            everything = candidate.placement == "multi-gpu"
            if not one:
                self._gate.enter(everything)
                entered.append(everything)
                search.worker_environ = worker_environ(None, cpu_shares(1)[0], self._slots) if everything else worker.environ
            worker.activity = f"measuring {model.name} (study {search.study.id}): {candidate.label()}, batch {sizes}"
            if one:
                lock.beat(label)

        def spawned(process: object) -> None:
            pid = getattr(process, "pid", process)
            worker.child_pid = int(pid) if isinstance(pid, int) else None
            if one:
                stop.on_spawn(process)
                lock.beat(f"{label} (worker pid {stop.worker_pid})")
            elif worker.child_pid is not None:
                stop.worker_pids[worker.name] = worker.child_pid

        search.on_start = started
        search.on_spawn = spawned
        search.worker_environ = worker.environ
        try:
            step = search.step()
        finally:
            stop.worker_pid = None
            stop.worker_pids.pop(worker.name, None)
            worker.child_pid = None
            if entered:
                self._gate.leave(entered[0])
        if stop.now and cut:  # the second signal killed this trial: it is cut short, not measured
            search._mark_interrupted(*cut[0])
            raise StopNow(stop.signum or signal.SIGTERM)
        if step.waiting:
            return None
        worker.activity = f"between trials of {model.name}"
        self._last_model = model.id
        self._report(model, search, step, prefix)
        if step.finished and self.options.report_dir:
            from autotune.report import refresh_report

            self.log(refresh_report(worker.store, self.options.report_dir, model.name, current=environment))
        return step

    def _search(self, worker: _Worker, model: ModelRecord, environment: Environment, environment_id: int) -> StudySearch:
        key = (model.id, model.workload.key(), environment_id)
        search = worker.searches.get(key)
        if search is None:
            # One at a time: the space and the forecasts that order it import transformers lazily,
            # and its lazy module is not safe to first touch from two threads at once (seen here:
            # "module 'transformers' has no attribute 'AutoModelForCausalLM'" in one of two workers).
            with self._building:
                search = StudySearch(worker.store, model, environment, environment_id, self.options.settings, measure=self.measure)
                search.claims = worker.claims
                if not self._owns_host:  # a multi-GPU candidate needs every GPU of the host: leave it to a daemon that has them
                    worker.claims.never |= {c.key() for c in search.space.candidates if c.placement == "multi-gpu"}
                search.reopen()  # a finished study goes on if this daemon's settings allow more (a larger --trials, say)
                search.next_candidate(search.progress())  # the forecasts it orders by touch transformers too
            worker.searches[key] = search
        else:
            search.study = worker.store.get_study(search.study.id)
        return search

    def _order(self, work: list[tuple[ModelRecord, StudySearch]]) -> list[tuple[ModelRecord, StudySearch]]:
        """Round-robin: the models after the one served last first, then the others."""
        work = sorted(work, key=lambda item: item[0].id)
        if self._last_model is None:
            return work
        after = [item for item in work if item[0].id > self._last_model]
        return after + [item for item in work if item[0].id <= self._last_model]

    def _log_recovered(self, dead: WorkerRecord, trials: list[TrialRecord]) -> None:
        self.log(f"worker {dead.gpu} of {dead.hostname} (daemon pid {dead.pid}) stopped heartbeating: its claim is freed")
        for trial in trials:
            self._log_left_running(trial)

    def _log_left_running(self, trial: TrialRecord) -> None:
        self.log(
            f"trial {trial.number} of study {trial.study_id} ({trial.candidate.label()}, batch {trial.batch_size}) "
            "was left running by a tuner that died: marked crash, its candidate will be measured again"
        )

    def _note_models(self, models: list[ModelRecord]) -> None:
        current = {m.id: m.name for m in models}
        for model in models:
            if model.id not in self._models:
                self.log(f"model {model.name}: {model.workload.describe()}")
        for model_id, name in self._models.items():
            if model_id not in current:
                self.log(f"model {name} was removed; its study stops")
        self._models = current

    def _report(self, model: ModelRecord, search: StudySearch, step: Step, prefix: str = "") -> None:
        if step.result is not None or step.error is not None:
            self.log(f"{prefix}{model.name} candidate {step.progress.measured}: {step.describe(search.metric)}")
        if step.finished:
            best = summary(step.progress.best, search.workload)
            found = (
                f"best {best['label']} at batch {best['batch_size']}: {format_value(best['metric'], best['value'])}"
                if best
                else "no feasible candidate"
            )
            self.log(f"study {step.study.id} of {model.name} finished: {step.study.stop_reason}; {found}")
