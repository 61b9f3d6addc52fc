"""The search: a model's candidate space and its study.

- :mod:`autotune.search.space` — the candidate space of a model in an environment, the
  baselines, and what was rejected before measuring (validity rules, the memory forecast of
  :mod:`autotune.memory` against each device's limit), with why.
- :mod:`autotune.search.study` — :class:`StudySearch`, one study stepped one candidate at a time
  (baselines, then Optuna's TPE rebuilt from the store), with its stop rules.
- :mod:`autotune.search.results` — a study's trial rows read as one result per candidate (no
  Optuna, torch or transformers: the status commands use it).

Importing this package imports neither torch, transformers nor Optuna.
"""

from __future__ import annotations

from autotune.search.results import CandidateResult, Progress, candidate_results, progress
from autotune.search.space import Baseline, Rejection, SearchSpace, build_space, parse_restriction
from autotune.search.study import Claims, SearchSettings, Step, StudySearch

__all__ = [
    "Baseline",
    "CandidateResult",
    "Claims",
    "Progress",
    "Rejection",
    "SearchSettings",
    "SearchSpace",
    "Step",
    "StudySearch",
    "build_space",
    "candidate_results",
    "parse_restriction",
    "progress",
]
