"""Stopping a tuner gently, then at once.

The first SIGTERM or SIGINT asks the tuner to finish the trial it is measuring and stop; a
second one kills the worker (its whole process group) and raises :class:`StopNow` in the main
thread, so the tuner marks the cut-short trial and exits.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


class StopNow(BaseException):
    """Raised by the second signal: stop at once (the worker is already killed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def kill_worker(pid: int) -> None:
    """Kill ``pid`` and its process group (unless that group is ours), ignoring a gone process."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        if group != os.getpgrp():
            os.killpg(group, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class GracefulStop:
    """Signal handling for a tuner: ``requested`` after one signal, :class:`StopNow` after two.

    Pass :meth:`on_spawn` to the trial worker launcher so a second signal knows what to kill.
    Install from the main thread only.
    """

    def __init__(self, log: Callable[[str], None] | None = None, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.log = log or (lambda message: None)
        self.signals = signals
        self.signum: int | None = None
        self.worker_pid: int | None = None
        #: Trial workers of a daemon's other worker threads, by thread: a second signal kills them too.
        self.worker_pids: dict[str, int] = {}
        #: Set by the second signal before it kills anything: a cut-short measurement is not a result.
        self.now = False
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def install(self) -> GracefulStop:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_spawn(self, process: Any) -> None:
        """Remember the worker (a ``Popen`` or a pid) that a second signal must kill."""
        pid = getattr(process, "pid", process)
        self.worker_pid = int(pid) if pid is not None else None

    def request(self) -> None:
        """Ask for a gentle stop, as a first signal does (a worker thread that failed, say)."""
        self._event.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at the first signal; ``True`` if a stop was asked."""
        return self._event.wait(seconds)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self._event.is_set():
            self.signum = signum
            self._event.set()
            self.log(f"{name}: finishing the current trial, then stopping (send it again to stop at once)")
            return
        self.now = True
        pids = [p for p in (self.worker_pid, *self.worker_pids.values()) if p is not None]
        if pids:
            self.log(f"{name} again: killing the worker{'s' * (len(pids) > 1)} (pid {', '.join(map(str, pids))}) and stopping now")
            for pid in pids:
                kill_worker(pid)
        else:
            self.log(f"{name} again: stopping now")
        raise StopNow(signum)
