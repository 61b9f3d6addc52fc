"""The advisor: what fits (the estimate), what wins and why (the recommendation), and the code
that loads the winner (the renderer).

- :mod:`autotune.advisor.estimate` gathers what ``autotune estimate`` shows: each way of loading
  a model, its forecast peak and the largest batch each device holds, from the memory model
  (:mod:`autotune.memory`; the model is built on the meta device, nothing is downloaded).
- :mod:`autotune.advisor.recommend` picks the best measured trial under the workload's objective,
  memory limit and quality floor. It reads the store only: no torch, no Transformers.
- :mod:`autotune.advisor.explain` writes why every other option lost (the verdicts), how the
  search came to the winner, and the notes and figures in words; ``recommend`` and the report
  share it. Both stand on :mod:`autotune.advisor.scoring` (a trial's score, the best of several,
  how far behind).
- :mod:`autotune.advisor.render` writes loading code for the library versions installed where the
  trials ran, and the importable loader module.

Import the submodules directly; this package imports nothing heavy.
"""

from __future__ import annotations
