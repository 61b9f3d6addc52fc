"""The advisor: what fits (the memory forecast), what wins and why (the recommendation), and the
code that loads the winner (the renderer).

- :mod:`autotune.advisor.forecast` predicts a candidate's peak memory from the model's config
  alone (torch and Transformers, on the meta device; nothing is downloaded), and calibrates
  itself against measured trials.
- :mod:`autotune.advisor.recommend` picks the best measured trial under the workload's objective,
  memory limit and quality floor, and explains why every other option lost. It reads the store
  only: no torch, no Transformers.
- :mod:`autotune.advisor.render` writes loading code for the library versions installed where the
  trials ran, and the importable loader module.
- :mod:`autotune.advisor.accuracy` reads measured trials from the store as calibration points.

Import the submodules directly; this package imports nothing heavy.
"""

from __future__ import annotations
