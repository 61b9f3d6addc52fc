"""Commands that search: tune, trials, status, daemon.

``trials`` and ``status`` read the store only, and start without importing torch, transformers
or Optuna.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from autotune.cli._output import print_json, print_table

SPACE_ENV = "AUTOTUNE_SPACE"
SPACE_HELP = (
    "keep only some values of some axes, e.g. 'dtype=fp32,bf16 attn=sdpa,eager quant=none' "
    "(axes: dtype, attn, quant, double_quant, compute_dtype, placement, static_cache, runtime=pytorch,onnxruntime[:PROVIDER], and batch=1,4,16 for the batch sizes measured; "
    "default: $AUTOTUNE_SPACE, else all)"
)


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "tune",
        help="tune one model now, in the foreground, and print the best configuration",
        description="Run the model's study in the foreground: the baselines first, then Optuna's TPE, one "
        "candidate at a time (measured at a ladder of batch sizes, one trial row each), until it "
        "stops improving or a budget is spent. "
        "A study resumes where it stopped. Example: autotune tune tiiuae/falcon-7b --trials 24 --budget-minutes 30",
    )
    p.add_argument("model", metavar="MODEL", help="a registered model (see autotune models)")
    _search_options(p)
    p.add_argument("--seed", type=int, help="sampler seed of a new study (default: random, stored in the study)")
    p.set_defaults(func=cmd_tune)

    p = commands.add_parser(
        "trials",
        help="list a model's trials, one row per candidate and batch size: metrics, status and reason",
        description="List the trials of a model's study in this environment (--all: every study): one row per "
        "candidate and batch size, so a candidate measured at batch sizes 1, 2 and 4 has three. "
        "Example: autotune trials tiiuae/falcon-7b --json",
    )
    p.add_argument("model", metavar="MODEL", help="a registered model")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--all", action="store_true", help="every study of the model (other environments and workloads too)")
    p.set_defaults(func=cmd_trials)

    p = commands.add_parser(
        "status",
        help="each model's study (state, candidates measured, best so far, rejected) and what the daemon is doing",
        description="Show each model's study in this environment — state, candidates measured, best so far, "
        "candidates rejected — and what the daemon is doing now. Example: autotune status --json",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--check-daemon",
        action="store_true",
        help="only check that a daemon (or tune) of this machine heartbeats: one line, exit 0 if so, else 1 "
        "(for health checks; reads the lock row only, no GPU probe)",
    )
    p.add_argument(
        "--max-age",
        type=float,
        metavar="S",
        help="with --check-daemon: the oldest heartbeat that counts as live, in seconds (default: when the tuning "
        "lock counts a tuner as gone, 120 s; a tuner beats every 5 s)",
    )
    p.set_defaults(func=cmd_status)

    p = commands.add_parser(
        "daemon",
        help="tune every registered model until stopped, one worker per GPU",
        description="Run until stopped: pick up models as they are added, tune their studies (round-robin) with one "
        "worker per GPU, each measuring a different candidate it claimed in the database, keep a heartbeat, start "
        "new studies when the environment changes. The first SIGTERM/SIGINT finishes the current candidates; a "
        "second stops at once. One per SQLite database; on PostgreSQL, one per host (or per --gpus set), and "
        "daemons of many hosts share the work. "
        "Example: autotune daemon --gpus 0,1 --poll 10",
    )
    p.add_argument("--once", action="store_true", help="exit when no study has work left, instead of waiting for more (cron, CI)")
    p.add_argument("--poll", type=float, default=5.0, metavar="S", help="seconds between looks for new work when idle (default 5)")
    p.add_argument(
        "--gpus",
        metavar="LIST",
        help="the GPUs to run a worker on: NVML indices or UUIDs, e.g. 0,1 (default: every visible GPU; one CPU worker "
        "on a machine without one, and cpu0,cpu1,... for several); each worker measures its own candidate, pinned to "
        "its share of the CPU cores",
    )
    p.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="one worker: one candidate at a time on all the daemon's GPUs (when concurrent trials disturb each other's timings)",
    )
    p.add_argument(
        "--report-dir",
        metavar="DIR",
        help="write a model's HTML report (as autotune report does) into DIR each time one of its studies finishes",
    )
    _search_options(p)
    p.set_defaults(func=cmd_daemon)


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="stop a study after N candidates measured in all, counting earlier runs; a larger N continues a finished study "
        "(a candidate is one way of loading, measured at its batch sizes; each batch size is one trial row; "
        "default: no limit)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        metavar="M",
        help="stop a study after M minutes of measuring in all, counting earlier runs; a larger M continues a finished "
        "study (default: no limit)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=8,
        metavar="N",
        help="stop after N candidates in a row without a 1%% improvement, once the baselines are measured (default 8)",
    )
    p.add_argument("--space", metavar="SPEC", help=SPACE_HELP)
    p.add_argument("--timeout", type=float, metavar="S", help="seconds a worker may take for one candidate (default: the worker's)")
    p.add_argument(
        "--max-repeats",
        type=_repeats,
        metavar="N",
        help="timed repeats per batch size at most (default 10; fewer is faster and noisier, at least 2)",
    )
    p.add_argument(
        "--tolerance",
        type=_share,
        default=0.03,
        metavar="F",
        help="measure a candidate only while it could beat the best by more than this share (default 0.03)",
    )
    p.add_argument(
        "--explore",
        action="store_true",
        help="once nothing left is expected to win, go on with Optuna's TPE until --patience (default: stop)",
    )
    p.add_argument(
        "--exhaustive",
        action="store_true",
        help="measure every candidate at every batch size, fully: no screens, no early stop but --trials and --budget-minutes",
    )


def _settings(args: argparse.Namespace) -> Any:
    from autotune.search.space import parse_restriction
    from autotune.search.study import SearchSettings

    options = {}
    if args.max_repeats:
        options = {"max_repeats": args.max_repeats, "min_repeats": min(3, args.max_repeats)}
    return SearchSettings(
        patience=args.patience,
        max_trials=args.trials,
        budget_minutes=args.budget_minutes,
        seed=getattr(args, "seed", None),
        restrict=parse_restriction(args.space or os.environ.get(SPACE_ENV)),
        timeout_s=args.timeout,
        worker_options=options,
        tolerance=args.tolerance,
        explore=args.explore,
        exhaustive=args.exhaustive,
    )


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"--tolerance must be a share in [0, 1), such as 0.03, got {text!r}")
    return value


def _repeats(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"--max-repeats must be a whole number of at least 2, got {text!r}")
    return value


# -- tune -----------------------------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> int:
    from autotune.cli import open_store
    from autotune.environment import probe
    from autotune.search.study import StudySearch
    from autotune.service.interrupt import GracefulStop, StopNow
    from autotune.service.lock import TunerLock
    from autotune.service.recovery import recover_interrupted

    settings = _settings(args)
    with open_store(args) as store:
        model = store.get_model(args.model)
        environment = probe()
        environment_id = store.record_environment(environment)
        lock = TunerLock(store, "tune")
        previous = lock.acquire()
        lock.start_heartbeat()
        stop = GracefulStop(_note).install()
        try:
            for trial in recover_interrupted(store, lock.hostname, previous.worker_pids if previous else ()):
                _note(f"trial {trial.number} of study {trial.study_id} was left running by a tuner that died; it will be measured again")
            search = StudySearch(store, model, environment, environment_id, settings)
            if not search.reopen():
                _note(f"study {search.study.id} is finished: {search.study.stop_reason}; {search.how_to_continue()}")
            else:
                _run(search, model.name, lock, stop)
        except StopNow as now:
            recover_interrupted(store, lock.hostname)
            lock.release(f"stopped at once by {now}")
            stop.restore()
            _note(f"stopped at once ({now}); the cut-short candidate will be measured again")
            return 128 + now.signum
        finally:
            stop.restore()
            lock.release()
        _print_best(search)
    return 0


def _note(message: str) -> None:
    print(f"autotune: {message}", file=sys.stderr, flush=True)


def _run(search: Any, name: str, lock: Any, stop: Any) -> None:
    space = search.space
    settings = search.settings
    state = search.progress()
    limit = min(len(space), settings.max_trials or len(space))
    budget = f", at most {settings.max_trials} candidates" if settings.max_trials else ""
    budget += f", at most {settings.budget_minutes:g} minutes" if settings.budget_minutes else ""
    resumed = f"; resuming after {state.measured} candidates" if state.measured else ""
    _note(f"tuning {name} (study {search.study.id}, seed {search.study.sampler_seed}): {search.workload.describe()}")
    _note(
        f"space: {space.describe()}; objective {search.metric} ({search.direction}); "
        f"stops after {settings.patience} candidates without improvement{budget}{resumed}"
    )

    current = [""]

    def started(candidate: Any, origin: str, baseline: str | None, ladder: tuple[int, ...]) -> None:
        number = search.progress().measured + 1
        why = f" [{baseline}]" if baseline else ""
        if origin in ("prior", "warm-start"):
            why += f" ({origin}: expected x{search.knowledge.expect(candidate).factor:.2f} the plain load)"
        what = "close finish" if origin == "confirm" else f"candidate {number}"
        text = f"{what}: {candidate.label()}{why}, batch {','.join(map(str, ladder))}"
        current[0] = f"tune: {name} (study {search.study.id}), {text}"
        lock.beat(current[0])
        _note(f"{text} ...")

    def spawned(process: Any) -> None:
        stop.on_spawn(process)
        lock.beat(f"{current[0]} (worker pid {stop.worker_pid})")

    search.on_start = started
    search.on_spawn = spawned
    while not stop.requested:
        step = search.step()
        stop.worker_pid = None
        if step.result is not None or step.error is not None:
            done = step.progress.measured
            since = step.progress.since_improvement
            baselines_left = sum(1 for b in space.baselines if b.candidate.key() not in step.progress.measured_keys)
            # the most candidates the study can still measure if nothing improves from here
            horizon = min(limit, done + max(settings.patience - since, baselines_left, 0 if step.finished else 1))
            width = 20
            filled = min(width, round(width * done / max(horizon, 1)))
            print(
                f"[{'#' * filled}{'-' * (width - filled)}] {done}/{horizon} candidates  {step.describe(search.metric)}",
                file=sys.stderr,
                flush=True,
            )
        if step.finished:
            _note(f"study finished: {step.study.stop_reason}")
            break
    else:
        _note("stopped before the study finished; `autotune tune` again resumes it")


def _print_best(search: Any) -> None:
    from autotune.objective import CONFIRM_ORIGIN
    from autotune.search.results import summary
    from autotune.search.study import format_value

    state = search.progress()
    best = summary(state.best, search.workload)
    if best is None:
        print(f"no feasible configuration yet after {state.measured} candidates (see autotune trials {search.model.name})")
        return
    print(
        f"best after {state.measured} candidates: {best['label']} at batch {best['batch_size']}: "
        f"{format_value(best['metric'], best['value'])} ({best['metric']}, trial {best['trial_number']})"
    )
    print(f"  candidate: {json.dumps(best['candidate'])}")
    if any(t.origin == CONFIRM_ORIGIN for t in search.store.trials(study_id=search.study.id)):
        print("  a close finish was measured again, interleaved: the recommendation rests on those re-measurements")
    print(f"  the loading code: autotune recommend {search.model.name}")


# -- trials ---------------------------------------------------------------------------------------


def _current_study(store: Any, model: Any, fingerprint: str) -> Any:
    key = model.workload.key()
    for study in store.studies(model.id):
        if study.workload_key == key and store.environment_fingerprint(study.environment_id) == fingerprint:
            return study
    return None


def cmd_trials(args: argparse.Namespace) -> int:
    from autotune.cli import open_store
    from autotune.environment import probe
    from autotune.objective import metric_for, quality_name

    with open_store(args) as store:
        model = store.get_model(args.model)
        if args.all:
            studies = store.studies(model.id)
        else:
            study = _current_study(store, model, probe().fingerprint)
            studies = [study] if study is not None else []
        data = [(study, store.trials(study_id=study.id), store.environment_fingerprint(study.environment_id)) for study in studies]
    if args.json:
        print_json(
            [
                {
                    "study": study.id,
                    "environment": fingerprint,
                    "workload": study.workload.to_dict(),
                    "state": study.state,
                    "stop_reason": study.stop_reason,
                    "best_trial_id": study.best_trial_id,
                    "trials": [_trial_json(t) for t in trials],
                }
                for study, trials, fingerprint in data
            ]
        )
        return 0
    if not data:
        print(
            f"{model.name} has no study in this environment yet; `autotune tune {model.name}` or the daemon starts one"
            + ("" if args.all else " (--all shows other environments)")
        )
        return 0
    for study, trials, fingerprint in data:
        metric, _ = metric_for(study.workload)
        quality = quality_name(study.workload.task).upper()
        print(
            f"study {study.id} ({study.state}{': ' + study.stop_reason if study.stop_reason else ''}), environment {fingerprint}, "
            f"{study.workload.describe()}"
        )
        rows = [
            [
                t.number,
                t.origin,
                t.candidate.label(),
                t.batch_size,
                t.status,
                _yes_no(t.feasible),
                _number(t.objective_value),
                _gib(t.metrics.get("peak_memory_bytes")),
                _number(t.metrics.get("quality_token_agreement")),
                _number(t.metrics.get("load_seconds")),
                ("* " if t.id == study.best_trial_id else "") + _reason(t),
            ]
            for t in trials
        ]
        print_table(["#", "ORIGIN", "CANDIDATE", "BATCH", "STATUS", "FEASIBLE", metric.upper(), "PEAK", quality, "LOAD_S", "REASON"], rows)
        if study.best_trial_id:
            print("  * the best trial")
        if any(t.status == "screened" for t in trials):
            print("  screened: timed once only, already far behind the best; a screen, not a measurement, never recommended")
        if any(t.origin == "warm-start" for t in trials):
            print("  warm-start: measured early because earlier studies on this kind of GPU measured what it changes")
    return 0


def _reason(t: Any) -> str:
    """The row's reason, or why a measured row is infeasible (over the limit, under the floor)."""
    if t.reason:
        return t.reason
    why = t.details.get("infeasible") if t.status == "ok" and not t.feasible else None
    return "; ".join(map(str, why)) if why else ""


