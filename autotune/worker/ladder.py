"""In which order a worker measures a candidate's batch sizes, and when it stops.

Pure Python (no torch): the child asks :meth:`Ladder.next` for the next batch size, reports how
it ended with :meth:`Ladder.record`, and finally reports :meth:`Ladder.leftover` for the sizes it
never measured, each with the reason.

``rising`` (``autotune measure``): smallest first; the first size that does not end ``ok``
ends the ladder (an out-of-memory at batch 8 says nothing good about batch 16).

``falling`` (the search): largest first. Throughput nearly always grows with the batch size
until memory runs out, so the largest size that fits is where a candidate shows what it can do;
a smaller size is measured only when it could matter:

- an out-of-memory goes on to the next smaller size (the forecast admitted a size too many);
- a measured size goes on to the next smaller one only while the candidate is a contender (its
  figure within ``Screen.contend`` of the study's best, ahead of it, or no best yet) and the
  last step down gained; the first smaller size that is slower ends the ladder;
- a screened size (one run, far behind the best) ends the ladder: smaller sizes are slower still;
- anything else (unsupported, an error, a crash) ends it, as in a rising ladder.

On a 7-8B model a compiled static cache costs 34-70 s of compile per batch size (H200, torch
2.11; BENCHMARKS.md §2), so measuring every size of every candidate is what kept a 10-minute
study from reaching the best candidate; most candidates now cost one size.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.worker.protocol import Screen


@dataclass(frozen=True)
class Leftover:
    """A batch size the ladder did not measure, and how it is reported."""

    batch_size: int
    status: str
    reason: str


class Ladder:
    """The measuring order of ``sizes`` (rising) under ``order`` (``rising`` or ``falling``)."""

    def __init__(self, sizes: tuple[int, ...], order: str = "rising", screen: Screen | None = None) -> None:
        self.order = order
        self.screen = screen
        self._todo = list(sizes) if order == "rising" else sorted(sizes, reverse=True)
        self._done: dict[int, tuple[str, float | None]] = {}
        self._stop: tuple[str, str] | None = None  # (status for the rest, reason)
        self._last_ok: tuple[int, float] | None = None

    def next(self) -> int | None:
        """The next batch size to measure, or ``None`` when the ladder has ended."""
        if self._stop is not None or not self._todo:
            return None
        return self._todo[0]

    def record(self, batch: int, status: str, value: float | None = None, reason: str | None = None) -> None:
        """How ``batch`` ended; ``value`` is its objective figure when it was measured."""
        if self._todo and self._todo[0] == batch:
            self._todo.pop(0)
        self._done[batch] = (status, value)
        if status == "unsupported":
            self._stop = ("unsupported", reason or "unsupported")
            return
        if self.order == "rising":
            if status != "ok":
                self._stop = ("skipped", f"not measured: batch size {batch} ended the ladder ({status})")
            return
        if status == "oom":
            return  # falling: the next smaller size may fit
        if status == "screened":
            self._stop = (
                "skipped",
                f"not measured: batch size {batch} was screened out (far behind the best so far), and a smaller batch is slower still",
            )
            return
        if status != "ok":
            self._stop = ("skipped", f"not measured: batch size {batch} ended the ladder ({status})")
            return
        previous = self._last_ok
        if value is None:
            self._stop = ("skipped", f"not measured: batch size {batch} gave no objective figure to compare")
            return
        self._last_ok = (batch, value)
        screen = self.screen
        if previous is not None and screen is not None and not screen.better(value, previous[1]):
            self._stop = (
                "skipped",
                f"not measured: batch size {batch} was no faster than batch size {previous[0]}, so smaller sizes are not expected to gain",
            )
            return
        if screen is None:
            self._stop = (
                "skipped",
                f"not measured: batch size {batch} was measured, and without an objective to compare "
                f"a smaller size is not expected to gain",
            )
            return
        if screen.beat is not None and screen.behind(value) > screen.contend:
            self._stop = (
                "skipped",
                f"not measured: batch size {batch} was {screen.behind(value):.0%} behind the best so far "
                f"(not a contender), so a smaller size is not expected to win",
            )

    def leftover(self) -> list[Leftover]:
        """The sizes never measured, in rising order, each with its status and reason."""
        status, reason = self._stop or ("skipped", "not measured: the ladder ended")
        return [Leftover(b, status, reason) for b in sorted(self._todo)]
