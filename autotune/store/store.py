"""The :class:`Store`: one place that reads and writes autotune's tables."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from autotune import prompts as quality_text
from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.errors import AutotuneError, InputError, ModelNotFoundError, NotAnAutotuneDatabaseError, StoreError
from autotune.registry import ResolvedModel, gguf_in, looks_like_path
from autotune.store import engine as engines
from autotune.store.migrate import ensure_schema
from autotune.store.records import METRICS, LockRecord, ModelRecord, StudyRecord, TrialRecord, WorkerRecord
from autotune.store.schema import (
    DaemonRow,
    EnvironmentRow,
    ModelRow,
    RecommendationRow,
    StudyRow,
    TrialRow,
    WorkerEnvRow,
    WorkerRow,
    utcnow,
)
from autotune.worker_env import WorkerEnvironment
from autotune.workload import MemoryLimit, Workload

#: The workload's generation options (``autotune add --prompt-lookup``, ``--assistant``), kept in
#: the model's ``generation`` column and in the workload's ``extra`` (so in its key) when set.
GENERATION_KEYS = ("prompt_lookup", "assistant")
_WORKLOAD_COLUMNS = ("task", "prompt_tokens", "new_tokens", "padding_share", "objective", "device", "min_quality", "max_batch")


#: A daemon's workers are threads of one process: they number their trials one at a time (across
#: processes, a server database's row lock does it, and SQLite has one daemon).
_NUMBERING = threading.Lock()


class Conflict(StoreError):
    """A unique key refused the write: another process wrote the same row first."""


class DeviceTaken(Conflict):
    """Another worker row already names this host and GPU."""


class Store:
    """autotune's database. Thread-compatible, not thread-safe: one per thread or process."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None) -> Store:
        """Open (and on first use create or upgrade) the store at ``url``.

        ``url`` defaults to ``AUTOTUNE_DB``, then to one SQLite file in the user's data directory.
        """
        resolved = engines.resolve_url(url)
        engine = engines.create(resolved)
        where = engines.describe(resolved)
        try:
            ensure_schema(engine, where)
        except AutotuneError:
            engine.dispose()
            raise
        except DBAPIError as exc:
            engine.dispose()
            message = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
            if "file is not a database" in message:
                raise NotAnAutotuneDatabaseError(
                    f"{where} is not an autotune database ({message}); choose another with --db or AUTOTUNE_DB"
                ) from None
            raise StoreError(f"cannot open the database {where}: {message}") from None
        return cls(engine, resolved)

    @property
    def location(self) -> str:
        """The SQLite file's path, or the URL without its password."""
        return engines.describe(self.url)

    @property
    def sqlite_path(self) -> Path | None:
        return engines.sqlite_path(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A short transaction: commit on success, roll back on error, driver errors as StoreError."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            orig = getattr(exc, "orig", None)
            message = str(orig or exc).splitlines()[0]
            error = Conflict if isinstance(exc, IntegrityError) else StoreError
            raise error(f"database error in {self.location}: {message}") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- environments ---------------------------------------------------------------------------

    def record_environment(self, environment: Environment) -> int:
        """The id of ``environment``'s row, created on first sight."""
        data = environment.to_dict()
        with self.session() as s:
            row = s.scalar(select(EnvironmentRow).where(EnvironmentRow.fingerprint == environment.fingerprint))
            if row is None:
                row = EnvironmentRow(
                    fingerprint=environment.fingerprint,
                    hostname=environment.hostname,
                    summary=environment.summary(),
                    gpus=data["gpus"],
                    versions=environment.versions,
                    driver_version=environment.driver_version,
                    cuda_driver_version=environment.cuda_driver_version,
                    python=environment.python,
                )
                s.add(row)
            else:
                row.last_seen = utcnow()
            s.flush()
            return row.id

    def environment(self, environment_id: int) -> Environment:
        with self.session() as s:
            row = s.get(EnvironmentRow, environment_id)
            if row is None:
                raise StoreError(f"no environment with id {environment_id} in {self.location}")
            return Environment.from_dict(
                {
                    "gpus": row.gpus,
                    "versions": row.versions,
                    "driver_version": row.driver_version,
                    "cuda_driver_version": row.cuda_driver_version,
                    "python": row.python,
                    "hostname": row.hostname,
                }
            )

    def last_fingerprint(self, hostname: str) -> str | None:
        """The fingerprint of the environment ``hostname`` was last seen in (``None``: never seen)."""
        with self.session() as s:
            return s.scalar(
                select(EnvironmentRow.fingerprint)
                .where(EnvironmentRow.hostname == hostname)
                .order_by(EnvironmentRow.last_seen.desc(), EnvironmentRow.id.desc())
                .limit(1)
            )

    def environment_fingerprint(self, environment_id: int) -> str:
        with self.session() as s:
            row = s.get(EnvironmentRow, environment_id)
            return row.fingerprint if row else ""

    # -- models ---------------------------------------------------------------------------------

    def upsert_model(
        self,
        resolved: ResolvedModel,
        capabilities: dict[str, Any],
        workload: Workload,
        quality_prompts: tuple[str, ...] | None = None,
    ) -> tuple[ModelRecord, bool, dict[str, tuple[Any, Any]]]:
        """Register a model or update its workload.

        ``quality_prompts`` are the user's prompts (``None``: the built-in ones); the workload's
        ``extra["quality_prompts"]`` must be their digest, as :func:`autotune.prompts.keyed` makes it.
        Returns the record, whether it was new, and each workload field that changed (old, new).
        """
        with self.session() as s:
            row = s.scalar(select(ModelRow).where(ModelRow.name == resolved.name))
            created = row is None or row.removed_at is not None
            old = None if row is None or row.removed_at is not None else _workload(row)
            if row is None:
                row = ModelRow(name=resolved.name)
                s.add(row)
            row.source, row.path, row.revision = resolved.source, resolved.path, resolved.revision
            row.model_type, row.config = resolved.model_type, resolved.config
            row.architecture, row.capabilities = capabilities.get("architecture"), capabilities
            row.gguf_file = resolved.gguf_file
            row.quality_prompts = list(quality_prompts) if quality_prompts else None
            row.generation = {k: workload.extra[k] for k in GENERATION_KEYS if workload.extra.get(k)} or None
            for column in _WORKLOAD_COLUMNS:
                setattr(row, column, getattr(workload, column))
            row.max_memory = workload.max_memory.text if workload.max_memory else None
            row.updated_at = utcnow()
            row.removed_at = None
            s.flush()
            changes = {} if old is None else {k: (v, workload.to_dict()[k]) for k, v in old.to_dict().items() if workload.to_dict()[k] != v}
            return _model(row), created, changes

    def get_model(self, name: str) -> ModelRecord:
        """The registered model called ``name`` (a Hub id, or a directory as given or absolute)."""
        with self.session() as s:
            row = self._model_row(s, name)
            return _model(row)

    def _model_row(self, s: Session, name: str) -> ModelRow:
        names = [name]
        if looks_like_path(name):
            path = Path(name).expanduser().resolve()
            names.append(str(path))
            gguf = gguf_in(path)  # a directory holding one GGUF file is registered as that file
            if gguf is not None:
                names.append(str(gguf.resolve()))
        row = s.scalar(select(ModelRow).where(ModelRow.name.in_(names), ModelRow.removed_at.is_(None)))
        if row is None:
            known = s.scalars(select(ModelRow.name).where(ModelRow.removed_at.is_(None)).order_by(ModelRow.name)).all()
            hint = f"registered: {', '.join(known)}" if known else "none is registered yet"
            raise ModelNotFoundError(f"model {name} is not registered ({hint}); add it with `autotune add {name}`")
        return row

    def models(self) -> list[ModelRecord]:
        with self.session() as s:
            rows = s.scalars(select(ModelRow).where(ModelRow.removed_at.is_(None)).order_by(ModelRow.name)).all()
            return [_model(r) for r in rows]

    def remove_model(self, name: str, purge: bool = False) -> dict[str, int]:
        """Unregister a model. Its studies and trials stay unless ``purge``; returns what was deleted."""
        with self.session() as s:
            row = self._model_row(s, name)
            study_ids = s.scalars(select(StudyRow.id).where(StudyRow.model_id == row.id)).all()
            trials = s.scalar(select(func.count(TrialRow.id)).where(TrialRow.study_id.in_(study_ids))) or 0
            if not purge:
                row.removed_at = utcnow()
                return {"studies": 0, "trials": 0, "kept_trials": trials}
            s.execute(delete(RecommendationRow).where(RecommendationRow.model_id == row.id))
            s.execute(delete(TrialRow).where(TrialRow.study_id.in_(study_ids)))
            s.execute(delete(StudyRow).where(StudyRow.model_id == row.id))
            s.delete(row)
            return {"studies": len(study_ids), "trials": trials, "kept_trials": 0}

    # -- studies --------------------------------------------------------------------------------

    def study_for(self, model: ModelRecord, environment_id: int, seed: int = 0) -> StudyRecord:
        """The study of ``model``'s current workload in ``environment_id``, created if new."""
        key = model.workload.key()
        with self.session() as s:
            row = s.scalar(
                select(StudyRow).where(
                    StudyRow.model_id == model.id,
                    StudyRow.workload_key == key,
                    StudyRow.environment_id == environment_id,
                )
            )
            if row is None:
                row = StudyRow(
                    model_id=model.id,
                    environment_id=environment_id,
                    workload_key=key,
                    workload=model.workload.to_dict(),
                    state="pending",
                    sampler_seed=seed,
                    rejected=[],
                )
                s.add(row)
                s.flush()
            return _study(row)

    def studies(self, model_id: int | None = None) -> list[StudyRecord]:
        with self.session() as s:
            query = select(StudyRow).order_by(StudyRow.id)
            if model_id is not None:
                query = query.where(StudyRow.model_id == model_id)
            return [_study(r) for r in s.scalars(query).all()]

    def get_study(self, study_id: int) -> StudyRecord:
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                raise StoreError(f"no study with id {study_id} in {self.location}")
            return _study(row)

    def update_study(self, study_id: int, **fields: Any) -> StudyRecord:
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                raise StoreError(f"no study with id {study_id} in {self.location}")
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            s.flush()
            return _study(row)

    # -- trials ---------------------------------------------------------------------------------

    def start_trial(
        self,
        study_id: int,
        candidate: Candidate,
        batch_size: int,
        *,
        origin: str = "search",
        worker_env: str = "default",
        worker_pid: int | None = None,
    ) -> TrialRecord:
        """Record a trial as running before it is measured, so a crash leaves a trace."""
        with _NUMBERING, self.session() as s:
            # Workers of several daemons start trials in one study: on a server database, the study
            # row's lock makes their numbers follow one another (SQLite writes one at a time anyway).
            if self.sqlite_path is None:
                s.execute(select(StudyRow.id).where(StudyRow.id == study_id).with_for_update())
            number = (s.scalar(select(func.max(TrialRow.number)).where(TrialRow.study_id == study_id)) or 0) + 1
            row = TrialRow(
                study_id=study_id,
                number=number,
                origin=origin,
                candidate_key=candidate.key(),
                params=candidate.to_dict(),
                batch_size=batch_size,
                status="running",
                worker_env=worker_env,
                worker_pid=worker_pid,
                effective={},
                details={},
            )
            s.add(row)
            s.flush()
            return _trial(row)

    def set_worker_pid(self, trial_ids: list[int], pid: int) -> None:
        """Note the worker process measuring these (running) trials."""
        with self.session() as s:
            for row in s.scalars(select(TrialRow).where(TrialRow.id.in_(trial_ids))):
                row.worker_pid = pid

    def running_worker_pids(self) -> dict[int, int | None]:
        """The worker process noted for each running trial (trial id -> pid, ``None`` if none was)."""
        with self.session() as s:
            return dict(s.execute(select(TrialRow.id, TrialRow.worker_pid).where(TrialRow.status == "running")).all())

    def set_forecasts(self, forecasts: dict[int, int]) -> None:
        """Note the memory forecast (bytes) of each trial id given."""
        with self.session() as s:
            for row in s.scalars(select(TrialRow).where(TrialRow.id.in_(list(forecasts)))):
                row.forecast_bytes = forecasts[row.id]

    def finish_trial(
        self,
        trial_id: int,
        status: str,
        *,
        reason: str | None = None,
        metrics: dict[str, Any] | None = None,
        effective: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        feasible: bool | None = None,
        objective_value: float | None = None,
    ) -> TrialRecord:
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            if row is None:
                raise StoreError(f"no trial with id {trial_id} in {self.location}")
            row.status, row.reason = status, reason
            for name, value in (metrics or {}).items():
                if name in METRICS:
                    setattr(row, name, value)
            row.effective = effective or {}
            row.details = details or {}
            row.feasible, row.objective_value = feasible, objective_value
            row.finished_at = utcnow()
            s.flush()
            return _trial(row)

    def record_trial(self, study_id: int, candidate: Candidate, batch_size: int, status: str, **fields: Any) -> TrialRecord:
        """Start and finish a trial at once (a rejected candidate, or a result already measured)."""
        origin = fields.pop("origin", "search")
        worker_env = fields.pop("worker_env", "default")
        trial = self.start_trial(study_id, candidate, batch_size, origin=origin, worker_env=worker_env)
        return self.finish_trial(trial.id, status, **fields)

    def trials(self, *, study_id: int | None = None, model_id: int | None = None, status: str | None = None) -> list[TrialRecord]:
        with self.session() as s:
            query = select(TrialRow).order_by(TrialRow.study_id, TrialRow.number)
            if study_id is not None:
                query = query.where(TrialRow.study_id == study_id)
            if model_id is not None:
                query = query.join(StudyRow, StudyRow.id == TrialRow.study_id).where(StudyRow.model_id == model_id)
            if status is not None:
                query = query.where(TrialRow.status == status)
            return [_trial(r) for r in s.scalars(query).all()]

    def get_trial(self, trial_id: int) -> TrialRecord:
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            if row is None:
                raise StoreError(f"no trial with id {trial_id} in {self.location}")
            return _trial(row)

    # -- recommendations ------------------------------------------------------------------------

    def add_recommendation(
        self,
        *,
        model_id: int,
        environment_id: int,
        objective: str,
        code: str,
        study_id: int | None = None,
        trial_id: int | None = None,
        constraints: dict[str, Any] | None = None,
        explanation: dict[str, Any] | None = None,
    ) -> int:
        with self.session() as s:
            row = RecommendationRow(
                model_id=model_id,
                environment_id=environment_id,
                objective=objective,
                code=code,
                study_id=study_id,
                trial_id=trial_id,
                constraints=constraints or {},
                explanation=explanation or {},
            )
            s.add(row)
            s.flush()
            return row.id

    # -- tuning locks (autotune_daemon) --------------------------------------------------------

    def locks(self) -> list[LockRecord]:
        """Every tuning lock row, by host name."""
        with self.session() as s:
            return [_lock(r) for r in s.scalars(select(DaemonRow).order_by(DaemonRow.hostname, DaemonRow.id)).all()]

    def lock(self, lock_id: int) -> LockRecord | None:
        with self.session() as s:
            row = s.get(DaemonRow, lock_id)
            return _lock(row) if row is not None else None

    def insert_lock(self, lock_id: int, hostname: str, pid: int, activity: str) -> bool:
        """Create lock row ``lock_id`` held by ``pid``; ``False`` if it exists (another process was first)."""
        now = utcnow()
        try:
            with self.session() as s:
                s.add(DaemonRow(id=lock_id, hostname=hostname, pid=pid, started_at=now, heartbeat_at=now, activity=activity))
        except Conflict:
            return False
        return True

    def take_lock(self, lock_id: int, previous: LockRecord, hostname: str, pid: int, activity: str) -> bool:
        """Take lock row ``lock_id`` over from ``previous`` (only if it still holds it); whether it was taken."""
        now = utcnow()
        with self.session() as s:
            taken = s.execute(
                update(DaemonRow)
                .where(DaemonRow.id == lock_id, DaemonRow.pid == previous.pid, DaemonRow.started_at == previous.started_at)
                .values(hostname=hostname, pid=pid, started_at=now, heartbeat_at=now, activity=activity)
            ).rowcount
        return taken == 1

    def beat_lock(self, lock_id: int, pid: int, activity: str, *, release: bool = False) -> None:
        """Refresh the heartbeat (and activity) of the lock ``pid`` holds; ``release`` frees it (pid 0)."""
        values: dict[str, Any] = {"heartbeat_at": utcnow(), "activity": activity[:2000]}
        if release:
            values["pid"] = 0
        with self.session() as s:
            s.execute(update(DaemonRow).where(DaemonRow.id == lock_id, DaemonRow.pid == pid).values(**values))

    # -- workers and their claims (autotune_workers) -------------------------------------------

    def add_worker(self, hostname: str, gpu: str, pid: int, activity: str = "starting") -> WorkerRecord:
        """Register a worker of daemon ``pid`` on ``gpu`` of ``hostname``; :class:`DeviceTaken` if a row names them."""
        now = utcnow()
        try:
            with self.session() as s:
                row = WorkerRow(hostname=hostname, gpu=gpu, pid=pid, started_at=now, heartbeat_at=now, activity=activity)
                s.add(row)
                s.flush()
                return _worker(row)
        except Conflict:
            raise DeviceTaken(f"GPU {gpu} of {hostname} already has a worker in {self.location}") from None

    def workers(self) -> list[WorkerRecord]:
        """Every worker row, by host, GPU."""
        with self.session() as s:
            return [_worker(r) for r in s.scalars(select(WorkerRow).order_by(WorkerRow.hostname, WorkerRow.gpu)).all()]

    def remove_worker(self, worker_id: int, pid: int | None = None) -> bool:
        """Delete a worker row (only if daemon ``pid`` still owns it, when given); whether it was deleted."""
        with self.session() as s:
            query = delete(WorkerRow).where(WorkerRow.id == worker_id)
            if pid is not None:
                query = query.where(WorkerRow.pid == pid)
            return s.execute(query).rowcount == 1

    def beat_worker(self, worker_id: int, activity: str | None = None, worker_pid: int | None = None) -> bool:
        """Refresh a worker's heartbeat (and activity, child pid); ``False`` if its row is gone (recovered by another)."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if activity is not None:
            values["activity"] = activity[:2000]
        if worker_pid is not None:
            values["worker_pid"] = worker_pid
        with self.session() as s:
            return s.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(**values)).rowcount == 1

    def claim(self, worker_id: int, study_id: int, key: str, label: str) -> bool:
        """Claim the candidate ``key`` (``label`` in words) of ``study_id`` for this worker: atomic on
        every database (a unique key). ``False`` when another worker holds it. The caller then checks that the candidate was not
        measured meanwhile (:meth:`trials`): a claim is cleared only after its trial rows are written.
        """
        now = utcnow()
        try:
            with self.session() as s:
                done = s.execute(
                    update(WorkerRow)
                    .where(WorkerRow.id == worker_id)
                    .values(
                        study_id=study_id,
                        candidate_key=key,
                        candidate=label[:255],
                        claimed_at=now,
                        heartbeat_at=now,
                        worker_pid=None,
                    )
                ).rowcount
        except Conflict:  # the unique key: someone else's claim
            return False
        if done != 1:
            raise StoreError(f"worker {worker_id} has no row in {self.location}: another daemon recovered it as dead")
        return True

    def release_claim(self, worker_id: int) -> None:
        with self.session() as s:
            s.execute(
                update(WorkerRow)
                .where(WorkerRow.id == worker_id)
                .values(study_id=None, candidate_key=None, candidate=None, claimed_at=None, worker_pid=None)
            )

    def claims(self, study_id: int) -> dict[str, WorkerRecord]:
        """The live claims on ``study_id``: candidate key -> the worker holding it."""
        with self.session() as s:
            rows = s.scalars(select(WorkerRow).where(WorkerRow.study_id == study_id)).all()
            return {r.candidate_key: _worker(r) for r in rows if r.candidate_key}

    # -- worker environments --------------------------------------------------------------------

    def save_worker_env(self, env: WorkerEnvironment) -> bool:
        """Register or refresh a worker environment; returns whether it was new."""
        with self.session() as s:
            row = s.scalar(select(WorkerEnvRow).where(WorkerEnvRow.name == env.name))
            created = row is None
            if row is None:
                row = WorkerEnvRow(name=env.name)
                s.add(row)
            row.python, row.python_version = env.python, env.python_version
            row.versions, row.runtimes, row.problems, row.error = env.versions, env.runtimes, list(env.problems), env.error
            row.checked_at = utcnow()
            return created

    def worker_envs(self) -> list[WorkerEnvironment]:
        with self.session() as s:
            return [_worker_env(r) for r in s.scalars(select(WorkerEnvRow).order_by(WorkerEnvRow.name)).all()]

    def get_worker_env(self, name: str) -> WorkerEnvironment:
        with self.session() as s:
            row = s.scalar(select(WorkerEnvRow).where(WorkerEnvRow.name == name))
            if row is None:
                known = s.scalars(select(WorkerEnvRow.name).order_by(WorkerEnvRow.name)).all()
                raise InputError(
                    f"worker environment {name} is not registered (registered: {', '.join(['default', *known])}); add it with `autotune env add {name} PYTHON`"
                )
            return _worker_env(row)

    def remove_worker_env(self, name: str) -> None:
        with self.session() as s:
            row = s.scalar(select(WorkerEnvRow).where(WorkerEnvRow.name == name))
            if row is None:
                raise InputError(f"worker environment {name} is not registered")
            s.delete(row)


def _lock(row: DaemonRow) -> LockRecord:
    return LockRecord(row.id, row.hostname, row.pid, row.started_at, row.heartbeat_at, row.activity)


def _worker(row: WorkerRow) -> WorkerRecord:
    return WorkerRecord(
        id=row.id,
        hostname=row.hostname,
        gpu=row.gpu,
        pid=row.pid,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        study_id=row.study_id,
        candidate_key=row.candidate_key,
        candidate=row.candidate,
        claimed_at=row.claimed_at,
        worker_pid=row.worker_pid,
        activity=row.activity,
    )


def _worker_env(row: WorkerEnvRow) -> WorkerEnvironment:
    return WorkerEnvironment(
        name=row.name,
        python=row.python,
        python_version=row.python_version,
        versions=dict(row.versions or {}),
        runtimes=dict(row.runtimes or {}),
        problems=tuple(row.problems or ()),
        error=row.error,
    )


def _workload(row: ModelRow) -> Workload:
    data = {c: getattr(row, c) for c in _WORKLOAD_COLUMNS}
    data["max_memory"] = MemoryLimit.parse(row.max_memory) if row.max_memory else None
    extra = {k: v for k, v in (row.generation or {}).items() if k in GENERATION_KEYS and v}
    return quality_text.keyed(Workload(**data, extra=extra), tuple(row.quality_prompts) if row.quality_prompts else None)


def _model(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        name=row.name,
        source=row.source,
        path=row.path,
        revision=row.revision,
        model_type=row.model_type,
        architecture=row.architecture,
        config=dict(row.config),
        capabilities=dict(row.capabilities),
        workload=_workload(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
        gguf_file=row.gguf_file,
        quality_prompts=tuple(row.quality_prompts) if row.quality_prompts else None,
    )


def _study(row: StudyRow) -> StudyRecord:
    return StudyRecord(
        id=row.id,
        model_id=row.model_id,
        environment_id=row.environment_id,
        workload_key=row.workload_key,
        workload=Workload.from_dict(row.workload),
        state=row.state,
        stop_reason=row.stop_reason,
        sampler_seed=row.sampler_seed,
        best_trial_id=row.best_trial_id,
        rejected=list(row.rejected or []),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _trial(row: TrialRow) -> TrialRecord:
    return TrialRecord(
        id=row.id,
        study_id=row.study_id,
        number=row.number,
        origin=row.origin,
        candidate=Candidate.from_dict(row.params),
        batch_size=row.batch_size,
        status=row.status,
        reason=row.reason,
        feasible=row.feasible,
        objective_value=row.objective_value,
        metrics={m: getattr(row, m) for m in METRICS},
        effective=dict(row.effective or {}),
        details=dict(row.details or {}),
        worker_env=row.worker_env,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