def _trial_json(t: Any) -> dict[str, Any]:
    return {
        "id": t.id,
        "number": t.number,
        "origin": t.origin,
        "label": t.candidate.label(),
        "candidate": t.candidate.to_dict(),
        "batch_size": t.batch_size,
        "status": t.status,
        "reason": t.reason,
        "feasible": t.feasible,
        "objective_value": t.objective_value,
        "metrics": t.metrics,
        "effective": t.effective,
        "details": t.details,
        "worker_env": t.worker_env,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
    }


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _gib(value: int | None) -> str | None:
    from autotune.units import format_gib

    return None if value is None else format_gib(value)


# -- status ---------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    if args.check_daemon:
        return _check_daemon(args)
    from autotune.cli import open_store
    from autotune.environment import probe
    from autotune.search.results import progress, summary
    from autotune.search.study import format_value
    from autotune.service.lock import holders

    environment = probe()
    with open_store(args) as store:
        models = store.models()
        entries = []
        for model in models:
            study = _current_study(store, model, environment.fingerprint)
            state = progress(store.trials(study_id=study.id), study.workload) if study else None
            entries.append((model, study, state))
        tuners = holders(store)
        workers = store.workers()
        location = store.location
    if args.json:
        print_json(
            {
                "database": location,
                "environment": {"fingerprint": environment.fingerprint, "summary": environment.summary()},
                "models": [
                    {
                        "name": model.name,
                        "objective": model.workload.objective,
                        "study": None
                        if study is None
                        else {
                            "id": study.id,
                            "state": study.state,
                            "stop_reason": study.stop_reason,
                            "candidates": state.measured,
                            "trial_rows": sum(len(r.trials) for r in state.results),
                            "since_improvement": state.since_improvement,
                            "measuring_seconds": round(state.seconds, 1),
                            "best": summary(state.best, study.workload),
                            "rejected": sum(int(r.get("count", 1)) for r in study.rejected),
                            "rejected_reasons": study.rejected,
                            "sampler_seed": study.sampler_seed,
                            "created_at": study.created_at,
                            "finished_at": study.finished_at,
                        },
                    }
                    for model, study, state in entries
                ],
                "daemons": [
                    {
                        "hostname": h.hostname,
                        "pid": h.pid or None,
                        "running": h.alive(),
                        "started_at": h.started_at,
                        "heartbeat_at": h.heartbeat_at,
                        "heartbeat_age_s": round(h.heartbeat_age(), 1),
                        "activity": h.activity,
                    }
                    for h in tuners
                ],
                "workers": [_worker_json(w) for w in workers],
            }
        )
        return 0
    print(f"environment {environment.fingerprint}: {environment.summary()}")
    if not models:
        print("no models registered; add one with `autotune add MODEL`")
    else:
        rows = []
        for model, study, state in entries:
            if study is None:
                rows.append([model.name, "no study", None, None, None, None])
                continue
            best = summary(state.best, study.workload)
            rejected = sum(int(r.get("count", 1)) for r in study.rejected)
            rows.append(
                [
                    model.name,
                    study.state,
                    state.measured,
                    f"{format_value(best['metric'], best['value'])} ({best['label']} @{best['batch_size']})" if best else None,
                    rejected,
                    study.stop_reason,
                ]
            )
        print_table(["MODEL", "STATE", "CANDIDATES", "BEST", "REJECTED", "STOP REASON"], rows)
        for model, study, _ in entries:
            if study is not None and study.rejected:
                print(f"{model.name}: rejected before measuring")
                for r in study.rejected:
                    print(f"  {r.get('reason')}" + (f"  [{r.get('label')}]" if r.get("candidate") else ""))
    _print_tuners(tuners)
    _print_workers(workers)
    return 0


