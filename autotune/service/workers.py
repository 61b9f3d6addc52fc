"""A daemon's workers: one per GPU it is given, each with its own CPU cores and its claim in the store.

``--gpus`` names the GPUs (NVML indices or UUIDs; default: every visible one). On a machine
without a GPU a daemon has one worker, ``cpu``; ``--gpus cpu0,cpu1`` gives it several, which
share the CPU (to try a fleet on a laptop or in CI). Each worker:

- is a row of ``autotune_workers`` (host, GPU, daemon pid, heartbeat): ``(hostname, gpu)`` is
  unique, so two daemons cannot drive one GPU;
- claims the candidate it measures in that row (``(study_id, candidate_key)`` is unique), so two
  workers, of one daemon or of several sharing a PostgreSQL store, never measure one candidate
  of a study twice (:class:`StoreClaims`);
- runs its trial workers with ``CUDA_VISIBLE_DEVICES`` set to its GPU and pinned to its share of
  the host's cores (``cores // workers`` each, through ``OMP_NUM_THREADS`` and CPU affinity).

A candidate spread over several GPUs (placement ``multi-gpu``) runs only on a daemon that owns
every GPU of its host, with all of them; the daemon's other workers wait meanwhile
(:class:`DeviceGate`). A daemon given only some GPUs leaves such candidates to one that owns them all.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from autotune.environment import Environment
from autotune.errors import InputError
from autotune.store import Store
from autotune.worker.protocol import CPUS_ENV


@dataclass(frozen=True)
class Slot:
    """Where one worker measures: ``name`` (a GPU's UUID, or ``cpu``/``cpuN``) and its GPU's NVML index."""

    name: str
    index: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.index is not None


def parse_gpus(text: str | None, environment: Environment) -> tuple[Slot, ...]:
    """The workers ``--gpus`` asks for, checked against the GPUs this machine has.

    ``None`` or ``all``: every visible GPU, or one ``cpu`` worker on a machine without one.
    Otherwise a comma-separated list of NVML indices or UUIDs (or unique UUID prefixes), or, on
    a machine without a GPU, names starting with ``cpu`` (``cpu0,cpu1``: two CPU workers).
    """
    gpus = environment.gpus
    if text is None or text.strip() == "all":
        return tuple(Slot(g.uuid, g.index) for g in gpus) or (Slot("cpu"),)
    items = [item.strip() for item in text.split(",")]
    visible = ", ".join(f"{g.index} ({g.uuid})" for g in gpus) or "none: this machine has no NVIDIA GPU; name CPU workers cpu0,cpu1,..."
    if not all(items):
        raise InputError(f"--gpus {text!r}: an empty entry; give GPU indices or UUIDs separated by commas (visible: {visible})")
    slots = []
    for item in items:
        if item.startswith("cpu"):
            if gpus:
                raise InputError(f"--gpus {text!r}: {item} names a CPU worker, but this machine has GPUs (visible: {visible})")
            slots.append(Slot(item))
            continue
        match = [g for g in gpus if (item.isdigit() and g.index == int(item)) or (not item.isdigit() and g.uuid.startswith(item))]
        if len(match) != 1:
            raise InputError(f"--gpus {text!r}: {item} names {'no' if not match else 'more than one'} visible GPU (visible: {visible})")
        slots.append(Slot(match[0].uuid, match[0].index))
    if len({s.name for s in slots}) != len(slots):
        raise InputError(f"--gpus {text!r}: a GPU is named twice (visible: {visible})")
    return tuple(slots)


def cpu_shares(count: int) -> list[list[int]]:
    """This process's CPU cores split into ``count`` equal shares (at least one core each)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = max(1, len(cores) // count)
    return [cores[(i * per) % len(cores) : (i * per) % len(cores) + per] for i in range(count)]


def worker_environ(slot: Slot | None, cores: list[int], gpus: tuple[Slot, ...] = ()) -> dict[str, str]:
    """What a worker's trial processes get: its GPU(s) as ``CUDA_VISIBLE_DEVICES``, its cores and thread count."""
    environ = {CPUS_ENV: ",".join(map(str, cores)), "OMP_NUM_THREADS": str(len(cores))}
    chosen = [s for s in gpus if s.is_gpu] if slot is None else ([slot] if slot.is_gpu else [])
    if chosen:
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(s.name for s in chosen)
    return environ


class StoreClaims:
    """:class:`autotune.search.study.Claims` through the store, for the worker row ``worker_id``."""

    def __init__(self, store: Store, worker_id: int) -> None:
        self.store = store
        self.worker_id = worker_id
        #: Keys this worker passes over whatever the store says (a multi-GPU candidate it cannot run).
        self.never: set[str] = set()

    def take(self, study_id: int, key: str, label: str) -> bool:
        if key in self.never:
            return False
        return self.store.claim(self.worker_id, study_id, key, label)

    def release(self) -> None:
        self.store.release_claim(self.worker_id)

    def elsewhere(self, study_id: int) -> set[str]:
        # Dead workers' claims count until a pass recovers them (and marks their trials).
        return {key for key, worker in self.store.claims(study_id).items() if worker.id != self.worker_id} | self.never


class DeviceGate:
    """Single-GPU measurements run side by side; a multi-GPU one waits for them all and runs alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    def enter(self, everything: bool) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            if everything:
                self._exclusive = True
                self._cond.wait_for(lambda: self._active == 0)
            self._active += 1

    def leave(self, everything: bool) -> None:
        with self._cond:
            self._active -= 1
            if everything:
                self._exclusive = False
            self._cond.notify_all()
