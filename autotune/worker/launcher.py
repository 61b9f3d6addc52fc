"""Run one trial worker in a child process and classify whatever happens to it.

The launcher never imports torch. It writes the request to a private temporary directory,
starts ``python -m autotune.worker.child REQUEST RESULTS`` in a new process session (so the
child and anything it starts form one process group), waits for it with a time limit, and
reads back the JSON lines the child appended as it went. A child that segfaults, hangs, runs
out of memory or fails to import something becomes a classified :class:`BatchResult`; the
caller always gets one result per batch size and carries on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotune.worker.protocol import PARENT_ENV, BatchResult, WorkerOutcome, WorkerRequest

#: Seconds between SIGTERM and SIGKILL when a worker's process group is stopped.
KILL_GRACE_S = 3.0
#: How much of the worker's combined stdout/stderr is kept.
STDERR_TAIL_CHARS = 4000

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def run(
    request: WorkerRequest, *, python: str | None = None, on_spawn: Callable[[int], None] | None = None, env: dict[str, str] | None = None
) -> list[BatchResult]:
    """Measure ``request`` in a child process; one :class:`BatchResult` per batch size, in order."""
    return list(launch(request, python=python, on_spawn=on_spawn, env=env).results)


def launch(
    request: WorkerRequest, *, python: str | None = None, on_spawn: Callable[[int], None] | None = None, env: dict[str, str] | None = None
) -> WorkerOutcome:
    """Like :func:`run`, with the exit status, timing and output of the worker.

    ``python`` is the interpreter that runs the child (default: this one); ``on_spawn`` is
    called with the child's pid as soon as it exists; ``env`` replaces this process's
    environment for the child (PYTHONPATH is always extended so that the child imports this
    same autotune package).
    """
    workdir = tempfile.mkdtemp(prefix="autotune-worker-")
    try:
        request_file = os.path.join(workdir, "request.json")
        results_file = os.path.join(workdir, "results.jsonl")
        log_file = os.path.join(workdir, "worker.log")
        with open(request_file, "w", encoding="utf-8") as fh:
            fh.write(request.to_json())
        command = [python or sys.executable, "-m", "autotune.worker.child", request_file, results_file]
        # A venv's bin/python is a link to the base interpreter: compare the paths, not their targets.
        foreign = python is not None and os.path.abspath(python) != os.path.abspath(sys.executable)
        started = time.monotonic()
        timed_out = False
        with open(log_file, "wb") as log:
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_environment(env, isolated_in=workdir if foreign else None),
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                reason = f"cannot start the worker ({command[0]}): {exc.strerror or exc}"
                results = _all_failed(request, "error", reason, {})
                return WorkerOutcome(tuple(results), None, False, None, 0.0, "")
            try:
                if on_spawn is not None:
                    on_spawn(proc.pid)
                try:
                    returncode: int | None = proc.wait(timeout=request.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    returncode = _stop_group(proc)
            except BaseException:
                _stop_group(proc)
                raise
            finally:
                # Whatever the child left behind in its group (compile workers, a stray
                # grandchild) goes with it, before the caller starts the next worker.
                _signal_group(proc.pid, signal.SIGKILL)
                _wait_group_gone(proc.pid, KILL_GRACE_S)
        wall = time.monotonic() - started
        events = read_events(results_file)
        tail = _tail(log_file)
        results, reference = classify(request, events, returncode, timed_out, tail)
        return WorkerOutcome(tuple(results), returncode, timed_out, proc.pid, wall, tail, reference)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def child_environment(env: dict[str, str] | None = None, isolated_in: str | None = None) -> dict[str, str]:
    """The child's environment: ``env`` (default: ours) with this package first on PYTHONPATH.

    With ``isolated_in`` (a private directory) the child runs another interpreter, a worker
    environment: its PYTHONPATH then holds only a link to this ``autotune`` package, made in that
    directory, so that it never sees this interpreter's site-packages (where autotune may be
    installed next to another Transformers) and our PYTHONPATH is dropped.
    """
    child = dict(os.environ if env is None else env)
    if isolated_in is not None:
        root = os.path.join(isolated_in, "pythonpath")
        os.makedirs(root, exist_ok=True)
        link = os.path.join(root, "autotune")
        if not os.path.lexists(link):
            os.symlink(os.path.join(_PACKAGE_ROOT, "autotune"), link)
        child["PYTHONPATH"] = root
    else:
        paths = [p for p in child.get("PYTHONPATH", "").split(os.pathsep) if p and p != _PACKAGE_ROOT]
        child["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *paths])
    child[PARENT_ENV] = str(os.getpid())  # the worker dies with us (autotune.worker.child.die_with_parent)
    child.setdefault("PYTHONUNBUFFERED", "1")
    child.setdefault("PYTHONFAULTHANDLER", "1")
    child.setdefault("TOKENIZERS_PARALLELISM", "false")
    child.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    child.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return child


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) until no live process is left in group ``pgid`` (Linux; elsewhere at once).

    A killed process dies when the kernel next schedules it, which on a busy machine can be a
    while after ``killpg`` returns; until then it holds its memory, GPU memory included.
    Zombies, which hold nothing, do not count.
    """
    if not os.path.isdir("/proc/self"):
        return
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _stop_group(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM the child's process group, then SIGKILL it after a short grace; the exit status."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # unkillable (D state): give up on it, do not hang the caller
        return None


def read_events(path: str) -> list[dict[str, Any]]:
    """The JSON lines a child wrote; a torn last line (the child died mid-write) is ignored."""
    events: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
    except OSError:
        pass
    return events


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - STDERR_TAIL_CHARS))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_lines(tail: str, count: int = 2) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _where(phase: dict[str, Any] | None) -> str:
    if not phase:
        return "starting"
    name = phase.get("phase")
    if name == "batch":
        return f"measuring batch size {phase.get('batch_size')}"
    return {
        "loading": "loading the model",
        "exporting": "exporting the model to ONNX",
        "reference": "writing the quality reference",
        "quality": "comparing outputs with the quality reference",
        "attention": "reading back which attention runs (a traced forward pass)",
    }.get(str(name), str(name))