def _worker_json(worker: Any) -> dict[str, Any]:
    from autotune.service.recovery import worker_alive
    from autotune.store import utcnow

    return {
        "hostname": worker.hostname,
        "gpu": worker.gpu,
        "pid": worker.pid,
        "running": worker_alive(worker),
        "started_at": worker.started_at,
        "study_id": worker.study_id,
        "measuring": worker.candidate,
        "since": worker.claimed_at,
        "heartbeat_at": worker.heartbeat_at,
        "heartbeat_age_s": round(max(0.0, (utcnow() - worker.heartbeat_at).total_seconds()), 1),
        "trial_pid": worker.worker_pid,
        "activity": worker.activity,
    }


def _print_workers(workers: list[Any]) -> None:
    from autotune.service.lock import format_age
    from autotune.store import utcnow

    if not workers:
        return
    rows = []
    for worker in workers:
        data = _worker_json(worker)
        since = f"{format_age(max(0.0, (utcnow() - worker.claimed_at).total_seconds()))} ago" if worker.claimed_at else None
        rows.append(
            [
                worker.hostname,
                worker.gpu,
                worker.pid,
                (f"study {worker.study_id}: {worker.candidate}" if worker.candidate else worker.activity)
                + ("" if data["running"] else " (dead)"),
                since,
                f"{format_age(data['heartbeat_age_s'])} ago",
            ]
        )
    print_table(["HOST", "GPU", "PID", "MEASURING", "SINCE", "HEARTBEAT"], rows)


