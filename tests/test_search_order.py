"""The order in which a study picks its candidates, pinned: the same store and seed must pick the
same candidates in the same order, whatever is refactored underneath (issue 23).

``tests/data/search_order.json`` was recorded by running these scenarios on main's code before
the axes were declared in one table (``python tests/test_search_order.py`` rewrites it; do that
only for a change meant to alter the search). Each scenario runs a whole study with the instant
fake worker of ``search_fakes`` and records, per measured candidate, its key, its label, its
origin and the batch sizes asked for, then the stop reason and the rejections the study stored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from search_fakes import CPU_WORKLOAD, LLAMA_CAPS, TINY_LLAMA, FakeMeasure, add_model, cpu_env, gpu_env

from autotune.search.space import parse_restriction
from autotune.search.study import SearchSettings, StudySearch
from autotune.store import Store
from autotune.worker_env import WorkerEnvironment
from autotune.workload import MemoryLimit, Workload

FIXTURE = Path(__file__).resolve().parent / "data" / "search_order.json"

GPU_WORKLOAD = Workload(prompt_tokens=16, new_tokens=8, max_batch=4)
ORT_ENV = WorkerEnvironment(
    "ort",
    "/opt/ort/bin/python",
    python_version="3.12.3",
    versions={"transformers": "4.57.6", "optimum-onnx": "0.1.0", "onnxruntime": "1.23.2"},
    runtimes={"onnxruntime": ["CPUExecutionProvider", "CUDAExecutionProvider"]},
)

#: name -> (environment, workload, settings, caps, worker environments)
SCENARIOS: dict[str, tuple[Any, Workload, SearchSettings, dict[str, Any], list[WorkerEnvironment]]] = {
    "cpu-knowledge": (cpu_env(), CPU_WORKLOAD, SearchSettings(seed=3, patience=50, max_trials=30), LLAMA_CAPS, []),
    "cpu-tpe-explore": (
        cpu_env(),
        CPU_WORKLOAD,
        SearchSettings(seed=11, patience=50, max_trials=30, explore=True, knowledge=False),
        LLAMA_CAPS,
        [],
    ),
    "cpu-onnxruntime": (
        cpu_env(),
        Workload(device="cpu", prompt_tokens=16, new_tokens=8, max_batch=4, objective="latency"),
        SearchSettings(seed=5, patience=50, max_trials=20, knowledge=False),
        LLAMA_CAPS,
        [ORT_ENV],
    ),
    "gpu2-flash": (
        gpu_env(2, **{"flash-attn": "2.8.3"}),
        GPU_WORKLOAD,
        SearchSettings(seed=7, patience=50, max_trials=30),
        LLAMA_CAPS,
        [ORT_ENV],
    ),
    "gpu1-tpe-restricted": (
        gpu_env(1),
        Workload(prompt_tokens=16, new_tokens=8, max_batch=8, max_memory=MemoryLimit.parse("60GiB")),
        SearchSettings(seed=2, patience=50, max_trials=25, knowledge=False, restrict=parse_restriction("attn=sdpa,eager,flex_attention")),
        LLAMA_CAPS,
        [],
    ),
}


def run_scenario(store: Store, name: str) -> dict[str, Any]:
    """Run scenario ``name`` to its end on ``store``; what it measured, in order."""
    env, workload, settings, caps, worker_envs = SCENARIOS[name]
    for worker_env in worker_envs:
        store.save_worker_env(worker_env)
    model = add_model(store, name=f"org/{name}", workload=workload, config=TINY_LLAMA, caps=caps)
    measure = FakeMeasure()
    search = StudySearch(store, model, env, store.record_environment(env), settings, measure=measure)
    for _ in range(500):
        if search.step().finished:
            break
    study = store.get_study(search.study.id)
    return {
        "measured": [
            {"key": c.key(), "label": c.label(), "origin": origin, "batch_sizes": list(sizes)} for c, sizes, origin in measure.calls
        ],
        "stop_reason": study.stop_reason,
        "rejected": [{"label": r["label"], "reason": r["reason"], "count": r["count"]} for r in study.rejected],
    }


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_study_picks_the_same_candidates_in_the_same_order(name: str, tmp_path: Path) -> None:
    expected = json.loads(FIXTURE.read_text())[name]
    with Store.open(f"sqlite:///{tmp_path / 'order.db'}") as store:
        got = run_scenario(store, name)
    assert [m["label"] for m in got["measured"]] == [m["label"] for m in expected["measured"]]
    assert got == expected


if __name__ == "__main__":  # record the fixture: python tests/test_search_order.py
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    out = {}
    for scenario in sorted(SCENARIOS):
        with tempfile.TemporaryDirectory() as tmp, Store.open(f"sqlite:///{tmp}/order.db") as store:
            out[scenario] = run_scenario(store, scenario)
    FIXTURE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print({k: len(v["measured"]) for k, v in out.items()})
