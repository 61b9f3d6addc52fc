"""``autotune daemon``: tune every registered model, one trial at a time, until stopped.

Each pass probes the environment (a new fingerprint — a GPU added or removed, a driver or library
upgraded — starts new studies for every model, and is logged), reads the registered models (a
model added from another terminal is picked up within ``poll_s``), and measures one candidate of
the next model that has work, round-robin. Every store access is its own short transaction, so
``autotune status`` and ``trials`` answer while a trial runs.

One tuner per machine and database (:class:`autotune.search.lock.TunerLock`); on start, trials a
dead tuner left ``running`` are marked and measured again. The first SIGTERM or SIGINT finishes
the current trial and exits 0; a second kills the worker and exits at once (128 + signal).
Logs: one timestamped line per event on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from autotune import environment as environments
from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.errors import StoreError
from autotune.search.interrupt import GracefulStop, StopNow
from autotune.search.lock import HEARTBEAT_S, STALE_AFTER_S, TunerLock
from autotune.search.results import summary
from autotune.search.study import Measure, SearchSettings, Step, StudySearch, format_value, recover_interrupted
from autotune.store import ModelRecord, Store
from autotune.store.schema import EnvironmentRow


def log_line(message: str) -> None:
    """One timestamped line on stderr, written at once (safe from a signal handler)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{stamp} autotune-daemon[{os.getpid()}] {message}\n"
    try:
        os.write(sys.stderr.fileno(), line.encode())
    except (AttributeError, OSError, ValueError):  # no real file behind stderr (tests capture it)
        sys.stderr.write(line)
        sys.stderr.flush()


