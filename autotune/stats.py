"""How sure a measured figure is: the Wilson interval of a proportion and the standard error of a
median timing. Pure Python at the bottom of the package, so that the trial worker (which judges
quality) and the objective (which judges a lead) share one definition.
"""

from __future__ import annotations

import math

#: z of a two-sided 95% interval.
Z95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); ``(0, 1)`` when ``n`` is 0.

    Quality treats each scored position as one trial. Positions of one text are not independent
    (an early disagreement shifts the next predictions), so the interval is somewhat narrower
    than the truth; it still says whether one token could have changed a verdict.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def within_noise(low: float | None, high: float | None, floor: float) -> bool:
    """Whether the quality floor lies inside a measured interval: the verdict could go either way."""
    return low is not None and high is not None and low <= floor <= high


#: The relative standard error of a median of ``n`` timings whose relative p10-p90 spread is ``s``:
#: for a normal distribution sigma = (p90 - p10) / 2.563, and the median's standard error is
#: 1.2533 sigma / sqrt(n), so about 0.489 s / sqrt(n).
MEDIAN_ERROR_PER_SPREAD = 1.2533 / 2.5631


def timing_error(spread: float | None, repeats: int | None) -> float | None:
    """The relative standard error of a trial's median latency, from its spread and repeats."""
    if spread is None or not repeats or repeats < 1:
        return None
    return MEDIAN_ERROR_PER_SPREAD * max(float(spread), 0.0) / math.sqrt(repeats)