def classify(
    request: WorkerRequest, events: list[dict[str, Any]], returncode: int | None, timed_out: bool, tail: str
) -> tuple[list[BatchResult], dict[str, Any] | None]:
    """One result per expected batch size from the child's events and how it ended.

    Reported batches keep what the child said. The first batch size without a report gets what
    ended the worker (timeout, crash with the signal's name, error with the last lines of its
    output); the later ones are ``skipped``.
    """
    reported: dict[int, BatchResult] = {}
    phase: dict[str, Any] | None = None
    loaded: dict[str, Any] = {}
    reference: dict[str, Any] | None = None
    done = False
    for event in events:
        kind = event.get("event")
        if kind == "result":
            try:
                result = BatchResult.from_dict(event["result"])
            except (KeyError, TypeError, ValueError):
                continue
            reported.setdefault(result.batch_size, result)
        elif kind == "phase":
            phase = event
        elif kind == "loaded":
            loaded = event
        elif kind == "reference":
            reference = {k: v for k, v in event.items() if k != "event"}
        elif kind == "done":
            done = True

    where = _where(phase)
    if timed_out:
        failure = ("timeout", f"the worker ran past its {request.timeout_s:g} s limit while {where}; its process group was killed")
    elif returncode is None:
        failure = ("crash", f"the worker could not be stopped while {where}")
    elif returncode < 0:
        name = _signal_name(returncode)
        hint = " (often the system's out-of-memory killer)" if name == "SIGKILL" else ""
        failure = ("crash", f"the worker was killed by {name}{hint} while {where}")
    elif returncode != 0:
        last = _last_lines(tail)
        failure = ("error", f"the worker exited with status {returncode} while {where}" + (f": {last}" if last else ""))
    elif not done:
        failure = ("error", f"the worker exited without finishing (last: {where})")
    else:
        failure = ("error", "the worker did not report this batch size")

    base_metrics = {"load_seconds": loaded["load_seconds"]} if loaded.get("load_seconds") is not None else {}
    base_effective = dict(loaded.get("effective") or {})
    details = {"returncode": returncode, "phase": where, "output_tail": tail[-1500:]}
    results: list[BatchResult] = []
    # What ended the worker belongs to the batch size it was measuring (a falling ladder measures
    # the largest first), else to the first one not reported.
    measuring = phase.get("batch_size") if phase and phase.get("phase") == "batch" else None
    culprit: int | None = measuring if measuring in request.expected_batches and measuring not in reported else None
    for batch in request.expected_batches:
        if batch in reported:
            results.append(reported[batch])
        elif culprit is None or batch == culprit:
            culprit = batch
            results.append(BatchResult(failure[0], failure[1], batch, dict(base_metrics), base_effective, details))
        else:
            results.append(
                BatchResult(
                    "skipped",
                    f"not measured: the worker ended at batch size {culprit} ({failure[0]})",
                    batch,
                    {},
                    base_effective,
                    {"returncode": returncode},
                )
            )
    return results, reference


def _all_failed(request: WorkerRequest, status: str, reason: str, details: dict[str, Any]) -> list[BatchResult]:
    return [BatchResult(status, reason, b, {}, {}, details) for b in request.expected_batches]
