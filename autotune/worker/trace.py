"""An opt-in memory trace of the worker: PyTorch's allocator history and a snapshot per batch size.

Set ``AUTOTUNE_MEMORY_TRACE=DIR`` in the environment the worker starts in (the launcher passes its
own environment on) and a worker on a CUDA GPU records the caching allocator's history
(``torch.cuda.memory._record_memory_history``, at most ``AUTOTUNE_MEMORY_TRACE_ENTRIES`` events,
default :data:`DEFAULT_ENTRIES`, so that a snapshot stays a few MB) from the end of the load on,
through the quality comparison and the batch ladder, in the order a study runs them; each batch
size's history starts afresh when its turn comes (the comparison before it ends with the cache
emptied). At the end of each batch size's memory pass it writes, under ``DIR``:

- ``STEM_bN.pickle``: ``torch.cuda.memory._dump_snapshot`` (segments, blocks, the recent events),
  readable with https://pytorch.org/memory_viz;
- ``STEM_bN.json``: the pass's allocated and reserved peaks, the reserved segments by size, the
  free bytes inside segments that also hold live blocks (``inactive_split``), and the large pool's
  events in order (``[action, size, address]``), compact enough to keep for every pass.

The end of the pass is the reserved peak's snapshot: the worker empties the cache only between
batch sizes, and the caching allocator gives no segment back before that, so every segment
reserved at the peak is still there (``STEM`` names the model, the candidate and the process).

Anywhere else — no variable, no CUDA (a CPU worker), a torch without the private API — it does
nothing, so a trial is never changed by it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from typing import Any

#: The directory the trace goes to; unset: no trace.
TRACE_ENV = "AUTOTUNE_MEMORY_TRACE"
#: The most allocator events the history keeps (older ones are dropped).
ENTRIES_ENV = "AUTOTUNE_MEMORY_TRACE_ENTRIES"
DEFAULT_ENTRIES = 40_000
#: ``python``: keep each event's Python traceback (larger snapshots).
STACKS_ENV = "AUTOTUNE_MEMORY_TRACE_STACKS"


class MemoryTrace:
    """The worker's trace: started once, one dump per batch size's memory pass."""

    def __init__(self, directory: str, stem: str, entries: int) -> None:
        self.directory = directory
        self.stem = stem
        self.entries = entries
        self.batch: int | None = None
        self.written: list[str] = []

    @classmethod
    def from_env(cls, model_name: str, label: str) -> MemoryTrace | None:
        """The trace the environment asks for, or None (not asked, no CUDA, or no history API)."""
        directory = os.environ.get(TRACE_ENV)
        if not directory:
            return None
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available() or not hasattr(torch.cuda.memory, "_record_memory_history"):
            return None
        try:
            entries = int(os.environ.get(ENTRIES_ENV) or DEFAULT_ENTRIES)
        except ValueError:
            entries = DEFAULT_ENTRIES
        stem = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{os.path.basename(model_name.rstrip('/'))}_{label}_{os.getpid()}")
        os.makedirs(directory, exist_ok=True)
        return cls(directory, stem, max(1, entries))

    def start(self, clear: bool = False) -> None:
        """Record the allocator's events from now on (``clear``: forget those recorded so far).

        Without ``AUTOTUNE_MEMORY_TRACE_STACKS=python`` no traceback is kept with an event: the
        sizes and the order are what the account of the allocator needs, and tracebacks would
        make each snapshot tens of MB.
        """
        import torch

        stacks = os.environ.get(STACKS_ENV) == "python"
        kwargs: dict[str, Any] = {"context": "alloc", "stacks": "python"} if stacks else {"context": None}
        try:
            torch.cuda.memory._record_memory_history(max_entries=self.entries, clear_history=clear, **kwargs)
        except TypeError:  # an older torch: no clear_history
            torch.cuda.memory._record_memory_history(max_entries=self.entries, **kwargs)

    def dump(self) -> None:
        """Write the snapshot and the summary of the memory pass that just ended."""
        if self.batch is None:
            return
        import torch

        base = os.path.join(self.directory, f"{self.stem}_b{self.batch}")
        snapshot = torch.cuda.memory._snapshot()
        with open(base + ".pickle", "wb") as fh:  # what _dump_snapshot writes
            pickle.dump(snapshot, fh)
        summary = summarize(torch.cuda.memory_stats(), snapshot.get("segments") or [])
        summary["batch_size"] = self.batch
        summary["large_events"] = large_events(snapshot)
        with open(base + ".json", "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
        self.written += [base + ".pickle", base + ".json"]
        self.batch = None


def summarize(stats: dict[str, Any], segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Peaks, segments by size and split free bytes from ``torch.cuda.memory_stats()`` and ``memory_snapshot()``."""
    sizes: dict[int, int] = {}
    pools = {"small": 0, "large": 0}
    for seg in segments:
        size = int(seg.get("total_size", 0))
        sizes[size] = sizes.get(size, 0) + 1
        pools["small" if seg.get("segment_type") == "small" else "large"] += size
    return {
        "peak_allocated_bytes": int(stats.get("allocated_bytes.all.peak", 0)),
        "peak_reserved_bytes": int(stats.get("reserved_bytes.all.peak", 0)),
        "allocated_bytes": int(stats.get("allocated_bytes.all.current", 0)),
        "reserved_bytes": int(stats.get("reserved_bytes.all.current", 0)),
        "inactive_split_bytes": int(stats.get("inactive_split_bytes.all.current", 0)),
        "segments": {str(k): v for k, v in sorted(sizes.items())},
        "reserved_by_pool": pools,
        "segment_count": len(segments),
    }


def large_events(snapshot: dict[str, Any], smallest: int = 1 << 20) -> list[list[Any]]:
    """The history's events of the large pool, compactly: ``[action, size, address]`` in order.

    Requests of more than 1 MiB (the large pool's) are the ones that decide which segments a
    dynamic cache leaves behind; the small pool's events are most of the history and are left out.
    """
    out = []
    for trace in snapshot.get("device_traces") or []:
        for event in trace:
            size = int(event.get("size", 0))
            if size > smallest or event.get("action") in ("segment_alloc", "segment_free"):
                out.append([event.get("action"), size, int(event.get("addr", 0))])
    return out


#: The worker's trace, if it runs one (set by the worker child, read by the memory pass).
active: MemoryTrace | None = None


def begin_batch(batch: int) -> None:
    """The batch size whose memory pass comes next: its snapshot's history starts here."""
    if active is not None:
        active.batch = batch
        active.start(clear=True)


def after_memory_pass() -> None:
    """Called by the memory pass when it ends: dump the trace if one runs."""
    if active is not None:
        active.dump()