def last_fingerprint(store: Store, hostname: str) -> str | None:
    """The environment this host was last seen in, so a restart after an upgrade says what changed."""
    from sqlalchemy import select

    with store.session() as s:
        return s.scalar(
            select(EnvironmentRow.fingerprint)
            .where(EnvironmentRow.hostname == hostname)
            .order_by(EnvironmentRow.last_seen.desc(), EnvironmentRow.id.desc())
            .limit(1)
        )


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
        self._searches: dict[tuple[int, str, int], StudySearch] = {}
        self._models: dict[int, str] = {}
        self._last_model: int | None = None
        self._idle_logged = False
        self._passes = 0

    def run(self) -> int:
        store = Store.open(self.url)
        try:
            return self._run(store)
        finally:
            store.close()

    def _run(self, store: Store) -> int:
        lock = TunerLock(store, "daemon", stale_after_s=self.options.stale_after_s, heartbeat_s=self.options.heartbeat_s)
        previous = lock.acquire()  # TunerBusyError (exit 2) names the holder
        stop = GracefulStop(self.log).install()
        self.log(
            f"started on {lock.hostname} (pid {lock.pid}), database {store.location}, poll every {self.options.poll_s:g} s"
            + (", until no study has work (--once)" if self.options.once else "")
        )
        if previous is not None:
            self.log(f"took over the lock of a tuner that is gone: {previous.describe()}")
        lock.start_heartbeat()
        self.fingerprint = last_fingerprint(store, lock.hostname)
        ending = "stopped"
        try:
            for trial in recover_interrupted(store, lock.hostname, previous.worker_pids if previous else ()):
                self.log(
                    f"trial {trial.number} of study {trial.study_id} ({trial.candidate.label()}, batch {trial.batch_size}) "
                    "was left running by a tuner that died: marked crash, its candidate will be measured again"
                )
            while not stop.requested:
                try:
                    busy = self._pass(store, lock, stop)
                except StoreError as exc:  # the database went away for a moment (a PostgreSQL restart): wait, retry
                    self.log(f"{exc}; trying again in {self.options.poll_s:g} s")
                    stop.wait(self.options.poll_s)
                    continue
                if not busy:
                    if self.options.once:
                        self.log("no study has work left; exiting (--once)")
                        break
                    stop.wait(self.options.poll_s)
        except StopNow as now:
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
            except StoreError as exc:
                self.log(f"could not release the lock ({exc}); the next daemon takes it over")
        self.log("stopped" + (f" after {signal.Signals(stop.signum).name}" if stop.signum else ""))
        return 0

    # -- one pass: at most one trial ------------------------------------------------------------

    def _pass(self, store: Store, lock: TunerLock, stop: GracefulStop) -> bool:
        """Measure one candidate of the next model with work; ``False`` if there was none."""
        environment = self.probe()
        if self.fingerprint is not None and environment.fingerprint != self.fingerprint:
            self.log(
                f"environment changed: fingerprint {self.fingerprint} -> {environment.fingerprint} ({environment.summary()}); "
                "new studies start for every model"
            )
            self._searches.clear()
        if not self._passes:
            self.log(f"environment {environment.fingerprint}: {environment.summary()}")
        self._passes += 1
        environment_id = store.record_environment(environment)
        self.fingerprint = environment.fingerprint
        models = store.models()
        self._note_models(models)
        work = []
        for model in models:
            search = self._search(store, model, environment, environment_id)
            if search.study.state != "finished":
                work.append((model, search))
        if not work:
            if not self._idle_logged:
                self.log(f"idle: {len(models)} model{'s' * (len(models) != 1)}, every study finished; waiting for models")
                self._idle_logged = True
            lock.beat(f"daemon: idle, {len(models)} models, every study finished")
            return False
        self._idle_logged = False
        model, search = self._next(work)
        self._last_model = model.id
        if search.study.state == "pending":
            self.log(f"study {search.study.id} of {model.name} starts ({model.workload.describe()}); space: {search.space.describe()}")
        measured = search.progress().measured
        label = f"daemon: tuning {model.name} (study {search.study.id}), candidate {measured + 1}"
        lock.beat(label)

        def started(candidate: Candidate, origin: str, baseline: str | None, ladder: tuple[int, ...]) -> None:
            nonlocal label
            sizes = ",".join(map(str, ladder))
            label = f"{label}: {candidate.label()}{f' [{baseline}]' if baseline else ''}, batch {sizes}"
            lock.beat(label)

        def spawned(process: object) -> None:
            stop.on_spawn(process)
            lock.beat(f"{label} (worker pid {stop.worker_pid})")

        search.on_start = started
        search.on_spawn = spawned
        try:
            step = search.step()
        finally:
            stop.worker_pid = None
        self._report(model, search, step)
        if step.finished and self.options.report_dir:
            from autotune.report import refresh_report

            self.log(refresh_report(store, self.options.report_dir, model.name, current=environment))
        return True

    def _search(self, store: Store, model: ModelRecord, environment: Environment, environment_id: int) -> StudySearch:
        key = (model.id, model.workload.key(), environment_id)
        search = self._searches.get(key)
        if search is None:
            search = StudySearch(store, model, environment, environment_id, self.options.settings, measure=self.measure)
            search.reopen()  # a finished study goes on if this daemon's settings allow more (a larger --trials, say)
            self._searches[key] = search
        else:
            search.study = store.get_study(search.study.id)
        return search

    def _next(self, work: list[tuple[ModelRecord, StudySearch]]) -> tuple[ModelRecord, StudySearch]:
        """Round-robin: the first model after the one served last."""
        work = sorted(work, key=lambda item: item[0].id)
        if self._last_model is not None:
            for item in work:
                if item[0].id > self._last_model:
                    return item
        return work[0]

    def _note_models(self, models: list[ModelRecord]) -> None:
        current = {m.id: m.name for m in models}
        for model in models:
            if model.id not in self._models:
                self.log(f"model {model.name}: {model.workload.describe()}")
        for model_id, name in self._models.items():
            if model_id not in current:
                self.log(f"model {name} was removed; its study stops")
        self._models = current

    def _report(self, model: ModelRecord, search: StudySearch, step: Step) -> None:
        if step.result is not None or step.error is not None:
            self.log(f"{model.name} candidate {step.progress.measured}: {step.describe(search.metric)}")
        if step.finished:
            best = summary(step.progress.best, search.workload)
            found = (
                f"best {best['label']} at batch {best['batch_size']}: {format_value(best['metric'], best['value'])}"
                if best
                else "no feasible candidate"
            )
            self.log(f"study {step.study.id} of {model.name} finished: {step.study.stop_reason}; {found}")
