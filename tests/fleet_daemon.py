"""``autotune daemon`` with the fake worker, as a process of its own, for tests/test_fleet.py.

``python fleet_daemon.py URL GPUS SECONDS``: a daemon on the CPU (``--gpus GPUS``, e.g. ``cpu0,cpu1``)
that tunes every registered model exhaustively over four candidates, each fake measurement taking
SECONDS, and exits when every study is finished (``--once``).
"""

from __future__ import annotations

import sys
import time

from search_fakes import FakeMeasure, cpu_env

from autotune.search.space import parse_restriction
from autotune.search.study import SearchSettings
from autotune.service.daemon import Daemon, DaemonOptions

SPACE = "dtype=fp32,bf16 attn=sdpa,eager quant=none static_cache=false"
CANDIDATES = 4


def main(argv: list[str]) -> int:
    url, gpus, seconds = argv[0], argv[1], float(argv[2])
    settings = SearchSettings(seed=0, patience=50, exhaustive=True, restrict=parse_restriction(SPACE))
    measure = FakeMeasure(during=lambda index: time.sleep(seconds))
    options = DaemonOptions(poll_s=0.1, once=True, settings=settings, heartbeat_s=0.2, stale_after_s=30, gpus=gpus)
    return Daemon(url, options, probe=cpu_env, measure=measure).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