def _check_daemon(args: argparse.Namespace) -> int:
    """One line and exit 0 when a tuner of this machine heartbeats within ``--max-age`` seconds; else exit 1."""
    import socket

    from autotune.cli import open_store
    from autotune.errors import AutotuneError, InputError
    from autotune.service.lock import STALE_AFTER_S, format_age, holders

    max_age = STALE_AFTER_S if args.max_age is None else args.max_age
    if not max_age > 0:
        raise InputError(f"--max-age must be more than 0 seconds, got {max_age!r}")
    with open_store(args) as store:
        rows = holders(store)
        local = store.sqlite_path is not None
        location = store.location
    host = socket.gethostname()
    # A SQLite file has one lock row whatever the host name (a container gets a new one each start).
    mine = rows if local else [h for h in rows if h.hostname == host]
    live = [h for h in mine if h.alive(max_age)]
    if live:
        print(f"daemon: {live[0].describe()}: {live[0].activity or 'nothing reported'}")
        return 0
    last = max(mine, key=lambda h: h.heartbeat_at, default=None)
    if last is None:
        raise AutotuneError(f"no daemon has run on {location}{'' if local else ' from ' + host}; start one with `autotune daemon`")
    if last.pid == 0:
        why = f"the last one stopped {format_age(last.heartbeat_age())} ago ({last.activity})"
    elif last.heartbeat_age() > max_age:
        age = format_age(last.heartbeat_age())
        why = f"the last heartbeat, of pid {last.pid} on {last.hostname}, is {age} old (--max-age {max_age:g} s)"
    else:
        why = f"pid {last.pid} on {last.hostname} is gone without releasing the lock"
    raise AutotuneError(f"no live daemon on {location}: {why}; start one with `autotune daemon`")


def _print_tuners(tuners: list[Any]) -> None:
    from autotune.service.lock import format_age

    live = [h for h in tuners if h.alive()]
    for h in live:
        print(f"daemon: {h.describe()}: {h.activity or 'nothing reported'}")
    if not live:
        last = max(tuners, key=lambda h: h.heartbeat_at, default=None)
        tail = f" (last seen {format_age(last.heartbeat_age())} ago: {last.activity})" if last else ""
        print(f"daemon: not running{tail}; start it with `autotune daemon`")


# -- daemon ---------------------------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    from autotune.service.daemon import Daemon, DaemonOptions

    if not args.poll > 0:
        from autotune.errors import InputError

        raise InputError(f"--poll must be more than 0 seconds, got {args.poll!r}")
    if args.report_dir:
        from autotune.report import check_report_dir

        check_report_dir(args.report_dir)
    options = DaemonOptions(
        poll_s=args.poll,
        once=args.once,
        settings=_settings(args),
        report_dir=args.report_dir,
        gpus=args.gpus,
        one_at_a_time=args.one_at_a_time,
    )
    return Daemon(args.db, options).run()
