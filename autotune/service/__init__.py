"""Process control beside the daemon: the daemon itself, its workers, the tuning lock, signals, recovery.

- :mod:`autotune.service.daemon` — ``autotune daemon``: every registered model tuned until stopped,
  one worker per GPU.
- :mod:`autotune.service.workers` — a daemon's workers: ``--gpus``, their CPU share, their claims.
- :mod:`autotune.service.lock` — one tuner per SQLite store (per host on a server store), its heartbeat.
- :mod:`autotune.service.interrupt` — stopping gently, then at once.
- :mod:`autotune.service.recovery` — trials a dead tuner left running; claims of dead workers.

Every table is reached through :class:`autotune.store.Store`. Nothing below the CLI imports this package.
"""

from __future__ import annotations

from autotune.service.interrupt import GracefulStop, StopNow
from autotune.service.lock import Holder, TunerBusyError, TunerLock, holders
from autotune.service.recovery import recover_dead_workers, recover_interrupted

__all__ = [
    "GracefulStop",
    "Holder",
    "StopNow",
    "TunerBusyError",
    "TunerLock",
    "holders",
    "recover_dead_workers",
    "recover_interrupted",
]
