"""The store: environments, models with their workloads, studies, trials and recommendations.

Open it with :meth:`Store.open`; the schema is created or upgraded on first use. Every method
runs in a short transaction of its own, so nothing holds a lock while a trial runs, and returns
frozen records (:mod:`autotune.store.records`), never ORM rows.
"""

from __future__ import annotations

from autotune.store.records import CONFIRM_ORIGIN, METRICS, LockRecord, ModelRecord, StudyRecord, TrialRecord, WorkerRecord
from autotune.store.schema import utcnow
from autotune.store.store import Conflict, DeviceTaken, Store

__all__ = [
    "CONFIRM_ORIGIN",
    "METRICS",
    "Conflict",
    "DeviceTaken",
    "LockRecord",
    "ModelRecord",
    "Store",
    "StudyRecord",
    "TrialRecord",
    "WorkerRecord",
    "utcnow",
]
